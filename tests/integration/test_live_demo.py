"""`driftline demo --kafka` on the session's broker, when the worker cannot keep up: the bound on
the wait for its counts passes, and the demo still tells what the worker had found, stops the
worker, and leaves no pid file behind."""
from __future__ import annotations

import os

import pytest

from driftline.stream.live_demo import DemoTimeouts, run_live_demo
from tests.integration.harness import free_port

pytestmark = pytest.mark.integration


def test_a_worker_still_catching_up_gets_its_story_told(kafka_bootstrap, tmp_path):
    pidfile = tmp_path / "worker.pid"
    # accounted=0: the demo stops waiting for the worker's counts as soon as it has published,
    # as it would after its bound on a machine where the worker is far behind.
    report = run_live_demo(kafka_bootstrap, f"127.0.0.1:{free_port()}", tmp_path, pidfile=pidfile,
                           timeouts=DemoTimeouts(accounted=0.0))
    text = "\n".join(report.lines)
    assert not report.complete
    assert report.lines[0].startswith("the worker is still catching up: "), text
    assert "labels counted after 0 s; the figures below are what it had counted by then" in report.lines[0]
    # The story is still told from what the worker had counted (on a busy machine that can be
    # nothing yet: the table then has no rows): the table, the dead letters, the detection line.
    assert any(line.startswith("segment") and "labelled" in line and "error drifts" in line for line in report.lines), text
    assert "dead-lettered: " in text
    assert "first drifted event -> error drift in band=high on /metrics: " in text
    assert "not delivered" not in text  # the producer was flushed
    # The worker was stopped (no --keep-worker), cleanly, and its pid file removed.
    assert report.worker_pid is None
    assert "worker stopped with exit code 0" in text
    assert not pidfile.exists()
    assert os.path.getsize(tmp_path / "demo-live.png") > 0


def test_the_explanation_reader_reads_committed_records_past_an_open_transaction(kafka_bootstrap, kafka_admin):
    """The worker writes drift records inside its transactions: the demo's reader returns every
    committed record and stops at the readable end, not at the high watermark, which an open
    transaction's records (never readable until it commits) keep out of reach."""
    import uuid

    import orjson
    from confluent_kafka import Producer
    from confluent_kafka.admin import NewTopic

    from driftline.stream.live_demo import read_drift_records

    topic = f"live-demo-reader-{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, orjson.dumps({"n": i}))
    producer.commit_transaction(30)
    producer.begin_transaction()  # left open while the reader runs
    producer.produce(topic, orjson.dumps({"n": "open"}))
    producer.flush(30)
    try:
        records = read_drift_records(kafka_bootstrap, topic, timeout=60.0)
    finally:
        producer.abort_transaction(30)
    assert records == [{"n": 0}, {"n": 1}, {"n": 2}]
