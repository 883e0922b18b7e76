"""One backlog worker seen from outside, as Prometheus would: /metrics every 0.5 s.

    .venv/bin/python bench/backlog_timeline.py [--rows 100000] [--workers 1] [--before TREE] [--out FILE]

Starts a broker (deploy/local/kafka), fills the demo backlog (bench/perf.py's), starts the
workers and scrapes them until every label is accounted for (the lines show the first one's). Prints one line per
scrape (labels counted, process CPU, observations held, consumer lag, checkpoint rounds) and
at the end how long the scrapes took (median, p90, max): a render that waits for the worker's
lock (stream/looplock.py) or a cached body kept too long (stream/http.py) shows here first.
`--before TREE` runs another tree's worker (a PYTHONPATH with driftline/ in it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import perf  # noqa: E402
from driftline.stream.live_demo import total  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--before", help="a driftline tree (PYTHONPATH) whose worker runs instead")
    ap.add_argument("--out", help="also write the scrape durations and the timeline here (JSON)")
    args = ap.parse_args()
    lines, took = [], []
    with perf.Broker(None) as broker, tempfile.TemporaryDirectory() as tmp:
        prefix = f"tl-{uuid.uuid4().hex[:8]}"
        inf, lab = perf.demo_raw(args.rows)
        perf.fill(broker.bootstrap, prefix, perf.BACKLOG_PARTITIONS, inf, lab)
        group = f"tl-{uuid.uuid4().hex[:8]}"
        cfg = perf.worker_config(Path(tmp) / "worker.yml", broker.bootstrap, prefix, group, perf.BACKLOG_PARTITIONS)
        ws = perf.Workers(cfg, args.workers, Path(tmp), args.before)
        t0 = time.time()
        try:
            while time.time() - t0 < 900:
                time.sleep(0.5)
                # Every worker's, each with how long its scrape took (a slow one is the figure: no 5 s cut).
                scraped = ws.samples(timeout=60)
                m, seconds = scraped[0]
                if not m:  # the first worker did not answer (not serving yet, or timed out)
                    continue
                took.append(seconds)
                labeled = sum(total(mm, "driftline_labeled_total", segment="__all__") for mm, _ in scraped)
                row = {"t": time.time() - t0, "labeled": labeled, "scrape_s": took[-1],
                       "cpu_s": total(m, "process_cpu_seconds_total"),
                       "held": total(m, "driftline_observations_held"), "lag": total(m, "driftline_consumer_lag"),
                       "checkpoints": total(m, "driftline_checkpoints_total", outcome="ok")}
                lines.append(row)
                print(f"{row['t']:6.1f} s  labeled {labeled:8.0f}  cpu {row['cpu_s']:6.2f} s  held {row['held']:7.0f}  "
                      f"lag {row['lag']:7.0f}  checkpoints {row['checkpoints']:3.0f}  scrape {took[-1]:.3f} s", flush=True)
                if labeled >= args.rows:
                    break
        finally:
            ws.stop()
    ordered = sorted(took)
    summary = {"scrapes": len(took), "median_s": statistics.median(ordered),
               "p90_s": ordered[int(0.9 * (len(ordered) - 1))], "max_s": ordered[-1]}
    print(f"scrapes: {summary['scrapes']}, median {summary['median_s']:.3f} s, p90 {summary['p90_s']:.3f} s, "
          f"max {summary['max_s']:.3f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "timeline": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
