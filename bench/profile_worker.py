"""Where one worker's time goes per event: cProfile on one `driftline run` reading a backlog.

    .venv/bin/python bench/profile_worker.py [--rows 50000] [--out bench/results]

Starts its own broker (bench/perf.py's, free ports), fills the demo stream (ROWS inference and
ROWS label events, 6 partitions), runs one worker (demo config) under cProfile until every
label is accounted for, stops it with SIGTERM and groups the profile's own time (tottime) by
the part of the hot path each function belongs to (a builtin such as dict.get counts for
the parts that called it). Writes OUT/worker-profile.json and
OUT/worker-profile.md (microseconds per event and shares). cProfile adds a cost to every
Python call, so Python-heavy parts look larger than they are without it: read the shares, and
the River floor in perf.json for the unprofiled cost of River's own updates.
"""
from __future__ import annotations

import argparse
import json
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import perf  # noqa: E402  (broker, demo stream, worker config: the same as the throughput runs)

# (part, test on the profile entry's file and function name), first match wins.
PARTS: tuple[tuple[str, object], ...] = (
    ("River detectors (ADWIN, Page-Hinkley)", lambda f, n: "/river/" in f),
    ("detector wrappers and standardisers (detectors/drift.py, calibration.py)",
     lambda f, n: f.endswith(("detectors/drift.py", "detectors/calibration.py", "detectors/categorical.py"))),
    ("bank: signals, rolling metrics, counters (detectors/bank.py, accuracy, tally, classification, estimate)",
     lambda f, n: f.endswith(("detectors/bank.py", "detectors/accuracy.py", "detectors/tally.py",
                              "detectors/classification.py", "detectors/estimate.py"))),
    ("slice accountant (detectors/slices.py)", lambda f, n: f.endswith("detectors/slices.py")),
    ("intake: route, join, observations (stream/pipeline.py, detectors/join.py, segments.py)",
     lambda f, n: f.endswith(("stream/pipeline.py", "detectors/join.py", "detectors/segments.py",
                              "detectors/challenger.py"))),
    ("decode and validate (stream/codec.py, events.py)", lambda f, n: f.endswith(("stream/codec.py", "stream/events.py"))),
    ("orjson (input decode, observations encode/decode)", lambda f, n: "orjson" in n),
    ("Kafka client calls (consume, produce, poll, commit, ...)", lambda f, n: "cimpl" in n or "confluent_kafka" in f),
    ("checkpoints (pickle, zlib, stream/checkpoint.py, detectors/state.py)",
     lambda f, n: "pickle" in n or "zlib" in n or f.endswith(("stream/checkpoint.py", "detectors/state.py"))),
    ("event-time ordering, alignment (stream/ordering.py, eventtime.py)",
     lambda f, n: f.endswith(("stream/ordering.py", "stream/eventtime.py"))),
    ("worker loop: stages, repartition batches, de-duplication (stream/worker.py)",
     lambda f, n: f.endswith("stream/worker.py")),
    ("metrics (stream/exporter.py, http.py, prometheus_client)",
     lambda f, n: f.endswith(("stream/exporter.py", "stream/http.py")) or "prometheus_client" in f),
    ("imports and start-up", lambda f, n: "importlib" in f or "<frozen" in f or "built-in method builtins.exec" in n),
    ("idle waits (sleep, select, locks)", lambda f, n: "sleep" in n or "acquire" in n or "select" in n),
)


def part_of(filename: str, name: str) -> str:
    for part, test in PARTS:
        if test(filename, name):
            return part
    return OTHER


OTHER = "other Python (builtins, dicts, lists, logging, ...)"


def grouped(prof: Path, events: int) -> dict:
    stats = pstats.Stats(str(prof))
    parts: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for (filename, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = name if filename == "~" else f"{Path(filename).name}:{line}({name})"
        part = part_of(filename, name)
        top.append((tt, label))
        if part == OTHER and filename == "~" and callers:
            # A builtin (dict.get, heappop, isinstance, ...) counts for the parts that called it,
            # in proportion to the time spent in it from each caller.
            spent = sum(c[2] for c in callers.values()) or 1.0
            for (cf, _, cn), c in callers.items():
                p = part_of(cf, cn)
                parts[p] = parts.get(p, 0.0) + tt * c[2] / spent
            continue
        parts[part] = parts.get(part, 0.0) + tt
    total = sum(parts.values())
    top.sort(reverse=True)
    return {
        "events": events,
        "profiled_seconds": total,
        "parts": [{"part": p, "seconds": s, "us_per_event": 1e6 * s / events, "share": s / total}
                  for p, s in sorted(parts.items(), key=lambda kv: -kv[1])],
        "top_functions": [{"function": f, "seconds": s, "us_per_event": 1e6 * s / events} for s, f in top[:25]],
    }


def markdown(r: dict) -> str:
    lines = [f"# One worker under cProfile: {r['events']:,} events of the demo stream (backlog)", "",
             f"`.venv/bin/python bench/profile_worker.py --rows {r['rows']}` on {r['date']}; own time (tottime) per "
             "part of the hot path, per event read. cProfile's per-call cost inflates Python-heavy parts; "
             "read the shares.", "",
             "| part | µs per event | share |", "|---|---|---|"]
    for p in r["parts"]:
        lines.append(f"| {p['part']} | {p['us_per_event']:.1f} | {p['share']:.1%} |")
    lines += ["", "Top functions by own time:", "", "| function | µs per event |", "|---|---|"]
    for f in r["top_functions"]:
        lines.append(f"| `{f['function']}` | {f['us_per_event']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--keep", help="also copy the raw cProfile output here (for pstats or snakeviz)")
    args = ap.parse_args()
    out = Path(args.out)
    with perf.Broker(None) as broker, tempfile.TemporaryDirectory() as tmp:
        prefix = f"prof-{uuid.uuid4().hex[:8]}"
        inf, lab = perf.demo_raw(args.rows)
        perf.fill(broker.bootstrap, prefix, 6, inf, lab)
        group = f"prof-{uuid.uuid4().hex[:8]}"
        cfg = perf.worker_config(Path(tmp) / "worker.yml", broker.bootstrap, prefix, group, 6)
        prof, port = Path(tmp) / "worker.prof", perf.free_port()
        proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "driftline.stream.cli", "run",
                                 "--config", str(cfg), "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                                stdout=open(Path(tmp) / "worker.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        url, started, done = f"http://127.0.0.1:{port}/metrics", time.time(), 0.0
        try:
            while done < args.rows and time.time() - started < 900:
                time.sleep(0.5)
                try:
                    done = perf.total(perf.scrape(url), "driftline_labeled_total", segment="__all__")
                except OSError:
                    pass
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        if done < args.rows or not prof.exists():
            raise SystemExit(f"the worker accounted for {done:.0f} of {args.rows} labels; see its log:\n"
                             + (Path(tmp) / "worker.log").read_text()[-2000:])
        if args.keep:
            Path(args.keep).write_bytes(prof.read_bytes())
        r = {"rows": args.rows, "date": time.strftime("%Y-%m-%d")} | grouped(prof, 2 * args.rows)
    (out / "worker-profile.json").write_text(json.dumps(r, indent=2))
    (out / "worker-profile.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
