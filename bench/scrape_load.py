"""/metrics under hostile clients: does scraping stop ingestion or grow memory?

    .venv/bin/python bench/scrape_load.py [--segments 3000] [--bootstrap HOST:PORT] [--out bench/results]

One worker with a model of SEGMENTS segment values (~30 series each: ~90k series), fed a steady
4,000 messages/s (inferences and labels). For each of two builds of the HTTP server, measured in
the same run:

- "bounded" (the default): one shared, cached render (stream/http.py ExpositionCache), at most
  32 connections, a 10 s socket timeout per connection;
- "unbounded" (DRIFTLINE_BENCH_UNBOUNDED_HTTP=1): a render per scrape, no cap, no timeout (what
  /metrics did before);

it records, per phase (quiet 10 s; 50 concurrent scrapers 12 s; 200 clients that send
`GET /metrics` and never read, 15 s): consumer lag (the group's committed offsets against the
topics' ends, read from Kafka, not from /metrics), the worker's RSS, scrape latency; then the time
SIGTERM takes with the 200 clients still attached. Writes OUT/scrape_load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from perf import Broker, free_port  # noqa: E402  (the same broker helper as bench/perf.py)

from driftline.stream.settings import prefixed_topics  # noqa: E402

RATE = 4000.0  # messages/s offered: 2,000 inferences and 2,000 labels
PARTITIONS = 3


def log(msg: str) -> None:
    print(f"scrape_load: {msg}", file=sys.stderr, flush=True)


def config(path: Path, bootstrap: str, prefix: str, segments: int) -> Path:
    topics = "{" + ", ".join(f"{k}: {v}" for k, v in prefixed_topics(prefix).items()) + "}"
    path.write_text(f"kafka:\n  bootstrap: {bootstrap}\n  group_id: {prefix}\n  partitions: {PARTITIONS}\n"
                    f"  topics: {topics}\nlimits: {{max_pending: 100000}}\n"
                    f"models:\n  m:\n    segments: [user]\n    max_segments: {segments + 10}\n"
                    f"    features: {{x: numeric}}\n    label_ttl: 1d\n")
    return path


class Feeder(threading.Thread):
    """Inference i and its label, keyed by prediction_id, at RATE messages/s, until stopped."""

    def __init__(self, bootstrap: str, prefix: str, segments: int):
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 2})
        self.prefix, self.segments = prefix, segments
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        started, i = time.monotonic(), 0
        now = time.time()
        while not self.stop.is_set():
            pid = f"p{i}"
            ts = now + i * 0.0005
            self.p.produce(f"{self.prefix}.inferences", key=pid, value=orjson.dumps(
                {"prediction_id": pid, "model": "m", "timestamp": ts,
                 "features": {"x": (i % 97) / 10.0, "user": f"u{i % self.segments}"}, "prediction": i % 2}))
            self.p.produce(f"{self.prefix}.labels", key=pid, value=orjson.dumps(
                {"prediction_id": pid, "label": (i // 3) % 2, "timestamp": ts + 0.1}))
            i += 1
            self.sent = 2 * i
            if i % 200 == 0:
                self.p.poll(0)
                ahead = started + 2 * i / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        self.p.flush(30)


def lag(bootstrap: str, prefix: str) -> int:
    """Messages of the two input topics past the group's committed offsets (read from Kafka)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": prefix, "enable.auto.commit": False, "log_level": 2})
    try:
        tps = [TopicPartition(f"{prefix}.{t}", p) for t in ("inferences", "labels") for p in range(PARTITIONS)]
        committed = c.committed(tps, timeout=10)
        out = 0
        for tp in committed:
            _, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            out += high - max(tp.offset, 0)
        return out
    finally:
        c.close()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def scrape_once(url: str, timeout: float = 60.0) -> tuple[float, int]:
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            return time.perf_counter() - t, len(body)
    except OSError:  # refused (503) or timed out: counted as failed
        return time.perf_counter() - t, -1


def phase_scrapers(url: str, n: int, seconds: float) -> dict:
    took, failed = [], [0]
    stop = time.monotonic() + seconds

    def loop():
        while time.monotonic() < stop:
            t, size = scrape_once(url)
            if size < 0:
                failed[0] += 1
                time.sleep(0.1)
            else:
                took.append(t)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    took.sort()
    return {"scrapes_ok": len(took), "scrapes_failed": failed[0],
            "scrape_p50_s": statistics.median(took) if took else None,
            "scrape_p99_s": took[min(int(0.99 * len(took)), len(took) - 1)] if took else None}


def non_readers(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        except OSError:
            pass
    return socks


def run_variant(bootstrap: str, segments: int, unbounded: bool, tmp: Path) -> dict:
    prefix = f"sl-{uuid.uuid4().hex[:8]}"
    cfg = config(tmp / f"{prefix}.yml", bootstrap, prefix, segments)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if unbounded:
        env["DRIFTLINE_BENCH_UNBOUNDED_HTTP"] = "1"
    logf = open(tmp / f"{prefix}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "driftline.stream.cli", "run", "--config", str(cfg),
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    out: dict = {"variant": "unbounded" if unbounded else "bounded"}
    feeder = Feeder(bootstrap, prefix, segments)
    socks: list[socket.socket] = []
    try:
        deadline = time.time() + 120
        while scrape_once(url, 5)[1] < 0:
            if time.time() > deadline:
                raise RuntimeError("worker did not come up")
            time.sleep(0.5)
        feeder.start()
        # Warm-up: every segment value seen, the group caught up.
        deadline = time.time() + 300
        while feeder.sent < 4 * segments or lag(bootstrap, prefix) > RATE:
            if time.time() > deadline:
                raise RuntimeError("worker did not catch up in the warm-up")
            time.sleep(1)
        t, size = scrape_once(url)
        body = urllib.request.urlopen(url, timeout=60).read().decode()
        out["series"] = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        out["exposition_bytes"] = size
        log(f"{out['variant']}: {out['series']:,} series, {size / 2**20:.1f} MiB, one scrape {t:.2f} s")

        def sample(name: str, seconds: float, extra=None) -> None:
            lag0, rss0 = lag(bootstrap, prefix), rss(proc.pid)
            res = extra() if extra else (time.sleep(seconds) or {})
            lag1, rss1 = lag(bootstrap, prefix), rss(proc.pid)
            out[name] = {"seconds": seconds, "lag_before": lag0, "lag_after": lag1, "rss_before_mib": rss0 / 2**20,
                         "rss_after_mib": rss1 / 2**20, **res}
            log(f"{out['variant']} {name}: lag {lag0:,} -> {lag1:,}, RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB {res}")

        sample("quiet", 10.0)
        sample("scrapers_50", 12.0, lambda: phase_scrapers(url, 50, 12.0))

        def hold_non_readers():
            socks.extend(non_readers(port, 200))
            peak = 0
            for _ in range(15):
                time.sleep(1)
                peak = max(peak, rss(proc.pid))
            return {"clients_connected": len(socks), "rss_peak_mib": peak / 2**20}

        sample("non_readers_200", 15.0, hold_non_readers)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
            out["sigterm_seconds"] = time.monotonic() - t
            out["sigterm_exit_code"] = code
        except subprocess.TimeoutExpired:
            out["sigterm_seconds"] = None  # did not finish within 60 s
            out["sigterm_exit_code"] = None
        log(f"{out['variant']}: SIGTERM with 200 clients attached: {out['sigterm_seconds']} s")
    finally:
        feeder.stop.set()
        for s in socks:
            s.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        logf.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=3000)
    ap.add_argument("--bootstrap")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "offered_messages_per_s": RATE,
               "segments": args.segments, "variants": []}
    with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as tmp:
        for unbounded in (False, True):
            results["variants"].append(run_variant(broker.bootstrap, args.segments, unbounded, Path(tmp)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scrape_load.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
