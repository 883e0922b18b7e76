"""The worker's Kafka client settings in one place, and a check of them at start.

`consumer_config()` and `producer_config()` are what `driftline run` gives librdkafka: our
tunables first, then the user's `kafka.config` (which may override them), then what correctness
needs (which nobody overrides). `check_client_config()` builds both clients once before any
topic is created, so a setting librdkafka refuses stops the start with the key it names.
"""
from __future__ import annotations

import re
import uuid

from confluent_kafka import Consumer, KafkaException, Producer

from driftline.stream.logs import kafka_logger
from driftline.stream.settings import ENV_KAFKA_PREFIX, ConfigError


def transactional_id(settings) -> str:
    """One per process: zombies are fenced by the group generation (KIP-447), not by the id."""
    return f"driftline-{settings.kafka.group_id}-{uuid.uuid4().hex[:12]}"


def consumer_config(settings, client_id: str) -> dict:
    kafka, worker = settings.kafka, settings.worker
    return {
        # A broker outage shorter than the session timeout keeps the partitions (librdkafka
        # drops its assignment after a session timeout without a heartbeat answer); a dead
        # worker's partitions move to the others after it.
        "session.timeout.ms": int(worker.session_timeout * 1000),
        "heartbeat.interval.ms": max(int(worker.session_timeout * 1000 / 5), 500),
        "fetch.wait.max.ms": 100,
        "logger": kafka_logger(),  # librdkafka's lines through logging (rate-limited repeats)
        **kafka.client_config,
        "bootstrap.servers": kafka.bootstrap,
        "group.id": kafka.group_id,
        "client.id": client_id,
        # range: partition p of every subscribed topic goes to the same member when the
        # topics have equal partition counts: the join needs inferences-p with labels-p.
        "partition.assignment.strategy": "range",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # The worker learns where a partition's committed end is (transaction markers occupy
        # offsets no message has): consumer lag is measured to it.
        "enable.partition.eof": True,
        # Observations of a transaction that aborted are never applied (exactly-once).
        "isolation.level": "read_committed",
    }


def producer_config(settings, transactional: str | None) -> dict:
    kafka, worker = settings.kafka, settings.worker
    conf = {"linger.ms": 20, "compression.type": "lz4", "logger": kafka_logger(), **kafka.client_config,
            "bootstrap.servers": kafka.bootstrap,
            "enable.idempotence": True,  # ordered, no duplicates from retries
            "acks": "all"}
    if transactional is None:
        # Never give up on a record: while the broker is away the local queue fills and
        # produce() blocks the loop (back pressure), and nothing is dropped.
        conf["message.timeout.ms"] = 0
    else:
        conf["transactional.id"] = transactional
        # The coordinator aborts a transaction left open this long (a killed worker's), and
        # readers wait behind an open one at most this long; a record not delivered within it
        # aborts the transaction, and the worker rewinds to its last checkpoint.
        conf["transaction.timeout.ms"] = int(worker.transaction_timeout * 1000)
        conf["message.timeout.ms"] = int(worker.transaction_timeout * 1000)
    return conf


_PROPERTY = re.compile(r'property:? "([^"]+)"')


def check_client_config(settings) -> None:
    """Ask librdkafka whether it accepts the worker's settings; a ConfigError names the bad key."""
    tid = transactional_id(settings) if settings.worker.exactly_once else None
    for kind, build in (("consumer", lambda: Consumer(consumer_config(settings, "driftline-config-check"))),
                        ("producer", lambda: Producer(producer_config(settings, tid)))):
        try:
            client = build()
        except KafkaException as exc:
            raise ConfigError(_explain(settings, kind, exc.args[0].str())) from None
        if kind == "consumer":
            client.close()


# librdkafka names some settings by their alias in its errors.
_ALIASES = {"compression.codec": "compression.type", "queue.buffering.max.ms": "linger.ms",
            "message.send.max.retries": "retries", "retry.backoff.ms": "retry.backoff.ms"}


def _explain(settings, kind: str, why: str) -> str:
    m = _PROPERTY.search(why)
    prop = m.group(1) if m else None
    if prop is not None and prop not in settings.kafka.client_config:
        prop = _ALIASES.get(prop, prop)
    if prop is not None and prop in settings.kafka.client_config:
        env = ENV_KAFKA_PREFIX + prop.upper().replace(".", "_")
        return (f"config kafka.config.{prop}: librdkafka refuses it for the {kind}: {why} "
                f"(set in the config file or as {env}; see the librdkafka configuration reference)")
    return f"config kafka.config: librdkafka refuses the {kind} settings: {why}"
