"""`driftline demo --kafka BOOTSTRAP`: the demo stream, live through Kafka and a real worker.

The same Shuttle events as the replay demo (stream/demo.py), published as a serving system
would: event time is the wall clock at publishing, compressed (`--rate` events per second
instead of one), each label published `label_lag` seconds after its prediction, and the three
malformed lines among them. A `driftline run` worker is started as a separate process; the
demo scrapes its `/metrics` while it publishes, and reports per segment what the worker found
and how long after the first drifted event the drift showed on `/metrics`.

Topics and the consumer group are named per run (`driftline-demo-<time>.*`), so runs never
share state. The worker listens where the shipped Prometheus config scrapes (127.0.0.1:8000),
so with `deploy/local/stack` running, Prometheus and Alertmanager see the drift too.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

import orjson

from driftline.stream.demo import (
    BASELINE_FILE,
    DRIFT_FEATURE,
    DRIFT_ROW,
    DRIFT_SEGMENT,
    FEATURE_DRIFT_FEATURE,
    FEATURE_DRIFT_ROW,
    FEATURE_DRIFT_SEGMENT,
    MALFORMED_LINES,
    MODEL,
    demo_config,
    demo_events,
    write_baseline,
)
from driftline.stream.settings import prefixed_topics


@dataclasses.dataclass
class LiveReport:
    lines: list[str]
    detection_seconds: float | None  # first drifted event published -> drift on /metrics
    events_per_second: float  # events the worker accounted for / wall time from first publish


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= set(lv))


def live_config(bootstrap: str, prefix: str) -> str:
    topics = ", ".join(f"{k}: {v}" for k, v in prefixed_topics(prefix).items())
    body = demo_config(BASELINE_FILE).split("models:", 1)[1]
    return (f"# driftline live demo config (written by `driftline demo --kafka`)\n"
            f"kafka:\n  bootstrap: {bootstrap}\n  group_id: {prefix}\n  partitions: 4\n  topics: {{{topics}}}\n"
            f"models:{body}")


def run_live_demo(bootstrap: str, listen: str, out_dir: str | os.PathLike, rate: float = 4000.0,
                  label_lag: float = 2.0, keep_worker: bool = False) -> LiveReport:
    from confluent_kafka import Producer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = time.strftime("driftline-demo-%Y%m%d-%H%M%S")
    config = out / "demo-kafka.yml"
    config.write_text(live_config(bootstrap, prefix))
    write_baseline(out)  # the profile of the training rows, beside the config that names it
    inferences, labels, _ = demo_events(feature_drift_row=FEATURE_DRIFT_ROW)
    n = len(inferences)
    base = f"http://{listen}"
    log_path = out / "worker.log"
    log = open(log_path, "wb")
    worker = subprocess.Popen([sys.executable, "-m", "driftline.stream.cli", "run", "--config", str(config), "--listen", listen],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    say = lambda msg: print(f"demo: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        say(f"worker pid {worker.pid} on {base} (log {log_path}); topics {prefix}.*")
        _wait(lambda: _ok(f"{base}/readyz"), 90, worker, log_path, "the worker to be ready")
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "compression.type": "lz4"})
        say(f"publishing {n:,} inference and {n:,} label events at {rate:,.0f} events/s "
            f"(labels {label_lag:g} s after their prediction); drift from event {DRIFT_ROW:,} in {DRIFT_SEGMENT}")
        started = time.time()
        drift_published = None
        detected_at = None
        next_scrape = started
        waiting = deque()
        bad = {100: MALFORMED_LINES[0], 20_000: MALFORMED_LINES[1], 40_000: MALFORMED_LINES[2]}
        for i, ev in enumerate(inferences):
            t = started + i / rate
            now = time.time()
            if t > now:
                time.sleep(t - now)
            ev = {**ev, "timestamp": t}
            producer.produce(f"{prefix}.inferences", key=ev["prediction_id"], value=orjson.dumps(ev))
            if i in bad:
                producer.produce(f"{prefix}.inferences", key=b"bad-%d" % i, value=bad[i])
            if i == DRIFT_ROW:
                drift_published = t
            waiting.append((t + label_lag, {**labels[i], "timestamp": t + label_lag}))
            while waiting and waiting[0][0] <= t:
                lab = waiting.popleft()[1]
                producer.produce(f"{prefix}.labels", key=lab["prediction_id"], value=orjson.dumps(lab))
            producer.poll(0)
            if drift_published is not None and detected_at is None and time.time() >= next_scrape:
                next_scrape = time.time() + 0.25
                if _drift_seen(base):
                    detected_at = time.time()
        while waiting:
            t, lab = waiting.popleft()
            if t > time.time():
                time.sleep(t - time.time())
            producer.produce(f"{prefix}.labels", key=lab["prediction_id"], value=orjson.dumps(lab))
            producer.poll(0)
            if detected_at is None and _drift_seen(base):
                detected_at = time.time()
        producer.flush(30)
        _wait(lambda: total(scrape(f"{base}/metrics"), "driftline_labeled_total", model=MODEL, segment="__all__") >= n,
              300, worker, log_path, "the worker to account for every label")
        finished = time.time()
        if detected_at is None and _drift_seen(base):
            detected_at = finished
        samples = scrape(f"{base}/metrics")
        (out / "metrics-live.prom").write_bytes(urllib.request.urlopen(f"{base}/metrics", timeout=5).read())
    finally:
        if not keep_worker or worker.poll() is not None:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
            log.close()
    accounted = 2 * n + len(MALFORMED_LINES)
    report = _report(samples, drift_published, detected_at, accounted / (finished - started), prefix)
    if keep_worker:
        report.lines.append(f"the worker keeps running (pid {worker.pid}): curl {base}/metrics; stop with kill {worker.pid}")
    else:
        report.lines.append(f"worker stopped with exit code {worker.returncode} (SIGTERM: checkpoint, commit, leave the group)")
    return report


def _drift_seen(base: str) -> bool:
    try:
        s = scrape(f"{base}/metrics", timeout=2)
    except OSError:
        return False
    return total(s, "driftline_drift_detected_total", model=MODEL, segment=DRIFT_SEGMENT, signal="error") > 0


def _report(samples, drift_published, detected_at, rate, prefix) -> LiveReport:
    lines = [f"worker accounted for every event at {rate:,.0f} events/s (inferences + labels, publishing paced)", "",
             f"{'segment':<12}{'labelled':>10}{'accuracy':>10}{'error drifts':>14}{'drift active':>14}"]
    segments = sorted({dict(lv)["segment"] for (name, lv) in samples if name == "driftline_labeled_total"})
    for seg in segments:
        labelled = total(samples, "driftline_labeled_total", model=MODEL, segment=seg)
        acc = total(samples, "driftline_accuracy", model=MODEL, segment=seg)
        drifts = total(samples, "driftline_drift_detected_total", model=MODEL, segment=seg, signal="error")
        active = max((v for (name, lv), v in samples.items() if name == "driftline_drift_active"
                      and dict(lv)["segment"] == seg and dict(lv)["signal"] == "error"), default=0.0)
        lines.append(f"{seg:<12}{labelled:>10,.0f}{acc:>10.3f}{drifts:>14,.0f}{'yes' if active else 'no':>14}")
    invalid = total(samples, "driftline_events_total", outcome="invalid")
    lines += ["", f"dead-lettered: {invalid:.0f} (topic {prefix}.dead-letters, with reasons)"]
    seconds = None if detected_at is None or drift_published is None else detected_at - drift_published
    lines.append(f"first drifted event -> error drift in {DRIFT_SEGMENT} on /metrics: "
                 + (f"{seconds:.1f} s" if seconds is not None else "NOT DETECTED"))
    signals = (FEATURE_DRIFT_FEATURE, DRIFT_FEATURE, "prediction", "score")
    threshold = total(samples, "driftline_feature_psi_threshold", model=MODEL)
    lines += ["", f"PSI against the training baseline ({BASELINE_FILE}, threshold {threshold:g}); "
                  f"{FEATURE_DRIFT_FEATURE} drifts in {FEATURE_DRIFT_SEGMENT} from event {FEATURE_DRIFT_ROW:,} "
                  f"(the model ignores it)",
              f"{'segment':<12}" + "".join(f"{s + ' PSI':>16}" for s in signals) + f"{'accuracy':>10}"]
    for seg in segments:
        cells = []
        for sig in signals:
            found = [v for (name, lv), v in samples.items() if name == "driftline_feature_psi"
                     and dict(lv).get("segment") == seg and dict(lv).get("feature") == sig]
            cells.append(f"{found[0]:>16.3f}" if found else f"{'-':>16}")
        acc = total(samples, "driftline_accuracy", model=MODEL, segment=seg)
        lines.append(f"{seg:<12}{''.join(cells)}{acc:>10.3f}")
    return LiveReport(lines, seconds, rate)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _wait(check, timeout: float, proc, log_path: Path, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} while waiting for {what}; "
                               f"log tail:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; log: {log_path}")
