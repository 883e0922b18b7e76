"""Checkpoints of partition state in Kafka, so the worker that takes a partition over resumes it.

Two topics, because snapshots can be large and a restore must not read every old one:

- `driftline.checkpoints` (compacted, small): one manifest per key `GROUP/STAGE/PARTITION`,
  JSON: version, size, CRC-32, where each chunk lives, and when it was written.
- `driftline.checkpoint-data` (time retention): the snapshot bytes in chunks of at most
  `CHUNK_BYTES` (under every broker's default message size limit).

With exactly-once (the default), the worker passes its transactional producer: chunks and
manifests are written inside the transaction that also carries the outputs and the input
offsets, and readers read committed records only, so a manifest, its chunks and the offsets it
covers become visible together or never (a writer killed between chunks and manifest, or a
zombie fenced by the group generation, leaves nothing a reader sees).

A restore reads the whole manifest topic (one small record per key after compaction), then
fetches only the chunks of the wanted manifests by offset. The writer publishes chunks first
and the manifest last, each batch flushed before the next: a manifest never names a chunk
that is not stored. The worker re-checkpoints every partition at least every
`MAX_CHECKPOINT_AGE` so that chunk retention (`DATA_RETENTION_MS`) never outlives a manifest.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
import zlib
from typing import Iterable

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from driftline.stream.clients import merge_config
from driftline.stream.topic_reader import TopicUnreadable, partitions_of, read_to_end

log = logging.getLogger("driftline.checkpoint")

CHUNK_BYTES = 512 * 1024
# Fault injection for tests: while this file exists, a write pauses between its chunks and its
# manifests (so that a test can kill the writer exactly there).
ENV_FAULT_PAUSE = "DRIFTLINE_FAULT_PAUSE_BEFORE_MANIFEST"
MAX_CHECKPOINT_AGE = 3600.0  # seconds; see the module docstring
DATA_RETENTION_MS = 3 * 86_400_000  # far longer than MAX_CHECKPOINT_AGE: a margin for long outages


class CheckpointError(RuntimeError):
    pass


class CheckpointCadence:
    """When the worker's next checkpoint round is due (with exactly-once: its next commit).

    A round costs time in proportion to the state it snapshots. While the worker is busy (a
    backlog) that time is taken from processing: rounds are then spaced at least
    `1 / BUSY_SHARE` times the last one's duration apart, so they take at most ~10% of the
    worker's time. Once the loop has waited for input (seconds blocked in the consumer since
    the last round) at least as long as a round takes, the round takes waiting time instead:
    it is due after `1 / DRAINED_SHARE` times its duration. With exactly-once nothing the worker
    wrote is visible before its commit, not even to its own stage 2, so the 10x spacing with
    the input drained was pure waiting (measured: a backlog's last 10-20 s, its observations
    held until the commit). Never sooner than `interval`; never later than `longest`: an
    exactly-once transaction must commit well within the broker's transaction timeout, which
    aborts it and fences the producer (a backlog's worker died so, the 10x spacing of a 2.4 s
    round being 24 s)."""

    BUSY_SHARE = 0.1
    DRAINED_SHARE = 0.5

    def __init__(self, interval: float, longest: float = math.inf):
        self.interval = interval
        self.longest = max(longest, interval)
        self.last = -math.inf  # monotonic end of the last round: the first one is due at once
        self.took = 0.0  # seconds the last round took
        self.waited = 0.0

    def wait(self, seconds: float) -> None:
        """The loop spent `seconds` waiting for input."""
        self.waited += seconds

    def gap(self) -> float:
        """Seconds from the end of the last round to the next."""
        share = self.DRAINED_SHARE if self.waited >= self.took else self.BUSY_SHARE
        return min(max(self.interval, self.took / share), self.longest)

    def due(self, now: float) -> bool:
        return now >= self.last + self.gap()

    def done(self, now: float, took: float) -> None:
        """A round ended at `now` after `took` seconds (0: it failed or had nothing to write;
        the next attempt is then due after `interval`)."""
        self.last = now
        self.took = took
        self.waited = 0.0


@dataclasses.dataclass(frozen=True)
class Manifest:
    key: str
    version: str
    size: int
    crc32: int
    chunks: tuple[tuple[int, int], ...]  # (partition, offset) in the data topic
    written_at: float

    def to_json(self) -> bytes:
        return orjson.dumps({"version": self.version, "size": self.size, "crc32": self.crc32,
                             "chunks": self.chunks, "written_at": self.written_at})

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> "Manifest":
        d = orjson.loads(raw)
        return cls(key, d["version"], d["size"], d["crc32"], tuple(tuple(c) for c in d["chunks"]), d["written_at"])


class CheckpointStore:
    def __init__(self, bootstrap: str, client_config: dict, manifests_topic: str, data_topic: str,
                 producer: Producer | None = None):
        self.bootstrap = bootstrap
        self.client_config = dict(client_config)
        self.manifests_topic = manifests_topic
        self.data_topic = data_topic
        # A producer of its own (flushing it waits for checkpoint records only), or the worker's
        # transactional one, whose transaction this store's writes then join.
        self._owns_producer = producer is None
        self._producer = producer or Producer(merge_config(self.client_config, bootstrap, {
            "linger.ms": 5, "compression.type": "lz4"}, {
            "acks": "all", "enable.idempotence": True, "message.max.bytes": CHUNK_BYTES + 64 * 1024,
        }))

    def use_producer(self, producer: Producer) -> None:
        """Write through `producer` from now on (the worker replaced its transactional one)."""
        self._producer = producer
        self._owns_producer = False

    # -- writing --------------------------------------------------------------------------------
    def write(self, items: Iterable[tuple[str, bytes]], timeout: float = 30.0) -> list[Manifest]:
        """Store several snapshots; returns their manifests once all are durable."""
        items = list(items)
        if not items:
            return []
        located: dict[str, list] = {}
        errors: list[str] = []

        def on_chunk(err, msg, key=None, index=None):
            if err is not None:
                errors.append(f"{key} chunk {index}: {err}")
            else:
                located[key][index] = (msg.partition(), msg.offset())

        versions = {}
        for key, blob in items:
            version = uuid.uuid4().hex
            versions[key] = (version, blob)
            n = max(1, -(-len(blob) // CHUNK_BYTES))
            located[key] = [None] * n
            for i in range(n):
                self._produce(self.data_topic, f"{key}#{version}#{i}".encode(), blob[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES],
                              lambda err, msg, k=key, i=i: on_chunk(err, msg, k, i))
        self._flush(timeout, errors)
        self._fault_pause(len(items))
        now = time.time()
        manifests = []
        for key, (version, blob) in versions.items():
            m = Manifest(key, version, len(blob), zlib.crc32(blob), tuple(located[key]), now)
            manifests.append(m)
            self._produce(self.manifests_topic, key.encode(), m.to_json(),
                          lambda err, msg, k=key: errors.append(f"{k} manifest: {err}") if err else None)
        self._flush(timeout, errors)
        return manifests

    @staticmethod
    def _fault_pause(n: int) -> None:
        path = os.environ.get(ENV_FAULT_PAUSE)
        if path and os.path.exists(path):
            log.warning("fault injection: chunks of %d checkpoints written, pausing before their manifests", n)
            time.sleep(120)

    def _produce(self, topic, key, value, callback) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=callback)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)

    def _flush(self, timeout: float, errors: list[str]) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise CheckpointError(f"{left} checkpoint records not delivered within {timeout:.0f} s")
        if errors:
            raise CheckpointError("checkpoint write failed: " + "; ".join(errors[:3]))

    # -- reading --------------------------------------------------------------------------------
    def read(self, keys: Iterable[str], timeout: float = 60.0) -> dict[str, bytes]:
        """The latest stored snapshot of each key that has one."""
        wanted = set(keys)
        if not wanted:
            return {}
        manifests = {k: m for k, m in self.read_manifests(timeout).items() if k in wanted}
        if not manifests:
            return {}
        need: dict[tuple[int, int], tuple[str, int]] = {}
        for m in manifests.values():
            for i, loc in enumerate(m.chunks):
                need[tuple(loc)] = (m.key, i)
        chunks: dict[str, list] = {k: [None] * len(m.chunks) for k, m in manifests.items()}
        consumer = self._consumer()
        try:
            # One assignment per needed offset: librdkafka fetches from each position once.
            by_partition: dict[int, list[int]] = {}
            for part, off in need:
                by_partition.setdefault(part, []).append(off)
            for part, offs in by_partition.items():
                for off in sorted(offs):
                    consumer.assign([TopicPartition(self.data_topic, part, off)])
                    msg = self._poll_one(consumer, timeout, f"{self.data_topic}[{part}]@{off}")
                    key, index = need[(part, off)]
                    expect_prefix = f"{key}#{manifests[key].version}#{index}".encode()
                    if msg.key() != expect_prefix:
                        raise CheckpointError(f"checkpoint {key}: chunk {index} at {part}@{off} holds "
                                              f"{msg.key()!r} (data topic retention shorter than the checkpoint's age?)")
                    chunks[key][index] = msg.value()
        finally:
            consumer.close()
        out = {}
        for key, m in manifests.items():
            blob = b"".join(chunks[key])
            if len(blob) != m.size or zlib.crc32(blob) != m.crc32:
                raise CheckpointError(f"checkpoint {key}: {len(blob)} bytes with a bad checksum (version {m.version})")
            out[key] = blob
        return out

    def read_manifests(self, timeout: float = 60.0) -> dict[str, Manifest]:
        """Every key's latest manifest (the manifest topic, read from its start to its end)."""
        consumer = self._consumer()
        latest: dict[str, Manifest] = {}

        def take(msg) -> None:
            if msg.error():
                raise CheckpointError(f"reading {self.manifests_topic}: {msg.error()}")
            key = msg.key().decode() if msg.key() else ""
            if msg.value() is None:
                latest.pop(key, None)  # tombstone
            else:
                latest[key] = Manifest.from_json(key, msg.value())

        try:
            try:
                partitions = partitions_of(consumer, self.manifests_topic, timeout)
            except TopicUnreadable as exc:
                raise CheckpointError(f"checkpoint {exc}") from None
            if not read_to_end(consumer, self.manifests_topic, partitions, take, timeout):
                raise CheckpointError(f"reading {self.manifests_topic} timed out after {timeout:.0f} s")
        finally:
            consumer.close()
        return latest

    def _consumer(self) -> Consumer:
        return Consumer(merge_config(self.client_config, self.bootstrap, {
            "fetch.max.bytes": 8 * CHUNK_BYTES, "max.partition.fetch.bytes": 2 * CHUNK_BYTES}, {
            "group.id": "driftline-checkpoint-reader", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",  # records of aborted or open transactions: never
        }))

    @staticmethod
    def _poll_one(consumer: Consumer, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue  # behind an open transaction: its outcome decides what follows
                raise CheckpointError(f"reading {what}: {msg.error()}")
            return msg
        raise CheckpointError(f"reading {what} timed out after {timeout:.0f} s")

    def close(self) -> None:
        if self._owns_producer:
            self._producer.flush(10)

