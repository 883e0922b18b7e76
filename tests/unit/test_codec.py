"""The event contract at the edge: every class of bad input becomes an Invalid with its reason."""
import base64

import orjson
import pytest

from driftline.stream.codec import REASONS, DecodeLimits, dead_letter_record, decode_inference, decode_label
from driftline.stream.events import Inference, Invalid, Label

GOOD = {"prediction_id": "p-1", "model": "churn", "features": {"tenure": 3, "plan": "pro", "x": None, "ok": True},
        "prediction": 1}


def inference(**changes):
    ev = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in ev.items() if v is not ...})


def test_valid_inference_with_defaults():
    ev = decode_inference(inference(), 123.0)
    assert isinstance(ev, Inference)
    assert (ev.prediction_id, ev.model, ev.model_version, ev.timestamp, ev.score, ev.segment) == \
        ("p-1", "churn", "unknown", 123.0, None, None)
    assert ev.features == GOOD["features"]


def test_unknown_fields_are_ignored_and_timestamps_parse():
    ev = decode_inference(inference(extra={"a": [1, 2]}, timestamp="2026-01-01T01:00:00+01:00", score=1), 0.0)
    assert ev.timestamp == 1767225600.0 and ev.score == 1.0
    assert decode_inference(inference(timestamp=1767225600.5), 0.0).timestamp == 1767225600.5


LLM_OK = {"input_tokens": 10, "output_tokens": 20, "duration": 1.5}

BAD_INFERENCES = [
    (b"", "empty"),
    (b"x" * 2000, "oversized"),
    (b"\xff\xfe\x00garbage", "not_utf8"),
    (b'{"prediction_id": "p", "model": "m"', "malformed_json"),
    (b'{"prediction_id": "p", "model": "m", "features": {"a": NaN}, "prediction": 1}', "not_finite"),
    (b'{"prediction_id": "p", "model": "m", "features": {"a": 1e999}, "prediction": 1}', "not_finite"),
    (b'{"prediction_id": "p", "model": "m", "features": {}, "prediction": 1, "deep": ' + b"[" * 40 + b"]" * 40 + b"}",
     "too_deep"),
    (b"[1, 2, 3]", "not_object"),
    (b'"just a string"', "not_object"),
    (inference(prediction_id=...), "missing_field"),
    (inference(model=...), "missing_field"),
    (inference(features=...), "missing_field"),
    (inference(prediction=...), "missing_field"),
    (inference(prediction_id=7), "wrong_type"),
    (inference(prediction_id=""), "out_of_range"),
    (inference(prediction_id="x" * 257), "out_of_range"),
    (inference(model="bad name!"), "bad_model_name"),
    (inference(model="m" * 65), "bad_model_name"),
    (inference(model=3), "wrong_type"),
    (inference(features=[1, 2]), "wrong_type"),
    (inference(features={"a": {"nested": 1}}), "wrong_type"),
    (inference(features={"a": [1]}), "wrong_type"),
    (inference(prediction=[1]), "wrong_type"),
    (inference(prediction=None), "wrong_type"),
    (inference(score=1.5), "out_of_range"),
    (inference(score=-0.1), "out_of_range"),
    (inference(score="high"), "wrong_type"),
    (inference(segment="eu"), "wrong_type"),
    (inference(segment={"region": 3}), "wrong_type"),
    (inference(model_version=2), "wrong_type"),
    (inference(timestamp=1767225600000), "bad_timestamp"),  # milliseconds
    (inference(timestamp=-5), "bad_timestamp"),
    (inference(timestamp="yesterday"), "bad_timestamp"),
    (inference(timestamp="2026-01-01T00:00:00"), "bad_timestamp"),  # no offset
    (inference(timestamp=True), "bad_timestamp"),
    # Strings get the numbers' range: a skewed or defaulted client clock must not pass as text.
    (inference(timestamp="9999-12-31T23:59:59Z"), "bad_timestamp"),
    (inference(timestamp="0001-01-01T00:00:00+00:00"), "bad_timestamp"),
    (inference(timestamp="0001-01-01T00:00:00+01:00"), "bad_timestamp"),  # before year 1 in UTC
    (inference(timestamp="1969-12-31T23:59:59Z"), "bad_timestamp"),
    # Within the range but a day ahead of the worker's clock (FIXED_NOW below).
    (inference(timestamp=1767225600 + 86400), "future_timestamp"),
    (inference(timestamp="2026-01-02T00:00:00Z"), "future_timestamp"),
    # LLM calls (docs/events.md): every bad field is dead-lettered with its reason.
    (inference(llm=LLM_OK | {"input_tokens": -3}), "out_of_range"),
    (inference(llm=LLM_OK | {"output_tokens": 2.5}), "wrong_type"),
    (inference(llm=LLM_OK | {"input_tokens": "12"}), "wrong_type"),
    (inference(llm={k: v for k, v in LLM_OK.items() if k != "output_tokens"}), "missing_field"),
    (inference(llm=LLM_OK | {"duration": -0.5}), "out_of_range"),
    (inference(llm={k: v for k, v in LLM_OK.items() if k != "duration"}), "missing_field"),
    (inference(llm=LLM_OK | {"time_to_first_token": -1}), "out_of_range"),
    (b'{"prediction_id": "p", "model": "m", "llm": {"input_tokens": 1, "output_tokens": 1, "duration": NaN}}',
     "not_finite"),
    (inference(llm=LLM_OK | {"evaluations": {"relevance": 1.2}}), "out_of_range"),
    (inference(llm=LLM_OK | {"evaluations": {"relevance": -0.1}}), "out_of_range"),
    (inference(llm=LLM_OK | {"evaluations": {"duration": 0.5}}), "out_of_range"),  # a signal's name
    (inference(llm=LLM_OK | {"evaluations": {"relevance": "high"}}), "wrong_type"),
    (inference(llm=LLM_OK | {"embedding": [0.1, "x"]}), "bad_embedding"),
    (inference(llm=LLM_OK | {"embedding": []}), "bad_embedding"),
    (inference(llm=LLM_OK | {"finish_reason": 3}), "wrong_type"),
    (inference(llm=[1, 2]), "wrong_type"),
]
FIXED_NOW = 1767225600.0  # the clock the decoder is given: 2026-01-01T00:00:00Z


@pytest.mark.parametrize("raw,reason", BAD_INFERENCES)
def test_bad_inference_is_an_invalid_value_with_its_reason(raw, reason):
    out = decode_inference(raw, 0.0, DecodeLimits(max_bytes=1024, max_depth=32, clock=lambda: FIXED_NOW))
    assert isinstance(out, Invalid), out
    assert out.reason == reason, out.detail
    assert out.kind == "inference" and out.raw == raw and out.detail
    assert reason in REASONS


def test_future_bound_is_relative_to_the_clock_and_configurable():
    limits = DecodeLimits(clock=lambda: FIXED_NOW, max_future=3600.0)
    assert decode_inference(inference(timestamp=FIXED_NOW + 3000), 0.0, limits).timestamp == FIXED_NOW + 3000
    assert decode_label(b'{"prediction_id": "p", "label": 1, "timestamp": "2026-01-01T02:00:00Z"}', 0.0,
                        limits).reason == "future_timestamp"
    # Old events (a backlog, a replay of history) are fine: only the future is bounded.
    assert decode_inference(inference(timestamp="2001-09-09T01:46:40Z"), 0.0, limits).timestamp == 1e9
    # Without a clock (pure decoding) only the absolute range applies.
    assert decode_inference(inference(timestamp=FIXED_NOW + 86400), 0.0).timestamp == FIXED_NOW + 86400


def test_every_reason_of_the_decoder_is_exercised():
    seen = {reason for _, reason in BAD_INFERENCES}
    # decided by the intake, the worker (wrong_key), or the OTLP decoder (tests/unit/test_otlp.py)
    decoder_reasons = set(REASONS) - {"model_mismatch", "request_mismatch", "too_many_models", "malformed_otlp",
                                      "wrong_key"}
    assert decoder_reasons <= seen


def test_invalid_carries_the_model_when_it_is_valid():
    assert decode_inference(inference(score=3), 0.0).model == "churn"
    assert decode_inference(inference(model="bad name"), 0.0).model is None


def test_labels():
    ok = decode_label(b'{"prediction_id": "p", "label": false, "model": "churn", "timestamp": 5}', 1.0)
    assert ok == Label("p", False, 5.0, "churn")
    assert decode_label(b'{"prediction_id": "p", "label": "cat"}', 9.0) == Label("p", "cat", 9.0, None)
    for raw, reason in [
        (b'{"label": 1}', "missing_field"),
        (b'{"prediction_id": "p"}', "missing_field"),
        (b'{"prediction_id": "p", "label": {"a": 1}}', "wrong_type"),
        (b'{"prediction_id": "p", "label": 1, "model": "no spaces"}', "bad_model_name"),
        (b'{"prediction_id": "p", "label": Infinity}', "not_finite"),
    ]:
        out = decode_label(raw, 0.0)
        assert isinstance(out, Invalid) and out.kind == "label" and out.reason == reason, (raw, out)


def test_dead_letter_keeps_original_bytes_reason_and_source():
    raw = b"\xff\xfe\x00garbage"
    rec = orjson.loads(dead_letter_record(decode_inference(raw, 0.0), topic="t", partition=2, offset=41))
    assert rec["reason"] == "not_utf8" and rec["kind"] == "inference"
    assert (rec["topic"], rec["partition"], rec["offset"]) == ("t", 2, 41)
    assert base64.b64decode(rec["raw_base64"]) == raw and rec["raw_size"] == len(raw) and not rec["raw_truncated"]


def test_dead_letter_of_a_huge_payload_is_truncated_and_says_so():
    raw = b"{" + b" " * 2_000_000 + b"}"
    rec = orjson.loads(dead_letter_record(decode_inference(raw, 0.0), topic="t", partition=0, offset=0))
    assert rec["reason"] == "oversized" and rec["raw_truncated"] and rec["raw_size"] == len(raw)
    assert len(base64.b64decode(rec["raw_base64"])) < len(raw)


def test_llm_call_decodes_without_prediction_or_features():
    raw = orjson.dumps({"prediction_id": "c1", "model": "chat", "segment": {"route": "faq"},
                        "llm": {**LLM_OK, "time_to_first_token": 0.2, "finish_reason": "length",
                                "request_model": "gpt-4o-mini", "provider": "openai",
                                "evaluations": {"relevance": 0.75}, "embedding": [0.5, -0.25, 1]}})
    ev = decode_inference(raw, 5.0)
    assert isinstance(ev, Inference), ev
    assert ev.prediction is None and ev.features == {}
    assert ev.llm.input_tokens == 10 and ev.llm.output_tokens == 20 and ev.llm.duration == 1.5
    assert ev.llm.time_to_first_token == 0.2 and ev.llm.finish_reason == "length"
    assert ev.llm.request_model == "gpt-4o-mini" and ev.llm.provider == "openai"
    assert ev.llm.evaluations == {"relevance": 0.75} and ev.llm.embedding == [0.5, -0.25, 1]


def test_an_event_without_llm_still_needs_its_prediction():
    assert decode_inference(inference(prediction=...), 0.0).reason == "missing_field"


def test_nan_text_in_malformed_json_is_malformed_json_not_not_finite():
    # "NaN" inside a string of a message broken elsewhere: the break is the reason.
    broken = b'{"prediction_id": "NaN-7", "model": "m", "features": {}, "prediction": 1,,}'
    assert decode_inference(broken, 1.0).reason == "malformed_json"
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        raw = b'{"prediction_id": "a", "model": "m", "features": {}, "prediction": ' + literal + b"}"
        assert decode_inference(raw, 1.0).reason == "not_finite", literal


def test_negative_rfc3339_timestamps_are_refused_like_negative_numbers():
    for ts in (-5, "1960-01-01T00:00:00Z", "1969-12-31T23:59:59+00:00"):
        raw = orjson.dumps({"prediction_id": "a", "model": "m", "features": {}, "prediction": 1, "timestamp": ts})
        assert decode_inference(raw, 1.0).reason == "bad_timestamp", ts
    ok = orjson.dumps({"prediction_id": "a", "model": "m", "features": {}, "prediction": 1,
                       "timestamp": "2026-01-01T00:00:00Z"})
    assert decode_inference(ok, 1.0).timestamp == 1767225600.0
