"""The upgrade rule on a real broker: checkpoints this driftline cannot read (the committed
fixtures of format 1, what driftline 0.1.0 wrote) never stop a worker. Their partitions are
rebuilt by replaying the retained history, with the same counts as before and no output twice,
or started fresh when that history is gone; counted in driftline_checkpoint_restores_total and
logged once."""
from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.stream.checkpoint import CheckpointStore
from driftline.stream.settings import prefixed_topics
from tests.integration.harness import (
    WorkerProcess,
    consume_all,
    producer,
    publish,
    total,
    unique_prefix,
    wait_for,
    write_config,
)
from tests.integration.test_fault_tolerance import SYNTH_MODELS, synth_events

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"
PARTITIONS = 3
# The contract's counters: what a rebuild must reproduce exactly.
COUNTERS = ("driftline_events_total", "driftline_labeled_total", "driftline_correct_total",
            "driftline_segment_inferences_total", "driftline_drift_detected_total")


def counters(w: WorkerProcess) -> dict:
    return {k: v for k, v in w.metrics().items() if k[0] in COUNTERS}


def owns_everything(w: WorkerProcess) -> bool:
    m = w.metrics()
    return (w.ready() and total(m, "driftline_worker_partitions", stage="intake") == PARTITIONS
            and total(m, "driftline_worker_partitions", stage="bank") == PARTITIONS)


def overwrite_checkpoints_with_format_1(bootstrap: str, prefix: str) -> None:
    topics = prefixed_topics(prefix)
    store = CheckpointStore(bootstrap, {}, topics["checkpoints"], topics["checkpoint_data"])
    intake, bank = (FIXTURES / "dls1-intake.bin").read_bytes(), (FIXTURES / "dls1-bank.bin").read_bytes()
    store.write([(f"{prefix}/intake/{p}", intake) for p in range(PARTITIONS)]
                + [(f"{prefix}/bank/{p}", bank) for p in range(PARTITIONS)])
    store.close()


def start(config, tmp_path, name) -> WorkerProcess:
    w = WorkerProcess(config, tmp_path, name).start()
    wait_for(f"{name} owns every partition", lambda: owns_everything(w), 120, [w])
    return w


def test_unreadable_checkpoints_are_rebuilt_from_history_then_restored_or_started_fresh(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=PARTITIONS)
    p = producer(kafka_bootstrap)
    n = 4000
    w0 = start(config, tmp_path, "w0")
    try:
        inf, lab = synth_events(n)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        publish(p, f"{prefix}.inferences", [b"not json"] * 20)
        p.flush(30)
        wait_for("everything accounted", lambda: total(w0.metrics(), "driftline_events_total") == 2 * n + 20, 120, [w0])
        before = counters(w0)
    finally:
        assert w0.terminate() == 0
    assert total(before, "driftline_labeled_total", segment="__all__") == n

    # An upgrade from 0.1.0: every partition's checkpoint is in the old format.
    overwrite_checkpoints_with_format_1(kafka_bootstrap, prefix)
    w1 = start(config, tmp_path, "w1")
    try:
        wait_for("the rebuilt state caught up",
                 lambda: counters(w1) == before and total(w1.metrics(), "driftline_consumer_lag") == 0, 120, [w1])
        m = w1.metrics()
        assert total(m, "driftline_checkpoint_restores_total", outcome="rebuilt") == 2 * PARTITIONS
        assert total(m, "driftline_checkpoint_restores_total", outcome="restored") == 0
        log = w1.log_path.read_text()
        assert log.count("checkpoints could not be restored") == 1, log[-3000:]
        assert "format 1" in log
        # Rebuilt quietly: nothing dead-lettered twice.
        assert len(consume_all(kafka_bootstrap, f"{prefix}.dead-letters", 20, timeout=30)) == 20

        # The rebuilt partitions carry on counting, and checkpoint in the new format.
        inf2, lab2 = synth_events(1000, start=n, seed=1)
        publish(p, f"{prefix}.inferences", inf2)
        publish(p, f"{prefix}.labels", lab2)
        p.flush(30)
        wait_for("the new events accounted",
                 lambda: total(w1.metrics(), "driftline_events_total") == 2 * (n + 1000) + 20, 120, [w1])
        after = counters(w1)
    finally:
        assert w1.terminate() == 0

    w2 = start(config, tmp_path, "w2")
    try:
        m = w2.metrics()
        assert total(m, "driftline_checkpoint_restores_total", outcome="restored") == 2 * PARTITIONS
        assert total(m, "driftline_checkpoint_restores_total", outcome="rebuilt") == 0
        assert counters(w2) == after
    finally:
        assert w2.terminate() == 0

    # History gone (retention passed it): an unreadable checkpoint starts fresh at the committed offset.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    ends = []
    for topic in (f"{prefix}.inferences", f"{prefix}.labels", f"{prefix}.observations"):
        for part in range(PARTITIONS):
            c_low_high = p.list_topics(topic, timeout=10)  # metadata only, keeps the producer connected
            assert c_low_high.topics[topic].error is None
            ends.append(TopicPartition(topic, part, -1))  # -1: delete everything up to the end
    for fut in admin.delete_records(ends, request_timeout=30).values():
        fut.result(timeout=30)
    overwrite_checkpoints_with_format_1(kafka_bootstrap, prefix)
    w3 = start(config, tmp_path, "w3")
    try:
        m = w3.metrics()
        assert total(m, "driftline_checkpoint_restores_total", outcome="fresh") == 2 * PARTITIONS
        assert total(m, "driftline_events_total") == 0
        inf3, lab3 = synth_events(500, start=n + 1000, seed=2)
        publish(p, f"{prefix}.inferences", inf3)
        publish(p, f"{prefix}.labels", lab3)
        p.flush(30)
        wait_for("fresh partitions count new events",
                 lambda: total(w3.metrics(), "driftline_events_total") == 1000, 120, [w3])
    finally:
        assert w3.terminate() == 0
