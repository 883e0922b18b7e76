"""The publishing SDK without a broker: what it builds, what it refuses, and that the request path
never raises or waits (a Publisher pointed at a closed port queues locally, as in an outage)."""
from __future__ import annotations

import math
import socket
import time
from collections.abc import Mapping

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driftline.stream.codec import REASONS, decode_inference, decode_label
from driftline.stream.events import Inference, Invalid, Label
from driftline.stream.publish import Publisher, PublishStats, encode_inference, encode_label

T0 = 1_767_225_600.0


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed when the block ends: connections are refused


@pytest.fixture
def offline():
    """A publisher whose broker is down; closed after the test without waiting for delivery."""
    made = []

    def _make(**kw) -> Publisher:
        kw.setdefault("log_level", 0)  # librdkafka's "connection refused" lines are expected here
        p = Publisher(bootstrap=closed_port(), close_timeout=0, clock=lambda: T0, **kw)
        made.append(p)
        return p

    yield _make
    for p in made:
        p.close(0)


# ------------------------------------------------------------------ events
VALID_INFERENCES = [
    dict(features={}, prediction=1),
    dict(features={"tenure": 3, "charges": 70.5, "plan": "pro", "paperless": True, "age": None}, prediction="yes",
         score=0.83, segment={"region": "eu"}, model_version="3"),
    dict(features={"x": 1.0}, prediction=False, score=0),
    dict(features={"x": 1.0}, prediction=2.5, score=1),
    # what scikit-learn and numpy hand over: numpy scalars, NaN for a missing value
    dict(features={"x": np.float64(1.5), "n": np.int64(3), "b": np.bool_(True), "s": np.str_("a"), "m": math.nan},
         prediction=np.int64(1), score=np.float32(0.25)),
]


@pytest.mark.parametrize("kw", VALID_INFERENCES)
def test_every_built_inference_decodes_valid(kw):
    raw = encode_inference(prediction_id="p-1", model="churn.v2_a-b", timestamp=T0, **kw)
    assert type(raw) is bytes
    ev = decode_inference(raw, 0.0)
    assert type(ev) is Inference, ev
    assert (ev.prediction_id, ev.model, ev.timestamp) == ("p-1", "churn.v2_a-b", T0)
    assert ev.model_version == kw.get("model_version", "unknown")
    assert ev.segment == kw.get("segment")
    assert set(ev.features) == set(kw["features"])


def test_numpy_values_are_sent_as_plain_json_and_nan_as_missing():
    kw = VALID_INFERENCES[-1]
    ev = decode_inference(encode_inference(prediction_id="p", model="m", timestamp=T0, **kw), 0.0)
    assert ev.features == {"x": 1.5, "n": 3, "b": True, "s": "a", "m": None}
    assert ev.prediction == 1 and ev.score == 0.25


@pytest.mark.parametrize("label", [0, 1, 2.5, "churned", True, np.int64(0), np.bool_(False)])
def test_every_built_label_decodes_valid(label):
    for model in (None, "churn"):
        ev = decode_label(encode_label(prediction_id="p-1", label=label, timestamp=T0, model=model), 0.0)
        assert type(ev) is Label and ev.prediction_id == "p-1" and ev.model == model and ev.timestamp == T0
        assert ev.label == (label.item() if hasattr(label, "item") else label)


INVALID_INFERENCES = [
    (dict(model="bad name!"), "bad_model_name"),
    (dict(model="x" * 65), "bad_model_name"),
    (dict(model=None), "bad_model_name"),
    (dict(prediction_id=""), "out_of_range"),
    (dict(prediction_id="p" * 257), "out_of_range"),
    (dict(prediction_id=17), "wrong_type"),
    (dict(features=[1, 2]), "wrong_type"),
    (dict(features={"x": [1]}), "wrong_type"),
    (dict(features={"x": {"y": 1}}), "wrong_type"),
    (dict(features={"x": math.inf}), "not_finite"),
    (dict(features={"x": np.float64("-inf")}), "not_finite"),
    (dict(features={1: 2}), "wrong_type"),
    (dict(prediction=None), "wrong_type"),
    (dict(prediction=[1]), "wrong_type"),
    (dict(prediction=math.nan), "not_finite"),
    (dict(score=1.5), "out_of_range"),
    (dict(score=-0.1), "out_of_range"),
    (dict(score=math.nan), "out_of_range"),
    (dict(score="0.5"), "out_of_range"),
    (dict(score=True), "out_of_range"),
    (dict(segment={"region": 3}), "wrong_type"),
    (dict(segment="eu"), "wrong_type"),
    (dict(model_version=3), "wrong_type"),
    (dict(features={"blob": "x" * 300_000}), "oversized"),
]


@pytest.mark.parametrize("bad,reason", INVALID_INFERENCES)
def test_invalid_inference_is_a_value_with_the_decoders_reason(bad, reason):
    out = encode_inference(**{**dict(prediction_id="p", model="churn", features={"x": 1}, prediction=1, timestamp=T0), **bad})
    assert type(out) is Invalid and out.reason == reason, out
    assert reason in REASONS and out.detail


@pytest.mark.parametrize("bad,reason", [(dict(label=None), "wrong_type"), (dict(label=math.inf), "not_finite"),
                                        (dict(prediction_id=""), "out_of_range"), (dict(model="a b"), "bad_model_name")])
def test_invalid_label(bad, reason):
    out = encode_label(**{"prediction_id": "p", "label": 1, "timestamp": T0, **bad})
    assert type(out) is Invalid and out.reason == reason


# ------------------------------------------------------------------ the request path
def test_ids_are_generated_unique_and_given_ids_kept(offline):
    pub = offline()
    ids = {pub.log_prediction(model="churn", features={}, prediction=1) for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)
    assert pub.log_prediction(model="churn", features={}, prediction=1, prediction_id="order-42") == "order-42"
    assert pub.stats.sent == 1001


def test_nothing_raises_into_the_caller(offline):
    pub = offline()

    class Hostile(Mapping):  # a caller's object that breaks when read
        def __getitem__(self, key):
            raise RuntimeError("boom")

        def __iter__(self):
            return iter(["x"])

        def __len__(self):
            return 1

    calls = [dict(model=None, features=None, prediction=None), dict(model="m", features=Hostile(), prediction=1),
             dict(model="m", features={}, prediction=object()), dict(model="m", features={}, prediction=1, score="hi")]
    for kw in calls:
        assert pub.log_prediction(**kw)  # an id comes back even for a refused call
    pub.log_label(None, None)
    pub.log_label("p", object())
    s = pub.stats
    assert s.invalid == len(calls) + 2 and s.sent == 0


def test_full_queue_drops_and_counts_without_waiting(offline):
    pub = offline(**{"queue.buffering.max.messages": 50})
    t0 = time.perf_counter()
    for i in range(200):
        pub.log_prediction(model="churn", features={"i": i}, prediction=1)
    assert time.perf_counter() - t0 < 1.0  # nothing waited for the broker
    s = pub.stats
    assert (s.sent, s.dropped) == (50, 150) and s.queued >= 50


def test_undelivered_events_fail_after_the_timeout_with_a_callback(offline):
    failures = []
    pub = offline(on_failure=lambda kind, pid, err: failures.append((kind, pid, err.code())),
                  **{"message.timeout.ms": 200})
    pid = pub.log_prediction(model="churn", features={}, prediction=1)
    pub.log_label(pid, 1)
    deadline = time.monotonic() + 10
    while pub.stats.failed < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.stats.failed == 2 and pub.stats.queued == 0
    from confluent_kafka import KafkaError

    assert sorted(failures) == [("inference", pid, KafkaError._MSG_TIMED_OUT), ("label", pid, KafkaError._MSG_TIMED_OUT)]


def test_a_failing_callback_does_not_stop_delivery_reports(offline):
    def bad(*_):
        raise ValueError("user bug")

    pub = offline(on_failure=bad, **{"message.timeout.ms": 100})
    for _ in range(3):
        pub.log_prediction(model="churn", features={}, prediction=1)
    deadline = time.monotonic() + 10
    while pub.stats.failed < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.stats.failed == 3


def test_close_is_idempotent_and_later_calls_are_dropped(offline):
    pub = offline()
    pub.log_prediction(model="churn", features={}, prediction=1)
    t0 = time.perf_counter()
    first = pub.close(0.1)
    assert time.perf_counter() - t0 < 5 and first.sent == 1
    pub.close(0)
    pub.log_prediction(model="churn", features={}, prediction=1)
    pub.log_label("p", 1)
    assert pub.stats.dropped == 2


def test_context_manager_closes():
    with Publisher(bootstrap=closed_port(), close_timeout=0, log_level=0) as pub:
        pub.log_prediction(model="churn", features={}, prediction=1)
    pub.log_prediction(model="churn", features={}, prediction=1)
    assert pub.stats.dropped == 1


def test_counters_are_exported_on_the_given_registry_only(offline):
    registry = CollectorRegistry()
    pub = offline(registry=registry, **{"queue.buffering.max.messages": 2})
    for _ in range(3):
        pub.log_prediction(model="churn", features={}, prediction=1)
    pub.log_prediction(model="bad name", features={}, prediction=1)
    text = generate_latest(registry).decode()
    samples = {(s.name, s.labels.get("outcome")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("driftline_publish_events_total", "sent")] == 2
    assert samples[("driftline_publish_events_total", "dropped")] == 1
    assert samples[("driftline_publish_events_total", "invalid")] == 1
    assert samples[("driftline_publish_queued_events", None)] >= 2
    assert b"driftline_publish" not in generate_latest(REGISTRY)


def test_stats_is_a_plain_snapshot(offline):
    pub = offline()
    s = pub.stats
    assert isinstance(s, PublishStats) and (s.sent, s.delivered, s.failed, s.dropped, s.invalid) == (0, 0, 0, 0, 0)
    with pytest.raises(AttributeError):
        s.sent = 3  # frozen: a snapshot cannot be mistaken for live state


# ------------------------------------------------------------------ FastAPI dependency
# Starlette 1.x asks for httpx2 in its TestClient; httpx still works, and is what the example uses.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fastapi_dependency_logs_and_returns_the_id():
    from fastapi import Depends, FastAPI  # the test extra installs it: missing must fail, not skip
    from fastapi.testclient import TestClient

    from driftline.stream.serving import HEADER, PredictionLog, PredictionLogger

    class Recorder:
        def __init__(self):
            self.calls = []

        def log_prediction(self, **kw):
            self.calls.append(kw)
            return kw["prediction_id"] or f"gen-{len(self.calls)}"

    rec = Recorder()
    app = FastAPI()

    @app.post("/predict")
    def predict(x: dict, log: PredictionLog = Depends(PredictionLogger(lambda: rec, model="churn", model_version="7"))):
        return {"y": 1, "prediction_id": log(features=x, prediction=1, score=0.9)}

    client = TestClient(app)
    r = client.post("/predict", json={"tenure": 3})
    assert r.status_code == 200 and r.json()["prediction_id"] == "gen-1" == r.headers[HEADER]
    r = client.post("/predict", json={"tenure": 4}, headers={HEADER: "order-9"})
    assert r.json()["prediction_id"] == "order-9" == r.headers[HEADER]
    assert rec.calls[1] == dict(model="churn", features={"tenure": 4}, prediction=1, score=0.9, segment=None,
                                prediction_id="order-9", model_version="7")


def test_docstring_examples():
    import doctest

    import driftline.stream.publish

    failed, attempted = doctest.testmod(driftline.stream.publish)
    assert attempted > 0 and failed == 0


def test_the_sdk_needs_no_web_framework():
    import subprocess
    import sys

    code = "import sys, driftline.stream.publish; print(sorted(m for m in ('fastapi', 'starlette', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_segment_values_may_be_str_subclasses_like_feature_values():
    import enum

    class Region(str, enum.Enum):
        EU = "eu"

    raw = encode_inference(model="m", prediction_id="p1", features={"x": 1.0}, prediction=1, timestamp=1.0,
                           segment={"region": np.str_("us"), np.str_("tier"): Region.EU})
    ev = decode_inference(raw, 0.0)
    assert isinstance(ev, Inference) and ev.segment == {"region": "us", "tier": "eu"}
    assert encode_inference(model="m", prediction_id="p2", features={}, prediction=1, timestamp=1.0,
                            segment={"region": 3}).reason == "wrong_type"


def test_llm_calls_take_str_subclass_segment_values_like_predictions():
    """One rule for an inference's segment, whichever call makes it (numpy.str_ is a str subclass)."""
    import orjson

    from driftline.stream.publish import encode_llm_call

    raw = encode_llm_call(prediction_id="c1", model="chat", timestamp=1767225600.0,
                          call={"input_tokens": 1, "output_tokens": 2, "duration": 0.5},
                          segment={np.str_("route"): np.str_("faq")})
    assert orjson.loads(raw)["segment"] == {"route": "faq"}
