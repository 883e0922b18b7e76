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
a drift, the reference is a ring of `BLOCKS` blocks of `BLOCK` labelled events (so the change
point can be placed afterwards: the detectors fire some events after the change). On an error
drift "up", `detected()` places the change point at the block boundary that best separates the
error rates (the split that maximises the standardised difference, as ADWIN's cut does), merges
the blocks before it into the reference and those after into the "after" window, which then
grows until the model's drift hold passes without another detection. Memory per segment:
(bins x features) x (BLOCKS + 2) pairs of 64-bit counters, e.g. 4 features x 12 bins x 18 x 16
bytes ~ 14 KB; no per-event lists (the warm-up reservoir holds at most WARMUP values per numeric
feature, and only until the bins are set).

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

BLOCK = 250  # labelled events per reference block: how finely the change point is placed
BLOCKS = 16  # blocks kept before a drift: 4,000 labelled events of history for the reference
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

MISSING = "missing"
OTHER = "__other__"
NUMERIC, CATEGORICAL, SEGMENT = "numeric", "categorical", "segment"


@dataclasses.dataclass(frozen=True, slots=True)
class FeatureBins:
    """The bins of one feature: configuration once set, never changed while counting."""

    name: str
    kind: str  # numeric | categorical | segment
    edges: tuple[float, ...] = ()  # numeric: bin i is [edges[i-1], edges[i]), first and last open
    categories: tuple[str, ...] = ()  # categorical/segment: bin i is categories[i]; then __other__

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
        return [self.name, self.kind, list(self.edges), list(self.categories)]

    @classmethod
    def from_state(cls, s: Sequence) -> "FeatureBins":
        return cls(s[0], s[1], tuple(s[2]), tuple(s[3]))


def _num(x: float | None, open_end: str) -> str:
    return open_end if x is None else f"{x:.6g}"


class Counts:
    """Labelled and correct counts per bin of every feature (one flat array each), and totals."""

    __slots__ = ("start", "n", "correct", "lab", "cor")

    def __init__(self, size: int, start: float | None = None):
        self.start = start  # event time of the first outcome counted (None while empty)
        self.n = 0
        self.correct = 0
        self.lab = array("l", bytes(8 * size))
        self.cor = array("l", bytes(8 * size))

    def merge(self, other: "Counts") -> None:
        if other.start is not None and (self.start is None or other.start < self.start):
            self.start = other.start
        self.n += other.n
        self.correct += other.correct
        lab, cor = self.lab, self.cor
        for i, v in enumerate(other.lab):
            if v:
                lab[i] += v
        for i, v in enumerate(other.cor):
            if v:
                cor[i] += v

    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_state(self) -> list:
        return [self.start, self.n, self.correct, self.lab.tolist(), self.cor.tolist()]

    @classmethod
    def from_state(cls, s: Sequence) -> "Counts":
        c = cls(len(s[3]), s[0])
        c.n, c.correct = s[1], s[2]
        c.lab, c.cor = array("l", s[3]), array("l", s[4])
        return c


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


@persistent("slices.accountant")
class SliceAccountant:
    """Per-bin labelled/correct counters of one (model, segment), and its explanations.

    `features` lists the (name, kind) of the values passed to `observe` in that order;
    `attributes` the segment attributes read from the segment labels (at `__all__`);
    `profile` maps a feature name to its reference bins (`FeatureBins`) when a profile has them.
    """

    __slots__ = ("features", "attributes", "layout", "offsets", "reservoir", "ring", "block", "reference",
                 "after", "since", "last_detection", "hold", "refreshed", "warm_n", "_plan")

    def __init__(self, features: Sequence[tuple[str, str]], attributes: Sequence[str] = (),
                 profile: Mapping[str, FeatureBins] | None = None):
        self.features = tuple((n, k) for n, k in features)
        self.attributes = tuple(a for a in attributes if a not in dict(self.features))
        profile = profile or {}
        self.layout: tuple[FeatureBins, ...] | None = None
        self.offsets: tuple[int, ...] = ()
        self.reservoir: list | None = None
        if all(n in profile for n, _ in self.features) and not self.attributes:
            self._set_layout(tuple(profile[n] for n, _ in self.features))
        else:
            # Warm-up: values (numeric) or value counts (categorical) per feature, then bins.
            self.reservoir = [profile.get(n) or ([] if k == NUMERIC else Counter()) for n, k in self._all()]
        self.warm_n = 0
        self.ring: list[Counts] = []
        self.block: Counts | None = Counts(self.size) if self.layout is not None else None
        self.reference: Counts | None = None  # set while a drift is active
        self.after: Counts | None = None
        self.since: float | None = None
        self.last_detection = -math.inf
        self.hold = 0.0
        self.refreshed = 0  # how many of REFRESH_AT have been passed

    def _all(self) -> list[tuple[str, str]]:
        return list(self.features) + [(a, SEGMENT) for a in self.attributes]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.layout) if self.layout is not None else 0

    @property
    def active(self) -> bool:
        return self.after is not None

    def counters(self) -> int:
        """Counter pairs held now (the memory bound: size x (BLOCKS + 2) at most)."""
        windows = len(self.ring) + sum(c is not None for c in (self.block, self.reference, self.after))
        return self.size * windows

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
        # or index, missing slot, other slot).
        plan = []
        nf = len(self.features)
        for j, (fb, off) in enumerate(zip(self.layout, self.offsets)):
            src = j if j < nf else fb.name
            index = {c: i for i, c in enumerate(fb.categories)}
            plan.append((src, off, fb.kind == NUMERIC, list(fb.edges), index, off + fb.missing,
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
            self._count(after, values, segments, correct, timestamp)
            if self.refreshed < len(REFRESH_AT) and after.n >= REFRESH_AT[self.refreshed]:
                self.refreshed += 1
                return after.n
            return None
        block = self.block
        self._count(block, values, segments, correct, timestamp)
        if block.n >= BLOCK:
            self.ring.append(block)
            if len(self.ring) > BLOCKS:
                del self.ring[0]
            self.block = Counts(self.size)
        return None

    def _count(self, c: Counts, values, segments, correct: bool, timestamp: float) -> None:
        if c.start is None:
            c.start = timestamp
        c.n += 1
        lab, cor = c.lab, c.cor
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
                i = index.get(v if type(v) is str else category_key(v))
                if i is None:
                    i = other
                else:
                    i += off
            lab[i] += 1
            if correct:
                cor[i] += 1

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
            self.block = Counts(self.size)

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
        self._split(at=len(self.ring) + 1)
        self.since = since
        self.last_detection, self.hold = math.inf, 0.0

    def _split(self, at: int | None = None) -> None:
        blocks = self.ring + ([self.block] if self.block.n else [])
        if at is None:
            at = best_split(blocks)
        ref, after = Counts(self.size), Counts(self.size)
        for b in blocks[:at]:
            ref.merge(b)
        for b in blocks[at:]:
            after.merge(b)
        self.reference, self.after = ref, after
        self.since = after.start
        self.ring, self.block = [], None
        self.refreshed = sum(1 for k in REFRESH_AT if after.n >= k)

    def _end(self) -> None:
        # The model's new level is the norm now: a fresh reference builds up from here.
        self.reference = self.after = self.since = None
        self.ring, self.block = [], Counts(self.size)
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
        return explain(self.layout, self.offsets, ref, after, self.since, top)

    # -- snapshot: plain values only -------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        res = None
        if self.reservoir is not None:
            res = [{"bins": r.to_state()} if isinstance(r, FeatureBins) else
                   {"values": list(r)} if isinstance(r, list) else {"counts": dict(r)} for r in self.reservoir]
        c = lambda x: x.to_state() if x is not None else None  # noqa: E731
        return {"features": [list(f) for f in self.features], "attributes": list(self.attributes),
                "layout": [fb.to_state() for fb in self.layout] if self.layout is not None else None,
                "reservoir": res, "warm_n": self.warm_n, "ring": [b.to_state() for b in self.ring],
                "block": c(self.block), "reference": c(self.reference), "after": c(self.after),
                "since": self.since, "last_detection": self.last_detection, "hold": self.hold,
                "refreshed": self.refreshed}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "SliceAccountant":
        acc = cls.__new__(cls)
        acc.features = tuple((n, k) for n, k in s["features"])
        acc.attributes = tuple(s["attributes"])
        acc.layout, acc.offsets = None, ()
        if s["layout"] is not None:
            acc._set_layout(tuple(FeatureBins.from_state(x) for x in s["layout"]))
        acc.reservoir = None
        if s["reservoir"] is not None:
            acc.reservoir = [FeatureBins.from_state(r["bins"]) if "bins" in r else
                             list(r["values"]) if "values" in r else Counter(r["counts"]) for r in s["reservoir"]]
        acc.warm_n = s["warm_n"]
        acc.ring = [Counts.from_state(b) for b in s["ring"]]
        c = lambda x: Counts.from_state(x) if x is not None else None  # noqa: E731
        acc.block, acc.reference, acc.after = c(s["block"]), c(s["reference"]), c(s["after"])
        acc.since, acc.last_detection, acc.hold, acc.refreshed = s["since"], s["last_detection"], s["hold"], s["refreshed"]
        return acc

    def __getstate__(self) -> dict:
        return self.to_state()

    def __setstate__(self, state: dict) -> None:
        other = SliceAccountant.from_state(state)
        for name in SliceAccountant.__slots__:
            if hasattr(other, name):
                setattr(self, name, getattr(other, name))


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


def explain(layout: Sequence[FeatureBins], offsets: Sequence[int], ref: Counts, after: Counts,
            since: float | None, top: int = TOP) -> Explanation:
    """Rank the slices (a bin, or a run of up to MAX_RUN adjacent numeric bins) of every feature by
    their contribution to the drop from `ref` to `after`; overlapping slices of one feature are
    listed once (the best)."""
    a_ref, a_after = ref.accuracy(), after.accuracy()
    if not ref.n or not after.n:
        return Explanation(since, ref.n, a_ref, after.n, a_after, (), ())
    p = min(a_ref, a_after)
    var = max(p * (1 - p), 1e-4)  # of one outcome, at the worse window's accuracy
    candidates: list[tuple[SliceEvidence, int, int]] = []  # (slice, first bin, last bin)
    shifts: list[FeatureShift] = []
    for fb, off in zip(layout, offsets):
        best, mix = 0.0, 0.0
        counts = [(ref.lab[off + i], after.lab[off + i], ref.cor[off + i], after.cor[off + i]) for i in range(fb.size)]
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
                candidates.append((SliceEvidence(
                    fb.name, label, lower, upper, category, lb, _r(cb / lb if lb else None), la, _r(ca / la),
                    round(lb / ref.n, 6), round(la / after.n, 6), round(c, 6)), i, j))
        moved = psi(ref.lab[off:off + fb.size], after.lab[off:off + fb.size])
        shifts.append(FeatureShift(fb.name, fb.kind, round(moved, 6), round(best, 6), round(mix, 6)))
    # Only slices that account for part of the drop are listed (the rest is in `features`), and
    # of overlapping runs of one feature only the best.
    candidates.sort(key=lambda t: -t[0].contribution)
    taken: dict[str, list[tuple[int, int]]] = {}
    slices: list[SliceEvidence] = []
    for s, i, j in candidates:
        if s.contribution <= 0 or len(slices) >= top:
            break
        spans = taken.setdefault(s.feature, [])
        if any(i <= b and a <= j for a, b in spans):
            continue
        spans.append((i, j))
        slices.append(s)
    shifts.sort(key=lambda f: -f.contribution)
    return Explanation(since, ref.n, a_ref, after.n, a_after, tuple(slices), tuple(shifts))


def _contribution(ref: Counts, after: Counts, lb: int, la: int, cb: int, ca: int, prior: float,
                  var: float, z: float = None) -> float:
    """share_after x (the slice's accuracy loss - the rest's - Z standard errors of that difference)."""
    pb = (cb + PRIOR * prior) / (lb + PRIOR)
    pa = (ca + PRIOR * prior) / (la + PRIOR)
    rb, ra = ref.n - lb, after.n - la
    if not (rb and ra):
        return 0.0  # the slice is all the traffic: nothing to single out
    # The rest of the traffic's own loss: a slice is blamed only for what it lost beyond it (a bin
    # that merely holds much of the traffic loses like the whole segment).
    rest = (ref.correct - cb) / rb - (after.correct - ca) / ra
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
