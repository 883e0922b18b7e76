"""Join labels to predictions by prediction_id, as a pure object fed event times.

Bounds, and why:
- A prediction waits for its label for its model's `label_ttl`; then it leaves as `expired`.
- A label that comes before its prediction is held for the same TTL; then it leaves as
  `unmatched`.
- A joined id is remembered for one more TTL so that a second label is a `duplicate` and not
  an `unmatched` (and a replayed prediction is a `duplicate`, not a second outcome).
- Each of the three maps is capped at `max_pending` entries: past it the oldest entry leaves
  early, with the same fate as at its TTL. Memory is at most ~3 x max_pending compact records.

Time is event time, passed in by the caller; the join never reads a clock, so the same events in
the same order give the same fates (a replay after a crash reproduces what the crashed worker
did). Each map runs on the clock of the stream that can still resolve it (`expire_streams`): a
pending prediction expires only when the *label* stream has passed its deadline (its label can
no longer come), a held label only when the *inference* stream has, and a joined id when both
have. When the two topics are read at different speeds (a backlog: all inferences, then all
labels), the stream that runs ahead therefore expires nothing of the other's. `expire(now)`
runs all three on one clock (one merged, time-ordered stream, as `driftline replay` reads).

Every entry point returns what it did as a value: `add_prediction` and `add_label` a
`JoinResult` (the predictions joined to labels, the `Fate`s of events that did not join:
`duplicate`, `expired` and `unmatched` ones the cap pushed out, and why a label was refused),
`expire` and `expire_streams` the fates of what their clocks let go. The join keeps no
results for a caller to collect.

Requests (shadow traffic): a prediction may carry a request_id, the same for every model that
scored one request. A label naming a request_id instead of a prediction_id grades every
prediction of that request: those waiting, and those that come while the label is held (for
the TTL, as any label). It is `unmatched` only if it graded none. A label naming both ids is
joined by prediction_id; if that prediction has another request_id (or none), the label is
refused (`request_mismatch`), or, when the label came first, counted `invalid` when its
prediction comes.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import zlib
from collections import deque
from operator import le
from typing import Callable, NamedTuple

import orjson

from driftline.detectors.packs import REPACK
from driftline.detectors.state import Attached, SnapshotError, persistent
from driftline.detectors.state import restore as restore_state
from driftline.detectors.state import snapshot as snapshot_state



class Fate(NamedTuple):
    """An event that did not join, counted by the caller (`driftline_events_total`'s outcome)."""

    model: str | None  # None: a label that named no model and whose prediction never came
    kind: str  # "inference" or "label"
    outcome: str  # "duplicate", "expired", "unmatched" or "invalid"


NO_FATES: tuple[Fate, ...] = ()


@persistent("join.pending")
@dataclasses.dataclass(slots=True)
class PendingPrediction:
    """What the join keeps of a prediction: enough to grade it and to place it in its slices
    (the monitored features' values, in the spec's order: a tuple, not the event's dict).

    Never changed once made, but not `frozen`: one is made per inference, and a frozen
    dataclass's __init__ (object.__setattr__ per field) cost ~6x a plain one's (1.9 vs 0.33 us
    in isolation, ~1.4% of `driftline replay`'s CPU under py-spy)."""

    prediction_id: str
    model: str
    segments: tuple[str, ...]
    prediction: object
    score: float | None
    timestamp: float
    values: tuple | None = None


class Joined(NamedTuple):
    """A prediction with its ground truth: the input of accuracy and error-drift detection.
    (A NamedTuple, not a frozen dataclass: one is made per joined label, built with one C call.)"""

    prediction: PendingPrediction
    label: object
    label_timestamp: float
    request_id: str | None = None  # the prediction's, when it carried one

    @property
    def delay(self) -> float:
        return self.label_timestamp - self.prediction.timestamp


class JoinResult(NamedTuple):
    """What one `add_prediction` / `add_label` did."""

    # Predictions graded by this call: one, or for a label naming a request_id every prediction
    # of the request it graded (maybe none).
    joined: tuple[Joined, ...] = ()
    fates: tuple[Fate, ...] = NO_FATES
    # Why a label was refused ("model_mismatch", "request_mismatch"): the caller dead-letters it;
    # the join did not change. None otherwise.
    refused: str | None = None


# The results made once: held or waiting (nothing happened yet), and the two refusals.
WAITING = JoinResult()
MODEL_MISMATCH = JoinResult(refused="model_mismatch")
REQUEST_MISMATCH = JoinResult(refused="request_mismatch")
_new_result = tuple.__new__  # a JoinResult or Joined from all its fields, without NamedTuple's Python __new__


def _result(joined: tuple, fates: list | tuple) -> JoinResult:
    return _new_result(JoinResult, (joined, tuple(fates) if fates else NO_FATES, None))


@persistent("join.held_label")
@dataclasses.dataclass(frozen=True, slots=True)
class _HeldLabel:
    label: object
    timestamp: float
    model: str | None


@persistent("join.request_label")
class _RequestLabel:
    """A label that names a request_id: held for its TTL, grading each prediction of the request."""

    __slots__ = ("label", "timestamp", "model", "graded")

    def __init__(self, label: object, timestamp: float, model: str | None):
        self.label, self.timestamp, self.model, self.graded = label, timestamp, model, 0


def _pending_rows(preds) -> list[list]:
    return [[p.prediction_id, p.model, list(p.segments), p.prediction, p.score, p.timestamp,
             None if p.values is None else list(p.values)] for p in preds]


def _pack_rows(rows: list[list]) -> bytes | None:
    """Rows as one JSON text, or None when a value would not come back the same from JSON (a
    non-finite float, a tuple inside a value: then object by object)."""
    try:
        text = orjson.dumps(rows)
    except TypeError:  # not JSON: a value of another type
        return None
    return text if orjson.loads(text) == rows else None


def _unpack_rows(text: bytes | str) -> list[PendingPrediction]:
    return [PendingPrediction(pid, model, tuple(segments), prediction, score, timestamp,
                              None if values is None else tuple(values))
            for pid, model, segments, prediction, score, timestamp, values in orjson.loads(text)]


def _unpack_pending(text: str) -> dict[str, "PendingPrediction"]:
    """The waiting predictions of a version-2 checkpoint: one JSON text of rows."""
    return {p.prediction_id: p for p in _unpack_rows(text)}


_GONE = object()  # a restored pack's gone row


class _PendingPack:
    """Waiting predictions encoded together (JSON rows, compressed once): `preds`, the objects
    of its rows, in order, tell which rows are still waiting (the join maps their id to that
    very object)."""

    __slots__ = ("ids", "preds", "blob")

    def __init__(self, preds: list, blob: bytes):
        self.ids = [p.prediction_id for p in preds]
        self.preds = preds
        self.blob = Attached(blob)

    @classmethod
    def encode(cls, preds: list[PendingPrediction]) -> "_PendingPack | None":
        """A pack of `preds`, or None when a value would not come back the same from JSON."""
        text = _pack_rows(_pending_rows(preds))
        return None if text is None else cls(preds, zlib.compress(text, 1))

    def gone(self, pending: dict) -> list[int]:
        """The rows no longer waiting: joined, expired, capped (or re-registered: another object)."""
        get = pending.get
        return [i for i, (pid, p) in enumerate(zip(self.ids, self.preds)) if get(pid) is not p]


class PendingPacks:
    """A join's waiting predictions as its checkpoints write them (version 3), kept between
    rounds so that each prediction is encoded once, not at every round while it waits.

    A backlog's intake holds ~100k waiting predictions for many rounds; packing all of them at
    every round (rows, JSON, the round-trip check, zlib) cost ~0.5 s per 100k. Here a round
    packs only the predictions registered since the previous one (a dict keeps insertion order,
    and the join only adds new ids: they are its last entries), and writes each older pack as
    it is, with the rows that left it since. A pack with no row waiting is dropped; what waits
    is packed again as one when detectors/packs.py's rule says (more gone rows carried than
    waiting ones, or too many packs). The rows of all packs, in order and without their gone ones, are the waiting
    predictions in the join's order (its cap lets the oldest go first). Not state itself.
    """

    __slots__ = ("packs",)

    def __init__(self, packs: list[_PendingPack] | None = None):
        self.packs = packs or []

    def state(self, pending: dict[str, PendingPrediction]) -> list | None:
        """[[blob, gone rows], ...] for `pending` (the join's), or None when a new prediction's
        values would not come back the same from JSON (then the join writes them object by object)."""
        packs, gone, waiting = [], [], 0
        for pack in self.packs:
            g = pack.gone(pending)
            if len(g) < len(pack.ids):
                packs.append(pack)
                gone.append(g)
                waiting += len(pack.ids) - len(g)
        new = len(pending) - waiting  # < 0 cannot happen while the join only appends new ids
        repack = new < 0 or REPACK.due(len(packs) + (new > 0), sum(map(len, gone)), len(pending))
        if repack:
            packs, gone = [], []
            fresh = list(pending.values())
        else:  # the last `new` entries: registered since the last round
            fresh = list(itertools.islice(reversed(pending.values()), new))
            fresh.reverse()
        if fresh:
            pack = _PendingPack.encode(fresh)
            if pack is None:
                self.packs = []
                return None
            packs.append(pack)
            gone.append([])
        self.packs = packs
        return [[p.blob, g] for p, g in zip(packs, gone)]

    @staticmethod
    def restore(state: list) -> tuple[dict[str, PendingPrediction], "PendingPacks"]:
        """The waiting predictions of a version-3 checkpoint, and the packs they came from (a
        restored join writes them again as they are, not packed anew)."""
        pending: dict[str, PendingPrediction] = {}
        packs = []
        for blob, gone in state:
            pack = _PendingPack(_unpack_rows(zlib.decompress(blob)), blob)
            for i in gone:
                pack.preds[i] = _GONE  # never the object the join maps an id to: a gone row stays gone
            packs.append(pack)
            pending.update((p.prediction_id, p) for p in pack.preds if p is not _GONE)
        return pending, PendingPacks(packs)


def _pack_heap(heap: list[tuple[float, int, str]]) -> str | None:
    """A deadline heap as one JSON text, or None when a deadline is not finite (JSON's null)."""
    text = orjson.dumps(heap)
    return None if b"[null" in text or b",null" in text else text.decode()  # (an id with ",null" in it: the slow way)


class Deadlines:
    """One map's (deadline, sequence, id) entries, taken out in (deadline, sequence) order, as
    from one heap, but at a queue's cost in the common case.

    Entries mostly come in deadline order (a stream read in event-time order, one TTL per
    model): those are appended to `run`, a deque in order, and leave from its front in O(1).
    An entry earlier than the run's last goes to `heap`, a heap beside it; the next entry due is
    the smaller of the two fronts. (A single heap cost ~2 us per pop of its ~12-level sift at a
    TTL's worth of entries: a few percent of `driftline replay`'s CPU per event.) Not state
    itself: the join's checkpoint writes `entries()`, a sorted list (so also a valid heap, as
    checkpoints before this class held).
    """

    __slots__ = ("run", "heap")

    def __init__(self, entries=()):
        entries = list(entries)
        if all(map(le, entries, entries[1:])):  # in order (a checkpoint's): all in the run
            self.run, self.heap = deque(entries), []
        else:
            heapq.heapify(entries)
            self.run, self.heap = deque(), entries

    # (LabelJoin.expire_streams reads `run` and `heap` inline: the next entry due is
    # `heappop(heap) if heap and heap[0] < run[0] else run.popleft()` while the run's front is
    # due, then `heappop(heap)` while the heap's is. A call per step cost what the queue saves.)

    def keep(self, live) -> None:
        """Drop the entries whose id is not in `live` (the cap's stale ones), in place."""
        run = [e for e in self.run if e[2] in live]
        self.run.clear()
        self.run.extend(run)
        self.heap[:] = [e for e in self.heap if e[2] in live]
        heapq.heapify(self.heap)

    def entries(self) -> list[tuple[float, int, str]]:
        """Every entry, in order."""
        out = list(self.run)
        if self.heap:
            out += self.heap
            out.sort()
        return out

    def __len__(self) -> int:
        return len(self.run) + len(self.heap)

    def __iter__(self):
        return iter(self.entries())

    def __eq__(self, other) -> bool:
        return isinstance(other, Deadlines) and self.entries() == other.entries()

    def __repr__(self) -> str:
        return f"Deadlines({self.entries()!r})"


@persistent("join", version=3)
class LabelJoin:
    """Waiting predictions, held labels and recently joined ids, each with its deadline.

    Its checkpoint (version 2) writes the waiting predictions and each deadline heap as one JSON
    text each, packed by orjson: a backlog's intake holds tens of thousands of them, written
    again at every checkpoint round while they wait, and one state object per prediction was
    most of the intake's checkpoint time (measured, 10,000 waiting and 10,000 joined: 163 -> 25 ms
    per snapshot, 420 -> 41 ms per restore). Version 3 writes the waiting predictions in packs
    kept between rounds (`PendingPacks`): each is encoded once, in the round that first finds it
    waiting. Versions 1 (object by object) and 2 (one text of every waiting prediction) are read
    as before; a value JSON would not give back the same stays object by object.
    """

    def __init__(self, ttl_for: Callable[[str | None], float], max_pending: int = 1_000_000):
        self._ttl_for = ttl_for
        self.max_pending = max_pending
        self._pending: dict[str, PendingPrediction] = {}
        self._held: dict[str, _HeldLabel] = {}
        self._joined: dict[str, float] = {}  # prediction_id -> forget after
        # which map -> its (deadline, sequence, id) entries: lazy deletion, entries may be stale.
        # One queue per map because each map runs on its own stream's clock (expire_streams).
        # "r": labels naming a request_id (they wait for predictions, like held labels)
        self._deadlines: dict[str, Deadlines] = {"p": Deadlines(), "h": Deadlines(), "j": Deadlines(),
                                                 "r": Deadlines()}
        self._seq = 0
        self._init_requests()
        self._pending_packs = PendingPacks()  # how the last checkpoint wrote _pending: a cache, not state

    def _init_requests(self) -> None:
        # Requests: the request_id of each waiting prediction that has one, the waiting
        # predictions of each request, labels naming a request, and the request_id named by
        # held labels that name both ids. Bounded like the maps above (each entry is one of a
        # pending prediction's or held label's, or capped at max_pending).
        self._request_of: dict[str, str] = {}
        self._requests: dict[str, list[str]] = {}
        self._request_labels: dict[str, _RequestLabel] = {}
        self._held_request: dict[str, str] = {}

    # -- snapshot: the TTL lookup is configuration, not state ---------------------------------
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "_ttl_for" and k != "_pending_packs"}
        packed = self._pending_packs.state(self._pending)
        if packed is not None:
            state["_pending"] = packed
        # Sorted lists: also valid heaps, the form checkpoints held before `Deadlines`.
        state["_deadlines"] = {which: _pack_heap(heap) or heap
                               for which, heap in ((w, q.entries()) for w, q in self._deadlines.items())}
        return state

    @classmethod
    def upgrade_state(cls, version: int, fields: dict) -> dict:
        if version not in (1, 2):
            raise ValueError(f"join version {version}")
        return fields  # objects (1) or one packed text (2): __setstate__ reads every form

    def __setstate__(self, state: dict) -> None:
        if "_requests" not in state:  # a snapshot from before requests
            self._init_requests()
        # `fates`: the join once collected fates for its caller in a list, written (empty) by version 1
        state = {k: v for k, v in state.items() if k != "fates"}
        packs = PendingPacks()
        if isinstance(state.get("_pending"), str):
            state["_pending"] = _unpack_pending(state["_pending"])
        elif isinstance(state.get("_pending"), list):
            state["_pending"], packs = PendingPacks.restore(state["_pending"])
        state["_pending_packs"] = packs
        if isinstance(state.get("_deadlines"), dict):
            state["_deadlines"] = {which: [tuple(e) for e in orjson.loads(heap)] if isinstance(heap, str) else heap
                                   for which, heap in state["_deadlines"].items()}
        self.__dict__.update(state)
        self._ttl_for = None  # set by LabelJoin.restore / bind()
        if isinstance(self._deadlines, list):  # a snapshot from before the per-map heaps
            heaps: dict[str, list] = {"p": [], "h": [], "j": []}
            for deadline, seq, which, pid in self._deadlines:
                heaps[which].append((deadline, seq, pid))
            for heap in heaps.values():
                heapq.heapify(heap)
            self._deadlines = heaps
        self._deadlines.setdefault("r", [])  # a snapshot from before requests
        self._deadlines = {which: q if isinstance(q, Deadlines) else Deadlines(q) for which, q in self._deadlines.items()}

    def bind(self, ttl_for: Callable[[str | None], float]) -> "LabelJoin":
        """Give a restored join its TTL lookup (configuration, not state)."""
        self._ttl_for = ttl_for
        return self

    @classmethod
    def restore(cls, blob: bytes, ttl_for: Callable[[str | None], float]) -> "LabelJoin":
        join = restore_state(blob)
        if not isinstance(join, cls):
            raise SnapshotError(f"snapshot holds a {type(join).__name__}, not a LabelJoin")
        return join.bind(ttl_for)

    def snapshot(self) -> bytes:
        return snapshot_state(self)

    # -- state sizes, for metrics --------------------------------------------------------------
    @property
    def pending_predictions(self) -> int:
        return len(self._pending)

    @property
    def held_labels(self) -> int:
        return len(self._held) + len(self._request_labels)

    def knows_prediction(self, prediction_id: str) -> bool:
        """True if this id waits for its label or was joined within the TTL: a duplicate."""
        return prediction_id in self._pending or prediction_id in self._joined

    # -- input ---------------------------------------------------------------------------------
    def add_prediction(self, pred: PendingPrediction, request_id: str | None = None) -> JoinResult:
        """Register a prediction; `joined` holds it at once when its label was waiting."""
        pid = pred.prediction_id
        if pid in self._pending or pid in self._joined:
            return _result((), (Fate(pred.model, "inference", "duplicate"),))
        fates: list[Fate] = []
        held = self._held.get(pid)
        if held is not None and held.model is not None and held.model != pred.model:
            # The early label named another model: it grades nothing here.
            del self._held[pid]
            self._held_request.pop(pid, None)
            fates.append(Fate(held.model, "label", "unmatched"))
            held = None
        elif held is not None:
            del self._held[pid]
            named = self._held_request.pop(pid, None)
            if named is not None and named != request_id:
                fates.append(Fate(held.model or pred.model, "label", "invalid"))  # request_mismatch, late
                held = None
        if held is not None:
            self._remember_joined(pid, pred.model, held.timestamp, fates)
            return _result((_new_result(Joined, (pred, held.label, held.timestamp, request_id)),), fates)
        if request_id is not None:
            rl = self._request_labels.get(request_id)
            if rl is not None and (rl.model is None or rl.model == pred.model):
                rl.graded += 1
                self._remember_joined(pid, pred.model, rl.timestamp, fates)
                return _result((_new_result(Joined, (pred, rl.label, rl.timestamp, request_id)),), fates)
        self._pending[pid] = pred
        if request_id is not None:
            self._request_of[pid] = request_id
            self._requests.setdefault(request_id, []).append(pid)
        self._schedule(pred.timestamp + self._ttl_for(pred.model), "p", pid)
        if len(self._pending) > self.max_pending:
            self._cap(self._pending, "p", fates)
        return _result((), fates) if fates else WAITING

    def add_label(
        self, prediction_id: str | None, label: object, timestamp: float, model: str | None = None,
        request_id: str | None = None,
    ) -> JoinResult:
        """Join a label. Nothing joined and no fate: it is held until its prediction comes or its
        TTL ends. A label with a request_id and no prediction_id joins every waiting prediction
        of the request (maybe none). `refused`: the label contradicts its prediction and changed
        nothing (`model_mismatch`: it names another model; `request_mismatch`: the two ids name
        different predictions)."""
        if prediction_id is None:
            return self._add_request_label(request_id, label, timestamp, model)
        pred = self._pending.get(prediction_id)
        if pred is not None:
            if model is not None and model != pred.model:
                return MODEL_MISMATCH
            rid = self._request_of.get(prediction_id)
            if request_id is not None and request_id != rid:
                return REQUEST_MISMATCH
            del self._pending[prediction_id]
            self._unlink_request(prediction_id)
            fates: list[Fate] = []
            self._remember_joined(prediction_id, pred.model, timestamp, fates)
            return _result((_new_result(Joined, (pred, label, timestamp, rid)),), fates)
        if prediction_id in self._joined or prediction_id in self._held:
            return _result((), (Fate(model, "label", "duplicate"),))
        self._held[prediction_id] = _HeldLabel(label, timestamp, model)
        if request_id is not None:
            self._held_request[prediction_id] = request_id
        self._schedule(timestamp + self._ttl_for(model), "h", prediction_id)
        if len(self._held) > self.max_pending:
            fates = []
            self._cap(self._held, "h", fates)
            return _result((), fates)
        return WAITING

    def _add_request_label(self, request_id: str, label: object, timestamp: float, model: str | None
                           ) -> JoinResult:
        if request_id in self._request_labels:
            return _result((), (Fate(model, "label", "duplicate"),))
        rl = self._request_labels[request_id] = _RequestLabel(label, timestamp, model)
        fates: list[Fate] = []
        joined, waiting = [], []
        for pid in self._requests.pop(request_id, ()):
            pred = self._pending.get(pid)
            if pred is None:
                continue
            if model is not None and model != pred.model:
                waiting.append(pid)  # the label names one model of the request: the others wait on
                continue
            del self._pending[pid]
            del self._request_of[pid]
            self._remember_joined(pid, pred.model, timestamp, fates)
            joined.append(_new_result(Joined, (pred, label, timestamp, request_id)))
        if waiting:
            self._requests[request_id] = waiting
        rl.graded = len(joined)
        self._schedule(timestamp + self._ttl_for(model), "r", request_id)
        self._cap(self._request_labels, "r", fates)
        return _result(tuple(joined), fates)

    def _unlink_request(self, pid: str) -> None:
        rid = self._request_of.pop(pid, None)
        if rid is not None:
            pids = self._requests.get(rid)
            if pids is not None:
                if pid in pids:
                    pids.remove(pid)
                if not pids:
                    del self._requests[rid]

    def expire(self, now: float) -> tuple[Fate, ...]:
        """Let go of everything whose TTL ended before `now` (one clock for both streams)."""
        return self.expire_streams(inferences=now, labels=now)

    def expire_streams(self, inferences: float, labels: float) -> tuple[Fate, ...]:
        """Expire on each stream's own progress (event time read so far); returns the fates of
        what left (a joined id leaves without one).

        Pending predictions wait for labels: they expire on `labels`. Held labels wait for
        predictions: they expire on `inferences`. A joined id guards against duplicates on both
        topics: it is forgotten when both have passed its deadline.
        """
        deadlines = self._deadlines
        p, h, r, j = deadlines["p"], deadlines["h"], deadlines["r"], deadlines["j"]
        both = inferences if inferences < labels else labels
        # Called as each event moves a clock: mostly nothing is due, seen at the fronts (the
        # side heaps are mostly empty).
        if ((not p.run or p.run[0][0] > labels) and (not p.heap or p.heap[0][0] > labels)
                and (not h.run or h.run[0][0] > inferences) and (not h.heap or h.heap[0][0] > inferences)
                and (not r.run or r.run[0][0] > inferences) and (not r.heap or r.heap[0][0] > inferences)
                and (not j.run or j.run[0][0] > both) and (not j.heap or j.heap[0][0] > both)):
            return NO_FATES
        fates: list[Fate] = []
        for which, now in (("p", labels), ("h", inferences), ("r", inferences), ("j", both)):
            queue = deadlines[which]
            run, heap = queue.run, queue.heap  # in (deadline, sequence) order: see Deadlines
            while True:
                if run and run[0][0] <= now:
                    entry = heapq.heappop(heap) if heap and heap[0] < run[0] else run.popleft()
                elif heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)
                else:
                    break
                self._drop(which, entry[2], now, fates)
        return tuple(fates) if fates else NO_FATES

    # -- internals -----------------------------------------------------------------------------
    def _remember_joined(self, pid: str, model: str, timestamp: float, fates: list[Fate]) -> None:
        self._joined[pid] = timestamp
        self._schedule(timestamp + self._ttl_for(model), "j", pid)
        if len(self._joined) > self.max_pending:
            self._cap(self._joined, "j", fates)

    def _schedule(self, deadline: float, which: str, pid: str) -> None:
        self._seq += 1
        queue = self._deadlines[which]
        run = queue.run
        # In deadline order (a later sequence number at an equal deadline is later): the run.
        if not run or deadline >= run[-1][0]:
            run.append((deadline, self._seq, pid))
        else:
            heapq.heappush(queue.heap, (deadline, self._seq, pid))
        # Entries dropped early by the cap stay in the queue until their deadline; drop them
        # when they outnumber the live ones so the queue is bounded like the maps.
        if len(queue) > 4 * self.max_pending + 1024:
            queue.keep({"p": self._pending, "h": self._held, "j": self._joined, "r": self._request_labels}[which])

    def _cap(self, table: dict, which: str, fates: list[Fate]) -> None:
        # dicts keep insertion order: the first key is the oldest entry.
        while len(table) > self.max_pending:
            self._drop(which, next(iter(table)), None, fates)

    def _drop(self, which: str, pid: str, deadline: float | None, fates: list[Fate]) -> int:
        """Let `pid` of map `which` go (its deadline passed, or the cap: `deadline` None),
        appending its fate; 0 if it had gone already or was re-registered for later."""
        if which == "p":
            pred = self._pending.get(pid)
            if pred is None or (deadline is not None and pred.timestamp + self._ttl_for(pred.model) > deadline):
                return 0  # joined already, or re-registered later with a later deadline
            del self._pending[pid]
            self._unlink_request(pid)
            fates.append(Fate(pred.model, "inference", "expired"))
            return 1
        if which == "h":
            held = self._held.get(pid)
            if held is None or (deadline is not None and held.timestamp + self._ttl_for(held.model) > deadline):
                return 0
            del self._held[pid]
            self._held_request.pop(pid, None)
            fates.append(Fate(held.model, "label", "unmatched"))
            return 1
        if which == "r":
            rl = self._request_labels.get(pid)  # pid is a request_id here
            if rl is None or (deadline is not None and rl.timestamp + self._ttl_for(rl.model) > deadline):
                return 0
            del self._request_labels[pid]
            if not rl.graded:
                fates.append(Fate(rl.model, "label", "unmatched"))
            return 1
        if pid in self._joined:
            del self._joined[pid]
            return 1
        return 0
