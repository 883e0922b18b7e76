"""A worker process's own operating figures (`WorkerStats`), rendered by exporter.WorkerMetrics.

The worker's collaborators (Checkpointer, Restorer, ConsumerLag, ...) write them as they work;
the collector reads them at scrape time, under the worker's lock.
"""
from __future__ import annotations

import time
from typing import Iterable


class WorkerStats:
    """Per-process operating figures, rendered by exporter.WorkerMetrics."""

    def __init__(self, written_topics: Iterable[str] = ()) -> None:
        self.replayed = 0  # events read again after taking over a partition (checkpoint -> committed)
        self.deduplicated = 0  # observations skipped as already applied
        self.unreadable_observations = 0  # observations messages of an unknown format (dead-lettered)
        self.rebalances = 0
        self.checkpoints = {"ok": 0, "failed": 0}
        self.checkpoint_seconds = 0.0  # duration of the last checkpoint
        self.checkpoint_bytes = 0  # size of the last checkpoint
        self.restore_seconds = 0.0  # duration of the last restore
        # Checkpoints found at assignment: restored, or unreadable (an older format, another
        # River) and rebuilt from the retained history, or started fresh when none is left.
        self.restores = {"restored": 0, "rebuilt": 0, "fresh": 0}
        # By topic, every written topic from 0 (so that a rate over them reads 0, not "no data").
        self.produce_errors: dict[str, int] = {topic: 0 for topic in written_topics}
        self.messages = {"intake": 0, "bank": 0}  # messages this process read, by stage
        self.lag_seconds: dict[tuple[str, int], float] = {}
        self.lag: dict[tuple[str, int], int] = {}
        self.partitions = {"intake": 0, "bank": 0}
        self.rekeyed = {"inference": 0, "label": 0}  # events published again keyed by prediction_id
        self.checkpoint_ok_at = time.monotonic()  # the last successful checkpoint (process start before one)
        self.rewinds = 0  # aborted transactions: state rewound to the last committed checkpoint
        self.ownership = 0  # bumped whenever the owned states change (assign, revoke, lost, rewind)

    @property
    def checkpoint_age(self) -> float:
        """Seconds since the last successful checkpoint round, read at scrape time: it grows
        while checkpoints fail or do not run, whatever the reason."""
        return time.monotonic() - self.checkpoint_ok_at

    def produce_failed(self, topic: str) -> None:
        """A record for `topic` was not delivered (a delivery report's error)."""
        self.produce_errors[topic] = self.produce_errors.get(topic, 0) + 1
