"""CPU per event of the worker's hot path up to the bank, in process: the worker's own code, no broker.

    .venv/bin/python bench/profile_hot_path.py [--rows 20000] [--repeats 3] [--profile] [--out DIR]
    .venv/bin/python bench/profile_hot_path.py --against main   # A/B: this tree and main's, in one process

One `Worker` (demo config, 1 input partition, 6 observations partitions) runs its real stage 1
(`Worker._process` on inference and label messages: decode, intake, join, routing, wire records,
one observations message per source and destination) and its real stage 2 (`_process` on the
observations messages it produced: format check, JSON decode, de-duplication, the ordering
buffer, `apply_observation`, `observe`, the bank), with heartbeats after each batch as its loop sends
them. Kafka is left out: what the worker would produce is captured in memory and handed back as
messages (a small class with the confluent-kafka `Message` methods the worker calls). Batches
of `worker.batch` inference messages, then as many label messages (labels trail their
inferences by 0.5 s of event time, as in bench/perf.py's backlog).

Figures (CPU seconds of this thread, best of `--repeats`, per event read = inference + label messages):
- `total_us_per_event`: both stages, the bank included;
- `bank_us_per_event`: the same bank calls (every `observe_*` / `admit` call the bank received,
  recorded with its arguments) replayed on a fresh bank: the bank's own share;
- `path_us_per_event`: the difference, what this script is for: decode -> intake -> wire ->
  stage-2 decode -> dispatch, everything but the bank;
- `stubbed_us_per_event`: the same pass with the bank's entry points stubbed out (they return
  at once): the path alone, measured directly (less noisy than a difference of two figures).

A backlog's banks hold observations for many checkpoint rounds (their watermark follows the
slowest input partition, as heard at its commits), which this one-partition pass does not by
itself: `--hold S` makes every progress heartbeat say S seconds of event time less than it would
(a slower sibling partition holding the banks' watermark back), and `--checkpoint-every N`
snapshots every bank partition after every N batches, as a checkpoint round does (in the timed
passes: the worker pays it); not with `--local` (heartbeats in memory). The figures then carry
`held_mean` (observations held at a round, on average).

`--profile` adds one cProfile pass, grouped like bench/profile_worker.py (cProfile inflates
Python-heavy parts: read the shares). Writes OUT/hot-path.json (default bench/results).
A/B (`--against REV`): the git revision's stream/ and detectors/ are copied to a temporary
package (`driftline_base`, imports renamed) and both trees run in this one process, their passes
alternating, so both meet the same load (the machine is shared and noisy); the results carry
each tree's figures and the ratios this tree / REV.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import gc
import importlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

import yaml  # noqa: E402

import perf  # noqa: E402  (the demo stream)
import profile_worker  # noqa: E402  (the grouping of profile entries by part)
from driftline.stream.demo import DEMO_CONFIG  # noqa: E402
from tests.kafka_message import Message  # noqa: E402  (what the worker reads of a consumed message)

OBS_PARTITIONS = 6
BANK_CALLS = ("observe_", "admit", "apply")  # what counts as the bank's own work


class NoClient:
    """Stands in for the worker's Kafka clients: made, never used (what it produces is captured)."""

    def __init__(self, *args, **kwargs):
        pass

    def close(self, *args):
        pass


class Tree:
    """One tree's worker: its modules, and settings parsed by its own settings module."""

    def __init__(self, package: str = "driftline", local: bool = False):
        self.package = package
        self.local = local  # stage 1 -> stage 2 in memory (stream/repartition.py), as one exactly-once worker
        self.worker = importlib.import_module(f"{package}.stream.worker")
        checkpoint = importlib.import_module(f"{package}.stream.checkpoint")
        ordering = importlib.import_module(f"{package}.stream.ordering")
        self.format_headers = ordering.FORMAT_HEADERS
        self.release_per_step = getattr(ordering, "RELEASE_PER_STEP", None)
        # No broker here: the worker's constructor makes no clients (their threads would retry
        # a connection and spend CPU this script counts).
        self.worker.Consumer = self.worker.Producer = checkpoint.Producer = NoClient
        parse_settings = importlib.import_module(f"{package}.stream.settings").parse_settings
        data = yaml.safe_load(DEMO_CONFIG)
        # Nothing listens there: the clients are made, never used (produce is captured).
        data["kafka"] = {"bootstrap": f"127.0.0.1:{perf.free_port()}", "partitions": 1, "group_id": "hot-path"}
        data["worker"] = {"exactly_once": False}
        self.settings = parse_settings(data, env={})
        self.path = str(Path(self.worker.__file__).resolve().parents[1]) + (" (in memory)" if local else "")


def tree_at(rev: str) -> Tree:
    """The worker of git revision `rev`, importable next to this tree's (package driftline_base)."""
    base = Path(tempfile.mkdtemp(prefix="hot-path-"))
    blob = subprocess.run(["git", "archive", rev, "src/driftline", "stream", "detectors"], cwd=REPO, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(base / "tree")
    pkg = base / "driftline_base"
    for src, dest in ((base / "tree/src/driftline", pkg), (base / "tree/stream", pkg / "stream"),
                      (base / "tree/detectors", pkg / "detectors")):
        for f in src.rglob("*.py"):
            out = dest / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            text = f.read_text()
            for sub in ("stream", "detectors"):
                text = text.replace(f"driftline.{sub}", f"driftline_base.{sub}")
            out.write_text(text)
    sys.path.insert(0, str(base))
    tree = Tree("driftline_base")
    tree.path = f"{rev} ({subprocess.run(['git', 'rev-parse', '--short', rev], cwd=REPO, capture_output=True, text=True).stdout.strip()})"
    return tree


def record_bank_calls(bank, calls: list) -> None:
    """Wrap the bank's entry points on this instance: each call is appended as (name, args, kwargs)."""
    for name in dir(type(bank)):
        if not name.startswith(BANK_CALLS) or not callable(getattr(type(bank), name)):
            continue
        method = getattr(bank, name)

        def wrapped(*args, _m=method, _n=name, **kwargs):
            calls.append((_n, args, kwargs))
            return _m(*args, **kwargs)
        setattr(bank, name, wrapped)


def stub_bank_calls(bank) -> None:
    """Make the bank's entry points do nothing (no detections, every segment admitted as it is):
    what is left is the path to the bank alone, with less noise than total minus bank."""
    for name in dir(type(bank)):
        if name.startswith(BANK_CALLS) and callable(getattr(type(bank), name)):
            setattr(bank, name, (lambda model, segment, inference: segment) if name == "admit" else
                    (lambda *args, **kwargs: []))


def fresh_partition(worker, stage: str, now: float):
    """A fresh partition state of `stage` from `worker`'s tree (stream/restorer.py; trees from
    before it made them in the worker itself)."""
    restorer = getattr(worker, "restorer", None)
    return restorer.fresh_partition(stage, now) if restorer is not None else worker._fresh_partition(stage, now)


class Backlog(NamedTuple):
    """What a backlog's banks live through beyond the events (--hold, --checkpoint-every)."""

    hold: float = 0.0  # seconds of event time every heartbeat's progress says less
    checkpoint_every: int = 0  # batches between two snapshots of every bank partition (0: none)


class Run:
    """One worker fed the demo backlog in process."""

    def __init__(self, tree: Tree, inf: list[bytes], lab: list[bytes], record: list | None = None,
                 stub: bool = False, backlog: Backlog = Backlog()):
        self.tree = tree
        self.backlog = backlog
        self.held_at_rounds: list[int] = []
        self.worker = w = tree.worker.Worker(tree.settings, OBS_PARTITIONS, source_partitions=1)
        self.out: list = []
        w._produce = lambda topic, key, value, partition=-1, headers=None, timestamp=0: self.out.append(
            (topic, key, value, partition, headers))
        now = w.clock()
        w.intakes[0] = fresh_partition(w, "intake", now)
        for q in range(OBS_PARTITIONS):
            w.banks[q] = fresh_partition(w, "bank", now)
            if record is not None:
                record_bank_calls(w.banks[q].bank, record)
            if stub:
                stub_bank_calls(w.banks[q].bank)
        if tree.local:
            # As an exactly-once worker owning both ends once every pair's marker was read (the
            # handover itself needs a broker: tests/integration cover it). The messages are still
            # written (and handed back here); the banks skip them.
            rp = w.repartition
            rp.enabled = rp.watching = True
            for q in range(OBS_PARTITIONS):
                rp._pair(0, q).state = "local"
        t = w.topics
        ts = [int(perf.orjson.loads(r)["timestamp"] * 1000) for r in inf]
        keys = [perf.orjson.loads(r)["prediction_id"].encode() for r in inf]
        self.inf = [Message(t.inferences, 0, i, keys[i], r, ts[i]) for i, r in enumerate(inf)]
        self.lab = [Message(t.labels, 0, i, keys[i], r, ts[i] + 500) for i, r in enumerate(lab)]
        self.obs_offsets = [0] * OBS_PARTITIONS

    def _feed_back(self, sent_ms: int | None = None) -> None:
        """Hand what the worker produced to the observations topic back to its stage 2, stamped
        with the wall clock as the broker would (or `sent_ms`)."""
        w = self.worker
        obs_topic = w.topics.observations
        sent_ms = int(time.time() * 1000) if sent_ms is None else sent_ms
        msgs = []
        hold = self.backlog.hold
        for topic, key, value, partition, headers in self.out:
            if topic != obs_topic:
                continue  # dead letters, drift events: nothing reads them here
            if hold and value.startswith(b'["",[]'):  # a progress heartbeat: a slower sibling's
                beat = perf.orjson.loads(value)
                if beat[3] is not None:
                    beat[3] -= hold
                    value = perf.orjson.dumps(beat)
            off = self.obs_offsets[partition]
            self.obs_offsets[partition] = off + 1
            msgs.append(Message(obs_topic, partition, off, key, value, sent_ms, headers))
        self.out.clear()
        if msgs:
            w._process(msgs)

    def _step(self) -> None:
        """What the loop's tick renews between batches: the release allowance (trees with one)."""
        et = self.worker.event_time
        if hasattr(et, "_allowance"):
            et._allowance = self.tree.release_per_step

    def go(self) -> None:
        w = self.worker
        et = w.event_time
        batch = w.settings.worker.batch
        every = self.backlog.checkpoint_every
        for n, i in enumerate(range(0, len(self.inf), batch), 1):
            for msgs in (self.inf[i:i + batch], self.lab[i:i + batch]):
                w._process(msgs)
                self._feed_back()
            self._step()
            et._heartbeat(et.clock())  # as the loop's tick, between batches
            self._feed_back()
            if every and n % every == 0:  # a checkpoint round's snapshots of the banks
                for bp in w.banks.values():
                    bp.snapshot()
                self.held_at_rounds.append(sum(bp.buffer.held for bp in w.banks.values()))
        # The end: the source says it is idle, the banks release everything they hold. Its word
        # is dated an hour on: a bank trusts an idle source only for observations sent at least
        # worker.idle_timeout before the heartbeat that said it (WatermarkBuffer's doc).
        self.out.extend((w.topics.observations, None, perf.orjson.dumps(["", [], 0, None, True]), q,
                         self.tree.format_headers) for q in range(OBS_PARTITIONS))
        self._feed_back(int((time.time() + 3600) * 1000))
        held = sum(bp.buffer.held for bp in w.banks.values())
        while held and hasattr(et, "_allowance"):  # released over further loop steps
            self._step()
            et._release(et.clock())
            left, held = held, sum(bp.buffer.held for bp in w.banks.values())
            if held == left:
                break
        if held:
            raise RuntimeError(f"{held} observations still held at the end")


def replay_bank(worker, calls: list) -> float:
    """CPU seconds of the recorded bank calls on one fresh bank (one per observations partition
    is not needed: the calls name their segments, and each attribute's segments are one bank's)."""
    bank = fresh_partition(worker, "bank", worker.clock()).bank
    t0 = time.thread_time()
    for name, args, kwargs in calls:
        getattr(bank, name)(*args, **kwargs)
    return time.thread_time() - t0


def totals(w) -> dict:
    """What the banks counted: the same for every tree (the A/B must compare equal work)."""
    tally = {}
    for bp in w.banks.values():
        for (model, kind, outcome), n in bp.bank.tally.events.items():
            tally[f"{kind}/{outcome}"] = tally.get(f"{kind}/{outcome}", 0) + n
    return dict(sorted(tally.items()))


def measure(tree: Tree, inf: list[bytes], lab: list[bytes], best: dict, backlog: Backlog = Backlog()) -> None:
    """One round of the three passes on `tree`, keeping the best (least) CPU time of each."""
    # The timed pass; then the same pass again recording the bank's calls, and their replay on a
    # fresh bank, timed; then the pass with the bank stubbed. The data of the run (its messages)
    # is frozen out of the garbage collector's walks: a worker holds one batch, not the backlog.
    run = Run(tree, inf, lab, backlog=backlog)
    gc.collect()
    gc.freeze()
    t0 = time.thread_time()
    run.go()
    total = time.thread_time() - t0
    best["counted"] = totals(run.worker)
    best["held_mean"] = sum(run.held_at_rounds) / len(run.held_at_rounds) if run.held_at_rounds else 0.0
    del run
    gc.unfreeze()
    calls: list = []
    Run(tree, inf, lab, record=calls, backlog=backlog).go()
    gc.collect()
    bank_s = replay_bank(Run(tree, [], []).worker, calls)
    best["bank_calls"] = len(calls)
    del calls
    best["total"] = min(best.get("total", float("inf")), total)
    best["bank"] = min(best.get("bank", float("inf")), bank_s)
    run = Run(tree, inf, lab, stub=True, backlog=backlog)
    gc.collect()
    gc.freeze()
    t0 = time.thread_time()
    run.go()
    best["stubbed"] = min(best.get("stubbed", float("inf")), time.thread_time() - t0)
    del run
    gc.unfreeze()


def figures(tree: Tree, best: dict, events: int) -> dict:
    us = 1e6 / events
    return {"tree": tree.path, "total_us_per_event": best["total"] * us, "bank_us_per_event": best["bank"] * us,
            "path_us_per_event": (best["total"] - best["bank"]) * us, "stubbed_us_per_event": best["stubbed"] * us,
            "bank_calls_per_event": best["bank_calls"] / events, "counted": best["counted"],
            "held_mean": best["held_mean"]}


def line(r: dict) -> str:
    return (f"{r['tree']}: total {r['total_us_per_event']:.2f} us/event, bank {r['bank_us_per_event']:.2f}, "
            f"path (total - bank) {r['path_us_per_event']:.2f}, path with the bank stubbed "
            f"{r['stubbed_us_per_event']:.2f}; {r['bank_calls_per_event']:.2f} bank calls/event"
            + (f"; {r['held_mean']:.0f} observations held at a round" if r["held_mean"] else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--against", metavar="REV", help="also run git revision REV's worker, alternating (A/B)")
    ap.add_argument("--profile", action="store_true", help="add one cProfile pass, grouped by part")
    ap.add_argument("--local", action="store_true",
                    help="this tree hands observations to its banks in memory (stream/repartition.py), "
                         "as an exactly-once worker owning both ends")
    ap.add_argument("--hold", type=float, default=0.0, metavar="S",
                    help="every heartbeat says S seconds of event time less (a slower sibling partition)")
    ap.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                    help="snapshot every bank partition after every N batches (a checkpoint round)")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    if args.local and (args.hold or args.checkpoint_every):
        ap.error("--hold and --checkpoint-every need the topic path (not --local)")
    backlog = Backlog(args.hold, args.checkpoint_every)
    trees = [Tree(local=args.local)]
    if args.against:
        trees.append(tree_at(args.against))
    inf, lab = perf.demo_raw(args.rows)
    events = 2 * args.rows
    bests = [{} for _ in trees]
    for k in range(args.repeats):
        order = list(zip(trees, bests))
        for tree, best in (order if k % 2 == 0 else order[::-1]):  # neither tree always goes first
            measure(tree, inf, lab, best, backlog)
    result = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "rows": args.rows, "events": events, "repeats": args.repeats, "hold": args.hold,
              "checkpoint_every": args.checkpoint_every,
              **figures(trees[0], bests[0], events)}
    print(line(result))
    if args.against:
        base = result["against"] = figures(trees[1], bests[1], events)
        print(line(base))
        if base["counted"] != result["counted"]:
            raise RuntimeError(f"the trees counted different events: {result['counted']} vs {base['counted']}")
        result["ratios"] = {k: result[k] / base[k] for k in ("total_us_per_event", "path_us_per_event",
                                                             "stubbed_us_per_event")}
        print("this tree / " + args.against + ": " + ", ".join(f"{k.split('_us')[0]} {v:.2f}x"
                                                                  for k, v in result["ratios"].items()))
    if args.profile:
        run = Run(trees[0], inf, lab, backlog=backlog)
        prof = cProfile.Profile()
        gc.collect()
        gc.freeze()
        prof.enable()
        run.go()
        prof.disable()
        with tempfile.NamedTemporaryFile(suffix=".prof") as f:
            prof.dump_stats(f.name)
            result["profile"] = profile_worker.grouped(Path(f.name), events)
        for p in result["profile"]["parts"][:12]:
            print(f"  {p['us_per_event']:7.2f} us  {p['share']:6.1%}  {p['part']}")
        for f in result["profile"]["top_functions"][:25]:
            print(f"  {f['us_per_event']:7.2f} us  {f['function']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hot-path.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
