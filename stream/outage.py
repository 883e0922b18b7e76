"""Exactly-once while every broker is away: the worker's input held, no transactional call made.

`OutageHold` is the worker loop's collaborator for a broker outage (stream/worker.py): the loop
asks `active` each step and, while it is, calls `ride_out` instead of rewinding or running a
checkpoint round. The decisions it needs come from BrokerWatch (stream/transactions.py: is every
broker away, does one answer a probe) and the Checkpointer (doom, skip a round, rewind).
"""
from __future__ import annotations

import logging
from typing import Callable, ContextManager

from confluent_kafka import Consumer, KafkaException

log = logging.getLogger("driftline.worker")


class OutageHold:
    """No transactional call is made while every broker is away (librdkafka can block in one for
    good when the coordinator goes away mid-call); the input is held (owned partitions paused)
    while the loop keeps polling, so the group membership survives an outage shorter than
    worker.session_timeout; each checkpoint round due counts as failed. When a broker answers,
    the open transaction is aborted and every owned partition rewinds to its last commit (what it
    produced since then is never read), then reading resumes.

    `enabled`: exactly-once only (without transactions the producer's queue is the back pressure).
    `fatal` says why the worker stops, if it does (then reading is not resumed)."""

    def __init__(self, enabled: bool, broker, consumer: Consumer, checkpointer, lock: ContextManager,
                 fatal: Callable[[], str | None]):
        self.enabled = enabled
        self.broker = broker  # BrokerWatch
        self.consumer = consumer
        self.checkpointer = checkpointer
        self.lock = lock
        self.fatal = fatal
        self.holding = False  # input paused for the outage

    @property
    def active(self) -> bool:
        """Every broker is away, or the input is still held for an outage (exactly-once only)."""
        return self.enabled and (self.broker.down or self.holding)

    def ride_out(self, now: float) -> None:
        """One loop step of the outage (class doc)."""
        checkpointer = self.checkpointer
        if not self.holding:
            self.holding = True
            checkpointer.doom("broker outage")
            self._pause_assigned(True)
        checkpointer.skip_round(now)
        if not self.broker.probe(self.consumer):
            return
        with self.lock:
            checkpointer.rewind_locked(checkpointer.doomed or "broker outage", new_producer=True)
        if checkpointer.doomed is None and not self.broker.down and self.fatal() is None:
            self.holding = False
            self._pause_assigned(False)

    def _pause_assigned(self, pause: bool) -> None:
        try:
            assigned = self.consumer.assignment()
            if assigned:
                (self.consumer.pause if pause else self.consumer.resume)(assigned)
        except KafkaException as exc:
            log.warning("%s assigned partitions: %s", "pausing" if pause else "resuming", exc)
