"""Slice accounting: which slice of traffic explains a segment's accuracy drop.

A `SliceAccountant` belongs to one (model, segment). For every monitored feature it counts
labelled and correct outcomes per value bin:

- numeric features: the bins of the model's baseline profile when there is one, else quantile
  bins of a warm-up reservoir (the first `WARMUP` labelled values, then dropped); the first
  and last bins are open-ended, so values outside every reference bin still have a place;
- categorical features: the reference's top values (profile, or the warm-up's most frequent),
  then `__other__` for every value never seen among them;
- every feature has a `missing` bin: absent, null, NaN, or not a number where one is expected;
- at `__all__`, each segment attribute that is not a monitored feature is a feature too, so the
  explanation of an `__all__` drop says which segments account for it.

Two windows of counters are kept: the reference, and the window since the change point. Before
a drift, the reference is a decaying history (32-bit counters, halved when it would pass
HISTORY events) and a ring of the last RECENT blocks of BLOCK labelled events plus the block
being filled (16-bit counters), so the change point can be placed afterwards (the detectors fire
some events after the change). On an error drift "up", `detected()` places the change point at
the boundary that best separates the error rates (the split that maximises the standardised
difference, as ADWIN's cut does), merges the windows before it into the reference and those after
into the "after" window, which then grows until the model's drift hold passes without another
detection; it then becomes the history. While a drift is active, `JointCounts` count every pair
of bins of (up to JOINT_FEATURES) features, to tell which of two overlapping slices holds the
loss they share. Memory per segment: (bins x features) x (4 + 2 x (RECENT + 1)) x 2 bytes of
counters before a drift (864 bytes for the demo model's 36 bins), no per-event lists (the warm-up
reservoir holds at most WARMUP values per numeric feature, 8 bytes each, and only until the bins
are set); bench/quality.py --slices measures it (docs/explanations.md).

The explanation (`explain()`) ranks slices by their contribution to the drop: the accuracy
points that would come back if the slice had kept its reference accuracy, given its share of
the traffic after the change: share_after x (accuracy_before - accuracy_after). Both accuracies
are shrunk toward the segment's reference accuracy by `PRIOR` pseudo-events, so a slice seen a
handful of times cannot top the list by chance, and a slice with no reference events (values
that moved out of the reference range) is compared with the segment's reference accuracy. The
drop splits exactly into that within-slice part and a traffic-mix part
(sum of (share_before - share_after) x accuracy_before per feature): a feature whose distribution
moved (PSI against the reference window) without its slices losing accuracy has a large PSI and
a contribution near zero, so it is not blamed (data drift without harm); a drop with no feature
moving is concept drift.
The list is in contribution order, except where the joint counts show that a later slice holds
the loss it shares with an earlier one (`_joint_order`; docs/explanations.md, "The order").

Pure: no I/O, no clock; state is plain values (`to_state` / `from_state`).
"""
from __future__ import annotations

import dataclasses
import math
from array import array
from bisect import bisect_right
from collections import Counter
from typing import Any, Mapping, Sequence

from driftline.detectors.baseline import category_key, psi
from driftline.detectors.state import persistent

BLOCK = 250  # labelled events per recent block: how finely the change point is placed
RECENT = 3  # full blocks kept apart before a drift (with the one being filled: the last 750-1,000 events)
HISTORY = 4_000  # labelled events of older history: past this, its counters are halved (a decaying reference)
WARMUP = 500  # labelled values a feature's bins are learnt from when no profile gives them
NUMERIC_BINS = 10  # quantile bins learnt from the warm-up (plus the open ends and missing)
CATEGORIES = 12  # top values kept per categorical feature (the rest is __other__)
MAX_WARMUP_KEYS = 1_000  # distinct categories counted during the warm-up (a bound on junk values)
PRIOR = 20.0  # pseudo-events at the segment's reference accuracy added to each slice's evidence
TOP = 10  # slices carried in an explanation
REFRESH_AT = (100, 400, 1_600)  # labelled events after the change point that refresh the explanation
MAX_RUN = 3  # adjacent numeric bins a slice may span (an affected range rarely matches one bin)
Z = 2.0  # standard errors taken off a slice's loss beyond the rest (one-sided ~97.5%)
MIN_REFERENCE = BLOCK  # labelled events the reference keeps at least when the change point is placed
JOINT_FEATURES = 6  # features whose bins are counted jointly (pairwise) while a drift is active: all
# of them from the change point when there are at most this many, else the leading ones from JOINT_AT
JOINT_AT = 100  # labelled events after the change point when the leading features are chosen
JOINT_MAX = 65_535  # joint counts stop here (16-bit cells; evidence enough by far)
JOINT_TOP = 5  # leading slices whose order the joint counts may change
LLR_MARGIN = 2.0  # nats by which a later slice's joint explanation must win to move up (odds ~7:1)
Z_JOINT = 2.0  # standard errors that make a region's excess errors count (joint comparison)

MISSING = "missing"
OTHER = "__other__"
NUMERIC, CATEGORICAL, SEGMENT = "numeric", "categorical", "segment"


@dataclasses.dataclass(frozen=True, slots=True)
class FeatureBins:
    """The bins of one feature: configuration once set, never changed while counting."""

    name: str
    kind: str  # numeric | categorical | segment
    edges: Sequence[float] = ()  # numeric: bin i is [edges[i-1], edges[i]), first and last open
    categories: tuple[str, ...] = ()  # categorical/segment: bin i is categories[i]; then __other__

    def __post_init__(self) -> None:
        # 8 bytes an edge (a tuple of floats takes 32): thousands of segments each hold their bins.
        object.__setattr__(self, "edges", array("d", self.edges))

    @property
    def size(self) -> int:
        """Value bins, then `__other__` (categorical) and `missing`."""
        return len(self.edges) + 2 if self.kind == NUMERIC else len(self.categories) + 2

    @property
    def missing(self) -> int:
        return self.size - 1

    def describe(self, i: int) -> tuple[str, float | None, float | None, str | None]:
        """(bin label, lower inclusive, upper exclusive, category) of bin i."""
        if i == self.missing:
            return MISSING, None, None, None
        if self.kind == NUMERIC:
            lo = self.edges[i - 1] if i > 0 else None
            hi = self.edges[i] if i < len(self.edges) else None
            return f"[{_num(lo, '-inf')}, {_num(hi, '+inf')})", lo, hi, None
        if i == len(self.categories):
            return OTHER, None, None, OTHER
        return self.categories[i], None, None, self.categories[i]

    def to_state(self) -> list:
        return [self.name, self.kind, self.edges.tolist(), list(self.categories)]

    @classmethod
    def from_state(cls, s: Sequence) -> "FeatureBins":
        return cls(s[0], s[1], tuple(s[2]), tuple(s[3]))


def _num(x: float | None, open_end: str) -> str:
    return open_end if x is None else f"{x:.6g}"


class Counts:
    """Labelled and correct counts per bin of every feature, and totals: one flat array of
    unsigned ints, the labelled counts of every bin then the correct counts (`lab`, `cor`)."""

    __slots__ = ("start", "n", "correct", "c")

    def __init__(self, size: int, start: float | None = None, typecode: str = "I"):
        self.start = start  # event time of the first outcome counted (None while empty)
        self.n = 0
        self.correct = 0
        self.c = array(typecode, bytes(array(typecode).itemsize * 2 * size))

    @property
    def size(self) -> int:
        return len(self.c) // 2

    @property
    def lab(self) -> array:
        """Labelled counts per bin (a copy)."""
        return self.c[:len(self.c) // 2]

    @property
    def cor(self) -> array:
        """Correct counts per bin (a copy)."""
        return self.c[len(self.c) // 2:]

    def merge(self, other: "Counts") -> None:
        if other.start is not None and (self.start is None or other.start < self.start):
            self.start = other.start
        self.n += other.n
        self.correct += other.correct
        c = self.c
        for i, v in enumerate(other.c):
            if v:
                c[i] += v

    def halve(self) -> None:
        """Every counter halved (rounded down): older evidence weighs half as much."""
        self.c = array(self.c.typecode, [v >> 1 for v in self.c])
        self.n >>= 1
        self.correct >>= 1

    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_state(self) -> list:
        return [self.start, self.n, self.correct, self.c.typecode, self.c.tolist()]

    @classmethod
    def from_state(cls, s: Sequence) -> "Counts":
        if len(s) == 5 and isinstance(s[3], str):
            c = cls(0, s[0], s[3])
            c.c = array(s[3], s[4])
        else:  # version 1: [start, n, correct, lab, cor] as two lists
            c = cls(0, s[0])
            c.c = array("I", list(s[3]) + list(s[4]))
        c.n, c.correct = s[1], s[2]
        return c


_CELLS: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple] = {}


def _joint_cells(j: "JointCounts") -> tuple:
    """The (shared, configuration-only) cell plan of a JointCounts' layout."""
    key = (j.features, j.sizes)
    plan = _CELLS.get(key)
    if plan is None:
        if len(_CELLS) > 1_000:
            _CELLS.clear()
        plan = _CELLS[key] = j._cells()
    return plan


class JointCounts:
    """Labelled and correct counts of every pair of bins of a few features (pairwise tables),
    counted while a drift is active: which of two overlapping slices holds the loss they share."""

    __slots__ = ("features", "sizes", "n", "c")

    def __init__(self, features: Sequence[int], sizes: Sequence[int]):
        self.features = tuple(features)  # indices into the layout, ascending
        self.sizes = tuple(sizes)  # bins of each
        self.n = 0
        cells = sum(self.sizes[a] * self.sizes[b] for a, b in self.pairs())
        self.c = array("H", bytes(2 * 2 * cells))  # at most JOINT_MAX events are counted

    def pairs(self) -> list[tuple[int, int]]:
        k = len(self.features)
        return [(a, b) for a in range(k) for b in range(a + 1, k)]

    def _cells(self) -> tuple[tuple[int, int, int, int], ...]:
        # Per pair (a, b): its table's first cell, and the strides of a's and b's bins.
        out, base = [], 0
        for a, b in self.pairs():
            out.append((a, b, base, 2 * self.sizes[b]))
            base += 2 * self.sizes[a] * self.sizes[b]
        return tuple(out)

    def observe(self, bins: Sequence[int], correct: bool) -> None:
        """`bins`: each tracked feature's bin (local index), in `features` order."""
        self.n += 1
        c = self.c
        for a, b, base, stride in _joint_cells(self):
            i = base + bins[a] * stride + 2 * bins[b]
            c[i] += 1
            if correct:
                c[i + 1] += 1

    def regions(self, fa: int, ia: int, ja: int, fb: int, ib: int, jb: int) -> tuple[int, int, int, int, int, int] | None:
        """(labelled, errors) of slice A only, both, slice B only: A = bins ia..ja of layout
        feature fa, B = bins ib..jb of fb; None when the pair is not tracked."""
        if fa not in self.features or fb not in self.features or fa == fb:
            return None
        a, b = self.features.index(fa), self.features.index(fb)
        if a > b:
            a, b, ia, ja, ib, jb, swapped = b, a, ib, jb, ia, ja, True
        else:
            swapped = False
        base = 0
        for p, q in self.pairs():
            if (p, q) == (a, b):
                break
            base += 2 * self.sizes[p] * self.sizes[q]
        sb, c = self.sizes[b], self.c
        n10 = e10 = n11 = e11 = n01 = e01 = 0
        for x in range(self.sizes[a]):
            in_a = ia <= x <= ja
            row = base + 2 * x * sb
            for y in range(sb):
                lab = c[row + 2 * y]
                if not lab:
                    continue
                err = lab - c[row + 2 * y + 1]
                in_b = ib <= y <= jb
                if in_a and in_b:
                    n11 += lab
                    e11 += err
                elif in_a:
                    n10 += lab
                    e10 += err
                elif in_b:
                    n01 += lab
                    e01 += err
        if swapped:
            return n01, e01, n11, e11, n10, e10
        return n10, e10, n11, e11, n01, e01

    def to_state(self) -> list:
        return [list(self.features), list(self.sizes), self.n, self.c.tolist()]

    @classmethod
    def from_state(cls, s: Sequence) -> "JointCounts":
        j = cls.__new__(cls)
        j.features, j.sizes, j.n, j.c = tuple(s[0]), tuple(s[1]), s[2], array("H", s[3])
        return j


@dataclasses.dataclass(frozen=True, slots=True)
class SliceEvidence:
    """One slice (a bin of one feature) with the evidence for its rank."""

    feature: str
    bin: str
    lower: float | None  # inclusive; None when open or categorical
    upper: float | None  # exclusive; None when open or categorical
    category: str | None
    labelled_before: int
    accuracy_before: float | None
    labelled_after: int
    accuracy_after: float | None
    share_before: float
    share_after: float
    contribution: float  # accuracy points of the segment's drop that this slice accounts for

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class FeatureShift:
    """How one feature's traffic moved between the windows, and how much of the drop it explains."""

    feature: str
    kind: str
    psi: float  # of the labelled traffic's bins, after against before
    contribution: float  # its top slice's contribution
    mix: float  # the part of the drop explained by traffic moving between its bins (data drift)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    since: float | None  # event time of the change point (first outcome after it)
    labelled_before: int
    accuracy_before: float | None
    labelled_after: int
    accuracy_after: float | None
    slices: tuple[SliceEvidence, ...]
    features: tuple[FeatureShift, ...]

    @property
    def drop(self) -> float | None:
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return self.accuracy_before - self.accuracy_after

    @property
    def top(self) -> SliceEvidence | None:
        return self.slices[0] if self.slices else None

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "labelled_before": self.labelled_before,
                "accuracy_before": _r(self.accuracy_before), "labelled_after": self.labelled_after,
                "accuracy_after": _r(self.accuracy_after), "drop": _r(self.drop),
                "slices": [s.to_dict() for s in self.slices], "features": [f.to_dict() for f in self.features]}


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def quantile_edges(values: Sequence[float], bins: int = NUMERIC_BINS) -> tuple[float, ...]:
    """Distinct cut points at the 1/bins .. (bins-1)/bins quantiles of `values`."""
    xs = sorted(values)
    if not xs:
        return ()
    n = len(xs)
    edges: list[float] = []
    for q in range(1, bins):
        v = xs[min(n - 1, (q * n) // bins)]
        if not edges or v > edges[-1]:
            edges.append(v)
    if edges and edges[0] == xs[0] and len(edges) > 1:
        edges = edges[1:]  # nothing would fall below the first edge
    return tuple(float(e) for e in edges)


@persistent("slices.accountant", version=2)
class SliceAccountant:
    """Per-bin labelled/correct counters of one (model, segment), and its explanations.

    `features` lists the (name, kind) of the values passed to `observe` in that order;
    `attributes` the segment attributes read from the segment labels (at `__all__`);
    `profile` maps a feature name to its reference bins (`FeatureBins`) when a profile has them.
    """

    __slots__ = ("features", "attributes", "layout", "offsets", "reservoir", "history", "ring", "block",
                 "reference", "after", "joint", "since", "last_detection", "hold", "refreshed", "warm_n", "stale",
                 "_plan")

    def __init__(self, features: Sequence[tuple[str, str]], attributes: Sequence[str] = (),
                 profile: Mapping[str, FeatureBins] | None = None):
        self.features = _shared(tuple((n, k) for n, k in features))
        self.attributes = _shared(tuple(a for a in attributes if a not in dict(self.features)))
        profile = profile or {}
        self.layout: tuple[FeatureBins, ...] | None = None
        self.offsets: tuple[int, ...] = ()
        self.reservoir: list | None = None
        if all(n in profile for n, _ in self.features) and not self.attributes:
            self._set_layout(tuple(profile[n] for n, _ in self.features))
        else:
            # Warm-up: values (numeric, 8 bytes each) or value counts (categorical) per feature, then bins.
            self.reservoir = [profile.get(n) or (array("d") if k == NUMERIC else Counter()) for n, k in self._all()]
        self.warm_n = 0
        self.history: Counts | None = None  # before a drift: the labelled events older than the ring, decaying
        self.ring: list[Counts] = []  # before a drift: the last RECENT full blocks
        self.block: Counts | None = self._new_block() if self.layout is not None else None
        self.reference: Counts | None = None  # set while a drift is active
        self.after: Counts | None = None
        self.joint: JointCounts | None = None  # while a drift is active, from JOINT_AT labelled events on
        self.since: float | None = None
        self.last_detection = -math.inf
        self.hold = 0.0
        self.refreshed = 0  # how many of REFRESH_AT have been passed
        self.stale = False  # its bins come from a replaced profile: the owner rebuilds it once no drift is active

    def _all(self) -> list[tuple[str, str]]:
        return list(self.features) + [(a, SEGMENT) for a in self.attributes]

    def _new_block(self) -> Counts:
        return Counts(self.size, typecode="H")  # a block counts at most BLOCK events: 16 bits do

    @property
    def size(self) -> int:
        return sum(f.size for f in self.layout) if self.layout is not None else 0

    @property
    def active(self) -> bool:
        return self.after is not None

    def windows(self) -> list[Counts]:
        return [c for c in (self.history, *self.ring, self.block, self.reference, self.after) if c is not None]

    def counters(self) -> int:
        """Counter pairs held now in windows (at most size x (RECENT + 2)); the joint tables aside."""
        return self.size * len(self.windows())

    def counter_bytes(self) -> int:
        """Bytes of the counter arrays held now (windows and joint tables)."""
        arrays = [w.c for w in self.windows()] + ([self.joint.c] if self.joint is not None else [])
        return sum(len(a) * a.itemsize for a in arrays)

    def _set_layout(self, layout: tuple[FeatureBins, ...]) -> None:
        self.layout = layout
        offsets, off = [], 0
        for fb in layout:
            offsets.append(off)
            off += fb.size
        self.offsets = tuple(offsets)
        self._compile()

    def _compile(self) -> None:
        # The hot loop's plan: per feature, (source index or attribute name, offset, numeric, edges
        # or the categories' slots (offset added), missing slot, other slot).
        plan = []
        nf = len(self.features)
        for j, (fb, off) in enumerate(zip(self.layout, self.offsets)):
            src = j if j < nf else fb.name
            index = {c: off + i for i, c in enumerate(fb.categories)} if fb.kind != NUMERIC else None  # slots
            plan.append((src, off, fb.kind == NUMERIC, fb.edges, index, off + fb.missing,
                         off + len(fb.categories)))
        self._plan = plan

    # -- feeding -------------------------------------------------------------------------------
    def observe(self, values: Sequence | None, segments: Sequence[str] | None, correct: bool,
                timestamp: float) -> int | None:
        """One labelled outcome; returns the labelled count after the change point when it just
        reached one of REFRESH_AT (the caller emits a refreshed explanation), else None."""
        after = self.after
        if after is not None and timestamp > self.last_detection + self.hold:
            self._end()
            after = None
        if self.layout is None:
            self._warm(values, segments)
            return None
        if after is not None:
            joint = self.joint
            if joint is None:
                self._count(after, values, segments, correct, timestamp)
                if after.n >= JOINT_AT:
                    self._track()
            elif joint.n >= JOINT_MAX:
                self._count(after, values, segments, correct, timestamp)
            else:
                bins: list[int] = []
                self._count(after, values, segments, correct, timestamp, bins)
                offsets = self.offsets
                joint.observe([bins[f] - offsets[f] for f in joint.features], correct)
            if self.refreshed < len(REFRESH_AT) and after.n >= REFRESH_AT[self.refreshed]:
                self.refreshed += 1
                return after.n
            return None
        block = self.block
        self._count(block, values, segments, correct, timestamp)
        if block.n >= BLOCK:
            self.ring.append(block)
            if len(self.ring) > RECENT:
                self._retire(self.ring.pop(0))
            self.block = self._new_block()
        return None

    def _retire(self, block: Counts) -> None:
        # A block leaving the ring joins the history; past HISTORY events the history's counters
        # are halved first, so the reference weighs recent traffic most and stays bounded.
        h = self.history
        if h is None:
            h = self.history = Counts(self.size)
        if h.n + block.n > HISTORY:
            h.halve()
        h.merge(block)

    def _count(self, c: Counts, values, segments, correct: bool, timestamp: float, keep: list | None = None) -> None:
        if c.start is None:
            c.start = timestamp
        c.n += 1
        a = c.c
        size = len(a) >> 1
        if correct:
            c.correct += 1
        attrs = _attributes(segments) if self.attributes else None
        nv = len(values) if values is not None else 0
        for src, off, numeric, edges, index, missing, other in self._plan:
            if type(src) is int:
                v = values[src] if src < nv else None
            else:
                v = attrs.get(src) if attrs else None
            if v is None:
                i = missing
            elif numeric:
                t = type(v)
                i = off + bisect_right(edges, v) if (t is float or t is int) and v == v else missing
            else:
                i = index.get(v if type(v) is str else category_key(v), other)
            a[i] += 1
            if correct:
                a[size + i] += 1
            if keep is not None:
                keep.append(i)

    def _warm(self, values, segments) -> None:
        attrs = _attributes(segments) if self.attributes else {}
        nv = len(values) if values is not None else 0
        for j, (name, kind) in enumerate(self._all()):
            res = self.reservoir[j]
            if isinstance(res, FeatureBins):
                continue
            v = (values[j] if j < nv else None) if kind != SEGMENT else attrs.get(name)
            if v is None:
                continue
            if kind == NUMERIC:
                if (type(v) is float or type(v) is int) and math.isfinite(v):
                    res.append(v)
            else:
                key = v if type(v) is str else category_key(v)
                if key in res or len(res) < MAX_WARMUP_KEYS:
                    res[key] += 1
        self.warm_n += 1
        if self.warm_n >= WARMUP:
            layout = []
            for (name, kind), res in zip(self._all(), self.reservoir):
                if isinstance(res, FeatureBins):
                    layout.append(res)
                elif kind == NUMERIC:
                    layout.append(FeatureBins(name, kind, quantile_edges(res)))
                else:
                    top = sorted(res.items(), key=lambda kv: (-kv[1], kv[0]))[:CATEGORIES]
                    layout.append(FeatureBins(name, kind, categories=tuple(k for k, _ in top)))
            self.reservoir = None
            self._set_layout(tuple(layout))
            self.block = self._new_block()

    # -- drifts --------------------------------------------------------------------------------
    def detected(self, timestamp: float, hold: float) -> "Explanation":
        """An error drift "up" at `timestamp`: place the change point (unless this drift is
        already active) and explain it. The drift stays active until `hold` seconds of event
        time pass without another detection."""
        self.last_detection = timestamp
        self.hold = hold
        if self.after is None and self.layout is not None:
            self._split()
        return self.explain()

    def start(self, since: float) -> None:
        """Begin the "after" window here, everything counted so far being the reference (the
        `driftline explain --since` path); stays active until `end()`."""
        if self.layout is None:
            return
        self._split(at=RECENT + 2)
        self.since = since
        self.last_detection, self.hold = math.inf, 0.0

    def _split(self, at: int | None = None) -> None:
        blocks = [b for b in (self.history, *self.ring, self.block) if b is not None and b.n]
        if at is None:
            at = best_split(blocks)
        ref, after = Counts(self.size), Counts(self.size)
        for b in blocks[:at]:
            ref.merge(b)
        for b in blocks[at:]:
            after.merge(b)
        self.reference, self.after = ref, after
        self.since = after.start
        self.history, self.ring, self.block, self.joint = None, [], None, None
        self.refreshed = sum(1 for k in REFRESH_AT if after.n >= k)
        if len(self.features) <= JOINT_FEATURES or after.n >= JOINT_AT:
            self._track()

    def _track(self) -> None:
        # Joint counts from here on for the features whose slices lead now: enough to tell which
        # of two overlapping slices (correlated features) holds the loss they share.
        # Segment attributes (at `__all__`) are not compared: there the question is which segments
        # account for the drop, and each segment's own explanation says what within it.
        idx = [i for i, fb in enumerate(self.layout) if fb.kind != SEGMENT]
        if len(idx) > JOINT_FEATURES:
            ranked = [f.feature for f in self.explain(top=0).features if f.kind != SEGMENT]
            lead = set(ranked[:JOINT_FEATURES])
            idx = [i for i in idx if self.layout[i].name in lead]
        self.joint = JointCounts(idx, [self.layout[i].size for i in idx])

    def _end(self) -> None:
        # The model's new level is the norm now: the window since the change point becomes the
        # history a next drift is measured against.
        after = self.after
        while after.n > HISTORY:
            after.halve()
        self.history = after if after.n else None
        self.reference = self.after = self.since = self.joint = None
        self.ring, self.block = [], self._new_block()
        self.refreshed = 0

    def end(self) -> None:
        if self.after is not None:
            self._end()

    # -- explaining ------------------------------------------------------------------------------
    def explain(self, top: int = TOP) -> "Explanation":
        ref, after = self.reference, self.after
        if self.layout is None or ref is None or after is None:
            return Explanation(self.since, 0, None, after.n if after is not None else 0,
                               after.accuracy() if after is not None else None, (), ())
        return explain(self.layout, self.offsets, ref, after, self.since, top, self.joint)

    # -- snapshot: plain values only -------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        res = None
        if self.reservoir is not None:
            res = [{"bins": r.to_state()} if isinstance(r, FeatureBins) else
                   {"values": r.tolist()} if isinstance(r, array) else {"counts": dict(r)} for r in self.reservoir]
        c = lambda x: x.to_state() if x is not None else None  # noqa: E731
        return {"features": [list(f) for f in self.features], "attributes": list(self.attributes),
                "layout": [fb.to_state() for fb in self.layout] if self.layout is not None else None,
                "reservoir": res, "warm_n": self.warm_n, "history": c(self.history),
                "ring": [b.to_state() for b in self.ring], "block": c(self.block), "reference": c(self.reference),
                "after": c(self.after), "joint": c(self.joint), "since": self.since,
                "last_detection": self.last_detection, "hold": self.hold, "refreshed": self.refreshed,
                "stale": self.stale}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "SliceAccountant":
        acc = cls.__new__(cls)
        acc.features = _shared(tuple((n, k) for n, k in s["features"]))
        acc.attributes = _shared(tuple(s["attributes"]))
        acc.layout, acc.offsets = None, ()
        if s["layout"] is not None:
            acc._set_layout(tuple(FeatureBins.from_state(x) for x in s["layout"]))
        acc.reservoir = None
        if s["reservoir"] is not None:
            acc.reservoir = [FeatureBins.from_state(r["bins"]) if "bins" in r else
                             array("d", r["values"]) if "values" in r else Counter(r["counts"]) for r in s["reservoir"]]
        acc.warm_n = s["warm_n"]
        c = lambda x: Counts.from_state(x) if x is not None else None  # noqa: E731
        acc.history = c(s.get("history"))
        acc.ring = [Counts.from_state(b) for b in s["ring"]]
        while len(acc.ring) > RECENT:  # a version-1 state kept 16 blocks
            acc._retire(acc.ring.pop(0))
        acc.block, acc.reference, acc.after = c(s["block"]), c(s["reference"]), c(s["after"])
        acc.joint = JointCounts.from_state(s["joint"]) if s.get("joint") is not None else None
        acc.since, acc.last_detection, acc.hold, acc.refreshed = s["since"], s["last_detection"], s["hold"], s["refreshed"]
        acc.stale = s.get("stale", False)
        return acc

    @classmethod
    def upgrade_state(cls, version: int, fields: dict) -> dict:
        """Version 1 (a ring of 16 blocks, two 64-bit lists per window) reads as version 2: its
        older blocks become the history, the windows' counts carry over."""
        return dict(fields)  # from_state reads both (missing history/joint, old count lists)

    def __getstate__(self) -> dict:
        return self.to_state()

    def __setstate__(self, state: dict) -> None:
        other = SliceAccountant.from_state(state)
        for name in SliceAccountant.__slots__:
            if hasattr(other, name):
                setattr(self, name, getattr(other, name))


_SHARED: dict[tuple, tuple] = {}


def _shared(t: tuple) -> tuple:
    """One copy of an equal tuple of names for all accountants (thousands of segments of a
    model hold the same feature list)."""
    if len(_SHARED) > 10_000:
        _SHARED.clear()
    return _SHARED.setdefault(t, t)


def _attributes(segments: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for s in segments or ():
        attr, sep, value = s.partition("=")
        if sep:
            out[attr] = value
    return out


def best_split(blocks: Sequence[Counts]) -> int:
    """The index of the first block after the change: the boundary whose two sides' error rates
    differ most (errors after higher), standardised by the sides' sizes; the reference keeps at
    least MIN_REFERENCE events. With no such boundary, only the newest block is "after"."""
    total_n = sum(b.n for b in blocks)
    total_err = sum(b.n - b.correct for b in blocks)
    best, best_at = 0.0, max(len(blocks) - 1, 0)
    n_ref = err_ref = 0
    for j in range(1, len(blocks)):
        n_ref += blocks[j - 1].n
        err_ref += blocks[j - 1].n - blocks[j - 1].correct
        n_after = total_n - n_ref
        if n_ref < MIN_REFERENCE or n_after <= 0:
            continue
        diff = (total_err - err_ref) / n_after - err_ref / n_ref
        stat = diff * math.sqrt(n_ref * n_after / (n_ref + n_after))
        if stat > best:
            best, best_at = stat, j
    return best_at


@dataclasses.dataclass(frozen=True, slots=True)
class _Candidate:
    evidence: SliceEvidence
    feature: int  # index in the layout
    first: int  # bins first..last of that feature
    last: int
    unharmed_error: float  # the error rate after the change if the slice had lost only what the rest lost
    loss: float  # accuracy lost per event beyond the rest's loss (the slice's purity)


def explain(layout: Sequence[FeatureBins], offsets: Sequence[int], ref: Counts, after: Counts,
            since: float | None, top: int = TOP, joint: JointCounts | None = None) -> Explanation:
    """Rank the slices (a bin, or a run of up to MAX_RUN adjacent numeric bins) of every feature by
    their contribution to the drop from `ref` to `after`; overlapping slices of one feature are
    listed once (the best). With joint counts, the order of the leading JOINT_TOP may change
    where two of them share their loss (`_holds_the_loss`)."""
    a_ref, a_after = ref.accuracy(), after.accuracy()
    if not ref.n or not after.n:
        return Explanation(since, ref.n, a_ref, after.n, a_after, (), ())
    p = min(a_ref, a_after)
    var = max(p * (1 - p), 1e-4)  # of one outcome, at the worse window's accuracy
    candidates: list[_Candidate] = []
    shifts: list[FeatureShift] = []
    ref_lab, ref_cor, after_lab, after_cor = ref.lab, ref.cor, after.lab, after.cor
    for k, (fb, off) in enumerate(zip(layout, offsets)):
        best, mix = 0.0, 0.0
        counts = [(ref_lab[off + i], after_lab[off + i], ref_cor[off + i], after_cor[off + i]) for i in range(fb.size)]
        for lb, la, cb, _ in counts:  # traffic moving between bins, at their reference accuracies
            mix += (lb / ref.n - la / after.n) * (cb + PRIOR * a_ref) / (lb + PRIOR)
        runs = MAX_RUN if fb.kind == NUMERIC else 1
        values = fb.missing  # the value bins (numeric) come first; `missing` is never merged
        # A run of bins is a candidate only if each of its bins lost clearly more than the rest
        # (one standard error): a run padded with unharmed bins says less than its core.
        harmed = [runs > 1 and bool(c[1]) and _contribution(ref, after, *c, a_ref, var, 1.0) > 0 for c in counts]
        for i in range(fb.size):
            for j in range(i, min(i + runs, values) if i < values else i + 1):
                if j > i and not all(harmed[i:j + 1]):
                    break
                lb = sum(c[0] for c in counts[i:j + 1])
                la = sum(c[1] for c in counts[i:j + 1])
                if not la:
                    continue
                cb = sum(c[2] for c in counts[i:j + 1])
                ca = sum(c[3] for c in counts[i:j + 1])
                c = _contribution(ref, after, lb, la, cb, ca, a_ref, var)
                best = max(best, c)
                label, lower, _, category = fb.describe(i)
                if j > i:
                    upper = fb.describe(j)[2]
                    label = f"[{_num(lower, '-inf')}, {_num(upper, '+inf')})"
                else:
                    upper = fb.describe(i)[2]
                pb, pa, rest = _rates(ref, after, lb, la, cb, ca, a_ref)
                candidates.append(_Candidate(SliceEvidence(
                    fb.name, label, lower, upper, category, lb, _r(cb / lb if lb else None), la, _r(ca / la),
                    round(lb / ref.n, 6), round(la / after.n, 6), round(c, 6)), k, i, j,
                    min(max(1 - pb + rest, 0.005), 0.995), pb - pa - rest))
        moved = psi(ref_lab[off:off + fb.size], after_lab[off:off + fb.size])
        shifts.append(FeatureShift(fb.name, fb.kind, round(moved, 6), round(best, 6), round(mix, 6)))
    # Only slices that account for part of the drop are listed (the rest is in `features`), and
    # of overlapping runs of one feature only the best.
    candidates.sort(key=lambda t: -t.evidence.contribution)
    taken: dict[int, list[tuple[int, int]]] = {}
    listed: list[_Candidate] = []
    for cand in candidates:
        if cand.evidence.contribution <= 0 or len(listed) >= max(top, JOINT_TOP):
            break
        spans = taken.setdefault(cand.feature, [])
        if any(cand.first <= b and a <= cand.last for a, b in spans):
            continue
        spans.append((cand.first, cand.last))
        listed.append(cand)
    if joint is not None:
        listed = _joint_order(listed, joint)
    shifts.sort(key=lambda f: -f.contribution)
    return Explanation(since, ref.n, a_ref, after.n, a_after, tuple(c.evidence for c in listed[:top]), tuple(shifts))


def _joint_order(listed: list[_Candidate], joint: JointCounts) -> list[_Candidate]:
    """The leading JOINT_TOP slices, each place taken by the slice that holds the loss against
    every other still unplaced (`_holds_the_loss`), in contribution order otherwise."""
    lead, tail = list(listed[:JOINT_TOP]), listed[JOINT_TOP:]
    out = []
    while lead:
        holder = lead[0]
        for other in lead[1:]:
            if _holds_the_loss(other, holder, joint):
                holder = other
        lead.remove(holder)
        out.append(holder)
    return out + tail


def _holds_the_loss(b: _Candidate, a: _Candidate, joint: JointCounts) -> bool:
    """Does slice `b` hold the loss it shares with slice `a` (listed before it), by the joint
    counts since the drift's leading features were chosen? Only when their common traffic lost
    clearly (Z_JOINT standard errors beyond what either would have lost unharmed). Then two
    explanations of the same errors compete: "the loss is confined to a" (a's traffic, also where
    it lies outside b, errs at one raised rate; b's traffic outside a errs as if unharmed) and the
    same for b. b holds the loss if its explanation is LLR_MARGIN times e (nats) more likely: e.g.
    b inside a, where a's own part errs at the unharmed rate (a is b diluted by unharmed traffic)."""
    r = joint.regions(a.feature, a.first, a.last, b.feature, b.first, b.last)
    if r is None:
        return False
    n_a, e_a, n_ab, e_ab, n_b, e_b = r
    if _excess_z(e_ab, n_ab, max(a.unharmed_error, b.unharmed_error)) < Z_JOINT:
        return False
    rate_a = max((e_a + e_ab) / (n_a + n_ab), a.unharmed_error)
    rate_b = max((e_b + e_ab) / (n_b + n_ab), b.unharmed_error)
    confined_to_a = _ll(e_a + e_ab, n_a + n_ab, rate_a) + _ll(e_b, n_b, b.unharmed_error)
    confined_to_b = _ll(e_b + e_ab, n_b + n_ab, rate_b) + _ll(e_a, n_a, a.unharmed_error)
    return confined_to_b - confined_to_a > LLR_MARGIN


def _ll(errors: int, n: int, rate: float) -> float:
    """Binomial log-likelihood of `errors` in `n` at `rate` (without the constant)."""
    rate = min(max(rate, 1e-6), 1 - 1e-6)
    return errors * math.log(rate) + (n - errors) * math.log(1 - rate)


def _excess_z(errors: int, n: int, q: float) -> float:
    """Standard errors by which `errors` of `n` exceed an error rate `q` (one pseudo-event of
    variance keeps small counts from looking certain)."""
    return (errors - n * q) / math.sqrt(n * q * (1 - q) + 1)


def _rates(ref: Counts, after: Counts, lb: int, la: int, cb: int, ca: int, prior: float) -> tuple[float, float, float]:
    """(accuracy before, accuracy after, both shrunk toward `prior` by PRIOR pseudo-events; the rest
    of the traffic's own loss)."""
    pb = (cb + PRIOR * prior) / (lb + PRIOR)
    pa = (ca + PRIOR * prior) / (la + PRIOR)
    rb, ra = ref.n - lb, after.n - la
    rest = (ref.correct - cb) / rb - (after.correct - ca) / ra if rb > 0 and ra > 0 else 0.0
    return pb, pa, rest


def _contribution(ref: Counts, after: Counts, lb: int, la: int, cb: int, ca: int, prior: float,
                  var: float, z: float = None) -> float:
    """share_after x (the slice's accuracy loss - the rest's - Z standard errors of that difference)."""
    rb, ra = ref.n - lb, after.n - la
    if rb <= 0 or ra <= 0:
        return 0.0  # the slice is all the traffic: nothing to single out
    # The rest of the traffic's own loss: a slice is blamed only for what it lost beyond it (a bin
    # that merely holds much of the traffic loses like the whole segment).
    pb, pa, rest = _rates(ref, after, lb, la, cb, ca, prior)
    # Z standard errors off: a large slice's noise (times its large share) must not rank it, nor
    # a large slice that holds a correlated part of the real one (a feature that shifted).
    se = math.sqrt(var * (1 / (lb + PRIOR) + 1 / (la + PRIOR) + 1 / rb + 1 / ra))
    return (la / after.n) * (pb - pa - rest - (Z if z is None else z) * se)


def profile_bins(binners: Sequence) -> dict[str, FeatureBins]:
    """The reference bins of a baseline profile's feature binners (detectors/baseline.py's
    `Binner`), by feature name."""
    from driftline.detectors.baseline import FEATURE_SOURCE

    out = {}
    for b in binners:
        if b.source != FEATURE_SOURCE:
            continue
        if b.numeric:
            out[b.name] = FeatureBins(b.name, NUMERIC, tuple(float(e) for e in b.edges))
        else:
            cats: list[str | None] = [None] * b.other
            for c, i in b.index.items():
                if i < b.other and type(c) is str:
                    cats[i] = c
            out[b.name] = FeatureBins(b.name, CATEGORICAL, categories=tuple(c for c in cats if c is not None))
    return out
