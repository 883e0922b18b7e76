"""Where the compiled worker's CPU goes, by driftline function, with Linux `perf` (inclusive shares).

    .venv/bin/python bench/perf_record.py [--quick] [--out DIR] [--top 40]

Runs bench/perf.py's 1-worker demo backlog (its broker, its backlog, the compiled build a
deployment runs), attaches `perf record --call-graph dwarf` to the worker once it starts, and
prints each compiled driftline function's inclusive share of the samples (the function and all
it called), with a few C entry points beside them (the garbage collector, zlib, the Kafka
consumer). Writes OUT/worker-perf.md.

Why this and not bench/profile_worker.py: cProfile does not see compiled functions, and py-spy
shows them only as C symbols without their callers, so both profile the pure worker, a different
program. `perf`'s DWARF unwinding walks through libpython's frames and attributes every sample
to the compiled functions on its stack. Needs `perf` (Debian's linux-perf) and the rights to
attach to a process (root, or kernel.perf_event_paranoid <= 1); it says so if either is missing.
Sampling costs the worker some speed; read the shares, not the events/s it prints.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import perf  # noqa: E402  (broker, demo backlog, worker runs: the same as the throughput figures)

C_ENTRY_POINTS = ("gc_collect_main", "zlib_compress", "Consumer_consume", "Producer_produce", "Producer_poll")
_CYTHON = re.compile(r"__pyx_pw_(\w+)")


def cython_name(symbol: str) -> str | None:
    """`__pyx_pw_9driftline_6stream_8ordering_15EventTimeDriver_15_take` -> `stream.ordering.EventTimeDriver._take`
    (Cython mangles a path as length-prefixed parts, then `<index><name>` for the function)."""
    m = _CYTHON.search(symbol)
    if m is None or "driftline" not in m.group(1):
        return None
    rest, parts = m.group(1), []
    while True:
        digits = re.match(r"\d+", rest)
        if digits is None:
            break
        n, tail = int(digits.group()), rest[digits.end():]
        # A part is followed by "_" and another length-prefixed part (or the function's index).
        if len(tail) > n + 1 and tail[n] == "_" and tail[n + 1].isdigit():
            parts.append(tail[:n])
            rest = tail[n + 1:]
            continue
        parts.append(tail)  # the function: its index in the module, then its name
        break
    return ".".join(parts[1:]) if parts and parts[0] == "driftline" else None


def sample(pids: list[int], data: Path, started: list) -> None:
    """Sample the (one) worker from now until stopped: what the backlog costs it, not its start-up."""
    started.append(subprocess.Popen(
        ["perf", "record", "-F", "149", "--call-graph", "dwarf,16384", "-o", str(data), "-p", str(pids[0])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def inclusive_shares(data: Path) -> list[tuple[float, str]]:
    report = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "symbol", "--stdio",
                             "-g", "none"], capture_output=True, text=True, check=True).stdout
    shares: dict[str, float] = {}
    for line in report.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+[\d.]+%\s+\[[.k]\]\s+(\S+)", line)
        if m is None:
            continue
        share, symbol = float(m.group(1)), m.group(2)
        name = cython_name(symbol) or (symbol if symbol in C_ENTRY_POINTS else None)
        if name is not None and share > shares.get(name, 0.0):
            shares[name] = share
    return sorted(((s, n) for n, s in shares.items()), reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 20k-pair backlog (100k without)")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf_record: needs Linux perf (Debian: apt-get install linux-perf)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "worker-perf.data"
    started: list = []
    with perf.demo_backlog(types.SimpleNamespace(quick=args.quick, bootstrap=args.bootstrap)) as b:
        run = perf.worker_throughput(b.bootstrap, b.prefix, b.rows, b.partitions, 1, b.logdir, broker=b.broker,
                                     on_settled=lambda pids: sample(pids, data, started))
        for p in started:
            p.send_signal(2)
            p.wait()
    if not started or not data.exists():
        raise SystemExit("perf_record: perf did not attach to the worker (perf_event_paranoid? not root?)")
    rows = inclusive_shares(data)[: args.top]
    data.unlink()
    lines = [f"# Compiled worker, inclusive CPU shares (bench/perf_record.py, {time.strftime('%Y-%m-%d')})", "",
             f"1 worker, demo backlog of {b.rows:,} pairs, {run['events_per_s']:,.0f} events/s while sampled "
             "(perf costs some speed: read the shares).", "",
             "| share of samples (the function and what it called) | function |", "|---:|---|"]
    lines += [f"| {share:.1f}% | `{name}` |" for share, name in rows]
    (out / "worker-perf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
