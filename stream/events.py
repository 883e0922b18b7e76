"""Decoded events: what `stream.codec` returns. Plain values, one class per outcome.

`Inference` and `Label` are NamedTuples (immutable, fields by name): one is made per event read,
and a frozen dataclass's `__init__` (a Python `object.__setattr__` per field) cost several times
a tuple's construction, which the codec makes with one C call (`tuple.__new__`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, NamedTuple, Union

from driftline.detectors.llm import LLMCall

Scalar = Union[float, int, str, bool]
Kind = Literal["inference", "label"]


class Inference(NamedTuple):
    prediction_id: str
    model: str
    model_version: str  # "unknown" when absent
    timestamp: float  # Unix seconds; the Kafka timestamp when the event has none
    features: Mapping[str, Scalar | None]
    prediction: Scalar | None  # None only for an LLM call without one
    score: float | None = None
    segment: Mapping[str, str] | None = None
    request_id: str | None = None  # the same for every model that scored one request (shadow traffic)
    llm: LLMCall | None = None  # an LLM call (models with `task: llm`)


class Label(NamedTuple):
    prediction_id: str | None  # None: the label names a request_id and grades that request's predictions
    label: Scalar
    timestamp: float
    model: str | None = None
    request_id: str | None = None  # grades every prediction of the request (when prediction_id is None)


@dataclasses.dataclass(frozen=True, slots=True)
class Invalid:
    """An event that breaks the contract: an error as a value, bound for the dead-letter topic."""

    kind: Kind
    reason: str  # short machine code, e.g. "malformed_json"; see stream.codec.REASONS
    detail: str  # one human sentence naming the field
    raw: bytes
    model: str | None = None  # the model named by the event, when it is a valid name

    def as_dead_letter(self, **source: Any) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "detail": self.detail, "model": self.model, **source}
