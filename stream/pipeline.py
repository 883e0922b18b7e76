"""The core wired for one process: decoded events in, observations and drift records out.

Two halves, because the Kafka worker runs them in different stages (the join is partitioned
by prediction_id, the detectors by (model, segment)):

- `Intake`: admits models (cardinality guard), routes to segments, joins labels, counts fates,
  and emits `Observation`s, one per segment an event belongs to.
- `DetectorBank.apply`-style feeding via `feed()`: observations in, drift records out.

`driftline replay` runs both in one loop; the worker puts a repartition topic between them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from detectors.bank import DetectorBank, DriftRecord
from detectors.join import Joined, LabelJoin, PendingPrediction
from detectors.segments import SegmentRouter
from detectors.spec import ALL_SEGMENT, ModelSpec
from detectors.tally import Tally
from stream.events import Inference, Invalid, Label

UNKNOWN_MODEL = "__unknown__"


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """One event's contribution to one segment: an inference, or an outcome (prediction + label)."""

    kind: str  # "inference" | "outcome"
    model: str
    segment: str
    prediction_id: str
    timestamp: float
    prediction: Any
    score: float | None = None
    features: Mapping[str, Any] | None = None  # inference only
    label: Any = None  # outcome only

    @property
    def key(self) -> str:
        """The repartition key: each (model, segment) lives in exactly one worker."""
        return f"{self.model}\x1f{self.segment}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Observation":
        return cls(**d)


class ModelGuard:
    """Admits models up to `limits.max_models` (configured ones always): model names come
    from event content, and each admitted one costs series and state."""

    def __init__(self, settings):
        self.max_models = settings.limits.max_models
        self.admitted: set[str] = set(settings.models)

    def admit(self, model: str) -> bool:
        if model in self.admitted:
            return True
        if len(self.admitted) >= self.max_models:
            return False
        self.admitted.add(model)
        return True


class Intake:
    """Routing and the label join for one input partition (or a whole replay)."""

    def __init__(self, settings, tally: Tally, guard: ModelGuard | None = None):
        self.settings = settings
        self.tally = tally
        self.guard = guard or ModelGuard(settings)
        self.router = SegmentRouter(tally)
        self.join = LabelJoin(self._ttl_for, tally, max_pending=settings.limits.max_pending)
        self.watermark = 0.0

    def spec_for(self, model: str) -> ModelSpec:
        return self.settings.spec_for(model)

    def _ttl_for(self, model: str | None) -> float:
        return self.spec_for(model).label_ttl if model else self.settings.defaults.label_ttl

    # -- events --------------------------------------------------------------------------------
    def on_invalid(self, invalid: Invalid) -> None:
        model = invalid.model if invalid.model in self.guard.admitted else UNKNOWN_MODEL
        self.tally.events[(model, invalid.kind, "invalid")] += 1

    def on_inference(self, ev: Inference, raw: bytes = b"") -> list[Observation] | Invalid:
        rejected = self._admit(ev.model, "inference", raw)
        if rejected is not None:
            return rejected
        self._advance(ev.timestamp)
        spec = self.spec_for(ev.model)
        segments = self.router.route(spec, ev.features, ev.segment, ev.timestamp)
        pending = PendingPrediction(ev.prediction_id, ev.model, segments, ev.prediction, ev.score, ev.timestamp)
        joined = self.join.add_prediction(pending)
        if joined == "duplicate":
            return []
        obs = [
            Observation("inference", ev.model, seg, ev.prediction_id, ev.timestamp, ev.prediction, ev.score, ev.features)
            for seg in segments
        ]
        if isinstance(joined, Joined):
            obs.extend(self._outcomes(joined))
        return obs

    def on_label(self, ev: Label, raw: bytes = b"") -> list[Observation] | Invalid:
        self._advance(ev.timestamp)
        joined = self.join.add_label(ev.prediction_id, ev.label, ev.timestamp, ev.model)
        if joined == "model_mismatch":
            invalid = Invalid("label", "model_mismatch", f"label names model {ev.model!r}, its prediction another", raw, ev.model)
            self.on_invalid(invalid)
            return invalid
        if isinstance(joined, Joined):
            return self._outcomes(joined)
        return []

    def expire(self, now: float | None = None) -> int:
        return self.join.expire(self.watermark if now is None else now)

    # -- internals -----------------------------------------------------------------------------
    def _admit(self, model: str, kind: str, raw: bytes) -> Invalid | None:
        if self.guard.admit(model):
            return None
        invalid = Invalid(kind, "too_many_models",
                          f"model {model!r} would exceed limits.max_models={self.guard.max_models}", raw)
        self.on_invalid(invalid)
        return invalid

    def _advance(self, timestamp: float) -> None:
        if timestamp > self.watermark:
            self.watermark = timestamp

    def _outcomes(self, joined: Joined) -> list[Observation]:
        p = joined.prediction
        self.tally.observe_delay(p.model, max(joined.delay, 0.0))
        return [
            Observation("outcome", p.model, seg, p.prediction_id, joined.label_timestamp, p.prediction, p.score, None, joined.label)
            for seg in p.segments
        ]


def feed(bank: DetectorBank, observations: Iterable[Observation]) -> list[DriftRecord]:
    """Apply observations to the bank; returns every detection they caused."""
    found: list[DriftRecord] = []
    for o in observations:
        if o.kind == "inference":
            found += bank.observe_inference(
                o.model, o.segment, o.features or {}, o.prediction, o.score, o.timestamp, o.prediction_id,
                count_invalid=o.segment == ALL_SEGMENT,
            )
        else:
            found += bank.observe_outcome(o.model, o.segment, o.prediction, o.label, o.timestamp, o.prediction_id)
    return found
