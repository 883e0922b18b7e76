"""Champion vs challenger (and the champion's label-free accuracy estimate) through `driftline run` on the real broker: shadow traffic (two models
scoring every request of River's Phishing data, labels by request_id) gives the same comparison,
interval and decision per segment in the worker as in `driftline replay`, and the same fates."""
from __future__ import annotations

import uuid

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.stream.replay import replay
from driftline.stream.settings import load_settings
from tests.integration.harness import WorkerProcess, parse, producer, total, wait_for, write_config
from tests.unit.test_challenger_replay import CONFIG, shadow_events

pytestmark = pytest.mark.integration

FAMILIES = ("driftline_challenger_accuracy_delta", "driftline_challenger_accuracy_delta_lower",
            "driftline_challenger_accuracy_delta_upper", "driftline_challenger_decision",
            "driftline_challenger_pairs_total", "driftline_shadow_outcomes_total", "driftline_labeled_total",
            "driftline_events_total", "driftline_estimated_accuracy", "driftline_estimate_calibrated",
            "driftline_estimate_expected_accuracy", "driftline_estimate_realized_accuracy", "driftline_estimate_bound",
            "driftline_estimate_departure")


@pytest.fixture(scope="module")
def shadow_run(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow-worker")
    prefix = f"i19-{uuid.uuid4().hex[:8]}"
    models = CONFIG.split("models:\n", 1)[1]
    config = write_config(tmp / "driftline.yml", kafka_bootstrap, prefix, models)
    inferences, labels, rows = shadow_events()
    # One partition per source topic: the worker then sees the events in replay's order (the
    # confidence sequence, like every sequential detector, depends on the order of its pairs).
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = load_settings(config).kafka.topics
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in (topics.inferences, topics.labels)]).values():
        f.result()
    (tmp / "i.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in inferences))
    (tmp / "l.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in labels))
    replayed = parse(replay(load_settings(config), tmp / "i.jsonl", tmp / "l.jsonl").exposition().decode())
    pairs = lambda samples: {k: v for k, v in samples.items() if k[0] == "driftline_challenger_pairs_total"}
    worker = WorkerProcess(config, tmp, "w1").start()
    try:
        wait_for("worker ready", worker.ready, 90, [worker])
        prod = producer(kafka_bootstrap)
        for ev in inferences:  # keyed by request_id: every prediction of a request and its label meet
            prod.produce(topics.inferences, key=ev["request_id"], value=orjson.dumps(ev))
            prod.poll(0)
        prod.flush(30)
        wait_for("inferences", lambda: total(worker.metrics(), "driftline_events_total", kind="inference")
                 >= len(inferences), 180, [worker])
        for ev in sorted(labels, key=lambda e: e["timestamp"]):  # in event time, as replay merges them
            prod.produce(topics.labels, key=ev["request_id"], value=orjson.dumps(ev))
            prod.poll(0)
        prod.flush(30)
        # Every segment's pairs, not only __all__'s: segments live on different observations
        # partitions, and a busy machine applies them at different moments.
        wait_for("every segment's pairs", lambda: pairs(worker.metrics()) == pairs(replayed), 180, [worker])
        samples = worker.metrics()
    finally:
        worker.terminate()
    return rows, samples, replayed


def test_worker_and_replay_export_the_same_comparison(shadow_run):
    rows, samples, replayed = shadow_run
    for name in FAMILIES:
        mine = {k: v for k, v in samples.items() if k[0] == name}
        theirs = {k: v for k, v in replayed.items() if k[0] == name}
        assert mine, f"the worker exports no {name}"
        assert mine.keys() == theirs.keys(), name
        for k, v in mine.items():
            assert v == pytest.approx(theirs[k], rel=1e-12, abs=1e-12), (k, v, theirs[k])
    assert total(samples, "driftline_challenger_pairs_total", model="chall", segment="__all__") == len(rows)
    assert total(samples, "driftline_events_total", kind="label", outcome="invalid") == 1  # ids that disagree
