"""Both Kafka clients that driftline uses work against the broker that deploy/local/kafka runs:
confluent-kafka (the worker, the publishing SDK, admin) and aiokafka through faust-streaming
(the runtime of the faust integration and of bench/perf.py's faust figure)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("faust_probe.py")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def produce(bootstrap: str, topic: str, messages: list[tuple[str, str]]) -> dict[str, int]:
    """Produce keyed messages; returns key -> partition as reported in the delivery reports."""
    from confluent_kafka import Producer

    delivered: dict[str, int] = {}
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered[msg.key().decode()] = msg.partition()

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for key, value in messages:
        p.produce(topic, key=key.encode(), value=value.encode(), on_delivery=on_delivery)
        p.poll(0)
    remaining = p.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered after 30 s"
    assert not errors, errors[:5]
    return delivered


def test_confluent_kafka_keyed_roundtrip_in_a_group(kafka_bootstrap, create_topic):
    from confluent_kafka import Consumer, TopicPartition

    partitions, n = 3, 300
    topic = create_topic(partitions=partitions)
    sent = [(f"pred-{i:05d}", json.dumps({"i": i})) for i in range(n)]
    placed = produce(kafka_bootstrap, topic, sent)
    assert set(placed.values()) == set(range(partitions)), "keys should spread over every partition"

    group = unique_name("it-group")
    c = Consumer({
        "bootstrap.servers": kafka_bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    got: list[tuple[str, str, int]] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for msg in c.consume(num_messages=500, timeout=1.0):
                assert msg.error() is None, msg.error()
                got.append((msg.key().decode(), msg.value().decode(), msg.partition()))
        assert len(got) == n, f"consumed {len(got)} of {n} within 60 s"
        # Offsets commit through the group coordinator and read back.
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        per_partition = {p: sum(1 for *_, q in got if q == p) for p in range(partitions)}
        assert {tp.partition: tp.offset for tp in committed} == per_partition
    finally:
        c.close()

    assert sorted((k, v) for k, v, _ in got) == sorted(sent)            # exactly once each
    assert all(placed[k] == p for k, _, p in got)                       # key -> its partition


def test_faust_worker_in_a_separate_process_consumes_every_message(kafka_bootstrap, create_topic, tmp_path):
    partitions, n = 4, 200
    topic = create_topic(partitions=partitions)
    sent = [(f"pred-{i:05d}", json.dumps({"i": i})) for i in range(n)]
    placed = produce(kafka_bootstrap, topic, sent)
    assert len(set(placed.values())) == partitions

    out, log = tmp_path / "seen.jsonl", tmp_path / "faust.log"
    cmd = [sys.executable, str(PROBE), "--bootstrap", kafka_bootstrap, "--topic", topic,
           "--partitions", str(partitions), "--expect", str(n), "--out", str(out),
           "--app-id", unique_name("it-faust"), "--timeout", "100", "--datadir", str(tmp_path / "faust-data")]
    with open(log, "wb") as logf:
        # Own session: on failure the whole process group is killed, never left behind.
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    tail = log.read_text(errors="replace")[-3000:]
    assert rc == 0, f"faust probe exit code {rc}; log tail:\n{tail}"

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(r["key"], r["value"]) for r in rows}
    assert got == set(sent), f"faust saw {len(got)} of {n} distinct messages; log tail:\n{tail}"
    assert {r["partition"] for r in rows} == set(range(partitions))
    assert all(placed[r["key"]] == r["partition"] for r in rows)


def test_a_fenced_producers_fatal_error_is_raised_by_a_call_and_never_reaches_error_cb(kafka_bootstrap, create_topic):
    """What the worker's error handling rests on (stream/checkpointer.py producer_failed): when
    librdkafka puts a transactional producer in its fatal state (fenced by a newer instance of its
    transactional.id), confluent-kafka raises the error from the call that serves it (poll,
    flush, produce, a transactional call), as a KafkaException or, from flush, a mangled
    SystemError; it never calls the Python error_cb with it. So the worker's error_cb only
    watches for outages (BrokerWatch), and every producer call on the loop's path is guarded."""
    from confluent_kafka import KafkaException, Producer

    topic = create_topic()
    tid = unique_name("it-fenced")
    seen: list = []
    conf = {"bootstrap.servers": kafka_bootstrap, "transactional.id": tid, "transaction.timeout.ms": 10_000,
            "log_level": 0}
    zombie = Producer({**conf, "error_cb": seen.append})
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"before")
    assert zombie.flush(30) == 0
    successor = Producer(conf)
    successor.init_transactions(30)  # bumps the epoch: the zombie is fenced
    raised = None
    deadline = time.monotonic() + 30
    while raised is None and time.monotonic() < deadline:
        try:
            zombie.produce(topic, value=b"after")
            zombie.poll(0.2)
            zombie.flush(1)
        except (KafkaException, SystemError) as exc:
            raised = exc
    assert raised is not None, "the fenced producer never said so"
    if isinstance(raised, KafkaException):
        assert raised.args[0].fatal(), raised
    assert not [e for e in seen if e.fatal()], seen
