"""`driftline run`: the core on Kafka, as a faust-streaming app.

Two agents, one consumer group, N workers:

    driftline.inferences + driftline.labels   (co-partitioned by prediction_id)
        -> agent `intake`: decode, dead-letter the invalid, route, join   [state per partition]
        -> driftline.observations              (key = model + segment)
        -> agent `detect`: detectors, rolling accuracy                    [state per partition]
        -> driftline.drift-events

`WorkerState` holds everything and touches no Kafka, so it is tested without a broker; the
faust wiring below only moves bytes. Offsets are committed by faust after events are
processed and after the producer is flushed: at-least-once (see docs/guarantees.md).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from detectors.bank import DetectorBank, DriftRecord
from detectors.tally import Tally
from stream.codec import DecodeLimits, dead_letter_record, decode_inference, decode_label
from stream.events import Invalid
from stream.pipeline import Intake, ModelGuard, Observation, feed

log = logging.getLogger("driftline.worker")

EXPIRE_INTERVAL = 1.0  # seconds between join expiries (TTL granularity; TTLs are minutes to days)


def encode_observation(o: Observation) -> bytes:
    return orjson.dumps((o.kind, o.model, o.segment, o.prediction_id, o.timestamp, o.prediction, o.score, o.features, o.label))


def decode_observation(raw: bytes) -> Observation:
    return Observation(*orjson.loads(raw))


class WorkerState:
    """One worker process's state: a Tally of counters, and core state per partition."""

    def __init__(self, settings):
        self.settings = settings
        self.tally = Tally()
        self.guard = ModelGuard(settings)
        self.limits = DecodeLimits(max_bytes=settings.limits.max_event_bytes, max_depth=settings.limits.max_depth)
        self.intakes: dict[int, Intake] = {}
        self.banks: dict[int, DetectorBank] = {}
        self.topics = settings.kafka.topics

    def intake(self, partition: int) -> Intake:
        it = self.intakes.get(partition)
        if it is None:
            it = self.intakes[partition] = Intake(self.settings, self.tally, self.guard)
        return it

    def bank(self, partition: int) -> DetectorBank:
        b = self.banks.get(partition)
        if b is None:
            b = self.banks[partition] = DetectorBank(self.settings.spec_for, self.tally)
        return b

    def on_source(
        self, topic: str, partition: int, offset: int, raw: bytes | None, kafka_timestamp: float | None
    ) -> tuple[list[Observation], bytes | None]:
        """One message from the inference or label topic: (observations, dead letter or None)."""
        kind = "inference" if topic == self.topics.inferences else "label"
        if raw is None:
            raw = b""
        decoded = (decode_inference if kind == "inference" else decode_label)(raw, kafka_timestamp, self.limits)
        intake = self.intake(partition)
        if isinstance(decoded, Invalid):
            intake.on_invalid(decoded)
            out: Any = decoded
        else:
            out = intake.on_inference(decoded, raw) if kind == "inference" else intake.on_label(decoded, raw)
        if isinstance(out, Invalid):
            return [], dead_letter_record(out, topic=topic, partition=partition, offset=offset)
        return out, None

    def on_observation(self, partition: int, raw: bytes) -> list[DriftRecord]:
        return feed(self.bank(partition), (decode_observation(raw),))

    def expire(self) -> None:
        for intake in list(self.intakes.values()):
            intake.expire()


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def build_app(settings, listen: str):
    """The faust app around a fresh `WorkerState`; returns (app, state)."""
    import faust
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from stream.exporter import DriftlineCollector
    from stream.kafka_auth import faust_credentials

    host, port = parse_listen(listen)
    state = WorkerState(settings)
    topics = settings.kafka.topics
    app = faust.App(
        settings.kafka.group_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        broker_credentials=faust_credentials(settings.kafka.client_config),
        store="memory://",
        autodiscover=False,
        web_enabled=True,
        web_bind=host,
        web_host=host,
        web_port=port,
        web_in_thread=False,
        topic_partitions=settings.kafka.partitions,
        topic_allow_declare=False,  # topics are provisioned by stream.admin, with our retention
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(topics.inferences, topics.labels, key_serializer="raw", value_serializer="raw")
    observations = app.topic(topics.observations, key_serializer="raw", value_serializer="raw",
                             partitions=settings.kafka.partitions)
    dead_letters = app.topic(topics.dead_letters, key_serializer="raw", value_serializer="raw")
    drift_events = app.topic(topics.drift_events, key_serializer="raw", value_serializer="raw")

    registry = CollectorRegistry(auto_describe=True)
    registry.register(DriftlineCollector(
        state.tally, settings,
        intakes=lambda: list(state.intakes.values()),
        banks=lambda: list(state.banks.values()),
        clock=time.time,
    ))
    ready = {"started": False}

    @app.agent(source)
    async def intake(stream):
        async for event in stream.events():
            msg = event.message
            obs, dead = state.on_source(msg.topic, msg.partition, msg.offset, event.value, msg.timestamp)
            if dead is not None:
                await dead_letters.send(key=event.key, value=dead)
            for o in obs:
                await observations.send(key=o.key.encode(), value=encode_observation(o))

    @app.agent(observations)
    async def detect(stream):
        async for event in stream.events():
            for rec in state.on_observation(event.message.partition, event.value):
                await drift_events.send(key=f"{rec.model}\x1f{rec.segment}".encode(), value=orjson.dumps(rec.to_dict()))

    @app.timer(interval=EXPIRE_INTERVAL)
    async def expire_join():
        state.expire()

    # Ready once the group has assigned this worker its partitions (possibly none) at least once;
    # the Worker owns app.on_startup_finished, so the rebalance signal is the hook.
    @app.on_rebalance_complete.connect
    async def on_rebalanced(sender, **kwargs):
        ready["started"] = True

    @app.page("/metrics")
    async def metrics(web, request):
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web, request):
        is_ready = ready["started"] and not app.rebalancing
        return web.json({"ready": is_ready, "rebalancing": app.rebalancing}, status=200 if is_ready else 503)

    return app, state


def run_worker(settings, listen: str) -> int:
    import faust

    from stream.admin import ensure_topics

    created = ensure_topics(settings)
    log.info("topics: %s", ", ".join(f"{k} ({v})" for k, v in created.items()))
    app, _ = build_app(settings, listen)
    worker = faust.Worker(app, loglevel="info", quiet=True, override_logging=False)
    worker.execute_from_commandline()  # returns via SystemExit when stopped (SIGTERM: graceful)
    return 0
