"""The detector bank alone (stage 2, in process): CPU per observation applied, memory per segment,
and a fingerprint of what it produces, so a change to the bank can be measured and checked.

    .venv/bin/python bench/profile_bank.py cpu [--rows 20000] [--profile]
    .venv/bin/python bench/profile_bank.py memory [--segments 2000]
    .venv/bin/python bench/profile_bank.py fingerprint [--rows 20000] [--dump FILE]

`cpu`: the demo stream (bench/perf.py's `demo_raw`: drift at the middle row) is decoded and joined
by one `Intake` first (not timed), in backlog order (chunks of inferences, then their labels);
then only `pipeline.feed(bank, observations)` is timed, best of 3 runs on fresh banks
(process time): microseconds per event and per observation. `--profile` adds cProfile's own
time grouped by file (cProfile inflates Python calls: read the shares).

`memory`: tracemalloc growth per segment with bench/perf.py's memory procedure (demo model, one
new `band` value per segment, 3 inferences and their labels each), grouped by file and by line.
bench/perf.py --memory-only measures the RSS figure that perf.json and the README carry.

`fingerprint`: SHA-256 of every drift record (to_dict, in order) and of the /metrics text a
replay-clock exporter renders of the bank, for the demo stream; equal before and after a change
means the change kept detections, statistics, timestamps and metrics bit-identical.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import pstats
import sys
import time
import tracemalloc
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import orjson  # noqa: E402
import yaml  # noqa: E402

import perf  # noqa: E402  (the demo stream and config of the throughput runs)
from driftline.detectors.bank import DetectorBank  # noqa: E402
from driftline.stream.codec import decode_inference, decode_label  # noqa: E402
from driftline.stream.demo import DEMO_CONFIG, demo_events  # noqa: E402
from driftline.stream.pipeline import Intake, feed  # noqa: E402
from driftline.stream.settings import parse_settings  # noqa: E402

START = 1_796_000_000.0  # the demo stream's first event time
CHUNK = 2_000  # inferences, then their labels: a backlog partition's order


def observation_batches(rows: int):
    """The demo stream through one Intake: (settings, [observations of each event], events)."""
    settings = parse_settings(yaml.safe_load(DEMO_CONFIG), env={})
    with mock.patch("time.time", return_value=START):  # demo_raw's live clock, fixed: the same bytes each run
        inf, lab = perf.demo_raw(rows)
    intake = Intake(settings)
    batches = []
    for i in range(0, rows, CHUNK):
        for raw in inf[i:i + CHUNK]:
            batches.append(intake.take_inference(decode_inference(raw, 0.0), raw)[0])
        for raw in lab[i:i + CHUNK]:
            batches.append(intake.take_label(decode_label(raw, 0.0), raw)[0])
    return settings, batches, 2 * rows


def run_bank(settings, batches) -> tuple[DetectorBank, list]:
    bank = DetectorBank(settings.spec_for, settings.limits.segment_idle)
    found = []
    for obs in batches:
        hits = feed(bank, obs)
        if hits:
            found += hits
    return bank, found


def cpu(args) -> None:
    settings, batches, events = observation_batches(args.rows)
    n_obs = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(args.repeats):
        gc.collect()
        t = time.process_time()
        run_bank(settings, batches)
        best = min(best, time.process_time() - t)
    print(f"bank: {1e6 * best / events:.2f} us per event, {1e6 * best / n_obs:.2f} us per observation "
          f"({events:,} events, {n_obs:,} observations, best of {args.repeats})")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_bank(settings, batches)
        prof.disable()
        stats = pstats.Stats(prof)
        by_file: dict[str, float] = {}
        for (filename, _, name), (_, _, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            key = name if filename == "~" else "/".join(Path(filename).parts[-2:])
            by_file[key] = by_file.get(key, 0.0) + tt
        total = sum(by_file.values())
        print(f"cProfile own time, {1e6 * total / events:.1f} us per event (profiled):")
        for key, s in sorted(by_file.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  {s / total:6.1%}  {1e6 * s / events:6.2f} us  {key}")
        stats.sort_stats("tottime").print_stats(18)


def memory(args) -> None:
    n = args.segments
    cfg = yaml.safe_load(DEMO_CONFIG)
    cfg["models"]["shuttle"]["max_segments"] = n
    settings = parse_settings(cfg, env={})
    inf, _, _ = demo_events(rows_limit=600, drift_row=10**9)
    intake, bank = Intake(settings), DetectorBank(settings.spec_for)
    gc.collect()
    tracemalloc.start(4)
    s0 = tracemalloc.take_snapshot()
    for s in range(n):
        for j in range(3):  # as perf.memory_per_segment
            ev = dict(inf[(s * 3 + j) % len(inf)])
            ev["prediction_id"] = f"{s}-{j}"
            ev["segment"] = {"band": f"b{s}"}
            feed(bank, intake.take_inference(decode_inference(orjson.dumps(ev), 0.0), b"")[0])
            label = {"prediction_id": ev["prediction_id"], "label": 0, "timestamp": ev["timestamp"] + 1}
            feed(bank, intake.take_label(decode_label(orjson.dumps(label), 0.0), b"")[0])
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    files = s1.compare_to(s0, "filename")
    total = sum(x.size_diff for x in files)
    print(f"tracemalloc: {total / n / 1024:.2f} KiB per segment ({n:,} segments; the intake's share included)")
    for st in files[:10]:
        print(f"  {st.size_diff / n / 1024:6.2f} KiB  {'/'.join(Path(st.traceback[0].filename).parts[-2:])}")
    print("by line:")
    for st in s1.compare_to(s0, "lineno")[:args.lines]:
        fr = st.traceback[0]
        print(f"  {st.size_diff / n / 1024:6.2f} KiB  {'/'.join(Path(fr.filename).parts[-2:])}:{fr.lineno}")


def fingerprint(args) -> None:
    from driftline.stream.exporter import DriftlineMetrics

    settings, batches, events = observation_batches(args.rows)
    bank, found = run_bank(settings, batches)
    drift = hashlib.sha256(b"\n".join(orjson.dumps(r.to_dict(), option=orjson.OPT_SORT_KEYS) for r in found))
    now = bank.watermark
    text = DriftlineMetrics(settings, banks=lambda: (bank,), clock=lambda: now).render()
    restored = DetectorBank.restore(bank.snapshot(), settings.spec_for)
    again = DriftlineMetrics(settings, banks=lambda: (restored,), clock=lambda: now).render()
    print(f"{len(found)} drift records: {drift.hexdigest()[:16]}")
    print(f"metrics ({len(text.splitlines())} lines): {hashlib.sha256(text).hexdigest()[:16]}")
    print(f"metrics after snapshot + restore equal: {again == text}")
    if args.dump:
        Path(args.dump).write_bytes(orjson.dumps([r.to_dict() for r in found], option=orjson.OPT_INDENT_2) + b"\n" + text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--rows", type=int, default=20_000)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--profile", action="store_true")
    m = sub.add_parser("memory")
    m.add_argument("--segments", type=int, default=2_000)
    m.add_argument("--lines", type=int, default=25)
    f = sub.add_parser("fingerprint")
    f.add_argument("--rows", type=int, default=20_000)
    f.add_argument("--dump", help="also write the drift records and the /metrics text to this file (to diff)")
    args = ap.parse_args()
    {"cpu": cpu, "memory": memory, "fingerprint": fingerprint}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
