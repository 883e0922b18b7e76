"""The publishing SDK on real brokers: a worker accepts what it publishes (directly and through
the example FastAPI app), and a broker outage neither slows the request path nor loses what fits
in the local queue."""
from __future__ import annotations

import math
import os
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.stream.codec import decode_inference
from driftline.stream.events import Inference
from driftline.stream.publish import Publisher
from tests.integration.harness import REPO, WorkerProcess, consume_all, free_port, total, unique_prefix, wait_for, write_config

pytestmark = pytest.mark.integration

MODELS = """\
  sdk:
    segments: [region]
    features: {tenure: numeric, charges: numeric, plan: categorical}
    label_ttl: 1d
  churn:
    segments: [region]
    features: {tenure: numeric, monthly_charges: numeric, support_calls: numeric, plan: categorical}
    label_ttl: 1d
    detectors: [adwin]
"""


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("publish")
    prefix = unique_prefix()
    config = write_config(tmp / "driftline.yml", kafka_bootstrap, prefix, MODELS)
    w = WorkerProcess(config, tmp, "w0").start()
    try:
        # Ready = the worker created its topics: the SDK must not auto-create them first.
        wait_for("worker ready", w.ready, 120, [w])
        yield dict(worker=w, bootstrap=kafka_bootstrap, inferences=f"{prefix}.inferences", labels=f"{prefix}.labels")
    finally:
        w.terminate()


def accepted(w: WorkerProcess, model: str, kind: str) -> float:
    return total(w.metrics(), "driftline_events_total", model=model, kind=kind, outcome="accepted")


def test_events_published_by_the_sdk_are_accepted_by_a_worker(worker):
    w, n = worker["worker"], 2_000
    pub = Publisher(worker["bootstrap"], inferences_topic=worker["inferences"], labels_topic=worker["labels"])
    rng = random.Random(7)
    ids = []
    for i in range(n):
        region = rng.choice(["eu", "us", "apac"])
        features = {"tenure": rng.randint(1, 72), "charges": round(rng.gauss(70, 10), 2), "plan": rng.choice(["basic", "pro"])}
        kw = {}
        if i % 3 == 0:
            kw["segment"] = {"region": region}
        else:
            features["region"] = region
        if i % 5 == 0:
            kw["prediction_id"] = f"order-{i}"
        if i % 7 == 0:  # what a scikit-learn model hands over
            features["charges"] = np.float64(features["charges"]) if i % 2 else math.nan
        if i % 11 == 0:
            kw["model_version"] = "2"
        ids.append(pub.log_prediction(model="sdk", features=features, prediction=np.int64(i % 2),
                                      score=rng.random(), **kw))
    assert len(set(ids)) == n and all(ids[i] == f"order-{i}" for i in range(0, n, 5))
    for i, pid in enumerate(ids):
        pub.log_label(pid, i % 3 == 0, model="sdk" if i % 2 else None)
    pub.log_prediction(model="not a name", features={}, prediction=1)  # counted, never sent
    assert pub.flush(30) == 0
    s = pub.close()
    assert (s.sent, s.delivered, s.failed, s.dropped, s.invalid) == (2 * n, 2 * n, 0, 0, 1)

    wait_for("every SDK event accepted", lambda: accepted(w, "sdk", "inference") == n and accepted(w, "sdk", "label") == n,
             120, [w])
    m = w.metrics()
    assert total(m, "driftline_events_total", model="sdk", outcome="invalid") == 0
    wait_for("every label joined", lambda: total(w.metrics(), "driftline_labeled_total", model="sdk", segment="__all__") == n,
             60, [w])
    # On the wire: keyed by prediction_id, and valid for the worker's decoder.
    for msg in consume_all(worker["bootstrap"], worker["inferences"], n):
        ev = decode_inference(msg.value(), 0.0)
        assert type(ev) is Inference and msg.key().decode() == ev.prediction_id


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_example_app_publishes_each_prediction_and_label(worker):
    from fastapi.testclient import TestClient  # the test extra installs it: missing must fail, not skip

    from examples.serving import churn
    from examples.serving.app import create_app

    w, n = worker["worker"], 300
    app = create_app(worker["bootstrap"], inferences_topic=worker["inferences"], labels_topic=worker["labels"])
    with TestClient(app) as client:  # runs the lifespan: the publisher is created, then closed (flushed)
        outcomes = []
        for features, churned in churn.customers(3, n):
            r = client.post("/predict", json=features)
            assert r.status_code == 200 and r.headers["x-prediction-id"] == r.json()["prediction_id"]
            outcomes.append({"prediction_id": r.json()["prediction_id"], "churned": churned})
        assert client.post("/feedback", json=outcomes).json() == {"accepted": n}
        own = {"x-prediction-id": "client-chosen-1"}
        assert client.post("/predict", json=churn.customer(random.Random(1))[0], headers=own).json()["prediction_id"] \
            == "client-chosen-1"
    wait_for("every app event accepted",
             lambda: accepted(w, "churn", "inference") == n + 1 and accepted(w, "churn", "label") == n, 120, [w])
    wait_for("labels joined per region", lambda: all(
        total(w.metrics(), "driftline_labeled_total", model="churn", segment=f"region={r}") > 0 for r in churn.REGIONS), 60, [w])


# ------------------------------------------------------------------ broker outage
class OwnBroker:
    """A broker this test may stop and start (deploy/local/kafka), apart from the session's."""

    def __init__(self, state: Path):
        self.port = free_port()
        self.env = {**os.environ, "DRIFTLINE_STATE": str(state), "KAFKA_PORT": str(self.port),
                    "KAFKA_CONTROLLER_PORT": str(free_port())}
        self.bootstrap = f"127.0.0.1:{self.port}"

    def __call__(self, action: str) -> float:
        t0 = time.monotonic()
        res = subprocess.run([str(REPO / "deploy/local/kafka"), action], env=self.env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"kafka {action} failed:\n{res.stdout}{res.stderr}"
        return time.monotonic() - t0


def timed_calls(pub: Publisher, n: int, tag: str) -> tuple[list[str], list[float]]:
    """n log_prediction calls at ~1,000/s, as a serving system would make them; their ids and µs."""
    ids, cost = [], []
    for i in range(n):
        t0 = time.perf_counter_ns()
        ids.append(pub.log_prediction(model="churn", features={"tenure": i, "plan": "pro", "region": "eu"},
                                      prediction=i % 2, score=0.7, prediction_id=f"{tag}-{i}"))
        cost.append((time.perf_counter_ns() - t0) / 1000)
        time.sleep(0.001)
    return ids, cost


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.99)]


def test_broker_down_does_not_slow_requests_and_queued_events_arrive_after_restart(tmp_path):
    queue_bound, before, during = 2_000, 200, 3_000
    broker = OwnBroker(tmp_path)
    broker("start")
    pub = None
    try:
        topic = unique_prefix() + ".inferences"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
        del admin  # or it reports the outage below on stderr too
        failures = []
        pub = Publisher(broker.bootstrap, inferences_topic=topic, on_failure=lambda *a: failures.append(a),
                        log_level=0, **{"queue.buffering.max.messages": queue_bound, "message.timeout.ms": 180_000})
        up_ids, up_cost = timed_calls(pub, before, "up")
        assert pub.flush(30) == 0 and pub.stats.delivered == before

        stop_s = broker("stop")
        down_ids, down_cost = timed_calls(pub, during, "down")
        s = pub.stats
        print(f"\nlog_prediction µs, broker up: p50 {sorted(up_cost)[before // 2]:.1f} p99 {p99(up_cost):.1f}; "
              f"down: p50 {sorted(down_cost)[during // 2]:.1f} p99 {p99(down_cost):.1f} max {max(down_cost):.0f} "
              f"(stop took {stop_s:.1f} s)")
        assert p99(down_cost) < 2_000, "the request path waited for a broker that is down"
        # Nothing drains while the broker is away: the first `queue_bound` calls wait, the rest are dropped.
        assert (s.sent - before, s.dropped, s.failed) == (queue_bound, during - queue_bound, 0)

        start_s = broker("start")
        t0 = time.monotonic()
        assert pub.flush(120) == 0, pub.stats
        print(f"broker back after {start_s:.1f} s; queue delivered {time.monotonic() - t0:.1f} s later")
        s = pub.close()
        assert (s.delivered, s.failed, failures) == (before + queue_bound, 0, [])
        got = {m.key().decode() for m in consume_all(broker.bootstrap, topic, before + queue_bound)}
        assert got == set(up_ids) | set(down_ids[:queue_bound])
    finally:
        if pub is not None:
            pub.close(0)
        broker("stop")
