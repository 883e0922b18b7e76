"""LLM calls: the signals of one call, per-segment counters, and embedding drift from a sketch.

An LLM call (`task: llm`) reaches the bank as an `LLMObservation`: token counts, duration, time
to first token, finish reason, cost (priced at intake from the config's table), evaluator
scores, and the embedding already *projected* to a fixed sketch of `SKETCH_DIM` numbers. The
bank feeds each of these to the same detectors (and false-alarm budget) as any other signal,
under the signal names `duration`, `time_to_first_token`, `input_tokens`, `output_tokens`,
`cost`, `finish_reason` (categorical: surprisal), each evaluation's name, and `embedding`.

Embedding drift (`EmbeddingDrift`, per segment, bounded: no vector is stored):

1. intake: a fixed Gaussian random projection R (SKETCH_DIM x d, seeded, the same in every
   process and in `driftline baseline build`) turns an embedding e into s = R e. Random
   projections keep distances and centroid shifts (Johnson-Lindenstrauss); 16 numbers instead
   of 384 travel on the observations topic.
2. reference: the mean m and covariance C of s over a reference, learnt from the baseline
   profile when the model has one, else from the segment's first `embedding_reference` calls
   (running sums: SKETCH_DIM + SKETCH_DIM^2 numbers), then frozen as the whitening
   W = C^(-1/2) (a PCA of the sketch scaled to unit variance: the learnt projection).
3. live: z = W (s - m) has mean 0 and identity covariance on reference-like traffic.
   - the `embedding` signal of the detectors is |z|^2 / SKETCH_DIM per call (its mean is 1 on
     the reference and grows when calls leave the reference's region);
   - `distance()` is |u| for u an exponentially weighted mean of z with weight a = 2 / (w + 1)
     (w = `embedding_window`): the distance between the live and reference centroids in
     reference standard deviations (Phoenix's centroid distance, whitened). On reference-like
     traffic |u|^2 (2 - a) / a is ~chi-squared with SKETCH_DIM degrees of freedom, so
     `threshold()` is the 0.999 quantile of that, in the units of `distance()`.

>>> ref = EmbeddingReference.learn([[float(i % 3), float(i % 5)] + [0.0] * 14 for i in range(300)])
>>> d = EmbeddingDrift(reference=ref, window=50)
>>> same = [d.observe([float(i % 3), float(i % 5)] + [0.0] * 14) for i in range(200)]
>>> d.distance() < d.threshold()
True
>>> moved = [d.observe([3.0, 6.0] + [0.0] * 14) for i in range(200)]
>>> d.distance() > d.threshold(), moved[-1] > 3 * max(same)
(True, True)
"""
from __future__ import annotations

import dataclasses
import functools
import math
from bisect import bisect_left
from typing import Any, Mapping, NamedTuple, Sequence

from driftline.detectors.state import persistent

try:  # the SDK alone (a plain install) imports LLMCall without numpy
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

SKETCH_DIM = 16
PROJECTION_SEED = 20260117
# OpenTelemetry GenAI semantic conventions, explicit bucket boundaries advised for the
# `gen_ai.client.operation.duration` and `gen_ai.server.time_to_first_token` histograms (s).
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                                       40.96, 81.92)
TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                                   5.0, 7.5, 10.0)
# Distinct finish reasons counted per segment; more fold into "other" (the values come from
# providers, a handful each: stop, length, content_filter, tool_calls, error).
MAX_FINISH_REASONS = 16
OTHER_REASON = "other"
# The chi-squared quantile of the embedding distance's threshold.
EMBEDDING_QUANTILE = 0.999
# Whitening: eigenvalues of the reference covariance below this share of the largest are raised
# to it, so a flat direction of the reference (a constant coordinate) cannot explode z.
EIGEN_FLOOR = 1e-6

# Signal names (the `signal` label of detections).
DURATION, TTFT, INPUT_TOKENS, OUTPUT_TOKENS, COST = "duration", "time_to_first_token", "input_tokens", "output_tokens", "cost"
FINISH_REASON, EMBEDDING = "finish_reason", "embedding"
LLM_SIGNALS = (DURATION, TTFT, INPUT_TOKENS, OUTPUT_TOKENS, COST, FINISH_REASON, EMBEDDING)


@dataclasses.dataclass(frozen=True)
class Price:
    """Currency units per million tokens."""

    input: float
    output: float


@dataclasses.dataclass(frozen=True)
class LLMSpec:
    """The `llm:` block of a `task: llm` model (docs/config.md)."""

    # request_model -> price; "*" prices any request model not listed; no entry: cost unknown.
    prices: Mapping[str, Price] = dataclasses.field(default_factory=dict)
    cost_budget_per_hour: float | None = None  # exported for the cost-burn alert
    embedding_dim: int | None = None  # embeddings of another length are dead-lettered
    embedding_reference: int = 500  # calls a segment learns its embedding reference from
    embedding_window: int = 200  # calls in the live centroid (exponential weights)
    max_evaluations: int = 4  # evaluation names watched per segment; more are counted only
    truncation_share: float = 0.1  # share of calls cut by `length` that pages (alert rule)

    def cost(self, request_model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        price = self.prices.get(request_model) if request_model is not None else None
        if price is None:
            price = self.prices.get("*")
            if price is None:
                return None
        return (input_tokens * price.input + output_tokens * price.output) / 1e6

    def signal_count(self) -> int:
        """Detector signals an LLM call feeds (for the false-alarm budget's split)."""
        return len(LLM_SIGNALS) + self.max_evaluations


class LLMCall(NamedTuple):
    """The `llm` field of an inference event, validated (stream/codec.py)."""

    input_tokens: int
    output_tokens: int
    duration: float
    time_to_first_token: float | None = None
    finish_reason: str | None = None
    request_model: str | None = None
    provider: str | None = None
    evaluations: Mapping[str, float] | None = None
    embedding: Sequence[float] | None = None


class LLMObservation(NamedTuple):
    """What the bank gets of a call (and what travels on the observations topic, as a list)."""

    input_tokens: int
    output_tokens: int
    duration: float
    time_to_first_token: float | None
    finish_reason: str | None
    cost: float | None
    evaluations: Mapping[str, float] | None
    sketch: Sequence[float] | None


@functools.lru_cache(maxsize=8)
def projection(dim: int) -> np.ndarray:
    """The fixed random projection for embeddings of `dim` numbers (legacy RandomState: its
    stream is frozen across numpy versions, so every process builds the same matrix)."""
    rng = np.random.RandomState(PROJECTION_SEED + dim)
    return rng.standard_normal((SKETCH_DIM, dim)) / math.sqrt(SKETCH_DIM)


def sketch(embedding: Sequence[float]) -> list[float]:
    return (projection(len(embedding)) @ np.asarray(embedding, dtype=np.float64)).tolist()


def observation(call: LLMCall, spec: LLMSpec) -> LLMObservation:
    return LLMObservation(
        call.input_tokens, call.output_tokens, call.duration, call.time_to_first_token, call.finish_reason,
        spec.cost(call.request_model, call.input_tokens, call.output_tokens),
        dict(call.evaluations) if call.evaluations else None,
        sketch(call.embedding) if call.embedding else None,
    )


def chi2_quantile(p: float, k: int) -> float:
    """Wilson-Hilferty: chi-squared quantile, within 1% for k >= 3 (no scipy in the core)."""
    # Acklam-free normal quantile by bisection on erf: called once per reference, not per event.
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    z = (lo + hi) / 2
    c = 2.0 / (9.0 * k)
    return k * (1 - c + z * math.sqrt(c)) ** 3


@persistent("llm.embedding_reference")
@dataclasses.dataclass(frozen=True)
class EmbeddingReference:
    """Mean and whitening of the sketch over a reference (plain lists: profile JSON, snapshots)."""

    mean: tuple[float, ...]
    whitening: tuple[tuple[float, ...], ...]
    count: int

    @classmethod
    def from_sums(cls, n: int, total: np.ndarray, outer: np.ndarray) -> "EmbeddingReference":
        mean = total / n
        cov = outer / n - np.outer(mean, mean)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        floor = max(float(vals.max()), 1e-12) * EIGEN_FLOOR
        w = vecs @ np.diag(1.0 / np.sqrt(np.maximum(vals, floor))) @ vecs.T
        return cls(tuple(mean.tolist()), tuple(tuple(r) for r in w.tolist()), n)

    @classmethod
    def learn(cls, sketches: Sequence[Sequence[float]]) -> "EmbeddingReference":
        x = np.asarray(sketches, dtype=np.float64)
        return cls.from_sums(len(x), x.sum(axis=0), x.T @ x)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "whitening": [list(r) for r in self.whitening], "count": self.count}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EmbeddingReference":
        mean = tuple(float(v) for v in d["mean"])
        w = tuple(tuple(float(v) for v in row) for row in d["whitening"])
        if len(mean) != SKETCH_DIM or len(w) != SKETCH_DIM or any(len(r) != SKETCH_DIM for r in w):
            raise ValueError(f"an embedding reference has {SKETCH_DIM} means and a {SKETCH_DIM}x{SKETCH_DIM} whitening")
        return cls(mean, w, int(d.get("count", 0)))


class EmbeddingSums:
    """Running sums of sketches, for a reference built offline (`driftline baseline build`)."""

    __slots__ = ("n", "total", "outer")

    def __init__(self) -> None:
        self.n = 0
        self.total = np.zeros(SKETCH_DIM)
        self.outer = np.zeros((SKETCH_DIM, SKETCH_DIM))

    def add(self, embedding: Sequence[float]) -> None:
        x = np.asarray(sketch(embedding))
        self.n += 1
        self.total += x
        self.outer += np.outer(x, x)

    def reference(self) -> EmbeddingReference:
        return EmbeddingReference.from_sums(self.n, self.total, self.outer)


@persistent("llm.embedding_drift")
class EmbeddingDrift:
    """Per segment: the reference (given, or learnt from the first calls) and the live centroid."""

    __slots__ = ("reference", "window", "learn_size", "_n", "_sum", "_outer", "_mean", "_w", "_live", "live_count")

    def __init__(self, reference: EmbeddingReference | None = None, window: int = 200, learn_size: int = 500):
        self.window = window
        self.learn_size = learn_size
        self._n = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None
        self.live_count = 0
        self._live = np.zeros(SKETCH_DIM)
        self.reference: EmbeddingReference | None = None
        self._mean = self._w = None
        if reference is not None:
            self.use(reference)

    def use(self, reference: EmbeddingReference) -> None:
        self.reference = reference
        self._mean = np.asarray(reference.mean)
        self._w = np.asarray(reference.whitening)
        self._sum = self._outer = None
        self._live = np.zeros(SKETCH_DIM)
        self.live_count = 0

    @property
    def learning(self) -> bool:
        return self.reference is None

    def observe(self, s: Sequence[float]) -> float | None:
        """The call's `embedding` signal value, or None while the reference is learnt."""
        x = np.asarray(s, dtype=np.float64)
        if self._w is None:
            if self._sum is None:
                self._sum, self._outer = np.zeros(SKETCH_DIM), np.zeros((SKETCH_DIM, SKETCH_DIM))
            self._n += 1
            self._sum += x
            self._outer += np.outer(x, x)
            if self._n >= self.learn_size:
                self.use(EmbeddingReference.from_sums(self._n, self._sum, self._outer))
            return None
        z = self._w @ (x - self._mean)
        a = 2.0 / (self.window + 1)
        self._live += a * (z - self._live)
        self.live_count += 1
        return float(z @ z) / SKETCH_DIM

    def distance(self) -> float | None:
        """Live centroid's distance from the reference's, once the live window has filled."""
        if self._w is None or self.live_count < self.window:
            return None
        return float(math.sqrt(self._live @ self._live))

    def threshold(self) -> float:
        a = 2.0 / (self.window + 1)
        return math.sqrt(chi2_quantile(EMBEDDING_QUANTILE, SKETCH_DIM) * a / (2 - a))


@persistent("llm.histogram")
class Histogram:
    """Fixed-bucket histogram (bucket counts, sum)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect_left(self.bounds, x)] += 1
        self.total += x

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds + (math.inf,), self.counts):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out


@persistent("llm.segment")
class LLMSegment:
    """One segment's LLM counters, histograms and embedding drift. Bounded: two histograms,
    <= MAX_FINISH_REASONS counters, <= max_evaluations names, one EmbeddingDrift (~2.5 KB)."""

    __slots__ = ("calls", "input_tokens", "output_tokens", "cost", "priced", "duration", "ttft", "finish",
                 "evaluations", "embedding", "scores")

    def __init__(self, spec: LLMSpec, reference: EmbeddingReference | None = None):
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0
        self.priced = 0  # calls with a price (cost is their sum)
        self.duration = Histogram(DURATION_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.finish: dict[str, int] = {}
        self.evaluations: set[str] = set()
        self.scores: dict[str, list] = {}  # evaluation name -> [count, sum of scores] (watched names)
        self.embedding = EmbeddingDrift(reference, spec.embedding_window, spec.embedding_reference)

    def observe(self, obs: LLMObservation, spec: LLMSpec) -> list[tuple[str, float | str, bool]]:
        """Count the call; returns its (signal, value, categorical) inputs for the detectors."""
        self.calls += 1
        self.input_tokens += obs.input_tokens
        self.output_tokens += obs.output_tokens
        self.duration.observe(obs.duration)
        out: list[tuple[str, float | str, bool]] = [
            (DURATION, obs.duration, False),
            (INPUT_TOKENS, float(obs.input_tokens), False),
            (OUTPUT_TOKENS, float(obs.output_tokens), False),
        ]
        if obs.time_to_first_token is not None:
            self.ttft.observe(obs.time_to_first_token)
            out.append((TTFT, obs.time_to_first_token, False))
        if obs.cost is not None:
            self.cost += obs.cost
            self.priced += 1
            out.append((COST, obs.cost, False))
        reason = obs.finish_reason
        if reason is not None:
            finish = self.finish
            if reason not in finish and len(finish) >= MAX_FINISH_REASONS:
                reason = OTHER_REASON
            finish[reason] = finish.get(reason, 0) + 1
            out.append((FINISH_REASON, reason, True))
        if obs.evaluations:
            names = self.evaluations
            for name, score in obs.evaluations.items():
                if name not in names:
                    if len(names) >= spec.max_evaluations:
                        continue
                    names.add(name)
                tally = self.scores.get(name)
                if tally is None:
                    tally = self.scores[name] = [0, 0.0]
                tally[0] += 1
                tally[1] += score
                out.append((name, float(score), False))
        if obs.sketch is not None:
            v = self.embedding.observe(obs.sketch)
            if v is not None:
                out.append((EMBEDDING, v, False))
        return out


def is_good_feedback(label: object) -> bool | None:
    """Feedback on a call: true/1 good, false/0 bad, anything else not feedback (None)."""
    t = type(label)
    if t is bool:
        return label
    if (t is int or t is float) and label in (0, 1):
        return label == 1
    return None
