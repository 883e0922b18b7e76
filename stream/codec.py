"""Bytes -> `Inference` | `Label` | `Invalid`: the event contract v1, checked once at the edge.

An event that breaks the contract is returned as an `Invalid` value with a reason code and one
sentence naming the field; nothing here raises on bad input. Unknown fields are ignored.

>>> ev = decode_inference(b'{"prediction_id": "p1", "model": "churn", "features": {"tenure": 3}, '
...                       b'"prediction": 1, "score": 0.8, "timestamp": "2026-01-01T00:00:00Z"}', 0.0)
>>> ev.model, ev.timestamp, ev.model_version, ev.features
('churn', 1767225600.0, 'unknown', {'tenure': 3})
>>> bad = decode_inference(b'{"prediction_id": "p1", "model": "churn", "features": {}, "prediction": 1, "score": 7}', 0.0)
>>> bad.reason, bad.detail
('out_of_range', 'score must be a number in [0, 1] (got 7)')
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import re
from typing import Any, Callable

import orjson

from driftline.stream.events import Inference, Invalid, Label
from driftline.stream.llm_event import LLMError, decode_llm

# Reason codes of Invalid events: the `reason` field of a dead letter. Stable: alert rules and
# users' tooling filter on them (docs/events.md).
REASONS = {
    "empty": "the message has no value",
    "oversized": "the message is larger than limits.max_event_bytes",
    "not_utf8": "the message is not valid UTF-8",
    "malformed_json": "the message is not valid JSON",
    "not_finite": "a number is NaN or infinite",
    "too_deep": "JSON nested deeper than limits.max_depth",
    "not_object": "the JSON value is not an object",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong JSON type",
    "bad_model_name": "model is not [A-Za-z0-9_.-]{1,64}",
    "out_of_range": "a value is outside its allowed range",
    "bad_timestamp": "timestamp is neither Unix seconds nor an RFC 3339 string with an offset, or before 1970",
    "future_timestamp": "timestamp is further ahead of the worker's clock than limits.max_future",
    "model_mismatch": "a label names another model than its prediction",
    "request_mismatch": "a label names a prediction_id and a request_id, and that prediction has another request_id",
    "too_many_models": "the event's model would exceed limits.max_models",
    "bad_embedding": "llm.embedding is not an array of finite numbers of the model's embedding_dim",
    "malformed_otlp": "an OTLP message of topic otlp_spans does not decode",
    "wrong_key": "the message key is not the event's prediction_id (with worker.miskeyed: dead_letter)",
}

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ID_CHARS = 256
# Unix seconds up to year 5138; a larger number is almost surely milliseconds.
MAX_TIMESTAMP = 1e11
# Events are built with one C call, all fields in declaration order (see stream/events.py).
_new = tuple.__new__
# A dead letter keeps at most this much of the original bytes (base64 adds a third): keeps the
# record under Kafka's default 1 MB message size whatever limits.max_event_bytes is.
DEAD_LETTER_RAW_BYTES = 512 * 1024


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 256 * 1024
    max_depth: int = 32
    # An event time further ahead of `clock()` than this is refused (dead-lettered, not clamped:
    # a clamped time would still be wrong, and silently). One such event would otherwise move
    # its partition's clocks to the far future: every pending prediction expires at once and
    # the idle sweep evicts live segments. None: no clock, no future check (pure decoding).
    max_future: float = 3600.0
    clock: Callable[[], float] | None = None


DEFAULT_LIMITS = DecodeLimits()


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in v if isinstance(c, (dict, list)))
    return deepest


def _load(raw: bytes | None, kind: str, limits: DecodeLimits) -> dict | Invalid:
    if not raw:
        return Invalid(kind, "empty", "the message value is empty", raw or b"")
    if len(raw) > limits.max_bytes:
        return Invalid(kind, "oversized", f"message is {len(raw)} bytes, limit {limits.max_bytes}", raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "UTF-8" in msg:
            return Invalid(kind, "not_utf8", "message is not valid UTF-8", raw)
        # Only a NaN/Infinity literal where the parser stopped: the text "NaN" inside a string of
        # otherwise malformed JSON is malformed_json.
        at = raw[getattr(exc, "pos", 0) or 0:][:9].lstrip(b"-")
        if "infinity" in msg or at.startswith((b"NaN", b"Infinity")):
            return Invalid(kind, "not_finite", f"numbers must be finite: {msg}", raw)
        if "depth" in msg:
            return Invalid(kind, "too_deep", f"JSON nested deeper than {limits.max_depth}", raw)
        return Invalid(kind, "malformed_json", msg, raw)
    if type(obj) is not dict:
        return Invalid(kind, "not_object", f"the event must be a JSON object (got {type(obj).__name__})", raw)
    # Counting brackets is C-fast; the walk runs only for payloads that could be too deep.
    if raw.count(b"{") + raw.count(b"[") > limits.max_depth and _depth(obj) > limits.max_depth:
        return Invalid(kind, "too_deep", f"JSON nested deeper than {limits.max_depth}", raw)
    return obj


def _timestamp(obj: dict, default: float, kind: str, raw: bytes, model: str | None,
               limits: DecodeLimits) -> float | Invalid:
    ts = obj.get("timestamp")
    if ts is None:
        return default
    t = type(ts)
    if t is int or t is float:
        if not 0 < ts < MAX_TIMESTAMP:
            hint = " (milliseconds? send Unix seconds)" if ts >= MAX_TIMESTAMP else ""
            return Invalid(kind, "bad_timestamp", f"timestamp must be Unix seconds{hint} (got {ts!r})", raw, model)
        value = float(ts)
    elif t is str:
        try:
            parsed = _dt.datetime.fromisoformat(ts)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            return Invalid(kind, "bad_timestamp", f"timestamp must be an RFC 3339 string with an offset, "
                                                  f"e.g. 2026-01-01T00:00:00Z (got {ts[:64]!r})", raw, model)
        try:
            value = parsed.timestamp()
        except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00 falls before year 1
            value = -1.0
        # The same range as numbers: 1970 up to MAX_TIMESTAMP (a string is no licence for 9999).
        if not 0 < value < MAX_TIMESTAMP:
            return Invalid(kind, "bad_timestamp", f"timestamp must lie between 1970 and year 5138 (got {ts[:64]!r})",
                           raw, model)
    else:
        return Invalid(kind, "bad_timestamp", f"timestamp must be a number or a string (got {t.__name__})", raw, model)
    clock = limits.clock
    if clock is not None:
        ahead = value - clock()
        if ahead > limits.max_future:
            return Invalid(kind, "future_timestamp",
                           f"timestamp {ts!r} is {ahead:,.0f} s ahead of the worker's clock (limits.max_future="
                           f"{limits.max_future:,.0f} s): a skewed client clock?"[:300], raw, model)
    return value


def _prediction_id(obj: dict, kind: str, raw: bytes, model: str | None) -> str | Invalid:
    pid = obj.get("prediction_id")
    if pid is None:
        return Invalid(kind, "missing_field", "prediction_id is required", raw, model)
    if type(pid) is not str:
        return Invalid(kind, "wrong_type", f"prediction_id must be a string (got {type(pid).__name__})", raw, model)
    if not 0 < len(pid) <= MAX_ID_CHARS:
        return Invalid(kind, "out_of_range", f"prediction_id must be 1-{MAX_ID_CHARS} characters (got {len(pid)})", raw, model)
    return pid


def _request_id(obj: dict, kind: str, raw: bytes, model: str | None) -> str | None | Invalid:
    """The optional request_id: the same for every model that scored one request."""
    rid = obj.get("request_id")
    if rid is None:
        return None
    if type(rid) is not str:
        return Invalid(kind, "wrong_type", f"request_id must be a string (got {_json_type(rid)})", raw, model)
    if not 0 < len(rid) <= MAX_ID_CHARS:
        return Invalid(kind, "out_of_range", f"request_id must be 1-{MAX_ID_CHARS} characters (got {len(rid)})", raw, model)
    return rid


def _scalar_field(obj: dict, name: str, kind: str, raw: bytes, model: str | None) -> Any:
    """A required number, string or bool (prediction, label)."""
    if name not in obj:
        return Invalid(kind, "missing_field", f"{name} is required", raw, model)
    v = obj[name]
    t = type(v)
    if t is str or t is int or t is float or t is bool:
        return v
    return Invalid(kind, "wrong_type", f"{name} must be a number, string or bool (got {_json_type(v)})", raw, model)


def _json_type(v: Any) -> str:
    return {dict: "object", list: "array", type(None): "null"}.get(type(v), type(v).__name__)


def _model_name(obj: dict, kind: str, raw: bytes, required: bool) -> str | None | Invalid:
    model = obj.get("model")
    if model is None:
        return Invalid(kind, "missing_field", "model is required", raw) if required else None
    if type(model) is not str:
        return Invalid(kind, "wrong_type", f"model must be a string (got {_json_type(model)})", raw)
    if not MODEL_NAME.fullmatch(model):
        return Invalid(kind, "bad_model_name", f"model must match [A-Za-z0-9_.-]{{1,64}} (got {model[:80]!r})", raw)
    return model


def decode_inference(raw: bytes | None, default_timestamp: float, limits: DecodeLimits = DEFAULT_LIMITS) -> Inference | Invalid:
    """An inference event; `default_timestamp` is used when the event carries none (the Kafka time)."""
    obj = _load(raw, "inference", limits)
    if type(obj) is not dict:
        return obj
    model = _model_name(obj, "inference", raw, required=True)
    if type(model) is not str:
        return model
    pid = _prediction_id(obj, "inference", raw, model)
    if type(pid) is not str:
        return pid
    features = obj.get("features")
    if features is None and "llm" in obj and "features" not in obj:
        features = {}  # an LLM call needs no features
    if type(features) is not dict:
        if features is None and "features" not in obj:
            return Invalid("inference", "missing_field", "features is required (it may be {})", raw, model)
        return Invalid("inference", "wrong_type", f"features must be an object (got {_json_type(features)})", raw, model)
    for name, v in features.items():
        t = type(v)
        if not (t is float or t is int or t is str or t is bool or v is None):
            return Invalid("inference", "wrong_type",
                           f"features.{name[:64]} must be a number, string, bool or null (got {_json_type(v)})", raw, model)
    llm = obj.get("llm")
    if llm is not None:  # an LLM call: its prediction is optional
        llm = decode_llm(llm)
        if type(llm) is LLMError:
            return Invalid("inference", llm.reason, llm.detail, raw, model)
        prediction = _scalar_field(obj, "prediction", "inference", raw, model) if "prediction" in obj else None
    else:
        prediction = _scalar_field(obj, "prediction", "inference", raw, model)
    if type(prediction) is Invalid:
        return prediction
    score = obj.get("score")
    if score is not None:
        t = type(score)
        if (t is not float and t is not int) or not 0.0 <= score <= 1.0:
            return Invalid("inference", "out_of_range" if t in (int, float) else "wrong_type",
                           f"score must be a number in [0, 1] (got {score!r})"[:200], raw, model)
        score = float(score)
    segment = obj.get("segment")
    if segment is not None:
        if type(segment) is not dict:
            return Invalid("inference", "wrong_type", f"segment must be an object (got {_json_type(segment)})", raw, model)
        for name, v in segment.items():
            if type(v) is not str:
                return Invalid("inference", "wrong_type",
                               f"segment.{name[:64]} must be a string (got {_json_type(v)})", raw, model)
    version = obj.get("model_version")
    if version is None:
        version = "unknown"
    elif type(version) is not str:
        return Invalid("inference", "wrong_type", f"model_version must be a string (got {_json_type(version)})", raw, model)
    ts = _timestamp(obj, default_timestamp, "inference", raw, model, limits)
    if type(ts) is Invalid:
        return ts
    rid = _request_id(obj, "inference", raw, model) if "request_id" in obj else None
    if type(rid) is Invalid:
        return rid
    return _new(Inference, (pid, model, version, ts, features, prediction, score, segment, rid, llm))


def decode_label(raw: bytes | None, default_timestamp: float, limits: DecodeLimits = DEFAULT_LIMITS) -> Label | Invalid:
    obj = _load(raw, "label", limits)
    if type(obj) is not dict:
        return obj
    model = _model_name(obj, "label", raw, required=False)
    if type(model) is Invalid:
        return model
    rid = _request_id(obj, "label", raw, model)
    if type(rid) is Invalid:
        return rid
    if rid is not None and obj.get("prediction_id") is None:
        pid = None  # a request label: it grades every prediction of the request
    else:
        pid = _prediction_id(obj, "label", raw, model)
        if type(pid) is not str:
            if pid.reason == "missing_field":
                return Invalid("label", "missing_field", "prediction_id (or request_id) is required", raw, model)
            return pid
    label = _scalar_field(obj, "label", "label", raw, model)
    if type(label) is Invalid:
        return label
    ts = _timestamp(obj, default_timestamp, "label", raw, model, limits)
    if type(ts) is Invalid:
        return ts
    return _new(Label, (pid, label, ts, model, rid))


def dead_letter_record(invalid: Invalid, **source: Any) -> bytes:
    """The dead-letter message: reason, detail, where it came from, and the original bytes."""
    raw = invalid.raw
    rec = invalid.as_dead_letter(**source)
    rec["raw_size"] = len(raw)
    rec["raw_truncated"] = len(raw) > DEAD_LETTER_RAW_BYTES
    rec["raw_base64"] = base64.b64encode(raw[:DEAD_LETTER_RAW_BYTES]).decode("ascii")
    return orjson.dumps(rec)

