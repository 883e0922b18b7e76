"""stream/checkpoint.py on a real broker: chunks, checksums, missing chunks, tombstones, and the
transactional writes of exactly-once (aborted writes invisible, a fenced zombie's refused)."""
from __future__ import annotations

import dataclasses
import os
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from driftline.stream.checkpoint import CHUNK_BYTES, CheckpointError, CheckpointStore
from driftline.stream.transactions import TransactionAborted, TransactionFatal, Transactions

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(create_topic):
    return create_topic(partitions=1), create_topic(partitions=2)


def store(bootstrap, topics, producer=None) -> CheckpointStore:
    return CheckpointStore(bootstrap, {}, topics[0], topics[1], producer=producer)


def txn_producer(bootstrap) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "transactional.id": f"it-{uuid.uuid4().hex}",
                     "transaction.timeout.ms": 10_000, "linger.ms": 5})


def test_snapshot_past_one_chunk_travels_in_chunks_and_comes_back_whole(kafka_bootstrap, topics):
    s = store(kafka_bootstrap, topics)
    big = os.urandom(2 * CHUNK_BYTES + 12_345)  # three chunks, the last one partial
    small = b"tiny"
    [m_big, m_small] = s.write([("g/intake/0", big), ("g/bank/1", small)])
    assert len(m_big.chunks) == 3 and len(m_small.chunks) == 1
    assert s.read({"g/intake/0", "g/bank/1", "g/intake/9"}) == {"g/intake/0": big, "g/bank/1": small}
    # A second version of a key replaces the first; the other key keeps its own.
    s.write([("g/intake/0", b"v2")])
    assert s.read({"g/intake/0", "g/bank/1"}) == {"g/intake/0": b"v2", "g/bank/1": small}
    s.close()


def produce_manifest(bootstrap, topic, manifest) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, key=manifest.key.encode(), value=manifest.to_json())
    assert p.flush(10) == 0


def test_a_bad_checksum_is_refused(kafka_bootstrap, topics):
    s = store(kafka_bootstrap, topics)
    [m] = s.write([("g/bank/0", os.urandom(CHUNK_BYTES + 10))])
    produce_manifest(kafka_bootstrap, topics[0], dataclasses.replace(m, crc32=m.crc32 ^ 1))
    with pytest.raises(CheckpointError, match="bad checksum"):
        s.read({"g/bank/0"})


def test_a_manifest_naming_a_chunk_that_is_not_there_is_refused(kafka_bootstrap, topics):
    s = store(kafka_bootstrap, topics)
    [a] = s.write([("g/bank/0", b"A" * 100)])
    [b] = s.write([("g/bank/1", b"B" * 100)])
    # A manifest of key 0 whose chunk location holds key 1's chunk (what retention would leave).
    produce_manifest(kafka_bootstrap, topics[0], dataclasses.replace(a, chunks=b.chunks))
    with pytest.raises(CheckpointError, match="chunk 0 at .* holds"):
        s.read({"g/bank/0"})


def test_a_tombstone_removes_a_key(kafka_bootstrap, topics):
    s = store(kafka_bootstrap, topics)
    s.write([("g/bank/0", b"x"), ("g/bank/1", b"y")])
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(topics[0], key=b"g/bank/0", value=None)
    assert p.flush(10) == 0
    assert set(s.read_manifests()) == {"g/bank/1"}
    assert s.read({"g/bank/0", "g/bank/1"}) == {"g/bank/1": b"y"}


def test_checkpoints_of_an_aborted_transaction_are_never_read(kafka_bootstrap, topics):
    p = txn_producer(kafka_bootstrap)
    p.init_transactions(30)
    s = store(kafka_bootstrap, topics, producer=p)
    p.begin_transaction()
    s.write([("g/intake/0", b"committed" * 100_000)])  # ~900 KB: two chunks
    p.commit_transaction(30)
    # A writer that dies between its chunks and its manifest, or aborts after both, leaves
    # records in the topics that no reader sees.
    p.begin_transaction()
    s.write([("g/intake/0", b"aborted" * 100_000)])
    p.abort_transaction(30)
    reader = store(kafka_bootstrap, topics)
    assert reader.read({"g/intake/0"}) == {"g/intake/0": b"committed" * 100_000}


def test_a_fenced_zombie_cannot_commit_a_stale_checkpoint(kafka_bootstrap, topics, create_topic):
    """A worker that lost its partitions (its group generation is over) writes a checkpoint:
    its transaction carries offsets with the old generation, the coordinator refuses them, and
    the checkpoint never becomes visible (KIP-447 fencing)."""
    source = create_topic(partitions=1)
    group = f"it-fence-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False,
            "session.timeout.ms": 6000, "max.poll.interval.ms": 6000, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest"}
    zombie = Consumer(conf)
    zombie.subscribe([source])
    deadline = time.monotonic() + 60
    while not zombie.assignment() and time.monotonic() < deadline:
        zombie.poll(0.2)
    assert zombie.assignment()
    zombie_p = txn_producer(kafka_bootstrap)
    zombie_txn = Transactions(zombie_p, zombie, timeout=10.0)
    zombie_txn.init(lambda: False)
    zombie_store = store(kafka_bootstrap, topics, producer=zombie_p)
    # While it owns the partition, its checkpoint commits.
    zombie_txn.begin()
    zombie_store.write([("g/intake/0", b"owner")])
    from confluent_kafka import TopicPartition

    zombie_txn.commit([TopicPartition(source, 0, 5)], lambda: False, 10.0)

    # It stops polling (a long GC pause, a hung disk); a successor takes the partition over.
    successor = Consumer({**conf, "max.poll.interval.ms": 300_000})
    successor.subscribe([source])
    deadline = time.monotonic() + 60
    while not successor.assignment() and time.monotonic() < deadline:
        successor.poll(0.2)
    assert successor.assignment(), "the successor never got the partition"

    # The zombie wakes up and writes a stale checkpoint with the offsets of its old generation.
    zombie_txn.begin()
    zombie_store.write([("g/intake/0", b"stale")])
    with pytest.raises((TransactionAborted, TransactionFatal)):
        zombie_txn.commit([TopicPartition(source, 0, 9)], lambda: False, 10.0)
    reader = store(kafka_bootstrap, topics)
    assert reader.read({"g/intake/0"}) == {"g/intake/0": b"owner"}
    committed = successor.committed([TopicPartition(source, 0)], timeout=10)[0].offset
    assert committed == 5  # the zombie's offsets did not move either
    successor.close()
    zombie.close()
