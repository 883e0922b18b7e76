"""Event-time alignment across partitions: pure objects, fed positions, event times and a clock.

Two stages of the worker need the same care a stream processor gives event time (Kafka
Streams' KIP-353, Flink's per-partition watermarks, idleness and source alignment):

- `SourceAlignment` (stage 1, one per input partition p): decides which of p's two topics to
  pause so that they are read in event-time order within `align_window`, and which to pause so
  that p stays within `max_skew` of the fleet's slowest input partition; says which topics are
  idle (caught up for `idle_timeout`), and what event time p has reached (its *progress*: a lower
  bound on the ordering key of every observation p will still emit).
- `WatermarkBuffer` (stage 2, one per observations partition q): holds the observations that
  reach q and releases them in ordering-key order once every input partition that feeds q has
  progressed past them (the *watermark*: the minimum progress over the sources that are not
  idle); what arrives behind the watermark is released at once and counted late.

The ordering key of an observation is the position `driftline replay` gives it: the event time
of the event that made it, inferences before labels at the same instant. An outcome is made by
whichever of its prediction and label comes later, so its key is (label time, 1) (a label that
predates its prediction, which the join holds, is the rare exception: it is keyed by its own
time and counted late if the watermark passed it). Fates and folds carry no event time: they
are counters, applied on arrival.

docs/guarantees.md ("Event time") states the bounds and what they give each number.
"""
from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import math
import zlib
from collections import deque
from typing import Collection, Iterable, Iterator, NamedTuple

import orjson

from driftline.detectors.observations import (
    INFERENCE,
    LLM,
    OUTCOME,
    PAIR,
    WIRE_INDEX,
    WIRE_KIND,
    WIRE_OFFSET,
    WIRE_TIME,
    Observation,
    from_wire,
)
from driftline.detectors.packs import REPACK
from driftline.detectors.state import Attached

INFERENCES, LABELS = "inference", "label"
# A source that sent nothing (no data, no heartbeat) for this long is left out of the
# watermark: its worker is gone and the group has not yet given its partition to another.
SILENT_AFTER = 30.0


def ordering_key(rec: list) -> tuple[float, int] | None:
    """Where `driftline replay` applies the observation of a wire record (detectors/observations.py):
    (event time, 0 inference / 1 label), or None for counters (fates, folds) whose order does not
    matter. Read from the record's kind and time positions, without decoding it."""
    kind = rec[WIRE_KIND]
    if kind == INFERENCE or kind == LLM:  # an LLM call's record follows its inference's
        return (rec[WIRE_TIME], 0)
    if kind == OUTCOME or kind == PAIR:  # a pair comes with the label that completed it
        return (rec[WIRE_TIME], 1)
    return None


class SourceAlignment:
    """Stage-1 read order of one input partition: which topic to pause, and its progress.

    `observe(now, caught_up)` is fed, for each topic, whether everything published to it has
    been read; the event times read so far come from the intake (`inference_time`,
    `label_time`), passed as `times`. `paused(...)` returns the set of topics to pause.
    """

    def __init__(self, align_window: float, max_skew: float, idle_timeout: float):
        self.align_window = align_window
        self.max_skew = max_skew
        self.idle_timeout = idle_timeout
        self._caught_up_since: dict[str, float | None] = {INFERENCES: None, LABELS: None}
        self._caught_up: dict[str, bool] = {INFERENCES: False, LABELS: False}
        self._positions: dict[str, int | None] = {}
        self.pausing: dict[str, str] = {}  # topic kind -> reason ("align" or "skew")

    def observe(self, now: float, caught_up: dict[str, bool], positions: dict[str, int | None]) -> None:
        """Whether each topic has nothing unread, and its read position: a topic is caught up
        *since* the last time it read something, so a sparse topic never looks idle. A topic that
        was idle and read again (it *woke*: a burst was published) makes the other topic's
        idleness start over: its "caught up" rests on a cached high watermark that may not show
        yet what was published with the burst (WatermarkBuffer does the same across sources)."""
        woke = []
        for kind, up in caught_up.items():
            was_idle = self.idle(kind, now)
            self._caught_up[kind] = up
            moved = positions.get(kind) != self._positions.get(kind)
            self._positions[kind] = positions.get(kind)
            if moved and was_idle:
                woke.append(kind)
            if not up:
                self._caught_up_since[kind] = None
            elif self._caught_up_since[kind] is None or moved:
                self._caught_up_since[kind] = now
        for kind in woke:
            other = LABELS if kind == INFERENCES else INFERENCES
            if self._caught_up_since[other] is not None:
                self._caught_up_since[other] = now

    def idle(self, kind: str, now: float) -> bool:
        """Caught up for at least `idle_timeout`: its progress no longer holds anything back."""
        since = self._caught_up_since[kind]
        return since is not None and now - since >= self.idle_timeout

    def progress(self, times: dict[str, float | None], now: float) -> tuple[float | None, bool]:
        """(progress, idle): the least event time over the topics that are not idle (None while
        a topic that is not idle has read nothing); idle when both topics are."""
        live = [times[k] for k in (INFERENCES, LABELS) if not self.idle(k, now)]
        if not live:
            known = [t for t in times.values() if t is not None]
            return (max(known) if known else None), True
        if any(t is None for t in live):
            return None, False
        return min(live), False

    def decide(self, times: dict[str, float | None], now: float, fleet_min: float | None) -> dict[str, str]:
        """Topics to pause, with the reason: "align" (ahead of the partition's other topic, which
        has unread events) or "skew" (the partition is ahead of the fleet's slowest)."""
        self.pausing = self._decide(times, now, fleet_min)
        return self.pausing

    def _decide(self, times: dict[str, float | None], now: float, fleet_min: float | None) -> dict[str, str]:
        pausing: dict[str, str] = {}
        progress, idle = self.progress(times, now)
        was_skew = any(r == "skew" for r in self.pausing.values())
        if fleet_min is not None and progress is not None and not idle:
            # Hysteresis: once paused, wait until the fleet is within half the bound, so the
            # pause/resume cycle moves half a bound of event time, not one message.
            limit = fleet_min + (self.max_skew / 2 if was_skew else self.max_skew)
            if progress > limit:
                return {INFERENCES: "skew", LABELS: "skew"}
        for kind, other in ((INFERENCES, LABELS), (LABELS, INFERENCES)):
            mine, theirs = times[kind], times[other]
            if self._caught_up[other]:
                continue  # nothing to wait for on the other topic (KIP-353 would wait idle.ms)
            if mine is None:
                continue
            behind = -math.inf if theirs is None else theirs
            # Paused until the other topic has caught up with this one; then read again.
            limit = behind + (0.0 if self.pausing.get(kind) == "align" else self.align_window)
            if mine > limit:
                pausing[kind] = "align"
        if len(pausing) == 2:  # cannot both be ahead; never pause both for alignment
            pausing.clear()
        return pausing


class HeldObservation(NamedTuple):
    """One observation that reached a bank, decoded, with where it came from: what the worker
    applies (`held_observation` of a released entry, or handed back at once by `add_records`)."""

    time: float  # ordering key: the event time (fates and folds, applied at once: -inf)
    order: int  # ... then 0 for an inference (and its LLM call), 1 for a label's outcome or pair
    partition: int | None  # the input partition that made it (None: a format-1 message)
    offset: int  # where its source made it (WIRE_OFFSET, WIRE_INDEX): de-duplication, ids
    index: int
    seq: int  # arrival order in this buffer
    src: str  # the source: intake epoch + topic code
    observation: Observation
    size: int  # its share of the message's bytes on the wire (for max_held_bytes)


_held = tuple.__new__  # a HeldObservation from its fields, without the NamedTuple's Python __new__
# The held entries are plain tuples with HeldObservation's layout and the wire record's
# JSON bytes in place of the observation: a plain tuple of atomic values is invisible to the
# garbage collector (untracked at its first collection), while decoded records (NamedTuples,
# lists) are walked by every full collection, which walks the whole bank too. Measured
# (in process, 4,000-8,000 records held): holding decoded records was 18-40% slower than
# encoding them again, although 27% faster with the collector off. Released entries are
# decoded one at a time as they are applied, for the same reason.
_RECORD, _SIZE = HeldObservation._fields.index("observation"), HeldObservation._fields.index("size")


def compact_json(value) -> bytes:
    """`value` as JSON, in a bytes object of its own size. orjson.dumps returns its working buffer,
    4 KiB whatever the length, and a held record lives for as long as the bank holds it: a
    backlog's ~300k held records of ~120 bytes took 1.1 GB of the worker's memory that way, and
    the kernel's first touch of those pages a third of its CPU (Linux perf: `clear_page_erms` under
    malloc's page faults; bench/perf.py's workers report `peak_rss_mib` and `page_faults`). The copy
    is a slice that drops the newline orjson was asked to append (the JSON, exactly): ~0.1 us,
    against ~0.2 us for a copy through a memoryview."""
    return orjson.dumps(value, option=_NEWLINE)[:-1]


_NEWLINE = orjson.OPT_APPEND_NEWLINE


def held_observation(entry: tuple) -> HeldObservation:
    """A released held entry, decoded."""
    return _held(HeldObservation, (*entry[:_RECORD], from_wire(orjson.loads(entry[_RECORD])), entry[_SIZE]))


HELD_LAYOUT = 3  # how a checkpoint holds the buffer's entries (from_state reads layouts 1 to 3)


class _Pack:
    """Held entries encoded together: those with a seq in [first, last] that were held when
    packed (`count`); `gone`: the seqs of those released since."""

    __slots__ = ("first", "last", "count", "blob", "gone")

    def __init__(self, entries: Collection[tuple], first: int, last: int):
        self.first, self.last, self.count = first, last, len(entries)
        # Their keys as one JSON array, then their records' JSON, newline-separated (orjson
        # never writes a newline inside a value), compressed once here, and attached to the
        # snapshot as they are (detectors/state.py, format 3), not compressed again each round.
        self.blob = Attached(zlib.compress(b"\n".join([orjson.dumps([e[:7] + (e[8], e[9]) for e in entries]),
                                              *[e[7] for e in entries]]), 1))
        self.gone: list[int] = []


class HeldPacks:
    """A WatermarkBuffer's held entries as its checkpoints write them (layout 3), kept between
    rounds so that each entry is encoded once, not at every round while it is held.

    A backlog's bank holds its entries for many rounds (its watermark follows the slowest of
    its sources, heard at their commits): packing every held entry at every round cost more
    than applying it (bench/results/worker-samples.md, `to_state`). Here a round packs only
    what arrived since the previous one, and writes each older pack as it is, with the seqs of
    its entries released since (seqs are unique in a buffer and travel with its state). A pack
    with none left is dropped; what is held is packed again as one when detectors/packs.py's
    rule says (more released entries carried than held ones, or too many packs).
    """

    __slots__ = ("packs", "packed_to", "gone")

    def __init__(self) -> None:
        self.packs: list[_Pack] = []  # ascending, their seq ranges do not overlap
        self.packed_to = 0  # every entry with a seq up to this one is in a pack, or was released
        self.gone: list[int] = []  # seqs of packed entries released since the last round

    def released(self, entries: list[tuple]) -> None:
        """Entries the buffer let go (called with every release's output)."""
        to = self.packed_to
        if to and entries:
            self.gone.extend([e[5] for e in entries if e[5] <= to])

    def state(self, held: Collection[tuple], seq: int) -> list:
        """[[blob, released seqs], ...] for the `held` entries (the buffer's queue, read as it is:
        no copy of a backlog's ~250k entries per round; `seq`: its last)."""
        packs = self.packs
        if self.gone:
            firsts = [p.first for p in packs]
            for s in self.gone:
                packs[bisect.bisect_right(firsts, s) - 1].gone.append(s)
            self.gone = []
            self.packs = packs = [p for p in packs if len(p.gone) < p.count]  # none left: dropped
        to = self.packed_to
        if seq > to:
            new = [e for e in held if e[5] > to]
            if new:
                packs.append(_Pack(new, to + 1, seq))
            self.packed_to = seq
        # Released entries stay in their packs (written as seqs) until the rule says: then one
        # pack of what is held. Every held entry is in a pack now, so the rest left.
        if REPACK.due(len(packs), sum(p.count for p in packs) - len(held), len(held)):
            self.packs = packs = [_Pack(held, packs[0].first, seq)] if held else []
        return [[p.blob, list(p.gone)] for p in packs]

    @staticmethod
    def entries(packs: list, now: float) -> list[tuple]:
        """The held entries a layout-3 checkpoint holds (unordered), arrived `now`."""
        out: list[tuple] = []
        for blob, gone in packs:
            keys, *recs = zlib.decompress(blob).split(b"\n")
            drop = set(gone)
            out.extend([(*k[:7], r, k[7], k[8], now) for k, r in zip(orjson.loads(keys), recs) if k[5] not in drop])
        return out


class HeldQueue:
    """A buffer's held entries, taken out in ordering-key order, as from one heap, but at a
    queue's cost in the common case.

    Entries of one source partition (src, partition) mostly come in key order (a partition is
    read in offset order, its events mostly in event-time order): each such source keeps a run,
    a deque in order; an entry below its run's last goes to `spill`, a heap beside the runs. The
    runs' fronts are in `fronts`, a heap of one entry per run (a few per input partition). The
    next entry is the smaller of the fronts' and the spill's first. Entries are unique (their
    seq), so the order is the one a heap of all of them gives. (One heap of a backlog's ~250k
    held entries cost ~1.6 us per pop, its sift walking cold tuples: about 5% of a backlog
    worker's CPU; see Deadlines in detectors/join.py for the same idea.)
    """

    __slots__ = ("runs", "fronts", "spill", "count")

    def __init__(self, entries: Iterable[tuple] = ()):
        self.runs: dict[tuple, deque] = {}
        # (front entry, its run): a pop finds the run without a key tuple and a dict lookup
        # (entries are unique, so a pair never compares its runs)
        self.fronts: list[tuple[tuple, deque]] = []
        self.spill: list[tuple] = []
        self.count = 0
        for entry in sorted(entries):  # in order: every one joins its run
            self.push(entry)

    def push(self, entry: tuple) -> None:
        self.extend((entry[6], entry[2]), (entry,))

    def extend(self, source: tuple, entries: Iterable[tuple]) -> None:
        """Hold `entries`, all of one source partition `source` (src, partition), in arrival
        order: one run lookup for a message's records."""
        run = self.runs.get(source)  # a run is dropped once empty: a source's epoch ends (src changes)
        spill = None
        n = 0
        for entry in entries:
            n += 1
            if run is None:
                run = self.runs[source] = deque((entry,))
                heapq.heappush(self.fronts, (entry, run))
            elif entry > run[-1]:
                run.append(entry)
            else:
                if spill is None:
                    spill = self.spill
                heapq.heappush(spill, entry)
        self.count += n

    def first(self) -> tuple | None:
        fronts, spill = self.fronts, self.spill
        if spill and (not fronts or spill[0] < fronts[0][0]):
            return spill[0]
        return fronts[0][0] if fronts else None

    def pop(self) -> tuple:
        fronts, spill = self.fronts, self.spill
        if spill and (not fronts or spill[0] < fronts[0][0]):
            entry = heapq.heappop(spill)
        else:
            entry, run = fronts[0]
            run.popleft()
            if run:
                heapq.heapreplace(fronts, (run[0], run))
            else:
                heapq.heappop(fronts)
                del self.runs[(entry[6], entry[2])]
        self.count -= 1
        return entry

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple]:
        """Every held entry, in no particular order."""
        return itertools.chain(itertools.chain.from_iterable(self.runs.values()), self.spill)


@dataclasses.dataclass(slots=True)
class SourceMark:
    """What a bank knows of one input partition's progress."""

    progress: float | None = None
    idle: bool = False
    heard_at: float | None = None  # the bank's clock when it last heard from the source
    said_at: float | None = None  # the source's clock (Kafka timestamp) when it made its last heartbeat
    # The source's clock of the last heartbeat handed over in memory (stream/repartition.py): its
    # copies on the topic, and older heartbeats, are not applied again (None: none was).
    local_said: float | None = None


class WatermarkBuffer:
    """Stage-2 order of one observations partition: hold, then release in ordering-key order.

    `sources` is the number of input partitions (every one can feed every bank). Held entries
    are plain tuples with `HeldObservation`'s layout and the record's JSON bytes in place of the
    observation (see `_held`), so the buffer snapshots as plain data; `held_observation(entry)`
    decodes a released one. Bounds: at most `max_held` entries and `max_bytes` bytes (as
    measured on the wire); past either the oldest is released early and the watermark moves to
    it (what then arrives behind it is late: applied and counted).

    An idle source's word is only as fresh as the heartbeat that said it: it rests on a cached
    high watermark, and reaches the bank when its worker's transaction commits. So an observation
    passes an idle source only once that source has said "idle" in a heartbeat made at least
    `confirm_after` seconds after the observation was sent, by the senders' clocks (the
    messages' Kafka timestamps, entry field `sent_at`): its worker's fetcher has by then seen
    whatever was published before the observation's event, and would have said "not idle", with
    its progress. An entry waits for that at most SILENT_AFTER of the bank's clock (a sender
    whose clock runs far ahead must not stop the bank), then idle sources pass as before.
    """

    def __init__(self, sources: int, max_held: int, max_bytes: int, now: float, confirm_after: float = 0.0):
        self.sources = sources
        self.max_held = max_held
        self.max_bytes = max_bytes
        self.marks: dict[int, SourceMark] = {}
        self.queue = HeldQueue()  # the held entries (see _held for their layout)
        self.held_bytes = 0
        self.floor = -math.inf  # everything at or below it was released: the watermark reached
        self.late = 0  # observations that arrived behind the watermark (applied at once)
        self.early = 0  # observations released early by the bounds
        self.created = now
        self.confirm_after = confirm_after
        self._seq = 0
        self._packs = HeldPacks()  # the held entries as the last checkpoint round packed them

    # -- state ------------------------------------------------------------------------------------
    def to_state(self) -> dict:
        """The buffer as plain values: its marks, counters and held entries (`HeldPacks`: each
        entry encoded once, in the first round that finds it held, not at every round)."""
        return {"marks": {p: [m.progress, m.idle, m.said_at] + ([m.local_said] if m.local_said is not None else [])
                          for p, m in self.marks.items()},
                "held_layout": HELD_LAYOUT, "held_packs": self._packs.state(self.queue, self._seq),
                "held_bytes": self.held_bytes, "floor": self.floor,
                "late": self.late, "early": self.early, "seq": self._seq}

    @classmethod
    def from_state(cls, state: dict, sources: int, max_held: int, max_bytes: int, now: float,
                   confirm_after: float = 0.0) -> "WatermarkBuffer":
        buf = cls(sources, max_held, max_bytes, now, confirm_after)
        # The bank's clock does not travel: every source gets a fresh grace period. The sources'
        # clocks do (Kafka timestamps); a mark of a checkpoint written before them has none.
        buf.marks = {int(p): SourceMark(m[0], m[1], now, m[2] if len(m) > 2 else None, m[3] if len(m) > 3 else None)
                     for p, m in state["marks"].items()}
        # Entries: (..., record, size, sent_at, arrived); the bank's clock does not travel
        # (arrived: now), and entries of a checkpoint written before sent_at have none (no
        # freshness asked of them).
        if "held_packs" in state:  # layout 3
            if state.get("held_layout") != HELD_LAYOUT:
                raise ValueError(f"held observations in layout {state.get('held_layout')!r}, this driftline "
                                 f"reads layouts 1 to {HELD_LAYOUT}")
            entries = HeldPacks.entries(state["held_packs"], now)
        elif "held_keys" in state:  # layout 2: every entry packed at every round
            keys, recs = orjson.loads(state["held_keys"]), state["held_records"]
            entries = [(*k[:7], r, k[7], k[8] if len(k) > 8 else None, now)
                       for k, r in zip(keys, recs.split(b"\n") if keys else ())]
        else:  # layout 1, written before the packing: one value per entry
            entries = [(*e[:7], e[7] if isinstance(e[7], bytes) else compact_json(e[7]), e[8],
                        e[9] if len(e) > 9 else None, now) for e in state["heap"]]
        buf.queue = HeldQueue(entries)
        buf.held_bytes, buf.floor = state["held_bytes"], state["floor"]
        buf.late, buf.early, buf._seq = state["late"], state["early"], state["seq"]
        return buf

    @property
    def held(self) -> int:
        return self.queue.count

    # -- input ------------------------------------------------------------------------------------
    def note(self, partition: int, progress: float | None, idle: bool | None, now: float,
             said_at: float | None = None, local: bool = False) -> None:
        """What input partition `partition` says of itself: a heartbeat carries its progress and
        idleness (and `said_at`, the source's clock when it made it); a data message (progress and
        idle None) only that it is alive. `local`: a heartbeat handed over in memory (its copy on
        the topic, read later, is skipped: its `said_at` is not after this one's)."""
        mark = self.marks.get(partition)
        if mark is None:
            mark = self.marks[partition] = SourceMark()
        mark.heard_at = now
        if idle is None:
            return
        if local:
            mark.local_said = said_at
        elif mark.local_said is not None and said_at is not None and said_at <= mark.local_said:
            return  # a copy of one handed over in memory (or older): applied already
        if said_at is not None and (mark.said_at is None or said_at > mark.said_at):
            mark.said_at = said_at
        # Progress never goes back: a successor replaying from a checkpoint re-reads events
        # whose observations this bank has applied already.
        if progress is not None and (mark.progress is None or progress > mark.progress):
            mark.progress = progress
        mark.idle = idle

    def add(self, key: tuple[float, int], partition: int, offset: int, index: int, src: str, rec: list,
            size: int, sent_at: float | None = None, now: float = 0.0) -> bool:
        """Hold one wire record; False if it is late (behind the watermark): apply it now."""
        if key[0] < self.floor:
            self.late += 1
            return False
        self._seq += 1
        self.queue.push((key[0], key[1], partition, offset, index, self._seq, src, compact_json(rec), size,
                         sent_at, now))
        self.held_bytes += size
        return True

    def add_records(self, partition: int | None, src: str, recs: list, size: int, sent_at: float | None = None,
                    now: float = 0.0, copy: bool = False) -> list[HeldObservation]:
        """Hold wire records `[offset, index, kind, *fields]` of one source; returns those to apply
        at once (counters, late ones, and every record of a format-1 message: `partition` None),
        decoded, in arrival order. The hot path: one call per message. `sent_at`: the source's
        clock when it sent them (the message's Kafka timestamp); `now`: the bank's. `copy`: the
        records are the sender's own (handed over in memory, stream/repartition.py): a timed one
        applied at once is decoded from its JSON, as from the topic, sharing nothing with the
        sender (held ones are stored as JSON anyway; counters are strings)."""
        now_apply = []
        ordered = len(recs)
        floor, dumps, held_json = self.floor, orjson.dumps, compact_json
        hold: list[tuple] = []
        push = hold.append
        seq = self._seq
        held = 0
        at_kind, at_time, at_offset, at_index = WIRE_KIND, WIRE_TIME, WIRE_OFFSET, WIRE_INDEX
        in_order = partition is not None  # format 1 carries no progress: everything applies now
        for r in recs:
            kind = r[at_kind]  # the same keys as ordering_key(), inlined: one call per record
            if kind == INFERENCE or kind == LLM:
                order = 0
            elif kind == OUTCOME or kind == PAIR:
                order = 1
            else:  # a counter
                now_apply.append(_held(HeldObservation, (-math.inf, 0, partition, r[at_offset], r[at_index], seq, src,
                                                         from_wire(r), size)))
                ordered -= 1
                continue
            ts = r[at_time]
            if in_order and ts >= floor:
                seq += 1
                # see _held; sent_at and the bank's clock: the freshness an idle source owes it
                push((ts, order, partition, r[at_offset], r[at_index], seq, src, held_json(r), size, sent_at, now))
                held += size
                continue
            if in_order:
                self.late += 1
            if copy:
                r = orjson.loads(dumps(r))
            now_apply.append(_held(HeldObservation, (ts, order, partition, r[at_offset], r[at_index], seq, src,
                                                     from_wire(r), size)))
        self._seq = seq
        if hold:
            self.queue.extend((src, partition), hold)
        self.held_bytes += held
        if ordered and in_order:
            mark = self.marks.get(partition)
            if mark is not None and mark.idle:
                # It woke: not idle, and its progress (lower, perhaps, than the largest event
                # time it had read when idle) comes with its next heartbeat.
                mark.idle = False
                mark.progress = None
        return now_apply

    # -- output -----------------------------------------------------------------------------------
    def watermark(self, now: float, local: dict[int, tuple[float | None, bool]] | None = None) -> float:
        """The least progress over the sources that are neither idle nor silent; +inf when all
        are; -inf while one that counts has not said where it is. `local`: what this process
        knows first-hand of the input partitions it owns (their alignment's (progress, idle)),
        used instead of what their heartbeats said so far (see `lowest_progress`)."""
        low = math.inf
        for p in range(self.sources):
            mark = self.marks.get(p)
            if local is not None and p in local:
                progress, idle = local[p]
                if idle:
                    continue
                if progress is not None:
                    if progress < low:
                        low = progress
                    continue
                # Nothing read yet: what the bank heard (a restored mark, or nothing) stands.
            heard = self.created if mark is None or mark.heard_at is None else mark.heard_at
            if now - heard >= SILENT_AFTER:
                continue  # silent: its owner is gone (a successor's first heartbeat brings it back)
            if mark is None:
                return -math.inf
            if mark.idle:
                continue
            if mark.progress is None:
                return -math.inf
            if mark.progress < low:
                low = mark.progress
        return low

    def release(self, now: float, budget: float = math.inf) -> list[tuple]:
        """Held entries the watermark (or a bound) lets go, in ordering-key order; at most
        `budget` of those the watermark passed (the rest wait for the next call, still in
        order: the watermark then counts as reached only up to the last one released)."""
        queue = self.queue
        if not queue.count:
            return []
        out = []
        mark = self.watermark(now)
        said = self.idle_said(now)
        confirm = self.confirm_after
        waiting = False
        first, pop = queue.first, queue.pop
        while queue.count:
            head = first()
            if head[0] >= mark:
                break
            if len(out) >= budget:
                if out:
                    self.floor = max(self.floor, out[-1][0])
                self._packs.released(out)
                return out
            sent = head[9]
            if sent is not None and sent + confirm > said and now - head[10] < SILENT_AFTER:
                waiting = True  # an idle source has not spoken since it was sent (class doc)
                break
            entry = pop()
            self.held_bytes -= entry[8]
            out.append(entry)
        if waiting:  # what arrives behind the one waiting can still be put in order
            if out:
                self.floor = max(self.floor, out[-1][0])
        elif math.isfinite(mark):
            self.floor = max(self.floor, mark)
        elif out:  # every source idle: all released; what comes behind the last one is late
            self.floor = max(self.floor, out[-1][0])
        while queue.count and (queue.count > self.max_held or self.held_bytes > self.max_bytes):
            entry = pop()
            self.held_bytes -= entry[8]
            self.early += 1
            self.floor = max(self.floor, entry[0])
            out.append(entry)
        self._packs.released(out)
        return out

    def idle_said(self, now: float) -> float:
        """When (senders' clocks) the least recently heard idle source last said it was idle:
        +inf with no idle source, -inf when one has not said when."""
        low = math.inf
        for mark in self.marks.values():
            if mark.idle and mark.heard_at is not None and now - mark.heard_at < SILENT_AFTER:
                said = -math.inf if mark.said_at is None else mark.said_at
                if said < low:
                    low = said
        return low

    def describe(self, now: float) -> str:
        """Each source's mark as the bank sees it now (for the log line that explains a late
        observation): its progress, idle, or silent, and how long ago it was last heard."""
        out = []
        for p in range(self.sources):
            mark = self.marks.get(p)
            if mark is None or mark.heard_at is None:
                out.append(f"{p}: never heard ({now - self.created:.1f} s)")
                continue
            ago = now - mark.heard_at
            state = "silent" if ago >= SILENT_AFTER else "idle" if mark.idle else "progress"
            shown = "none" if mark.progress is None else f"{mark.progress:.3f}"
            said = "" if mark.said_at is None else f", said at {mark.said_at:.3f}"
            out.append(f"{p}: {state} {shown} ({ago:.1f} s ago{said})")
        return "; ".join(out)

    def lowest_progress(self, now: float, local: dict[int, tuple[float | None, bool]] | None = None) -> float | None:
        """The slowest source's progress (idle and silent ones left out), for the fleet skew bound.

        `local` gives the live (progress, idle) of the input partitions this process owns. A
        bank hears a source's progress from heartbeats, which with exactly-once become visible
        only when the source's transaction commits, together with the observations they cover.
        So what the bank will know when an owned partition's observations reach it is that
        partition's progress at that commit, not the older one heard so far: the skew bound
        measured against the live figure still bounds what the bank holds (an owned partition
        cannot be ahead of itself), while against the heard one it would pause a backlog at
        every commit until the next one (measured: most of a 1 s-spaced backlog's wall time)."""
        mark = self.watermark(now, local)
        return mark if math.isfinite(mark) else None
