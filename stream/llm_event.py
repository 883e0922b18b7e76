"""The `llm` field of an inference event (event contract v1, docs/events.md), checked once.

`decode_llm(value)` returns an `LLMCall` or an `LLMError` (reason code of stream.codec.REASONS
and one sentence naming the field). Both the JSON codec and the OTLP span mapper use it, so a
call from either source is held to the same rules.

>>> decode_llm({"input_tokens": 12, "output_tokens": 40, "duration": 0.8, "finish_reason": "stop"})
LLMCall(input_tokens=12, output_tokens=40, duration=0.8, time_to_first_token=None, finish_reason='stop', request_model=None, provider=None, evaluations=None, embedding=None)
>>> decode_llm({"input_tokens": -1, "output_tokens": 40, "duration": 0.8}).detail
'llm.input_tokens must be an integer >= 0 (got -1)'
"""
from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

from driftline.detectors.llm import LLM_SIGNALS, LLMCall

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Signal names an evaluation may not take: they would mix two signals' detectors.
RESERVED_SIGNALS = frozenset(LLM_SIGNALS) | {"error", "prediction", "score"}
MAX_TEXT = 256  # finish_reason, request_model, provider
MAX_EMBEDDING = 8192  # numbers in an embedding
MAX_EVALUATIONS = 64  # names in one call's evaluations (the bank watches spec.llm.max_evaluations)


class LLMError(NamedTuple):
    reason: str
    detail: str


def _count(obj: dict, name: str) -> int | LLMError:
    v = obj.get(name)
    if v is None:
        return LLMError("missing_field", f"llm.{name} is required")
    t = type(v)
    if t is float and v.is_integer():
        v, t = int(v), int
    if t is not int:
        return LLMError("wrong_type", f"llm.{name} must be an integer (got {_kind(v)})")
    if v < 0:
        return LLMError("out_of_range", f"llm.{name} must be an integer >= 0 (got {v})")
    return v


def _seconds(obj: dict, name: str, required: bool) -> float | None | LLMError:
    v = obj.get(name)
    if v is None:
        return LLMError("missing_field", f"llm.{name} is required (seconds)") if required else None
    t = type(v)
    if t is not int and t is not float:
        return LLMError("wrong_type", f"llm.{name} must be a number of seconds (got {_kind(v)})")
    if not math.isfinite(v):
        return LLMError("not_finite", f"llm.{name} must be a finite number of seconds (got {v!r})")
    if v < 0:
        return LLMError("out_of_range", f"llm.{name} must be >= 0 seconds (got {v!r})")
    return float(v)


def _text(obj: dict, name: str) -> str | None | LLMError:
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not str or not 0 < len(v) <= MAX_TEXT:
        return LLMError("wrong_type", f"llm.{name} must be a string of 1-{MAX_TEXT} characters (got {_kind(v)})")
    return v


def _kind(v: Any) -> str:
    return {dict: "object", list: "array", type(None): "null", bool: "bool"}.get(type(v), type(v).__name__)


def decode_llm(value: Any) -> LLMCall | LLMError:
    if type(value) is not dict:
        return LLMError("wrong_type", f"llm must be an object (got {_kind(value)})")
    fields = []
    for name in ("input_tokens", "output_tokens"):
        n = _count(value, name)
        if type(n) is LLMError:
            return n
        fields.append(n)
    for name, required in (("duration", True), ("time_to_first_token", False)):
        s = _seconds(value, name, required)
        if type(s) is LLMError:
            return s
        fields.append(s)
    for name in ("finish_reason", "request_model", "provider"):
        s = _text(value, name)
        if type(s) is LLMError:
            return s
        fields.append(s)
    evaluations = value.get("evaluations")
    if evaluations is not None:
        if type(evaluations) is not dict:
            return LLMError("wrong_type", f"llm.evaluations must map names to scores in [0, 1] (got {_kind(evaluations)})")
        if len(evaluations) > MAX_EVALUATIONS:
            return LLMError("out_of_range", f"llm.evaluations has {len(evaluations)} names, at most {MAX_EVALUATIONS}")
        for name, score in evaluations.items():
            if not NAME.fullmatch(name) or name in RESERVED_SIGNALS:
                return LLMError("out_of_range", f"llm.evaluations name {name[:80]!r} must match [A-Za-z0-9_.-]{{1,64}} "
                                                "and not be a signal name (duration, cost, error, ...)")
            t = type(score)
            if t is not int and t is not float:
                return LLMError("wrong_type", f"llm.evaluations.{name} must be a number in [0, 1] (got {_kind(score)})")
            if not 0.0 <= score <= 1.0:  # NaN fails this too
                return LLMError("out_of_range", f"llm.evaluations.{name} must be a number in [0, 1] (got {score!r})")
        evaluations = {k: float(v) for k, v in evaluations.items()} or None
    embedding = value.get("embedding")
    if embedding is not None:
        if type(embedding) is not list or not 0 < len(embedding) <= MAX_EMBEDDING:
            return LLMError("bad_embedding", f"llm.embedding must be an array of 1-{MAX_EMBEDDING} numbers "
                                             f"(got {_kind(embedding)})")
        for x in embedding:
            t = type(x)
            if (t is not float and t is not int) or not math.isfinite(x):
                return LLMError("bad_embedding", f"llm.embedding must hold finite numbers only (got {x!r})"[:200])
    return LLMCall(fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], evaluations, embedding)
