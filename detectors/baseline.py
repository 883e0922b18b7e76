"""Reference baselines: what a model was trained or validated on, and how far live traffic moved.

A `BaselineProfile` describes a data set, built by `ProfileBuilder` from plain rows (features,
prediction, score, label), per slice: the whole model (`__all__`) and each segment value with
enough rows (`attr=value`, the live segment labels). A segment is a slice of the population and
its inputs differ from the whole model's by construction, so each segment is compared with its
own reference; a live segment without one (a value too rare in the data, `attr=__other__`) is
compared with `__all__`'s. Per slice, each configured feature, the prediction and the score have
a binned `Distribution`:

- numeric: quantile bin edges (values of the sample; bins are right-closed, `(e[i-1], e[i]]`),
  plus an edge just below the minimum and one at the maximum, so that live values outside the
  reference range fall into bins of their own; min and max;
- categorical: the most frequent categories, one bin each, and one bin for every other value
  (rare ones and unseen ones); the known categories (up to 1,000), for the unseen check.

Live values are binned with the same edges (`Binner`: one bisect or one dict lookup) into a ring
buffer of bin indices per (segment, signal) (`Window`: O(1) per value, one byte per slot). At
scrape time `compare()` gives, in O(bins):

- PSI = sum_i (q_i - p_i) ln(q_i / p_i), with additive smoothing of both sides:
  p_i = (c_i + 0.5) / (N + 0.5 k), so that an empty bin costs a finite amount;
- JS distance = sqrt(JS divergence) with log base 2, in [0, 1], on the unsmoothed shares (as
  scipy.spatial.distance.jensenshannon(p, q, base=2));
- KS = max_i |F_ref(e_i) - F_live(e_i)| over the bin edges: the two-sample Kolmogorov-Smirnov
  statistic evaluated at the edges only. It is never above the exact statistic, and below it by
  at most the largest share of one bin in either sample (~1/bins for the reference).

>>> spec = ModelSpec(name="m", features={"x": "numeric", "c": "categorical"})
>>> builder = ProfileBuilder(spec, bins=4)
>>> for i in range(100):
...     builder.add({"x": float(i), "c": "ab"[i % 2]}, prediction=i % 2, score=None)
>>> profile = builder.build(model_version="v1", environment="training", created=0.0)
>>> x = profile.slice("__all__").features["x"]
>>> x.edges, x.counts
((-5e-324, 24.0, 49.0, 74.0, 99.0), (0, 25, 25, 25, 25, 0))
>>> round(psi(x.counts, (0, 25, 25, 25, 25, 0)), 6), round(psi(x.counts, (0, 0, 0, 50, 50, 0)), 3)
(0.0, 2.24)
>>> ks_statistic(x.counts, (0, 0, 0, 50, 50, 0)), round(js_distance(x.counts, (0, 0, 0, 50, 50, 0)), 4)
(0.5, 0.5579)
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime as _dt
import functools
import hashlib
import math
import random
from array import array
from collections import Counter
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import orjson

from driftline.detectors.segments import format_value
from driftline.detectors.spec import ALL_SEGMENT, ModelSpec
from driftline.detectors.state import persistent

FORMAT = "driftline.baseline/1"
DEFAULT_BINS = 20
MAX_BINS = 100  # + 2 range bins + missing + invalid: a bin index fits in one byte
SMOOTHING = 0.5  # pseudo-count added to every bin for PSI (Jeffreys / Krichevsky-Trofimov)
MAX_KNOWN_CATEGORIES = 1000  # categories kept per feature for the unseen check (as categorical.py)
MAX_TRACKED_CATEGORIES = 10 * MAX_KNOWN_CATEGORIES  # distinct values counted while building
SAMPLE_SIZE = 200_000  # numeric values kept per (slice, signal) while building: a uniform sample
MAX_SEGMENT_VALUES = 1000  # values of one segment attribute tracked while building
DEFAULT_MIN_SEGMENT_ROWS = 100  # rows a segment value needs for a reference of its own

PREDICTION, SCORE = "prediction", "score"
FEATURE_SOURCE, PREDICTION_SOURCE, SCORE_SOURCE = 0, 1, 2
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class ProfileError(ValueError):
    """A profile that cannot be read or does not fit the model's config."""


def category_key(value: object) -> str:
    """Categories compare as strings: numbers as numbers (1 == 1.0), booleans as true/false."""
    return value if type(value) is str else format_value(value)


# ------------------------------------------------------------------------------------------ profile
@dataclasses.dataclass(frozen=True)
class Distribution:
    """One signal's reference in one slice: bins and counts of the valid values, missing, invalid."""

    kind: str  # numeric | categorical
    counts: tuple[int, ...]
    missing: int = 0
    invalid: int = 0  # values of the wrong type (a string for a numeric feature)
    edges: tuple[float, ...] = ()  # numeric: len(counts) - 1 increasing edges
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()  # categorical: bins 0..m-1; bin m holds every other value
    known: tuple[str, ...] = ()  # categorical: every category seen (most frequent first), capped
    truncated: bool = False  # categorical: more distinct values than `known` holds

    @property
    def valid(self) -> int:
        return sum(self.counts)

    @property
    def rows(self) -> int:
        return self.valid + self.missing + self.invalid

    @property
    def missing_ratio(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "counts": list(self.counts), "missing": self.missing,
                             "invalid": self.invalid}
        if self.kind == "numeric":
            d.update(edges=list(self.edges), min=self.minimum, max=self.maximum)
        else:
            d.update(categories=list(self.categories), known=list(self.known), truncated=self.truncated)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Distribution":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: must be an object")
        kind = d.get("kind")
        counts = d.get("counts")
        if kind not in ("numeric", "categorical"):
            raise ProfileError(f"{where}.kind: must be numeric or categorical (got {kind!r})")
        if (not isinstance(counts, list) or not counts or len(counts) > MAX_BINS + 2
                or not all(type(c) is int and c >= 0 for c in counts)):
            raise ProfileError(f"{where}.counts: must be 1 to {MAX_BINS + 2} counts (integers >= 0)")
        missing, invalid = d.get("missing", 0), d.get("invalid", 0)
        if type(missing) is not int or type(invalid) is not int or missing < 0 or invalid < 0:
            raise ProfileError(f"{where}: missing and invalid must be integers >= 0")
        if kind == "numeric":
            edges = d.get("edges")
            if (not isinstance(edges, list) or len(edges) != len(counts) - 1
                    or not all(type(e) in (int, float) and math.isfinite(e) for e in edges)
                    or any(a >= b for a, b in zip(edges, edges[1:]))):
                raise ProfileError(f"{where}.edges: must be {len(counts) - 1} increasing numbers (one fewer than counts)")
            lo, hi = d.get("min"), d.get("max")
            if (lo is None) != (hi is None) or (lo is not None and not (
                    type(lo) in (int, float) and type(hi) in (int, float) and lo <= hi)):
                raise ProfileError(f"{where}: min and max must be numbers with min <= max (or both null)")
            return cls("numeric", tuple(counts), missing, invalid, tuple(float(e) for e in edges),
                       None if lo is None else float(lo), None if hi is None else float(hi))
        cats, known = d.get("categories"), d.get("known", [])
        if not isinstance(cats, list) or len(cats) != len(counts) - 1 or not all(type(c) is str for c in cats):
            raise ProfileError(f"{where}.categories: must be {len(counts) - 1} strings (one fewer than counts)")
        if len(set(cats)) != len(cats):
            raise ProfileError(f"{where}.categories: names a category twice")
        if not isinstance(known, list) or not all(type(c) is str for c in known):
            raise ProfileError(f"{where}.known: must be a list of strings")
        return cls("categorical", tuple(counts), missing, invalid, categories=tuple(cats), known=tuple(known),
                   truncated=bool(d.get("truncated", False)))


@dataclasses.dataclass(frozen=True)
class SliceProfile:
    """The reference of one slice (`__all__` or a segment `attr=value`)."""

    rows: int
    features: Mapping[str, Distribution]
    prediction: Distribution | None = None
    score: Distribution | None = None
    labeled: int = 0  # rows with both a prediction and a label
    accuracy: float | None = None  # classification, over the labelled rows
    mae: float | None = None  # regression
    rmse: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rows": self.rows, "features": {n: f.to_dict() for n, f in self.features.items()}}
        for name in ("prediction", "score"):
            dist = getattr(self, name)
            if dist is not None:
                d[name] = dist.to_dict()
        d["labeled"] = self.labeled
        for name in ("accuracy", "mae", "rmse"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "SliceProfile":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: must be an object")
        feats = d.get("features", {})
        if not isinstance(feats, dict):
            raise ProfileError(f"{where}.features: must map feature names to distributions")
        rows, labeled = d.get("rows", 0), d.get("labeled", 0)
        if type(rows) is not int or type(labeled) is not int or rows < 0 or labeled < 0:
            raise ProfileError(f"{where}: rows and labeled must be integers >= 0")
        extra = {}
        for name in ("accuracy", "mae", "rmse"):
            v = d.get(name)
            if v is not None and (type(v) not in (int, float) or not math.isfinite(v) or v < 0):
                raise ProfileError(f"{where}.{name}: must be a number >= 0")
            extra[name] = None if v is None else float(v)
        return cls(
            rows=rows,
            features=MappingProxyType({str(n): Distribution.from_dict(f, f"{where}.features.{n}") for n, f in feats.items()}),
            prediction=Distribution.from_dict(d[PREDICTION], f"{where}.prediction") if d.get(PREDICTION) is not None else None,
            score=Distribution.from_dict(d[SCORE], f"{where}.score") if d.get(SCORE) is not None else None,
            labeled=labeled, **extra,
        )


def format_time(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: Any, where: str) -> float:
    try:
        t = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ProfileError(f"{where}: must be an RFC 3339 time like 2026-01-01T00:00:00Z (got {text!r})") from None
    if t.tzinfo is None:
        raise ProfileError(f"{where}: must carry a UTC offset (got {text!r})")
    return t.timestamp()


def valid_name(text: Any) -> bool:
    return isinstance(text, str) and 0 < len(text) <= 64 and set(text) <= NAME_CHARS


@dataclasses.dataclass(frozen=True)
class BaselineProfile:
    """A model's reference profile: one model version, one environment (training, validation, ...)."""

    model: str
    model_version: str
    environment: str
    created: float  # Unix seconds
    task: str
    bins: int
    slices: Mapping[str, SliceProfile]  # "__all__" and "attr=value"
    source: str = ""  # what it was built from (a file name)
    # LLM models: per slice label, {"embedding": EmbeddingReference dict, "calls": n} (detectors/llm.py)
    llm: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def key(self) -> str:
        """The key on the baselines topic: one profile per model, version and environment."""
        return f"{self.model}/{self.model_version}/{self.environment}"

    @functools.cached_property
    def digest(self) -> str:
        """Identifies the content: a change of profile resets the live windows, a re-publish does not."""
        return hashlib.sha256(self.to_json(indent=False)).hexdigest()[:16]

    @property
    def overall(self) -> SliceProfile:
        return self.slices[ALL_SEGMENT]

    def slice(self, segment: str) -> SliceProfile:
        """The segment's reference, or the whole model's when the segment has none."""
        return self.slices.get(segment) or self.slices[ALL_SEGMENT]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "model_version": self.model_version,
                "environment": self.environment, "created": format_time(self.created), "task": self.task,
                "bins": self.bins, "source": self.source,
                "segments": {label: s.to_dict() for label, s in self.slices.items()},
                **({"llm": {k: dict(v) for k, v in self.llm.items()}} if self.llm else {})}

    def to_json(self, indent: bool = True) -> bytes:
        opts = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        return orjson.dumps(self.to_dict(), option=opts) + (b"\n" if indent else b"")

    @classmethod
    def from_json(cls, raw: bytes | str) -> "BaselineProfile":
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProfileError(f"not valid JSON: {exc}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> "BaselineProfile":
        if not isinstance(d, dict):
            raise ProfileError("a profile is a JSON object")
        if d.get("format") != FORMAT:
            raise ProfileError(f"format: must be {FORMAT!r} (got {d.get('format')!r}); rebuild it with `driftline baseline build`")
        for key in ("model", "model_version", "environment"):
            if not valid_name(d.get(key)):
                raise ProfileError(f"{key}: must be 1-64 of A-Z a-z 0-9 _ . - (got {d.get(key)!r})")
        task = d.get("task")
        if task not in ("classification", "regression", "llm"):
            raise ProfileError(f"task: must be classification, regression or llm (got {task!r})")
        bins = d.get("bins")
        if type(bins) is not int or not 2 <= bins <= MAX_BINS:
            raise ProfileError(f"bins: must be an integer from 2 to {MAX_BINS} (got {bins!r})")
        segs = d.get("segments")
        if not isinstance(segs, dict) or ALL_SEGMENT not in segs:
            raise ProfileError(f"segments: must map segment labels to slices, {ALL_SEGMENT!r} included")
        return cls(
            model=d["model"], model_version=d["model_version"], environment=d["environment"],
            created=parse_time(d.get("created"), "created"), task=task, bins=bins,
            slices=MappingProxyType({str(k): SliceProfile.from_dict(v, f"segments.{k}") for k, v in segs.items()}),
            source=str(d.get("source", "")),
            llm=_llm_section(d.get("llm")),
        )


def _llm_section(raw: Any) -> Mapping[str, Mapping[str, Any]] | None:
    """The `llm` section of a profile: each slice's embedding reference, checked."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProfileError("llm: must map segment labels to {embedding, calls}")
    from driftline.detectors.llm import EmbeddingReference

    out = {}
    for label, entry in raw.items():
        try:
            ref = EmbeddingReference.from_dict(entry["embedding"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"llm.{label}.embedding: not an embedding reference ({exc})") from None
        out[str(label)] = MappingProxyType({"embedding": ref.to_dict(), "calls": int(entry.get("calls", ref.count))})
    return MappingProxyType(out)


# ------------------------------------------------------------------------------------------ building
class _Numeric:
    """Numeric values of one (slice, signal) while building: a uniform sample, exact min and max."""

    __slots__ = ("sample", "seen", "missing", "invalid", "lo", "hi", "rng")

    def __init__(self, seed: int):
        self.sample = array("d")
        self.seen = self.missing = self.invalid = 0
        self.lo, self.hi = math.inf, -math.inf
        self.rng = random.Random(seed)  # seeded: the same data gives the same profile

    def add(self, v: object) -> None:
        if v is None:
            self.missing += 1
            return
        t = type(v)
        if (t is not float and t is not int) or not math.isfinite(v):
            self.invalid += 1
            return
        v = float(v)
        self.seen += 1
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v
        if len(self.sample) < SAMPLE_SIZE:
            self.sample.append(v)
        else:  # reservoir sampling (Vitter's algorithm R)
            j = self.rng.randrange(self.seen)
            if j < SAMPLE_SIZE:
                self.sample[j] = v

    def distribution(self, bins: int) -> Distribution:
        import numpy as np

        if not self.sample:
            return Distribution("numeric", (0,), self.missing, self.invalid)
        v = np.frombuffer(self.sample, dtype=float)
        qs = np.quantile(v, np.arange(1, bins) / bins, method="inverted_cdf")
        edges = sorted({math.nextafter(self.lo, -math.inf), self.hi, *(float(q) for q in qs)})
        counts = np.bincount(np.searchsorted(np.asarray(edges), v, side="left"), minlength=len(edges) + 1)
        return Distribution("numeric", tuple(int(c) for c in counts), self.missing, self.invalid,
                            tuple(edges), self.lo, self.hi)


class _Categorical:
    __slots__ = ("counts", "missing", "invalid", "overflow")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.missing = self.invalid = self.overflow = 0

    def add(self, v: object) -> None:
        if v is None:
            self.missing += 1
            return
        if type(v) not in (str, int, float, bool):
            self.invalid += 1
            return
        key = category_key(v)
        if key in self.counts or len(self.counts) < MAX_TRACKED_CATEGORIES:
            self.counts[key] += 1
        else:
            self.overflow += 1

    def distribution(self, bins: int) -> Distribution:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[:bins]
        other = sum(n for _, n in ranked[bins:]) + self.overflow
        known = tuple(k for k, _ in ranked[:MAX_KNOWN_CATEGORIES])
        truncated = self.overflow > 0 or len(ranked) > MAX_KNOWN_CATEGORIES
        return Distribution("categorical", tuple(n for _, n in top) + (other,), self.missing, self.invalid,
                            categories=tuple(k for k, _ in top), known=known, truncated=truncated)


class _Slice:
    """Accumulates one slice's rows."""

    def __init__(self, spec: ModelSpec, seed: int):
        self.rows = 0
        self.features = {name: (_Numeric(seed + i) if kind == "numeric" else _Categorical())
                         for i, (name, kind) in enumerate(spec.features.items())}
        self.regression = spec.task == "regression"
        self.prediction = _Numeric(seed + 1000) if self.regression else _Categorical()
        self.score = _Numeric(seed + 2000)
        self.labeled = self.correct = 0
        self.abs_error = self.sq_error = 0.0

    def add(self, features: Mapping[str, object], prediction: object, score: object, label: object) -> None:
        self.rows += 1
        for name, acc in self.features.items():
            acc.add(features.get(name))
        self.prediction.add(prediction)
        self.score.add(score)
        if prediction is None or label is None:
            return
        if self.regression:
            if type(prediction) in (int, float) and type(label) in (int, float):
                err = float(prediction) - float(label)
                if math.isfinite(err):
                    self.labeled += 1
                    self.abs_error += abs(err)
                    self.sq_error += err * err
        else:
            self.labeled += 1
            self.correct += prediction == label  # as the bank: numbers compare as numbers

    def build(self, bins: int) -> SliceProfile:
        pred = self.prediction.distribution(bins)
        score = self.score.distribution(bins)
        n = self.labeled
        return SliceProfile(
            rows=self.rows,
            features=MappingProxyType({name: acc.distribution(bins) for name, acc in self.features.items()}),
            prediction=pred if pred.valid else None,
            score=score if score.valid else None,
            labeled=n,
            accuracy=self.correct / n if n and not self.regression else None,
            mae=self.abs_error / n if n and self.regression else None,
            rmse=math.sqrt(self.sq_error / n) if n and self.regression else None,
        )


class ProfileBuilder:
    """Profiles rows of training or validation data for one model, per slice.

    Memory: a sample of at most `SAMPLE_SIZE` values per numeric (slice, signal), and the counts
    of at most `MAX_TRACKED_CATEGORIES` values per categorical one; a larger data set is
    profiled from a uniform sample (the reference shares then err by well under 1%).
    """

    def __init__(self, spec: ModelSpec, bins: int = DEFAULT_BINS, min_segment_rows: int = DEFAULT_MIN_SEGMENT_ROWS):
        if not 2 <= bins <= MAX_BINS:
            raise ValueError(f"bins must be from 2 to {MAX_BINS}")
        clash = {PREDICTION, SCORE} & set(spec.features)
        if clash:
            raise ValueError(f"a feature named {sorted(clash)[0]!r} would share its metrics with the model's own "
                             f"{sorted(clash)[0]}: rename the feature")
        self.spec = spec
        self.bins = bins
        self.min_segment_rows = min_segment_rows
        self.rows = 0
        self._all = _Slice(spec, 0)
        self._segments: dict[str, dict[str, _Slice]] = {attr: {} for attr in spec.segments}
        # LLM models: sketch sums of the calls' embeddings per slice label (bounded: 16 + 256 numbers).
        self._embeddings: dict[str, Any] = {}

    def add(self, features: Mapping[str, object], prediction: object = None, score: object = None,
            label: object = None, segment: Mapping[str, object] | None = None,
            embedding: list | None = None) -> None:
        """One row; segment attributes are read from `segment`, else from `features` (as live);
        `embedding`: an LLM call's, for the embedding reference of each of its slices."""
        self.rows += 1
        self._all.add(features, prediction, score, label)
        if embedding:
            self._embed(ALL_SEGMENT, embedding)
        for attr, slices in self._segments.items():
            raw = segment.get(attr) if segment is not None and attr in segment else features.get(attr)
            if raw is None:
                continue
            value = category_key(raw)
            acc = slices.get(value)
            if acc is None:
                if len(slices) >= MAX_SEGMENT_VALUES:
                    continue
                acc = slices[value] = _Slice(self.spec, 7919 * (len(slices) + 1))
            acc.add(features, prediction, score, label)
            if embedding:
                self._embed(f"{attr}={value}", embedding)

    def _embed(self, label: str, embedding: list) -> None:
        from driftline.detectors.llm import EmbeddingSums

        sums = self._embeddings.get(label)
        if sums is None:
            sums = self._embeddings[label] = EmbeddingSums()
        sums.add(embedding)

    def build(self, model_version: str, environment: str, created: float, source: str = "") -> BaselineProfile:
        slices = {ALL_SEGMENT: self._all.build(self.bins)}
        for attr, values in self._segments.items():
            ranked = sorted(values.items(), key=lambda kv: (-kv[1].rows, kv[0]))
            for value, acc in ranked[:self.spec.max_segments]:
                if acc.rows >= self.min_segment_rows:
                    slices[f"{attr}={value}"] = acc.build(self.bins)
        llm = {label: MappingProxyType({"embedding": sums.reference().to_dict(), "calls": sums.n})
               for label, sums in sorted(self._embeddings.items())
               if (label in slices) and sums.n >= self.min_segment_rows}
        return BaselineProfile(self.spec.name, model_version, environment, float(created), self.spec.task,
                               self.bins, MappingProxyType(slices), source, MappingProxyType(llm) if llm else None)


# ------------------------------------------------------------------------------------------ statistics
def psi(ref: Iterable[int], live: Iterable[int], alpha: float = SMOOTHING) -> float:
    """Population stability index of `live` bin counts against `ref`, smoothed by `alpha` per bin."""
    ref, live = list(ref), list(live)
    k = len(ref)
    rn, ln = sum(ref) + alpha * k, sum(live) + alpha * k
    total = 0.0
    for r, l in zip(ref, live):
        p, q = (r + alpha) / rn, (l + alpha) / ln
        total += (q - p) * math.log(q / p)
    return total


def js_distance(ref: Iterable[int], live: Iterable[int]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the bin shares of two count vectors."""
    ref, live = list(ref), list(live)
    rn, ln = sum(ref), sum(live)
    if not rn or not ln:
        return math.nan
    total = 0.0
    for r, l in zip(ref, live):
        p, q = r / rn, l / ln
        m = (p + q) / 2
        if p:
            total += p * math.log2(p / m)
        if q:
            total += q * math.log2(q / m)
    return math.sqrt(max(total / 2, 0.0))


def ks_statistic(ref: Iterable[int], live: Iterable[int]) -> float:
    """Largest gap between the two empirical CDFs at the bin edges (numeric bins in order)."""
    ref, live = list(ref), list(live)
    rn, ln = sum(ref), sum(live)
    if not rn or not ln:
        return math.nan
    rc = lc = 0
    best = 0.0
    for r, l in zip(ref[:-1], live[:-1]):
        rc += r
        lc += l
        gap = abs(rc / rn - lc / ln)
        if gap > best:
            best = gap
    return best


# ------------------------------------------------------------------------------------------ live side
class Binner:
    """Bins one signal's live values against one slice's reference; configuration, not state.

    Slots of a window's counts: 0..k-1 the bins, k missing, k+1 invalid (wrong type), k+2 empty
    (not filled yet). Only the binners of `__all__`'s features check values (`checks`): values
    outside [lo, hi] and unseen categories are counted there, once per event.
    """

    __slots__ = ("name", "source", "numeric", "edges", "lo", "hi", "index", "other", "missing", "invalid",
                 "empty", "slots", "checks", "reference")

    def __init__(self, name: str, source: int, dist: Distribution, range_tolerance: float = 0.1,
                 checks: bool = False):
        self.name = name
        self.source = source
        self.numeric = dist.kind == "numeric"
        self.reference = dist.counts
        k = len(dist.counts)
        self.missing, self.invalid, self.empty, self.slots = k, k + 1, k + 2, k + 3
        self.edges = list(dist.edges)
        self.lo, self.hi = -math.inf, math.inf  # never out of range where nothing is checked
        if checks and self.numeric and dist.minimum is not None:
            span = (dist.maximum - dist.minimum) * range_tolerance
            self.lo, self.hi = dist.minimum - span, dist.maximum + span
        self.other = len(dist.categories)
        index = {c: self.other for c in dist.known}
        index.update((c, i) for i, c in enumerate(dist.categories))
        # Integer values (class labels, codes) are found without formatting them: 3 -> "3".
        index.update([(int(c), i) for c, i in index.items() if c.lstrip("-").isdigit() and str(int(c)) == c])
        self.index = index
        # Unseen categories are counted only where the reference knows every category.
        self.checks = checks and (self.numeric or not dist.truncated)

    def bin(self, value: object) -> int:
        """The window slot of one value (the bank inlines this)."""
        if value is None:
            return self.missing
        if self.numeric:
            t = type(value)
            if (t is not float and t is not int) or not math.isfinite(value):
                return self.invalid
            return bisect.bisect_left(self.edges, value)
        i = self.index.get(category_key(value))
        return self.other if i is None else i


@persistent("baseline.window")
class Window:
    """The last `size` values of one (segment, signal): a ring of slot indices and their counts.

    State (pickled with the bank); what the slots mean comes from the profile it was made for.
    The ring starts full of the `empty` slot, so adding a value never asks whether it is full.
    """

    __slots__ = ("ring", "pos", "size", "counts")

    def __init__(self, size: int, slots: int):
        if slots > 256:
            raise ValueError("at most 256 slots: a slot index is one byte")
        empty = slots - 1
        self.ring = bytearray([empty]) * size
        self.pos = 0
        self.size = size
        self.counts = [0] * slots
        self.counts[empty] = size

    @property
    def filled(self) -> int:
        return self.size - self.counts[-1]

    def add(self, i: int) -> None:
        """One value's slot (the bank inlines this)."""
        ring, pos, counts = self.ring, self.pos, self.counts
        counts[ring[pos]] -= 1
        ring[pos] = i
        counts[i] += 1
        pos += 1
        self.pos = 0 if pos == self.size else pos


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    values: int  # valid values in the window
    filled: int  # values in the window (valid, missing and invalid)
    missing_ratio: float
    psi: float
    js_distance: float
    ks_statistic: float | None  # numeric signals only


def compare(binner: Binner, window: Window) -> Comparison:
    """The window against the binner's reference: O(bins)."""
    counts = window.counts
    k = binner.missing
    live = counts[:k]
    filled = window.filled
    ref = binner.reference
    return Comparison(
        values=sum(live), filled=filled, missing_ratio=counts[k] / filled if filled else 0.0,
        psi=psi(ref, live), js_distance=js_distance(ref, live),
        ks_statistic=ks_statistic(ref, live) if binner.numeric else None,
    )


class CompiledProfile:
    """A profile bound to its model's spec: each slice's binners, the window size, the thresholds."""

    def __init__(self, profile: BaselineProfile, spec: ModelSpec):
        self.profile = profile
        self.id = profile.digest
        self.checks = spec.baseline_checks
        self.window = self.checks.window
        self.problems: list[str] = []
        overall = profile.overall
        for name, kind in spec.features.items():
            dist = overall.features.get(name)
            if dist is None:
                self.problems.append(f"feature {name!r} is not in the profile")
            elif dist.kind != kind:
                self.problems.append(f"feature {name!r} is {dist.kind} in the profile but {kind} in the config")
        self._spec = spec
        self._binners = {label: self._compile(s, label == ALL_SEGMENT) for label, s in profile.slices.items()}
        # Segments without a reference of their own: __all__'s bins, without its checks (those
        # count once per event, at __all__).
        self._fallback = self._compile(overall, False)

    def _compile(self, s: SliceProfile, checks: bool) -> list[Binner]:
        tol = self.checks.range_tolerance
        out = []
        for name, kind in self._spec.features.items():
            dist = s.features.get(name)
            if dist is not None and dist.kind == kind:
                out.append(Binner(name, FEATURE_SOURCE, dist, tol, checks))
        if s.prediction is not None:
            out.append(Binner(PREDICTION, PREDICTION_SOURCE, s.prediction, tol))
        if s.score is not None:
            out.append(Binner(SCORE, SCORE_SOURCE, s.score, tol))
        return out

    def embedding_reference(self, segment: str):
        """The segment's embedding reference (LLM models), else `__all__`'s, else None."""
        llm = self.profile.llm
        if not llm:
            return None
        entry = llm.get(segment) or llm.get(ALL_SEGMENT)
        if entry is None:
            return None
        from driftline.detectors.llm import EmbeddingReference

        return EmbeddingReference.from_dict(entry["embedding"])

    def binners(self, segment: str) -> list[Binner]:
        """The binners of a live segment: its own slice's, or `__all__`'s (without checks)."""
        found = self._binners.get(segment)
        return found if found is not None else self._fallback

    def missing_threshold(self, feature: str) -> float | None:
        dist = self.profile.overall.features.get(feature)
        if dist is None:
            return None
        return min(1.0, dist.missing_ratio + self.checks.missing_increase)


class ProfileBook:
    """The reference profile each model is compared with: configuration shared by a process's banks.

    `generation` changes whenever a model's profile does; a segment whose windows were made for
    another generation checks its profile again on its next event (and resets its windows if the
    profile changed), so a swap costs nothing per event.
    """

    def __init__(self, spec_for: Callable[[str], ModelSpec]):
        self._spec_for = spec_for
        self._compiled: dict[str, CompiledProfile] = {}
        self.generation = 0

    def set(self, model: str, profile: BaselineProfile | None) -> CompiledProfile | None:
        """Use `profile` for `model` (None: no baseline). Returns the compiled profile."""
        old = self._compiled.get(model)
        if profile is None:
            if old is not None:
                del self._compiled[model]
                self.generation += 1
            return None
        if old is not None and old.id == profile.digest:
            return old
        compiled = self._compiled[model] = CompiledProfile(profile, self._spec_for(model))
        self.generation += 1
        return compiled

    def get(self, model: str) -> CompiledProfile | None:
        return self._compiled.get(model)

    def models(self) -> list[str]:
        return sorted(self._compiled)

    def __len__(self) -> int:
        return len(self._compiled)
