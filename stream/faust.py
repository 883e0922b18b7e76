"""Publishing from a faust-streaming app: inference and label events through the app's own producer.

For teams that score models inside faust agents (streaming inference). The events are the SDK's
(`encode_inference` / `encode_label` of stream/publish.py: event contract v1, the same checks),
sent with faust's `Topic.send_soon`: the agent hands the event to the app's producer buffer and
goes on; faust's producer task sends it. Nothing here awaits the broker.

    import faust
    from driftline.stream.faust import FaustPublisher

    app = faust.App("scorer", broker="kafka://localhost:9092")
    requests = app.topic("requests", value_serializer="json")
    driftline = FaustPublisher(app)

    @app.agent(requests)
    async def score(stream):
        async for req in stream:
            pred, score = model.predict(req["features"])
            driftline.log_prediction(model="churn", features=req["features"], prediction=pred,
                                     score=score, prediction_id=req["id"])

The rule when the broker is down is the SDK's, drop and count: at most `max_in_flight` events
wait for the broker (faust's own buffer has no bound); past that, events are dropped and counted
in `stats.dropped`, so an outage costs bounded memory and never blocks an agent. Events the
broker did not take (aiokafka's `request_timeout_ms`) are counted in `stats.failed`. Counts are
`PublishStats`, like `Publisher.stats`.

Call it from the app's event loop (agents, timers, web views): faust is single-threaded.
Needs the `faust` extra (pip install 'driftline[faust]').
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from driftline.stream.events import Invalid
from driftline.stream.publish import MAX_EVENT_BYTES, EventCalls, PublishStats

__all__ = ["FaustPublisher"]

log = logging.getLogger("driftline.publish.faust")

# Events waiting for the broker: ~300 B each, 100k is ~30 MB, the SDK's queue bound.
DEFAULT_MAX_IN_FLIGHT = 100_000


class FaustPublisher(EventCalls):
    """Publishes driftline events through a faust app's producer, never blocking an agent."""

    _logger = log

    def __init__(self, app: Any, *, inferences_topic: str = "driftline.inferences",
                 labels_topic: str = "driftline.labels", max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 clock: Callable[[], float] = time.time, new_id: Callable[[], str] = lambda: os.urandom(16).hex(),
                 max_event_bytes: int = MAX_EVENT_BYTES):
        # Raw bytes both ways: the events are already encoded, keyed by prediction id (the label
        # lands on its prediction's partition, which the worker's join needs).
        self._inferences = app.topic(inferences_topic, key_type=bytes, value_type=bytes,
                                     key_serializer="raw", value_serializer="raw")
        self._labels = app.topic(labels_topic, key_type=bytes, value_type=bytes,
                                 key_serializer="raw", value_serializer="raw")
        self._max_in_flight, self._clock, self._new_id = max_in_flight, clock, new_id
        self._max_bytes = max_event_bytes
        self._sent = self._delivered = self._failed = self._dropped = self._invalid = 0
        self._warned: set[str] = set()

    # The calls (log_prediction, log_label, log_request_label) are the SDK's: EventCalls.

    @property
    def stats(self) -> PublishStats:
        in_flight = self._sent - self._delivered - self._failed
        return PublishStats(self._sent, self._delivered, self._failed, self._dropped, self._invalid, in_flight)

    async def flush(self, timeout: float = 10.0) -> int:
        """Waits up to `timeout` s for the events in flight; returns how many still are."""
        deadline = time.monotonic() + timeout
        while self.stats.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.stats.queued

    # ------------------------------------------------------------------ internals
    def _send(self, topic: Any, key: str, raw: bytes | Invalid) -> None:  # called by EventCalls
        if type(raw) is Invalid:
            self._reject(raw)
            return
        if self._sent - self._delivered - self._failed >= self._max_in_flight:
            self._dropped += 1  # the broker is away or slower than the traffic: bounded, never blocking
            self._warn_once("in_flight_full", f"{self._max_in_flight} events wait for the broker: dropping events")
            return
        try:
            fut = topic.send_soon(key=key.encode(), value=raw)
        except Exception as exc:  # e.g. the app's producer is not running yet or any more
            self._dropped += 1
            self._warn_once("send_error", f"faust producer refused events, dropping them: {exc!r}")
            return
        self._sent += 1
        fut.add_done_callback(self._on_done)

    def _on_done(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._failed += 1
            self._warn_once("delivery_failed", f"events not delivered: {fut.exception() if not fut.cancelled() else 'cancelled'}")
        else:
            self._delivered += 1

    def _reject(self, invalid: Invalid) -> None:
        self._invalid += 1
        self._warn_once(f"invalid:{invalid.reason}", f"invalid {invalid.kind} not sent ({invalid.reason}): {invalid.detail}")
