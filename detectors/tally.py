"""The counters of one detector bank, snapshotted and restored with it.

Every counter of the metrics contract is keyed by model, or by (model, segment), and is counted
in the bank that owns that key: per-segment counts in the segment's bank, per-model counts
(events by fate, label delay, folds, invalid features) in the bank that owns the model's
`__all__` segment. A key lives in exactly one worker at a time, so each series is exported by
one worker, and it moves with its Kafka partition (and its checkpoint) when the partition
moves: a crash loses no counts, and the sum over workers is the whole fleet's count.
"""
from __future__ import annotations

import bisect
from collections import Counter
from driftline.detectors.state import persistent

# Label delay spans seconds (online feedback) to days (chargebacks, churn): log-spaced buckets.
DELAY_BUCKETS: tuple[float, ...] = (1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)


@persistent("tally.delays")
class DelayHistogram:
    """A histogram of label delays in seconds (one per model)."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(DELAY_BUCKETS) + 1)  # last slot: +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DELAY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(DELAY_BUCKETS + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


@persistent("tally")
class Tally:
    __slots__ = ("events", "delays", "folded", "invalid_features", "labeled", "correct", "inferences", "detections")

    def __init__(self) -> None:
        self.events: Counter[tuple[str | None, str, str]] = Counter()  # (model, kind, outcome)
        self.delays: dict[str, DelayHistogram] = {}
        self.folded: Counter[tuple[str, str]] = Counter()  # (model, attribute)
        self.invalid_features: Counter[tuple[str, str, str]] = Counter()  # (model, feature, reason)
        self.labeled: Counter[tuple[str, str]] = Counter()  # (model, segment)
        self.correct: Counter[tuple[str, str]] = Counter()
        self.inferences: Counter[tuple[str, str]] = Counter()
        self.detections: Counter[tuple[str, str, str, str]] = Counter()  # (model, segment, signal, detector)

    def observe_delay(self, model: str, seconds: float) -> None:
        hist = self.delays.get(model)
        if hist is None:
            hist = self.delays[model] = DelayHistogram()
        hist.observe(seconds)

    def add_fate(self, model: str | None, kind: str, outcome: str, n: int = 1) -> None:
        self.events[(model, kind, outcome)] += n

    def forget_segment(self, model: str, segment: str) -> None:
        """Drop an evicted segment's series (a bound on cardinality, not a reset of live ones)."""
        for counter in (self.labeled, self.correct, self.inferences):
            counter.pop((model, segment), None)
        for key in [k for k in self.detections if k[0] == model and k[1] == segment]:
            del self.detections[key]
