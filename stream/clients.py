"""The worker's Kafka client settings in one place, and a check of them at start.

`consumer_config()` and `producer_config()` are what `driftline run` gives librdkafka: our
tunables first, then the user's `kafka.config` (which may override them), then what correctness
needs (which nobody overrides). `check_client_config()` builds both clients once before any
topic is created, so a setting librdkafka refuses stops the start with the key it names.
`WorkerClients` builds the worker's clients from them; `ReadableEnds` and `ConsumerLag` read
where each partition's data ends and how far behind it the worker is.
"""
from __future__ import annotations

import re
import uuid
from typing import Callable

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from driftline.stream.logs import kafka_logger
from driftline.stream.settings import ENV_KAFKA_PREFIX, ConfigError


def transactional_id(settings) -> str:
    """One per process: zombies are fenced by the group generation (KIP-447), not by the id."""
    return f"driftline-{settings.kafka.group_id}-{uuid.uuid4().hex[:12]}"


def merge_config(user: dict, bootstrap: str, tunables: dict, required: dict | None = None) -> dict:
    """The one rule for every librdkafka config driftline builds: our tunables (and librdkafka's
    lines through logging), then the user's `kafka.config` (which may override them), then the
    bootstrap servers and what correctness needs (which nobody overrides)."""
    return {"logger": kafka_logger(), **tunables, **user, "bootstrap.servers": bootstrap, **(required or {})}


def client_config(settings, tunables: dict, required: dict | None = None) -> dict:
    """`merge_config` for the settings' Kafka (`kafka.bootstrap`, `kafka.config`)."""
    return merge_config(settings.kafka.client_config, settings.kafka.bootstrap, tunables, required)


def consumer_config(settings, client_id: str) -> dict:
    kafka, worker = settings.kafka, settings.worker
    return client_config(settings, {
        # A broker outage shorter than the session timeout keeps the partitions (librdkafka
        # drops its assignment after a session timeout without a heartbeat answer); a dead
        # worker's partitions move to the others after it.
        "session.timeout.ms": int(worker.session_timeout * 1000),
        # A member learns that its group rebalances (a worker joined or left) from a heartbeat's
        # answer: every member waits up to one interval before it gives partitions up. At most
        # 3 s (librdkafka's default): session_timeout / 5 alone made it 9 s at the 45 s default,
        # 18 s at 90 s, for every scale-out and graceful leave.
        "heartbeat.interval.ms": min(max(int(worker.session_timeout * 1000 / 5), 500), 3000),
        "fetch.wait.max.ms": 100,
        # librdkafka's statistics carry each partition's last stable offset from its fetch
        # responses (ReadableEnds): lag and "caught up" without a request to the broker.
        "statistics.interval.ms": 1000,
    }, {
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
    })


class ReadableEnds:
    """Where each partition's readable data ends, for a read_committed consumer.

    The cached high watermark counts records of transactions still open (every worker keeps one
    open, and writes heartbeats into it), which a read_committed consumer cannot read yet; and a
    committed transaction ends with a marker at an offset no message has. So a partition is read
    to its end when the consumer's position, or the offset of its last end-of-partition event
    (which lies past the markers), reaches the last stable offset librdkafka's statistics report.
    """

    __slots__ = ("stable", "eof")

    def __init__(self) -> None:
        self.stable: dict[tuple[str, int], int] = {}  # (topic, partition) -> last stable offset
        self.eof: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset of the last EOF event

    def on_stats(self, raw: str) -> None:
        """librdkafka's `stats_cb` (called from consume())."""
        try:
            topics = orjson.loads(raw).get("topics", {})
        except orjson.JSONDecodeError:
            return
        stable = self.stable
        for topic, t in topics.items():
            for p, part in t.get("partitions", {}).items():
                ls = part.get("ls_offset", -1)
                if ls >= 0 and p != "-1":
                    stable[(topic, int(p))] = ls

    def reached_end(self, topic: str, partition: int, offset: int) -> None:
        self.eof[(topic, partition)] = offset

    def forget(self, topic: str, partition: int) -> None:
        """At an assignment or a rewind: the positions start again."""
        self.eof.pop((topic, partition), None)

    def behind(self, topic: str, partition: int, position: int, high: int) -> int:
        """Readable records after `position` (the next offset to process); `high` (the cached
        high watermark) stands in until the statistics name a last stable offset."""
        end = self.stable.get((topic, partition), high)
        return max(min(end, high) - max(position, self.eof.get((topic, partition), -1)), 0)

    def read_to_end(self, topic: str, partition: int, position: int, high: int) -> bool:
        """Nothing left to read, for decisions that must never be early (a topic declared idle
        stops holding the event-time watermark): the statistics' last stable offset can be a
        second old, so the fresh cached high watermark decides; the end-of-partition offset
        (past the markers) counts as read. Records of a transaction still open keep it False
        until they are committed or aborted."""
        return max(position, self.eof.get((topic, partition), -1)) >= high


# Seconds between consumer-lag refreshes (ConsumerLag): cached watermarks, no broker request.
LAG_EVERY = 2.0


class ConsumerLag:
    """The lag of every partition the worker owns, refreshed into its stats every `every` seconds
    (`refresh_if_due`, from the loop): messages behind the readable end (ReadableEnds), and
    seconds behind (how old the last message read is, while more are waiting). `states` is the
    worker's PartitionStates (each state's positions and last message timestamps, by topic);
    `clock` the wall clock the message timestamps are compared with."""

    def __init__(self, consumer: Consumer, states, ends: ReadableEnds, stats, clock, every: float = LAG_EVERY):
        self.consumer = consumer
        self.states = states
        self.ends = ends
        self.stats = stats  # WorkerStats: lag, lag_seconds
        self.clock = clock
        self.every = every
        self._next = 0.0

    def refresh_if_due(self, now: float) -> None:
        """`now`: the loop's monotonic clock."""
        if now >= self._next:
            self.refresh()
            self._next = now + self.every

    def refresh(self) -> None:
        lag, behind = {}, {}
        now_ms = self.clock() * 1000.0
        for key, part in self.states.items():
            p = key.partition
            for topic, off in part.positions.items():
                try:
                    _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                except KafkaException:
                    continue
                if high < 0:
                    continue
                lag[(topic, p)] = n = self.ends.behind(topic, p, off, high)
                # Seconds behind: how old the last message read is, while more are waiting.
                ts = part.last_ts.get(topic)
                behind[(topic, p)] = max((now_ms - ts) / 1000.0, 0.0) if n and ts and ts > 0 else 0.0
        self.stats.lag = lag
        self.stats.lag_seconds = behind


class WorkerClients:
    """The worker's Kafka clients, built from the settings (what `driftline run` checked at start,
    `check_client_config`): its consumer, and its producer, transactional with exactly-once; every
    producer built gets a new transactional id (Transactions builds another one when its producer
    is stuck or fenced). `on_error` is every client's librdkafka error_cb (BrokerWatch: outages),
    `on_stats` the consumer's stats_cb (ReadableEnds).

    A fatal error (a fenced transactional producer) never reaches error_cb: confluent-kafka raises
    it from the call that serves it instead (poll, flush, produce, a transactional call), which
    the worker guards (Checkpointer.producer_failed); tests/integration/test_kafka_clients.py
    checks this against the broker."""

    def __init__(self, settings, on_error: Callable, on_stats: Callable):
        self.settings = settings
        self.on_error = on_error
        self.on_stats = on_stats

    def consumer(self) -> Consumer:
        return Consumer({**consumer_config(self.settings, f"driftline-{uuid.uuid4().hex[:6]}"),
                         "stats_cb": self.on_stats, "error_cb": self.on_error})

    def producer(self) -> Producer:
        tid = transactional_id(self.settings) if self.settings.worker.exactly_once else None
        return Producer({**producer_config(self.settings, tid), "error_cb": self.on_error})


def producer_config(settings, transactional: str | None) -> dict:
    worker = settings.worker
    conf = client_config(settings, {"linger.ms": 20, "compression.type": "lz4"},
                         {"enable.idempotence": True,  # ordered, no duplicates from retries
                          "acks": "all"})
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
