"""Observations: what the intake (stage 1) tells a detector bank (stage 2), one record type per kind.

An `Intake` (stream/pipeline.py) turns events into these records; `observe()` there applies
them to a `DetectorBank`. In `driftline replay` they go straight from one to the other; the Kafka
worker puts the observations topic between them (stream/ordering.py has the message envelope
and its format version). Every record starts with `model, segment`: the key that routes it to
the bank partition that owns the (model, attribute).

NamedTuples, not dataclasses: a record is built per segment an event reaches and read once, and
a tuple is the cheapest object that has named fields; its fields, in order, are its wire form.

Wire form of one record (a JSON array inside an observations message):

    [offset, index, kind, *fields]

`offset, index`: where the source (an input partition's epoch and topic) made it, for the
bank's de-duplication; `kind`: the record type's `KIND` code below; `fields`: the record's
fields in declaration order. Every timed kind has `timestamp` at the same position
(`WIRE_TIME`), so the bank's ordering buffer reads it without decoding the record. Fields
added later go at the end with a default: records of older workers (without them) decode with
the default, and older workers read records of newer ones without them. A new kind, or a field
whose meaning changes, needs a new message format (stream/ordering.py, OBS_FORMAT).
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from driftline.detectors.llm import LLMObservation

INFERENCE, OUTCOME, FATE, FOLD, PAIR, LLM = 0, 1, 2, 3, 4, 5


class InferenceObservation(NamedTuple):
    """One inference in one of its segments."""

    model: str
    segment: str
    prediction_id: str
    timestamp: float
    prediction: object
    score: float | None
    features: Mapping[str, object] | None  # the spec's monitored features only
    # The event's bytes (base64), at `__all__` of a model not in the config only: the admission
    # bank dead-letters them if it refuses the model (`max_models`). Not written when None.
    raw: str | None = None

    KIND = INFERENCE


class OutcomeObservation(NamedTuple):
    """One prediction joined to its label, in one of the prediction's segments."""

    model: str
    segment: str
    prediction_id: str
    timestamp: float  # the label's
    prediction: object
    label: object
    delay: float  # label time - prediction time, >= 0
    # Absent (None) in records of workers before them:
    score: float | None = None
    values: Sequence[object] | None = None  # monitored features in the spec's order (slice accountant)
    segments: Sequence[str] | None = None  # the prediction's segment labels, at `__all__` only

    KIND = OUTCOME


class FateObservation(NamedTuple):
    """One event that fed no detector (invalid, duplicate, expired, unmatched): a counter."""

    model: str  # or `__unknown__` (pipeline.UNKNOWN_MODEL) when the model was not admitted
    segment: str  # always `__all__`
    event_kind: str  # "inference" or "label"
    outcome: str

    KIND = FATE


class FoldObservation(NamedTuple):
    """One segment value folded into `attr=__other__`. Made only by workers from before the
    fleet-wide guard (the bank folds now); still read, from the topic or a checkpoint."""

    model: str
    segment: str  # always `__all__`
    attribute: str

    KIND = FOLD


class PairObservation(NamedTuple):
    """One request both a challenger and its champion scored, graded by one label."""

    model: str  # the challenger
    segment: str
    champion: str
    timestamp: float
    challenger_correct: bool
    champion_correct: bool

    KIND = PAIR


class LLMCallObservation(NamedTuple):
    """One LLM call in one segment (after that segment's InferenceObservation)."""

    model: str
    segment: str
    prediction_id: str
    timestamp: float
    call: LLMObservation  # a list on the wire

    KIND = LLM


Observation = InferenceObservation | OutcomeObservation | FateObservation | FoldObservation | PairObservation | LLMCallObservation

RECORD_OF_KIND: tuple[type, ...] = (InferenceObservation, OutcomeObservation, FateObservation, FoldObservation, PairObservation, LLMCallObservation)
assert all(cls.KIND == code for code, cls in enumerate(RECORD_OF_KIND))

# Positions in a wire record (see the module docstring).
WIRE_OFFSET, WIRE_INDEX, WIRE_KIND, WIRE_FIELDS = 0, 1, 2, 3
WIRE_TIME = WIRE_FIELDS + InferenceObservation._fields.index("timestamp")
TIMED = (InferenceObservation, OutcomeObservation, PairObservation, LLMCallObservation)
assert all(WIRE_FIELDS + cls._fields.index("timestamp") == WIRE_TIME for cls in TIMED)


class UnknownObservation(ValueError):
    """A wire record of a kind this version does not know (a newer worker's)."""


_new = tuple.__new__  # a record from a tuple of its fields, without the NamedTuple's Python __new__
_SIZE = tuple(WIRE_FIELDS + len(cls._fields) for cls in RECORD_OF_KIND)  # wire length of each kind, today


def to_wire(offset: int, index: int, obs: Observation) -> list:
    """The wire record of `obs` (made at `offset, index` of its source)."""
    kind = obs.KIND
    rec = [offset, index, kind, *obs]
    if kind == INFERENCE and rec[-1] is None:
        rec.pop()  # no raw bytes: the record as workers before the field wrote it
    elif kind == LLM:
        rec[-1] = list(rec[-1])  # orjson writes plain tuples and lists, not NamedTuples
    return rec


_INFERENCE_SIZE, _OUTCOME_SIZE = _SIZE[INFERENCE], _SIZE[OUTCOME]


def from_wire(rec: list | tuple) -> Observation:
    """The record of a wire record (the inverse of `to_wire`, offset and index dropped)."""
    kind = rec[WIRE_KIND]
    # The hot path (today's inferences and outcomes, almost every record): one C call.
    if kind == INFERENCE and len(rec) == _INFERENCE_SIZE - 1:  # without raw bytes (to_wire)
        return _new(InferenceObservation, (*rec[WIRE_FIELDS:], None))
    if kind == INFERENCE and len(rec) == _INFERENCE_SIZE:
        return _new(InferenceObservation, rec[WIRE_FIELDS:])
    if kind == OUTCOME and len(rec) == _OUTCOME_SIZE:
        return _new(OutcomeObservation, rec[WIRE_FIELDS:])
    if type(kind) is not int or not 0 <= kind < len(RECORD_OF_KIND):
        raise UnknownObservation(f"unknown observation kind {kind!r} (a newer driftline wrote it?)")
    cls = RECORD_OF_KIND[kind]
    # Other kinds; an older worker's record (its missing fields take their defaults); a newer
    # one's (fields it added at the end are not read here).
    fields = rec[WIRE_FIELDS:_SIZE[kind]]
    if kind == LLM:
        model, segment, pid, ts, call = fields
        return LLMCallObservation(model, segment, pid, ts, call if type(call) is LLMObservation else LLMObservation(*call))
    return cls(*fields)
