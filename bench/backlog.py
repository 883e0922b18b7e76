"""The worker against `driftline replay` on a backlog over 6 partitions: joins, fates, detections.

    .venv/bin/python bench/backlog.py [--rows 12000] [--ttl 10m] [--bootstrap HOST:PORT] [--out FILE]

Publishes the demo stream (accuracy drop in band=high) as a backlog, all inferences then all
labels, to 6-partition topics, runs one `driftline run` over it, and compares what /metrics and
the drift-events topic say with what `driftline replay` says of the same events. The worker
process imports `driftline` the usual way, so PYTHONPATH pointing at another tree measures that
tree's worker (the figures before a change: --worker-pythonpath). Prints a JSON record; --out writes it too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

from perf import Broker  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    WorkerProcess,
    consume_all,
    parse,
    producer,
    publish,
    total,
    unique_prefix,
    write_config,
)

from driftline.stream.demo import demo_events  # noqa: E402
from driftline.stream.replay import replay  # noqa: E402
from driftline.stream.settings import load_settings  # noqa: E402

MODELS = """\
  shuttle:
    task: classification
    segments: [band]
    max_segments: 10
    features: {{f1: numeric, f5: numeric, f7: numeric, f9: numeric}}
    accuracy_window: 500
    label_ttl: {ttl}
    drift_hold: 10m
"""


def figures(samples: dict, detections: list[dict], drift_time: float) -> dict:
    detections = [d for d in detections if d.get("kind", "detection") == "detection"]  # not explanations
    errs = [d for d in detections if d["signal"] == "error" and d["segment"] == "band=high"]
    after = sorted(d["timestamp"] for d in errs if d["timestamp"] >= drift_time)
    return {
        "joined": total(samples, "driftline_labeled_total", segment="__all__"),
        "expired": total(samples, "driftline_events_total", kind="inference", outcome="expired"),
        "unmatched": total(samples, "driftline_events_total", kind="label", outcome="unmatched"),
        "detections": len(detections),
        "detections_down": sum(d["direction"] == "down" for d in detections),
        "error_detections_high_before_drift": sum(d["timestamp"] < drift_time for d in errs),
        "first_error_detection_high_after_drift_s": (after[0] - drift_time) if after else None,
        "accuracy_high": total(samples, "driftline_accuracy", segment="band=high"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=12_000)
    ap.add_argument("--ttl", default="10m")
    ap.add_argument("--bootstrap")
    ap.add_argument("--out")
    ap.add_argument("--worker-pythonpath", help="run the worker from this tree (e.g. an older driftline)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dl-backlog-"))
    inferences, labels, drift_time = demo_events(rows_limit=args.rows, drift_row=args.rows // 2)
    (tmp / "i.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in inferences))
    (tmp / "l.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in labels))
    with Broker(args.bootstrap) as broker:
        prefix = unique_prefix()
        config = write_config(tmp / "driftline.yml", broker.bootstrap, prefix, MODELS.format(ttl=args.ttl), partitions=6)
        result = replay(load_settings(config), tmp / "i.jsonl", tmp / "l.jsonl")
        want = figures(parse(result.exposition().decode()), [r.to_dict() for r in result.detections], drift_time)
        p = producer(broker.bootstrap)
        publish(p, f"{prefix}.inferences", inferences)
        publish(p, f"{prefix}.labels", labels)
        p.flush(60)
        env = {"PYTHONPATH": args.worker_pythonpath} if args.worker_pythonpath else None
        w = WorkerProcess(config, tmp, "worker", env=env).start()
        started = time.monotonic()
        fated = lambda m: (total(m, "driftline_labeled_total", segment="__all__")  # noqa: E731
                           + total(m, "driftline_events_total", kind="label", outcome="unmatched"))
        last, stable_since = None, time.monotonic()
        while time.monotonic() - started < 600:  # until every label has a fate, or nothing moves for 20 s
            try:
                m = w.metrics()
            except OSError:
                time.sleep(1)
                continue
            now = (fated(m), total(m, "driftline_events_total"))
            if now != last:
                last, stable_since = now, time.monotonic()
            if fated(m) >= len(labels) and time.monotonic() - stable_since > 3:
                break
            if time.monotonic() - stable_since > 20:
                break
            time.sleep(0.5)
        got = w.metrics()
        w.terminate()
        n = int(total(got, "driftline_drift_detected_total"))
        events = [orjson.loads(x.value()) for x in consume_all(broker.bootstrap, f"{prefix}.drift-events", n)]
        record = {"rows": args.rows, "label_ttl": args.ttl, "partitions": 6, "labels": len(labels),
                  "replay": want, "worker": figures(got, events, drift_time),
                  "worker_same_detections_as_replay": sorted(
                      orjson.dumps({k: v for k, v in d.items() if k != "source"}, option=orjson.OPT_SORT_KEYS)
                      for d in events) == sorted(orjson.dumps(r.to_dict(), option=orjson.OPT_SORT_KEYS)
                                                 for r in result.records),
                  "late": total(got, "driftline_observations_late_total"),
                  "paused_seconds": total(got, "driftline_alignment_paused_seconds_total"),
                  "seconds": round(time.monotonic() - started, 1)}
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
