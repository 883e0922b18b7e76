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

The worker runs the pure-Python hot modules (DRIFTLINE_PURE=1, docs/compiled.md): cProfile
does not see the functions of the compiled build, and py-spy shows them as C symbols, not
under their files. `--compiled` profiles the compiled build anyway (what a deployment runs).
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import re
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
    ("River detectors (ADWIN, Page-Hinkley)", lambda f, n: "/river/" in f or f.startswith("river/") or "_river_rust" in f),
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
GC = "garbage collector (py-spy only: cProfile cannot see it)"


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


def sampled(raw: Path, events: int) -> dict:
    """py-spy's raw stacks ("frame;frame;... count", outermost first) of the worker's loop thread
    (and of a scrape rendering /metrics: the bench scrapes twice a second), each sample counted
    for the innermost frame that belongs to a part (a frame is "function (file:line)"; native
    frames have no Python file and are matched by name); the loop waiting in consume() counts as
    Kafka client time, librdkafka's own threads are not counted. Same parts as the cProfile
    grouping, plus the garbage collector."""
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    frame_re = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        if "run (stream/worker.py" not in stack and (
                "stream/exporter.py" not in stack or "PyThread_acquire_lock" in stack):
            continue  # librdkafka's threads, an HTTP thread idle or waiting for the worker's lock
        total += n
        frames = stack.split(";")
        part = None
        for frame in reversed(frames):
            m = frame_re.match(frame)
            name, file = (m.group("name"), m.group("file")) if m else (frame, "")
            p = GC if name.startswith(("gc_collect", "collect_with_callback")) else part_of(file, name)
            if p != OTHER:
                part = p
                break
        if part is None:
            part = OTHER
        parts[part] = parts.get(part, 0) + n
        leaf = frames[-1][:120]
        leaves[leaf] = leaves.get(leaf, 0) + n
    hz = 200.0  # --rate: samples per second per thread
    return {
        "events": events, "samples": total,
        "parts": [{"part": p, "seconds": c / hz, "us_per_event": 1e6 * c / hz / events, "share": c / total}
                  for p, c in sorted(parts.items(), key=lambda kv: -kv[1])],
        "top_functions": [{"function": f, "seconds": c / hz, "us_per_event": 1e6 * c / hz / events}
                          for f, c in sorted(leaves.items(), key=lambda kv: -kv[1])[:25]],
    }


def markdown(r: dict) -> str:
    if r.get("sampler") == "py-spy":
        head = [f"# One worker sampled by py-spy: {r['events']:,} events of the demo stream (backlog)", "",
                f"`.venv/bin/python bench/profile_worker.py --rows {r['rows']} --sampler py-spy` on {r['date']}; "
                f"{r['samples']:,} samples of the worker's loop thread at 200 Hz, each counted for its innermost "
                "frame of a part. Sampling pauses the worker, so read the shares, not the microseconds.", ""]
    else:
        head = [f"# One worker under cProfile: {r['events']:,} events of the demo stream (backlog)", "",
                f"`.venv/bin/python bench/profile_worker.py --rows {r['rows']}` on {r['date']}; own time (tottime) per "
                "part of the hot path, per event read. cProfile's per-call cost inflates Python-heavy parts; "
                "read the shares.", ""]
    lines = head + [
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
    ap.add_argument("--sampler", choices=("cprofile", "py-spy"), default="cprofile",
                    help="py-spy: sample the unmodified worker (no per-call cost; the `bench` extra installs it)")
    ap.add_argument("--idle", action="store_true",
                    help="py-spy only: also sample the loop thread while it waits, without pausing the worker "
                         "(--idle --nonblocking): where a backlog worker's wall time goes, not only its CPU")
    ap.add_argument("--compiled", action="store_true",
                    help="profile the compiled hot modules (default: pure, which the profilers can read)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DRIFTLINE_PURE": "" if args.compiled else "1"}
    with perf.Broker(None) as broker, tempfile.TemporaryDirectory() as tmp:
        prefix = f"prof-{uuid.uuid4().hex[:8]}"
        inf, lab = perf.demo_raw(args.rows)
        perf.fill(broker.bootstrap, prefix, 6, inf, lab)
        group = f"prof-{uuid.uuid4().hex[:8]}"
        cfg = perf.worker_config(Path(tmp) / "worker.yml", broker.bootstrap, prefix, group, 6)
        prof, port = Path(tmp) / "worker.prof", perf.free_port()
        worker = ["-m", "driftline.stream.cli", "run", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"]
        profiler = ["-m", "cProfile", "-o", str(prof)] if args.sampler == "cprofile" else []
        proc = subprocess.Popen([sys.executable, *profiler, *worker], cwd=REPO, env=env,
                                stdout=open(Path(tmp) / "worker.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        spy = None
        if args.sampler == "py-spy":
            # Samples the running worker from outside (it pauses it ~200 times a second, briefly), native
            # frames included, so C time (orjson, librdkafka calls, zlib) shows under its own name.
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proc.pid),
                                    "--format", "raw", "--rate", "200", "-o", str(prof),
                                    *(["--idle", "--nonblocking"] if args.idle else ["--native"])],
                                   stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "py-spy.log", "wb"))
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
            if spy is not None:
                spy.wait(60)  # py-spy writes its samples when the process it samples has exited
        if done < args.rows or not prof.exists():
            raise SystemExit(f"the worker accounted for {done:.0f} of {args.rows} labels; see its log:\n"
                             + (Path(tmp) / "worker.log").read_text()[-2000:])
        if args.keep:
            Path(args.keep).write_bytes(prof.read_bytes())
        report = grouped(prof, 2 * args.rows) if args.sampler == "cprofile" else sampled(prof, 2 * args.rows)
        r = {"rows": args.rows, "date": time.strftime("%Y-%m-%d"), "sampler": args.sampler} | report
    name = "worker-profile" if args.sampler == "cprofile" else "worker-samples"
    (out / f"{name}.json").write_text(json.dumps(r, indent=2))
    (out / f"{name}.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
