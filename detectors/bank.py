"""The detector bank: per (model, segment), every detector and rolling metric of that slice.

Fed plain values one segment at a time (the caller routes an event to its segments), it
returns a `DriftRecord` for each detection. Signals:

- `error`: 1 for a wrong prediction, 0 for a right one (classification), or the absolute error
  (regression); needs labels.
- `prediction`: the predicted value (regression), or the surprisal of the predicted class
  against the segment's early class frequencies (classification; see `categorical.py`).
- `score`: the reported confidence, when events carry one.
- one signal per configured feature: the value (numeric) or its surprisal (categorical).

Classification segments also keep a slice accountant (`slices.py`): an `error` detection with
direction "up" carries its explanation (the slices that account for the drop), and while that
drift is active `ExplanationRecord`s refresh it as labelled evidence grows.

Each signal is watched by every detector named in the model's spec (ADWIN and Page-Hinkley by
default). State is created on first use and can be evicted when idle; nothing here grows with
the number of events.

A model with a reference profile (detectors/baseline.py, looked up in the bank's `ProfileBook`)
also keeps, per segment, a window of bin indices per profiled feature, prediction and score;
its distribution statistics are computed from those windows at scrape time. Values outside the
reference range and unseen categories are counted as invalid features (reasons `range` and
`unseen_category`), once per event at `__all__`.
"""
from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from typing import Any, Callable, ClassVar, Iterator, Mapping, NamedTuple, Sequence

from driftline.detectors.accuracy import RollingAccuracy, RollingError
from driftline.detectors.baseline import ProfileBook, Window, category_key
from driftline.detectors.calibration import (DEFAULT_PH_DELTA, CalibratedDetector, Standardizer, calibrated_statistics,
                                             raw_detector, standardised_detector, stream_arl, streams_per_event)
from driftline.detectors.categorical import CategorySurprisal
from driftline.detectors.challenger import ChallengerComparison
from driftline.detectors.classification import ClassQuality, confidence, confidence_is_score
from driftline.detectors.estimate import AccuracyEstimate
from driftline.detectors.drift import Detector, build_detector
from driftline.detectors.segments import ModelGuard, SegmentGuard, attribute_of
from driftline.detectors.slices import SliceAccountant, profile_bins
from driftline.detectors.llm import LLMObservation, LLMSegment, is_good_feedback
from driftline.detectors.spec import ALL_SEGMENT, ModelSpec
from driftline.detectors.state import SnapshotError, persistent
from driftline.detectors.state import restore as restore_state
from driftline.detectors.state import snapshot as snapshot_state
from driftline.detectors.tally import Tally

# Observations between sweeps for idle segments (a sweep is O(segments)).
EVICT_EVERY = 50_000

ERROR = "error"
PREDICTION = "prediction"
SCORE = "score"


@dataclasses.dataclass(frozen=True, slots=True)
class DriftRecord:
    """One detection, as written to the drift-events topic and `--drift-out`."""

    model: str
    segment: str
    signal: str
    detector: str
    timestamp: float
    prediction_id: str
    value: float
    statistics: Mapping[str, float]
    direction: str = "up"  # the signal's mean went "up" or "down" (for `error`: up = worse)
    explanation: Mapping[str, Any] | None = None  # `error` up: the slices that explain it (slices.py)
    kind: ClassVar[str] = "detection"

    def to_dict(self) -> dict[str, Any]:
        d = {
            "kind": self.kind,
            "model": self.model,
            "segment": self.segment,
            "signal": self.signal,
            "detector": self.detector,
            "timestamp": self.timestamp,
            "prediction_id": self.prediction_id,
            "value": self.value,
            "statistics": dict(self.statistics),
            "direction": self.direction,
        }
        if self.explanation is not None:
            d["explanation"] = self.explanation
        return d


@dataclasses.dataclass(frozen=True, slots=True)
class ExplanationRecord:
    """A refreshed explanation of an active error drift, at 100, 400 and 1,600 labelled events
    after its change point (written where drift records go, with `"kind": "explanation"`)."""

    model: str
    segment: str
    timestamp: float
    prediction_id: str
    labelled_after: int
    explanation: Mapping[str, Any]
    signal: ClassVar[str] = ERROR
    kind: ClassVar[str] = "explanation"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "segment": self.segment, "signal": self.signal,
                "timestamp": self.timestamp, "prediction_id": self.prediction_id,
                "labelled_after": self.labelled_after, "explanation": self.explanation}


@persistent("bank.signal_config")
@dataclasses.dataclass(frozen=True, slots=True)
class SignalConfig:
    """What a signal's detectors are, shared by every signal of that kind of a model (one per
    bank snapshot, shared again after a restore): configuration, kept with the state because
    the detectors built from it are (a later config change applies to new signals only)."""

    names: tuple[str, ...]  # the detectors, in the spec's order
    raw: tuple[bool, ...]  # per detector: reads raw values (else z-scores of the signal's Standardizer)
    arl: float | None = None  # calibrated (a false-alarm budget): each detector's ARL, else None
    kind: str | None = None  # calibrated: "numeric" or "binary" (the 0/1 error stream)
    ph_delta: float | None = None  # calibrated: Page-Hinkley's drift allowance

    def standardised(self, i: int, std: Standardizer) -> Detector:
        return standardised_detector(self.names[i], self.arl, self.kind, self.ph_delta, std)


_CONFIGS: dict[SignalConfig, SignalConfig] = {}


def shared_config(config: SignalConfig) -> SignalConfig:
    """One object per distinct config (restored checkpoints of old versions included)."""
    return _CONFIGS.setdefault(config, config)


class ModelPlan:
    """What the hot path reads of one model's spec, made once per spec and shared by the model's
    segments (derived, never stored): the configured features as (name, numeric) pairs, the task,
    the quality spec and accuracy window, and whether a score is already the confidence the
    label-free estimate reads (classification.confidence_is_score)."""

    __slots__ = ("spec", "features", "task", "quality", "window", "score_is_confidence")

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.features = tuple((name, kind == "numeric") for name, kind in spec.features.items())
        self.task = spec.task
        self.quality = spec.quality
        self.window = spec.accuracy_window
        self.score_is_confidence = confidence_is_score(spec.quality)


class Detection(NamedTuple):
    """A detection one value made on a signal, read before the detector re-warms."""

    detector: str
    direction: int  # +1: the signal's mean went up, -1 down
    statistics: dict[str, float]


class DetectorReading(NamedTuple):
    """What an exporter reads of one detector on one signal (a copy: the bank goes on)."""

    detector: str
    last_detection: float | None  # event time of its last detection
    direction: int  # of that detection: +1 up, -1 down, 0 none yet
    statistics: dict[str, float] | None  # None unless asked for


@persistent("bank.signal", version=2)
class SignalState:
    """One signal of one segment: its detectors and, under a false-alarm budget, the one
    Standardizer that turns its values into z-scores for them; `update(x)` is the one entry.

    One object per signal (with a list of its detectors): a segment of a high-cardinality model
    holds seven of these, and most never leave their warm-up. A detector that reads z-scores is
    built when the first z-score comes (after the warm-up, and again after each detection: see
    `update`); while none of a signal's detectors is built, `detectors` is None; the detection
    history exists from the first detection on.

    The detection history (`last_detection`, `last_direction`: per detector) is one slot,
    `detected`, a pair of lists, None until the first detection (stored as the two fields).

    `warm` is derived, never stored: once the Standardizer is learnt and every detector, all
    reading z-scores, is built (most values of a long-lived signal), the learnt center, scale
    and clip and the detectors' bound `update`s, so that a value costs the z-score and one
    call per detector; None otherwise, and again from a detection on (see `_plan`).
    """

    __slots__ = ("config", "transform", "std", "detectors", "detected", "warm")
    FIELDS = ("config", "transform", "std", "detectors")  # the state, with last_detection and last_direction

    def __init__(self, config: SignalConfig, detectors: list[Detector | None] | None,
                 transform: CategorySurprisal | None = None, std: Standardizer | None = None):
        self.config = config
        self.transform = transform
        self.std = std  # None when no detector reads z-scores
        self.detectors = detectors
        self.detected: tuple[list[float | None], list[int]] | None = None
        self.warm: tuple | None = None

    @property
    def last_detection(self) -> list[float | None] | None:
        """Per detector, the event time of its last detection (None: none yet); None before any."""
        return self.detected[0] if self.detected is not None else None

    @property
    def last_direction(self) -> list[int] | None:
        """Per detector, the direction of its last detection: +1 up, -1 down (0: none yet)."""
        return self.detected[1] if self.detected is not None else None

    def __getstate__(self) -> dict:
        state = {name: getattr(self, name) for name in self.FIELDS}
        state["last_detection"], state["last_direction"] = self.detected if self.detected is not None else (None, None)
        return state

    def __setstate__(self, state: dict) -> None:
        for name in self.FIELDS:
            setattr(self, name, state[name])
        last, way = state["last_detection"], state["last_direction"]
        self.detected = (last, way) if last is not None else None
        self.warm = self._plan()

    def _plan(self) -> tuple | None:
        """The warm path's (center, scale, clip, detector updates), or None when it does not apply."""
        std, dets = self.std, self.detectors
        if std is None or std.scale is None or dets is None or any(self.config.raw) or None in dets:
            return None
        return (std.center, std.scale, std.clip, tuple(d.update for d in dets))

    def update(self, x: float, timestamp: float) -> list[Detection] | None:
        """One value of the signal: the detections it completed, or None."""
        warm = self.warm
        if warm is not None:  # the same as the general path below, for its commonest state
            center, scale, c, updates = warm
            z = (x - center) / scale
            if c is not None:
                if z > c:
                    z = c
                elif z < -c:
                    z = -c
            i = 0
            for feed in updates:
                if feed(z):
                    break
                i += 1
            else:
                return None
            # A detection: every detector reads z-scores, so the later ones skip this value and
            # all are built again after a new warm-up (as in the general path).
            det = self.detectors[i]
            found = [Detection(det.name, det.direction, self._statistics(i, det))]
            self._record(i, det.direction, timestamp)
            std = self.std
            self.std = Standardizer(std.warmup, binary=std.binary, clip=std.clip)
            self.detectors = self.warm = None
            return found
        std = self.std
        if std is None:
            z = None
        elif std.scale is not None:  # learnt: Standardizer.transform's first branch, a call less per value
            z = (x - std.center) / std.scale
            c = std.clip
            if c is not None:
                if z > c:
                    z = c
                elif z < -c:
                    z = -c
        else:
            z = std.transform(x)  # None while the signal warms up
        found = None
        dets = self.detectors
        if dets is None:  # every detector reads z-scores, none built yet
            if z is None:
                return None
            dets = self.detectors = [None] * len(self.config.names)
        raw = self.config.raw
        built = False
        for i in range(len(dets)):
            if raw[i]:
                det = dets[i]
                if not det.update(x):
                    continue
            elif z is None:
                continue
            else:
                det = dets[i]
                if det is None:
                    det = dets[i] = self.config.standardised(i, std)
                    built = True
                if not det.update(z):
                    continue
            if found is None:
                found = []
            found.append(Detection(det.name, det.direction, self._statistics(i, det)))
            self._record(i, det.direction, timestamp)
            if std is not None:
                # After a detection the standardised detectors learn the signal's new mean and
                # scale (from the next value on): the old ones would make them alarm again and
                # again on a level that has simply moved. Raw detectors go on.
                std = self.std = Standardizer(std.warmup, binary=std.binary, clip=std.clip)
                if any(raw):
                    for j in range(len(dets)):
                        if not raw[j]:
                            dets[j] = None
                else:
                    self.detectors = None
                z = None
        if built and found is None:
            self.warm = self._plan()
        return found

    def _record(self, i: int, direction: int, timestamp: float) -> None:
        d = self.detected
        if d is None:
            n = len(self.config.names)
            d = self.detected = ([None] * n, [0] * n)
        d[0][i] = timestamp
        d[1][i] = direction

    def _statistics(self, i: int, det: Detector | None) -> dict[str, float]:
        if self.config.arl is None:
            return det.statistics()
        return calibrated_statistics(det, None if self.config.raw[i] else self.std)

    def readings(self, statistics: bool = False) -> list[DetectorReading]:
        """Each detector's name, last detection and direction (and statistics if asked)."""
        last, way, dets = self.last_detection, self.last_direction, self.detectors
        return [DetectorReading(name, last[i] if last is not None else None, way[i] if way is not None else 0,
                                self._statistics(i, dets[i] if dets is not None else None) if statistics else None)
                for i, name in enumerate(self.config.names)]

    # -- checkpoints before 18e (version 1): SignalState + one CalibratedDetector per detector ----
    @classmethod
    def upgrade_state(cls, version: int, f: dict) -> dict:
        if version != 1:
            raise ValueError(f"bank.signal version {version}")
        dets = f["detectors"]
        names = tuple(d.name for d in dets)
        if dets and isinstance(dets[0], CalibratedDetector):
            d0 = dets[0]
            config = SignalConfig(names, tuple(not d.takes_z for d in dets), d0.arl, d0.kind, d0.ph_delta)
            dets = [d.inner for d in dets]
        else:
            config = SignalConfig(names, (True,) * len(dets))
        last, way = f["last_detection"], f["last_direction"]
        detected = any(t is not None for t in last)
        unbuilt = not any(config.raw) and all(d is None for d in dets)
        return {"config": shared_config(config), "transform": f["transform"], "std": f["std"],
                "detectors": None if unbuilt else list(dets), "last_detection": list(last) if detected else None,
                "last_direction": list(way) if detected else None}


DERIVED = ("dist", "profile_gen", "model_plan", "feature_signals")  # SegmentState's fields that are not state


@persistent("bank.segment")
class SegmentState:
    """Everything of one (model, segment) but its counters (those are in the bank's Tally).

    `model_plan` (the model's `ModelPlan`, shared by the bank's segments of the model: its
    features as (name, numeric) pairs, ...) and `feature_signals` (the features' SignalStates,
    None until a feature's first value) are what the hot loop walks instead of looking each
    signal up by name and the spec up by model; both are derived (from the spec and `signals`),
    never stored.
    """

    __slots__ = ("signals", "model_plan", "feature_signals", "accuracy", "errors", "last_seen", "windows", "profile_id", "profile_gen", "dist",
                 "quality", "challengers", "slices", "llm",
                 "estimate")

    def __init__(self, spec: ModelSpec):
        self.signals: dict[str, SignalState] = {}
        self.model_plan: ModelPlan | None = None  # bound by DetectorBank._bind
        self.feature_signals: list[SignalState | None] | None = None
        # LLM calls: the rolling share of good feedback, in the accuracy's place.
        self.accuracy = RollingAccuracy(spec.accuracy_window) if spec.task in ("classification", "llm") else None
        self.errors = RollingError(spec.accuracy_window) if spec.task == "regression" else None
        self.last_seen = 0.0
        # Baseline comparison: windows by signal name (state), the digest of the profile they
        # were made for, and the hot list of (binner, window) pairs (configuration: rebuilt from
        # the bank's ProfileBook, never pickled) with the book generation it was built at.
        self.windows: dict[str, Window] = {}
        self.profile_id: str | None = None
        self.profile_gen = -1
        self.dist: list | None = None
        # Confusion counts, costs, positive-class window (classification; made on the first label).
        self.quality: ClassQuality | None = None
        # Champion vs challenger of this (challenger) segment, by champion name; None until a pair.
        self.challengers: dict[str, ChallengerComparison] | None = None
        self.slices: SliceAccountant | None = None  # classification: built with the first outcome
        self.llm: LLMSegment | None = None  # counters and embedding drift of LLM calls
        # Label-free accuracy from calibrated scores (classification with scores; made on the first).
        self.estimate: AccuracyEstimate | None = None

    def detector_readings(self, internal: Sequence[str] = (), all_internal: bool = False
                          ) -> list[tuple[str, list[DetectorReading]]]:
        """Each signal's detector readings (a copy, for exporters), with statistics for the
        signals named in `internal` (or every signal with `all_internal`)."""
        return [(name, sig.readings(all_internal or name in internal)) for name, sig in list(self.signals.items())]

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__ if name not in DERIVED}

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # a snapshot from before baselines: (None, {slot: value})
            state = state[1]
        for name in self.__slots__:
            setattr(self, name, state.get(name))
        if self.windows is None:  # a snapshot from before baselines
            self.windows = {}
        self.profile_gen = -1  # check the profile again on the next event
        self.dist = None
        self.model_plan = self.feature_signals = None  # (checkpoints before 18e also hold a "plan": derived)


def slice_accountant(spec: ModelSpec, segment: str, profiles: ProfileBook | None = None) -> SliceAccountant:
    """The slice accountant of one segment: the spec's features (bins from the model's profile when
    there is one) and, at `__all__`, its segment attributes."""
    compiled = profiles.get(spec.name) if profiles is not None else None
    return SliceAccountant(tuple(spec.features.items()), spec.segments if segment == ALL_SEGMENT else (),
                           profile_bins(compiled.binners(segment)) if compiled is not None else None)


def _unbound_spec(model: str) -> ModelSpec:
    raise RuntimeError("restored bank has no spec lookup: use DetectorBank.restore(blob, spec_for)")


def is_number(x: object) -> bool:
    t = type(x)
    return (t is float or t is int) and math.isfinite(x)  # bool is excluded: type(True) is bool


def is_correct(prediction: object, label: object) -> bool:
    """Classification: equal values, where numbers compare as numbers (1 == 1.0 == True)."""
    return prediction == label


@persistent("bank")
class DetectorBank:
    """Detectors, rolling metrics and counters for the (model, segment) keys routed to it.

    The Kafka worker keeps one bank per partition of the observations topic; replay keeps one.
    Everything in it, counters included, is state: `snapshot()` captures all of it.
    """

    def __init__(self, spec_for: Callable[[str], ModelSpec], idle_after: float | None = None,
                 profiles: ProfileBook | None = None, max_models: int | None = None, configured=()):
        self._spec_for = spec_for
        # Reference profiles (configuration, like the spec lookup): None when no model has one.
        self.profiles = profiles
        # Segments with no event for `idle_after` seconds of event time are dropped, with their
        # series: a bound on state for segment values that stop occurring.
        self.idle_after = idle_after
        self.tally = Tally()
        self._segments: dict[tuple[str, str], SegmentState] = {}
        # The cardinality guard of the (model, attribute)s this bank owns (derived from _segments).
        self.guard = SegmentGuard()
        # The models it monitors (`limits.max_models`; configuration plus what _segments implies).
        self.models = ModelGuard(configured, max_models)
        self.watermark = 0.0
        self._since_evict = 0
        self._plans: dict[str, ModelPlan] = {}  # model -> its plan (of the spec it was made of): see _bind

    # -- snapshot: the spec lookup is configuration, not state; the restorer passes it again --
    def __getstate__(self) -> dict:
        return {"segments": self._segments, "tally": self.tally, "idle_after": self.idle_after,
                "watermark": self.watermark, "since_evict": self._since_evict}

    def __setstate__(self, state: dict) -> None:
        self._spec_for = _unbound_spec
        self.profiles = None
        self.tally = state["tally"]
        self._segments = state["segments"]
        self.guard = SegmentGuard(self._segments)
        self.models = ModelGuard(segments=self._segments)  # its cap comes with bind()
        self.idle_after = state["idle_after"]
        self.watermark = state["watermark"]
        self._since_evict = state["since_evict"]
        self._plans = {}

    def bind(self, spec_for: Callable[[str], ModelSpec], profiles: ProfileBook | None = None,
             max_models: int | None = None, configured=()) -> "DetectorBank":
        """Give a restored bank its spec lookup, reference profiles and model cap (configuration,
        not state)."""
        self._spec_for = spec_for
        self.profiles = profiles
        self.models = ModelGuard(configured, max_models, self._segments)
        self._plans = {}
        for state in self._segments.values():  # plans of the specs it had: made again on the next event
            state.model_plan = state.feature_signals = None
        return self

    @classmethod
    def restore(cls, blob: bytes, spec_for: Callable[[str], ModelSpec],
                profiles: ProfileBook | None = None) -> "DetectorBank":
        bank = restore_state(blob)
        if not isinstance(bank, cls):
            raise SnapshotError(f"snapshot holds a {type(bank).__name__}, not a DetectorBank")
        return bank.bind(spec_for, profiles)

    def snapshot(self) -> bytes:
        return snapshot_state(self)

    # -- reading, for exporters ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._segments)

    def items(self) -> Iterator[tuple[tuple[str, str], SegmentState]]:
        return iter(list(self._segments.items()))

    def get(self, model: str, segment: str) -> SegmentState | None:
        return self._segments.get((model, segment))

    def spec(self, model: str) -> ModelSpec:
        return self._spec_for(model)

    # -- feeding -------------------------------------------------------------------------------
    def observe_inference(
        self,
        model: str,
        segment: str,
        features: Mapping[str, object],
        prediction: object,
        score: float | None,
        timestamp: float,
        prediction_id: str,
    ) -> list[DriftRecord]:
        """One accepted inference event in one segment (an event reaches `__all__` and each of
        its attribute segments; per-model counts are taken at `__all__`, once per event)."""
        key = (model, segment)
        state = self._segments.get(key)
        if state is None:
            state = self._new_state(model, segment)
        self._tick(timestamp)
        tally = self.tally
        tally.inferences[key] += 1
        at_all = segment == ALL_SEGMENT
        if at_all:
            tally.events[(model, "inference", "accepted")] += 1
        if timestamp > state.last_seen:
            state.last_seen = timestamp
        found: list[DriftRecord] = []
        if prediction is not None:
            if state.errors is not None:  # regression: the predicted value itself
                if is_number(prediction):
                    sig = state.signals.get(PREDICTION) or self._signal(state, model, PREDICTION, False)
                    x = float(prediction)
                    hits = sig.update(x, timestamp)
                    if hits is not None:
                        self._detections(hits, PREDICTION, x, (model, segment, timestamp, prediction_id), found)
            else:
                sig = state.signals.get(PREDICTION) or self._signal(state, model, PREDICTION, True)
                x = sig.transform.transform(prediction)
                if x is not None:
                    hits = sig.update(x, timestamp)
                    if hits is not None:
                        self._detections(hits, PREDICTION, x, (model, segment, timestamp, prediction_id), found)
        plan = state.model_plan
        if plan is None:
            plan = self._bind(state, model)
        if score is not None:
            sig = state.signals.get(SCORE) or self._signal(state, model, SCORE, False)
            hits = sig.update(score, timestamp)
            if hits is not None:
                self._detections(hits, SCORE, score, (model, segment, timestamp, prediction_id), found)
            if state.accuracy is not None and prediction is not None:
                if plan.task == "classification":  # not LLM calls: their label is feedback
                    (state.estimate or self._estimate(state, model)).predicted(
                        score if plan.score_is_confidence else confidence(plan.quality, prediction, score),
                        state.accuracy.window)
        fsigs = state.feature_signals
        for k, (name, numeric) in enumerate(plan.features):
            value = features.get(name)
            if value is None:
                continue  # missing: counted by data quality, not a detector input
            if numeric:
                t = type(value)
                if (t is not float and t is not int) or value - value != 0:  # not a finite number (bools too)
                    if at_all:
                        tally.invalid_features[(model, name, "type")] += 1
                    continue
                x = value
                sig = fsigs[k]
                if sig is None:
                    sig = fsigs[k] = self._signal(state, model, name, False)
            else:
                sig = fsigs[k]
                if sig is None:
                    sig = fsigs[k] = self._signal(state, model, name, True)
                x = sig.transform.transform(value)
                if x is None:
                    continue
            hits = sig.update(x, timestamp)
            if hits is not None:
                self._detections(hits, name, x, (model, segment, timestamp, prediction_id), found)
        book = self.profiles
        if book is not None:
            if state.profile_gen != book.generation:
                self._bind_profile(state, model, segment)
            if state.dist is not None:
                self._distribution(state.dist, model, features, prediction, score)
        return found

    def observe_outcome(
        self,
        model: str,
        segment: str,
        prediction: object,
        label: object,
        timestamp: float,
        prediction_id: str,
        delay: float | None = None,
        score: float | None = None,
        values: Sequence | None = None,
        segments: Sequence[str] | None = None,
    ) -> list[DriftRecord]:
        """A prediction joined to its label, in one segment; `delay` is label time minus
        prediction time, observed once per event at `__all__`; `score` is the prediction's.
        `values` are the prediction's monitored features in the spec's order, `segments` (at
        `__all__`) its segment labels: the slice accountant's input."""
        key = (model, segment)
        state = self._segments.get(key)
        if state is None:
            state = self._new_state(model, segment)
        self._tick(timestamp)
        tally = self.tally
        if segment == ALL_SEGMENT:
            tally.events[(model, "label", "accepted")] += 1
            if delay is not None:
                tally.observe_delay(model, delay)
        if timestamp > state.last_seen:
            state.last_seen = timestamp
        found: list[DriftRecord] = []
        if state.errors is not None:
            if not (is_number(prediction) and is_number(label)):
                return found
            error = float(prediction) - float(label)
            tally.labeled[key] += 1
            state.errors.update(error)
            sig = state.signals.get(ERROR) or self._signal(state, model, ERROR, False)
            x = abs(error)
            hits = sig.update(x, timestamp)
            if hits is not None:
                self._detections(hits, ERROR, x, (model, segment, timestamp, prediction_id), found)
        else:
            plan = state.model_plan
            if plan is None:
                plan = self._bind(state, model)
            llm = plan.task == "llm"
            if llm:  # feedback: the error signal is "bad"
                correct = is_good_feedback(label)
                if correct is None:
                    return found
            else:
                correct = is_correct(prediction, label)
            tally.labeled[key] += 1
            if correct:
                tally.correct[key] += 1
            state.accuracy.update(correct)
            if not llm:  # classes of predictions: an LLM call's feedback has none
                q = state.quality
                if q is None:
                    q = state.quality = ClassQuality(plan.quality, plan.window)
                q.update(plan.quality, plan.window, prediction, label, score)
                if score is not None:
                    (state.estimate or self._estimate(state, model)).labelled(
                        score if plan.score_is_confidence else confidence(plan.quality, prediction, score), correct,
                        plan.window)
            slices = state.slices
            if slices is None or (slices.stale and not slices.active):
                slices = state.slices = self._new_slices(model, segment)
            refresh = slices.observe(values, segments, correct, timestamp)
            sig = state.signals.get(ERROR) or self._signal(state, model, ERROR, False)
            x = 0.0 if correct else 1.0
            hits = sig.update(x, timestamp)
            if hits is not None:
                self._detections(hits, ERROR, x, (model, segment, timestamp, prediction_id), found)
            if found:
                self._explain(found, slices, model, timestamp)
            elif refresh is not None:
                found.append(ExplanationRecord(model, segment, timestamp, prediction_id, refresh,
                                               slices.explain().to_dict()))
        return found

    def observe_pair(self, model: str, segment: str, champion: str, timestamp: float, challenger_correct: bool,
                     champion_correct: bool) -> None:
        """A request both `model` (a challenger) and its champion scored, graded by one label."""
        state = self._segments.get((model, segment))
        if state is None:
            state = self._new_state(model, segment)
        self._tick(timestamp)
        if timestamp > state.last_seen:
            state.last_seen = timestamp
        comps = state.challengers
        if comps is None:
            comps = state.challengers = {}
        cmp = comps.get(champion)
        if cmp is None:
            cmp = comps[champion] = ChallengerComparison()
        cmp.update(challenger_correct, champion_correct, self._spec_for(model).challenger_error_rate)

    def _new_slices(self, model: str, segment: str) -> SliceAccountant:
        return slice_accountant(self._spec_for(model), segment, self.profiles)

    def _explain(self, found: list, slices: SliceAccountant, model: str, timestamp: float) -> None:
        """Attach the explanation to each error-up detection just made."""
        for k, rec in enumerate(found):
            if rec.signal == ERROR and rec.direction == "up":
                found[k] = dataclasses.replace(
                    rec, explanation=slices.detected(timestamp, self._spec_for(model).drift_hold).to_dict())

    def observe_llm(self, model: str, segment: str, call: LLMObservation, timestamp: float,
                    prediction_id: str) -> list[DriftRecord]:
        """An LLM call in one segment (after its inference observation): counters, histograms and
        the call's signals into the detectors (detectors/llm.py)."""
        state = self._segments.get((model, segment))
        if state is None:
            state = self._new_state(model, segment)
        spec = self._spec_for(model).llm
        found: list[DriftRecord] = []
        if spec is None:  # the model is no longer `task: llm` (config changed)
            return found
        llm = state.llm
        if llm is None:
            llm = state.llm = LLMSegment(spec, self._embedding_reference(model, segment))
        for signal, value, categorical in llm.observe(call, spec):
            sig = self._signal(state, model, signal, categorical)
            if categorical:
                value = sig.transform.transform(value)
                if value is None:
                    continue
            hits = sig.update(value, timestamp)
            if hits is not None:
                self._detections(hits, signal, value, (model, segment, timestamp, prediction_id), found)
        return found

    def _embedding_reference(self, model: str, segment: str):
        """The baseline profile's embedding reference of the segment (or __all__'s), if any."""
        book = self.profiles
        compiled = book.get(model) if book is not None else None
        lookup = getattr(compiled, "embedding_reference", None)
        return lookup(segment) if lookup is not None else None

    def observe_fate(self, model: str | None, kind: str, outcome: str, n: int = 1) -> None:
        """An event that fed no detector: invalid, duplicate, unmatched or expired."""
        self.tally.events[(model, kind, outcome)] += n

    def admit(self, model: str, segment: str, inference: bool) -> str:
        """The segment an observation of `segment` counts in (the cardinality guard, see
        detectors/segments.py): itself, or `attr=__other__` past `max_segments` values of its
        attribute. A folded inference is counted in `driftline_segments_folded_total`."""
        if (model, segment) in self._segments:  # the commonest case: its state exists (the guard's `known`)
            return segment
        admitted = self.guard.admit(model, segment, self._spec_for(model).max_segments)
        if inference and admitted != segment:
            self.tally.folded[(model, attribute_of(segment))] += 1
        return admitted

    def observe_fold(self, model: str, attribute: str, n: int = 1) -> None:
        """An event whose `attribute` value folded into `__other__` (cardinality guard)."""
        self.tally.folded[(model, attribute)] += n

    def evict_idle(self, older_than: float) -> list[tuple[str, str]]:
        """Drop segments with no event since `older_than`; their series leave /metrics with them."""
        return self._forget([key for key, st in self._segments.items() if st.last_seen < older_than])

    # -- baseline windows ----------------------------------------------------------------------
    def _bind_profile(self, state: SegmentState, model: str, segment: str) -> None:
        """(Re)build the segment's (binner, window) list after the book changed (or a restore)."""
        book = self.profiles
        state.profile_gen = book.generation
        compiled = book.get(model)
        if compiled is None:
            state.windows, state.profile_id, state.dist = {}, None, None
            return
        if state.profile_id != compiled.id:  # a new profile: the old windows mean other bins
            state.windows, state.profile_id = {}, compiled.id
            if state.slices is not None:  # its bins too: rebuilt on the next outcome without an active drift
                state.slices.stale = True
        windows = state.windows
        dist = []
        for binner in compiled.binners(segment):
            w = windows.get(binner.name)
            if w is None or w.size != compiled.window or len(w.counts) != binner.slots:
                w = windows[binner.name] = Window(compiled.window, binner.slots)
            dist.append((binner, w))
        state.dist = dist

    def _distribution(self, dist: list, model: str, features: Mapping[str, object], prediction: object,
                      score: object) -> None:
        """Each profiled signal's value into its window: O(1) (a bisect on <= 102 edges) per value."""
        for b, w in dist:
            src = b.source
            v = features.get(b.name) if src == 0 else (prediction if src == 1 else score)  # FEATURE, PREDICTION
            if v is None:
                i = b.missing
            elif b.numeric:
                t = type(v)
                if (t is float or t is int) and v - v == 0:
                    i = bisect_left(b.edges, v)
                    if v < b.lo or v > b.hi:  # +-inf but at __all__'s features
                        self.tally.invalid_features[(model, b.name, "range")] += 1
                else:
                    i = b.invalid  # counted as reason "type" by the feature's detectors above
            else:
                t = type(v)
                i = b.index.get(v if t is str or t is int else category_key(v))  # ints: see Binner
                if i is None:
                    i = b.other
                    if b.checks:
                        self.tally.invalid_features[(model, b.name, "unseen_category")] += 1
            ring, pos, counts = w.ring, w.pos, w.counts
            counts[ring[pos]] -= 1
            ring[pos] = i
            counts[i] += 1
            pos += 1
            w.pos = 0 if pos == w.size else pos

    def drop_segments(self, foreign: Callable[[str, str], bool]) -> list[tuple[str, str]]:
        """Drop the segments `foreign(model, segment)` says this bank does not own (a restored
        checkpoint of an older routing); their series leave /metrics with them."""
        return self._forget([key for key in self._segments if foreign(*key)])

    def _forget(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Remove segments with everything derived from them: both guards' slots and their counters."""
        for key in keys:
            del self._segments[key]
            self.guard.removed(*key)
            self.models.removed(key[0])
            self.tally.forget_segment(*key)
        return keys

    # -- internals -----------------------------------------------------------------------------
    def _tick(self, timestamp: float) -> None:
        if timestamp > self.watermark:
            self.watermark = timestamp
        self._since_evict += 1
        if self._since_evict >= EVICT_EVERY:
            self._since_evict = 0
            if self.idle_after is not None:
                self.evict_idle(self.watermark - self.idle_after)

    def _estimate(self, state: SegmentState, model: str) -> AccuracyEstimate:
        est = state.estimate
        if est is None:
            est = state.estimate = AccuracyEstimate(self._spec_for(model).accuracy_window)
        return est

    def _bind(self, state: SegmentState, model: str) -> ModelPlan:
        """A new or restored segment's plan: its model's (of the spec now), its features' signals."""
        spec = self._spec_for(model)
        plan = self._plans.get(model)
        if plan is None or plan.spec is not spec:
            plan = self._plans[model] = ModelPlan(spec)
        state.model_plan = plan
        state.feature_signals = [state.signals.get(name) for name, _ in plan.features]
        return plan

    def _new_state(self, model: str, segment: str) -> SegmentState:
        state = self._segments[(model, segment)] = SegmentState(self._spec_for(model))
        self.guard.added(model, segment)
        self.models.added(model)
        return state

    def _signal(self, state: SegmentState, model: str, signal: str, categorical: bool) -> SignalState:
        sig = state.signals.get(signal)
        if sig is None:
            spec = self._spec_for(model)
            transform = CategorySurprisal(spec.categorical_reference) if categorical else None
            names = tuple(spec.detectors)
            if spec.false_alarm_budget is None:
                config = shared_config(SignalConfig(names, (True,) * len(names)))
                detectors = [build_detector(name, spec.adwin, spec.page_hinkley) for name in names]
                sig = state.signals[signal] = SignalState(config, detectors, transform)
                return sig
            # Every event feeds (1 + attributes) segments x signals x detectors: each detector
            # gets its share of the model's budget (detectors/calibration.py).
            llm_signals = spec.llm.signal_count() if spec.llm is not None else 0
            streams = streams_per_event(len(spec.segments), 3 + len(spec.features) + llm_signals, len(names))
            arl = stream_arl(spec.false_alarm_budget, streams)
            kind = "binary" if signal == ERROR and spec.task == "classification" else "numeric"
            detectors = [raw_detector(name, arl, kind) for name in names]
            config = shared_config(SignalConfig(names, tuple(d is not None for d in detectors), arl, kind,
                                                DEFAULT_PH_DELTA[kind]))
            std = Standardizer(spec.warmup, binary=kind == "binary") if not all(config.raw) else None
            if not any(config.raw):
                detectors = None  # built when the warm-up is over (SignalState.update)
            sig = state.signals[signal] = SignalState(config, detectors, transform, std)
        return sig

    def _detections(self, hits: list[Detection], signal: str, x: float, ctx: tuple, found: list) -> None:
        """The drift records (and counts) of the detections one value made on a signal."""
        model, segment, timestamp, pid = ctx
        detections = self.tally.detections
        for hit in hits:
            detections[(model, segment, signal, hit.detector)] += 1
            found.append(DriftRecord(model, segment, signal, hit.detector, timestamp, pid, float(x), hit.statistics,
                                     "up" if hit.direction > 0 else "down"))
