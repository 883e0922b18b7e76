"""The observations topic's format on a real broker: a worker applies messages written before
the format carried a version (formats 1 and 2, as a rolling upgrade finds them on the topic), and
dead-letters, without applying it or stopping, a message tagged with a format it does not read."""
from __future__ import annotations

import orjson
import pytest

from driftline.stream.ordering import FORMAT_HEADER
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
from tests.integration.test_fault_tolerance import SYNTH_MODELS

pytestmark = pytest.mark.integration


def inference_rec(offset: int, pid: str, ts: float) -> list:
    return [offset, 0, 0, "m0", "__all__", pid, ts, 1, None, {"x": 1.0}]


def test_untagged_messages_apply_and_an_unknown_format_is_dead_lettered(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    # One partition per topic: every observation lands on the one bank.
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=1)
    w = WorkerProcess(config, tmp_path, "w").start()
    try:
        wait_for("the worker owns its bank partition",
                 lambda: w.ready() and total(w.metrics(), "driftline_worker_partitions", stage="bank") == 1, 120, [w])
        p = producer(kafka_bootstrap)
        obs = f"{prefix}.observations"
        # Format 1 (driftline before event time): an inference and an outcome of an even older
        # worker (8 fields: before the score and the slice accountant's values).
        p.produce(obs, key=b"old1", partition=0, value=orjson.dumps(
            ["old1i", [inference_rec(0, "a1", 100.0), [0, 1, 1, "m0", "__all__", "a1", 101.0, 1, 1, 1.0]]]))
        # Format 2 (untagged, with the input partition): held for event-time order, then applied.
        p.produce(obs, key=b"old2", partition=0, value=orjson.dumps(["old2i", [inference_rec(0, "a2", 102.0)], 0, None, None]))
        # A format this worker does not read (a newer worker's): same value shape, other version.
        at = []
        p.produce(obs, key=b"new9", partition=0, headers=[(FORMAT_HEADER, b"9")],
                  value=orjson.dumps(["new9i", [inference_rec(0, "a9", 103.0)], 0, None, None]),
                  on_delivery=lambda err, msg: at.append(msg.offset()))
        # Real events, so that the input partition has progress and then goes idle (the
        # watermark that releases format 2's held record).
        publish(p, f"{prefix}.inferences", [{"prediction_id": "r1", "model": "m0", "features": {"x": 2.0},
                                             "prediction": 1, "timestamp": 200.0}])
        publish(p, f"{prefix}.labels", [{"prediction_id": "r1", "label": 0, "timestamp": 201.0}])
        p.flush(30)

        letters = consume_all(kafka_bootstrap, f"{prefix}.dead-letters", expected=1, timeout=90)
        assert len(letters) == 1
        letter = orjson.loads(letters[0].value())
        assert (letter["kind"], letter["reason"], letter["topic"], letter["offset"]) == (
            "observations", "unknown_format", obs, at[0])
        assert "format 9" in letter["detail"] and "upgrade this worker" in letter["detail"]

        def counted():
            m = w.metrics()
            return (total(m, "driftline_events_total", model="m0", kind="inference", outcome="accepted") == 3
                    and total(m, "driftline_labeled_total", model="m0", segment="__all__") == 2 and m)

        m = wait_for("the untagged records and the real events applied", counted, 90, [w])
        # a1 (format 1), a2 (format 2), r1 (the worker's own, format 3); a9 not applied
        assert total(m, "driftline_correct_total", model="m0", segment="__all__") == 1  # a1 right, r1 wrong
        assert f"observations partition 0 offset {at[0]} skipped" in w.log_tail(20_000)
        assert w.alive
    finally:
        assert w.terminate() == 0
