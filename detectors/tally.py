"""Every counter of a process, in one place that never moves between workers.

Detector and join state follow their Kafka partitions from worker to worker (snapshots);
counters must not: a Prometheus counter is what *this* process did, monotonic until it
restarts. So the router, the join and the bank write their counts here, and snapshots of
their state carry none.
"""
from __future__ import annotations

import bisect
from collections import Counter

# Label delay spans seconds (online feedback) to days (chargebacks, churn): log-spaced buckets.
DELAY_BUCKETS: tuple[float, ...] = (1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)


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

    def forget_segment(self, model: str, segment: str) -> None:
        """Drop an evicted segment's series (a bound on cardinality, not a reset of live ones)."""
        for counter in (self.labeled, self.correct, self.inferences):
            counter.pop((model, segment), None)
        for key in [k for k in self.detections if k[0] == model and k[1] == segment]:
            del self.detections[key]
