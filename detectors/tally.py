"""Counts that are not detector state: event fates and label delays."""
from __future__ import annotations

import bisect
from collections import Counter

# Label delay spans seconds (online feedback) to days (chargebacks, churn): log-spaced buckets.
DELAY_BUCKETS: tuple[float, ...] = (1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)


class DelayHistogram:
    """A cumulative-ready histogram of label delays in seconds (one per model)."""

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


class EventTally:
    """`driftline_events_total` outside the join (invalid, rejected) plus label delays."""

    __slots__ = ("events", "delays")

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str, str]] = Counter()  # (model, kind, outcome)
        self.delays: dict[str, DelayHistogram] = {}

    def count(self, model: str, kind: str, outcome: str, n: int = 1) -> None:
        self.events[(model, kind, outcome)] += n

    def observe_delay(self, model: str, seconds: float) -> None:
        hist = self.delays.get(model)
        if hist is None:
            hist = self.delays[model] = DelayHistogram()
        hist.observe(seconds)
