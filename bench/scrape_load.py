"""/metrics under hostile clients: does scraping stop ingestion or grow memory?

    .venv/bin/python bench/scrape_load.py [--segments 3000] [--bootstrap HOST:PORT] [--out bench/results] [--variants ...]

One worker with a model of SEGMENTS segment values (~30 series each: ~90k series), fed a steady
4,000 messages/s (inferences and labels), with `worker.exactly_once: false` (so that the
committed offsets the lag is read from follow the loop, not the transaction commits). For each of
three builds of /metrics, measured in the same run:

- "bounded_paced" (the default): one shared, cached render (stream/http.py ExpositionCache), at
  most 32 connections, a 10 s socket timeout per connection, and a walk that holds the worker's
  lock for one slice of segments at a time (stream/exporter.py PacedBanks);
- "bounded_whole_walk" (DRIFTLINE_BENCH_WHOLE_WALK_LOCK=1): the same server, the walk holding
  the lock from its first segment to its last (the previous build);
- "unbounded" (DRIFTLINE_BENCH_UNBOUNDED_HTTP=1 and the whole-walk lock): a render per scrape, no
  cap, no timeout (what /metrics did before either fix);

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
                    # At least once: committed offsets then follow the loop (every commit_interval);
                    # with transactions they move at each commit, whose interval grows with the
                    # checkpoint of 3,000 segments, and the lag read from Kafka would measure that.
                    f"worker: {{exactly_once: false}}\n"
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


VARIANTS = {
    "bounded_paced": {},
    "bounded_whole_walk": {"DRIFTLINE_BENCH_WHOLE_WALK_LOCK": "1"},
    "unbounded": {"DRIFTLINE_BENCH_UNBOUNDED_HTTP": "1", "DRIFTLINE_BENCH_WHOLE_WALK_LOCK": "1"},
}


def run_variant(bootstrap: str, segments: int, variant: str, tmp: Path) -> dict:
    prefix = f"sl-{uuid.uuid4().hex[:8]}"
    cfg = config(tmp / f"{prefix}.yml", bootstrap, prefix, segments)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **VARIANTS[variant]}
    logf = open(tmp / f"{prefix}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "driftline.stream.cli", "run", "--config", str(cfg),
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    out: dict = {"variant": variant}
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
            peak = {"lag": lag0}
            done = threading.Event()

            def watch():  # the lag every second of the phase: its peak, not only its ends
                while not done.wait(1.0):
                    try:
                        peak["lag"] = max(peak["lag"], lag(bootstrap, prefix))
                    except Exception:  # noqa: BLE001 (a slow broker answer: skip that second)
                        pass

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            res = extra() if extra else (time.sleep(seconds) or {})
            done.set()
            watcher.join(15)
            lag1, rss1 = lag(bootstrap, prefix), rss(proc.pid)
            out[name] = {"seconds": seconds, "lag_before": lag0, "lag_after": lag1,
                         "lag_peak": max(peak["lag"], lag1), "rss_before_mib": rss0 / 2**20,
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


class RecordingLock:
    """The worker's kind of lock (an RLock), recording how long the scraping thread held it each
    time it took it (outermost holds only)."""

    def __init__(self, scraper: int):
        self._lock = threading.RLock()
        self.scraper, self.depth, self.since, self.holds = scraper, 0, 0.0, []

    def __enter__(self):
        self._lock.acquire()
        if threading.get_ident() == self.scraper:
            self.depth += 1
            if self.depth == 1:
                self.since = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if threading.get_ident() == self.scraper:
            self.depth -= 1
            if self.depth == 0:
                self.holds.append(time.perf_counter() - self.since)
        self._lock.release()
        return False


def lock_wait(segments: int, renders: int = 5) -> dict:
    """In one process, no Kafka: a bank of SEGMENTS segments (the worker's model), rendered by
    DriftlineMetrics with the worker's kind of lock while a "loop" thread takes that lock for 1 ms
    at a time (a batch). Per walk variant: the longest the scrape held the lock at a stretch, how
    long the loop waited to get it (at most, p99: this includes waiting for the GIL, which a render
    in the worker's process takes whatever the lock does), and how long a render took."""
    from driftline.detectors.bank import DetectorBank
    from driftline.stream import exporter
    from driftline.stream.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(config(Path(tmp) / "c.yml", "127.0.0.1:1", "lw", segments), env={})
    bank = DetectorBank(settings.spec_for, idle_after=settings.limits.segment_idle)
    for i in range(4 * segments):
        seg = f"user=u{i % segments}"
        for s in ("__all__", seg):
            bank.observe_inference("m", s, {"x": (i % 97) / 10.0}, i % 2, None, float(i), f"p{i}")
            bank.observe_outcome("m", s, i % 2, (i // 3) % 2, float(i) + 0.1, f"p{i}")
    out = {}
    for variant, env in (("paced", None), ("whole_walk", "1")):
        if env:
            os.environ[exporter.ENV_WHOLE_WALK] = env
        else:
            os.environ.pop(exporter.ENV_WHOLE_WALK, None)
        lock = RecordingLock(threading.get_ident())
        metrics = exporter.DriftlineMetrics(settings, banks=lambda: (bank,), lock=lock)
        waits: list[float] = []
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                t = time.perf_counter()
                with lock:
                    waits.append(time.perf_counter() - t)
                    end = time.perf_counter() + 0.001
                    while time.perf_counter() < end:
                        pass
                time.sleep(0.0005)  # the loop's own work outside the lock (polling Kafka)

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        took = []
        for _ in range(renders):
            t = time.perf_counter()
            metrics.render()
            took.append(time.perf_counter() - t)
        stop.set()
        th.join(10)
        waits.sort()
        out[variant] = {"renders": renders, "render_p50_s": statistics.median(took),
                        "scrape_holds_per_render": len(lock.holds) / renders,
                        "scrape_longest_hold_s": max(lock.holds), "loop_waits": len(waits),
                        "loop_wait_max_s": waits[-1], "loop_wait_p99_s": waits[int(0.99 * (len(waits) - 1))]}
        log(f"lock wait, {variant}: {out[variant]}")
    os.environ.pop(exporter.ENV_WHOLE_WALK, None)
    return out


def summary(results: dict) -> str:
    """bench/results/scrape_load.md: the figures of one run as tables."""
    def f(x, fmt="{:,.0f}"):
        return "n/a" if x is None else fmt.format(x)

    lines = [f"# /metrics under load ({results['date']}, {results['cores']} cores, "
             f"{results['offered_messages_per_s']:,.0f} messages/s offered, {results['segments']:,} segments)", "",
             "Written by `.venv/bin/python bench/scrape_load.py`; lag = messages past the group's committed "
             "offsets (read from Kafka), peak sampled every second of the phase.", "",
             "| build | series | quiet: lag peak | 50 scrapers: lag before -> peak -> after | scrape p50 / p99 | "
             "ok / failed (503, timeout) | RSS | 200 non-readers: lag peak | RSS peak | SIGTERM with them attached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in results["variants"]:
        q, s50, nr = v["quiet"], v["scrapers_50"], v["non_readers_200"]
        lines.append(
            f"| {v['variant']} | {v['series']:,} | {f(q.get('lag_peak'))} | {f(s50['lag_before'])} -> "
            f"{f(s50.get('lag_peak'))} -> {f(s50['lag_after'])} | {f(s50['scrape_p50_s'], '{:.2f}')} / "
            f"{f(s50['scrape_p99_s'], '{:.2f}')} s | {s50['scrapes_ok']} / {s50['scrapes_failed']} | "
            f"{s50['rss_before_mib']:.0f} -> {s50['rss_after_mib']:.0f} MiB | {f(nr.get('lag_peak'))} | "
            f"{nr['rss_peak_mib']:.0f} MiB | {f(v['sigterm_seconds'], '{:.1f} s')} (exit {v['sigterm_exit_code']}) |")
    lw = results.get("lock_wait")
    if lw:
        lines += ["", "In one process, no Kafka (the same bank, a loop thread taking the lock for 1 ms at a time):", "",
                  "| walk | render p50 | scrape's holds per render | longest hold | loop's longest wait | loop's p99 wait |",
                  "|---|---|---|---|---|---|"]
        for name, r in lw.items():
            lines.append(f"| {name} | {r['render_p50_s']:.2f} s | {r['scrape_holds_per_render']:.0f} | "
                         f"{1000 * r['scrape_longest_hold_s']:.1f} ms | {1000 * r['loop_wait_max_s']:.1f} ms | "
                         f"{1000 * r['loop_wait_p99_s']:.2f} ms |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=3000)
    ap.add_argument("--bootstrap")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    args = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "offered_messages_per_s": RATE,
               "segments": args.segments, "lock_wait": lock_wait(args.segments), "variants": []}
    with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            results["variants"].append(run_variant(broker.bootstrap, args.segments, variant, Path(tmp)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scrape_load.json").write_text(json.dumps(results, indent=2))
    (out / "scrape_load.md").write_text(summary(results))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
