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
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from driftline.detectors.accuracy import RollingAccuracy, RollingError
from driftline.detectors.baseline import ProfileBook, Window, category_key
from driftline.detectors.calibration import CalibratedDetector, Standardizer, stream_arl, streams_per_event
from driftline.detectors.categorical import CategorySurprisal
from driftline.detectors.challenger import ChallengerComparison
from driftline.detectors.classification import ClassQuality, confidence
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


@persistent("bank.signal")
class SignalState:
    """The detectors on one signal of one segment, with their detection history."""

    __slots__ = ("detectors", "last_detection", "last_direction", "transform", "std", "feeds", "warm")

    def __init__(self, detectors: list[Detector], transform: CategorySurprisal | None = None,
                 std: Standardizer | None = None):
        self.detectors = detectors
        self.last_detection: list[float | None] = [None] * len(detectors)
        self.last_direction: list[int] = [0] * len(detectors)  # of the last detection: +1 up, -1 down
        self.transform = transform
        # Under a false-alarm budget, one Standardizer per signal (not per detector) turns values
        # into z-scores; `feeds` says, per detector, which update to call and whether with z.
        self.std = std
        self.warm = std is None  # once warm, z-detectors are called directly (one call less a value)
        self.feeds: list[tuple[int, object, bool]] = self._feeds()

    def _feeds(self) -> list[tuple[int, object, bool]]:
        feeds: list[tuple[int, object, bool]] = []
        for i, det in enumerate(self.detectors):
            if isinstance(det, CalibratedDetector):
                if det.takes_z:  # once warm, straight to the inner detector (see DetectorBank._update)
                    inner = det.inner if self.warm else None
                    feeds.append((i, inner.update if inner is not None else det.update_z, True))
                else:
                    feeds.append((i, det.inner.update, False))  # raw ADWIN on a 0/1 stream
            else:
                feeds.append((i, det.update, False))
        return feeds

    # -- state: `feeds` holds bound methods, derived from the detectors: rebuilt, not stored ----
    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__ if name != "feeds"}

    def __setstate__(self, state: dict) -> None:
        for name in self.__slots__:
            if name != "feeds":
                setattr(self, name, state[name])
        self.feeds = self._feeds()


@persistent("bank.segment")
class SegmentState:
    """Everything of one (model, segment) but its counters (those are in the bank's Tally).

    `plan` lists the model's configured features as [name, numeric, SignalState | None]: the
    hot loop walks it instead of looking each signal up by name; a signal's detectors are
    built when its first value comes.
    """

    __slots__ = ("signals", "plan", "accuracy", "errors", "last_seen", "windows", "profile_id", "profile_gen", "dist",
                 "quality", "challengers", "slices", "llm",
                 "estimate")

    def __init__(self, spec: ModelSpec):
        self.signals: dict[str, SignalState] = {}
        self.plan: list[list] = [[name, kind == "numeric", None] for name, kind in spec.features.items()]
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

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__ if name not in ("dist", "profile_gen")}

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # a snapshot from before baselines: (None, {slot: value})
            state = state[1]
        for name in self.__slots__:
            setattr(self, name, state.get(name))
        if self.windows is None:  # a snapshot from before baselines
            self.windows = {}
        self.profile_gen = -1  # check the profile again on the next event
        self.dist = None


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

    def bind(self, spec_for: Callable[[str], ModelSpec], profiles: ProfileBook | None = None,
             max_models: int | None = None, configured=()) -> "DetectorBank":
        """Give a restored bank its spec lookup, reference profiles and model cap (configuration,
        not state)."""
        self._spec_for = spec_for
        self.profiles = profiles
        self.models = ModelGuard(configured, max_models, self._segments)
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
        state = self._segments.get((model, segment))
        if state is None:
            state = self._new_state(model, segment)
        self._tick(timestamp)
        tally = self.tally
        tally.inferences[(model, segment)] += 1
        at_all = segment == ALL_SEGMENT
        if at_all:
            tally.events[(model, "inference", "accepted")] += 1
        if timestamp > state.last_seen:
            state.last_seen = timestamp
        found: list[DriftRecord] = []
        ctx = (model, segment, timestamp, prediction_id)
        if prediction is not None:
            if state.errors is not None:  # regression: the predicted value itself
                if is_number(prediction):
                    self._update(self._signal(state, model, PREDICTION, False), PREDICTION, float(prediction), ctx, found)
            else:
                sig = self._signal(state, model, PREDICTION, True)
                x = sig.transform.transform(prediction)
                if x is not None:
                    self._update(sig, PREDICTION, x, ctx, found)
        if score is not None:
            self._update(self._signal(state, model, SCORE, False), SCORE, score, ctx, found)
            if state.accuracy is not None and prediction is not None:
                spec = self._spec_for(model)
                if spec.task == "classification":  # not LLM calls: their label is feedback
                    self._estimate(state, model).predicted(confidence(spec.quality, prediction, score),
                                                           state.accuracy.window)
        for slot in state.plan:
            name, numeric, sig = slot
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
                if sig is None:
                    sig = slot[2] = self._signal(state, model, name, False)
            else:
                if sig is None:
                    sig = slot[2] = self._signal(state, model, name, True)
                x = sig.transform.transform(value)
                if x is None:
                    continue
            self._update(sig, name, x, ctx, found)
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
        state = self._segments.get((model, segment))
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
        ctx = (model, segment, timestamp, prediction_id)
        if state.errors is not None:
            if not (is_number(prediction) and is_number(label)):
                return found
            error = float(prediction) - float(label)
            tally.labeled[(model, segment)] += 1
            state.errors.update(error)
            self._update(self._signal(state, model, ERROR, False), ERROR, abs(error), ctx, found)
        else:
            spec = self._spec_for(model)
            llm = spec.task == "llm"
            if llm:  # feedback: the error signal is "bad"
                correct = is_good_feedback(label)
                if correct is None:
                    return found
            else:
                correct = is_correct(prediction, label)
            tally.labeled[(model, segment)] += 1
            if correct:
                tally.correct[(model, segment)] += 1
            state.accuracy.update(correct)
            if not llm:  # classes of predictions: an LLM call's feedback has none
                q = state.quality
                if q is None:
                    q = state.quality = ClassQuality(spec.quality, spec.accuracy_window)
                q.update(spec.quality, spec.accuracy_window, prediction, label, score)
                if score is not None:
                    self._estimate(state, model).labelled(confidence(spec.quality, prediction, score), correct,
                                                          spec.accuracy_window)
            slices = state.slices
            if slices is None or (slices.stale and not slices.active):
                slices = state.slices = self._new_slices(model, segment)
            refresh = slices.observe(values, segments, correct, timestamp)
            self._update(self._signal(state, model, ERROR, False), ERROR, 0.0 if correct else 1.0, ctx, found)
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
        ctx = (model, segment, timestamp, prediction_id)
        for signal, value, categorical in llm.observe(call, spec):
            sig = self._signal(state, model, signal, categorical)
            if categorical:
                value = sig.transform.transform(value)
                if value is None:
                    continue
            self._update(sig, signal, value, ctx, found)
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
        admitted = self.guard.admit(model, segment, self._spec_for(model).max_segments,
                                    (model, segment) in self._segments)
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

    def _new_state(self, model: str, segment: str) -> SegmentState:
        state = self._segments[(model, segment)] = SegmentState(self._spec_for(model))
        self.guard.added(model, segment)
        self.models.added(model)
        return state

    def _signal(self, state: SegmentState, model: str, signal: str, categorical: bool) -> SignalState:
        sig = state.signals.get(signal)
        if sig is None:
            spec = self._spec_for(model)
            if spec.false_alarm_budget is None:
                detectors = [build_detector(name, spec.adwin, spec.page_hinkley) for name in spec.detectors]
            else:
                # Every event feeds (1 + attributes) segments x signals x detectors: each detector
                # gets its share of the model's budget (detectors/calibration.py).
                llm_signals = spec.llm.signal_count() if spec.llm is not None else 0
                streams = streams_per_event(len(spec.segments), 3 + len(spec.features) + llm_signals,
                                            len(spec.detectors))
                arl = stream_arl(spec.false_alarm_budget, streams)
                kind = "binary" if signal == ERROR and spec.task == "classification" else "numeric"
                std = Standardizer(spec.warmup, binary=kind == "binary")
                detectors = [CalibratedDetector(name, arl, kind, warmup=spec.warmup, std=std) for name in spec.detectors]
                sig = state.signals[signal] = SignalState(
                    detectors, CategorySurprisal(spec.categorical_reference) if categorical else None,
                    std if any(d.takes_z for d in detectors) else None)
                return sig
            transform = CategorySurprisal(spec.categorical_reference) if categorical else None
            sig = state.signals[signal] = SignalState(detectors, transform)
        return sig

    @staticmethod
    def _rewarm(sig: SignalState) -> None:
        # After a detection the standardised detectors learn the signal's new mean and scale: the
        # old ones would make them alarm again and again on a level that has simply moved.
        old = sig.std
        sig.std = std = Standardizer(old.warmup, binary=old.binary, clip=old.clip)
        sig.warm = False
        feeds = []
        for i, det in enumerate(sig.detectors):
            if isinstance(det, CalibratedDetector) and det.takes_z:
                det.rebind(std)
                feeds.append((i, det.update_z, True))
            else:
                feeds.append(sig.feeds[i])
        sig.feeds = feeds

    def _update(self, sig: SignalState, signal: str, x: float, ctx, found: list[DriftRecord]) -> None:
        std = sig.std
        z = std.transform(x) if std is not None else None  # None while the signal warms up
        for i, update, takes_z in sig.feeds:
            if takes_z:
                if z is None:
                    continue
                if update(z):
                    self._detected(sig, i, signal, x, ctx, found)
                    z = None  # re-warming from the next value on (see _rewarm)
            elif update(x):
                self._detected(sig, i, signal, x, ctx, found)
                if sig.std is not std:
                    z = None
        if not sig.warm and z is not None:
            sig.warm = True
            sig.feeds = [(i, sig.detectors[i].inner.update, True) if takes_z else (i, update, False)
                         for i, update, takes_z in sig.feeds]

    def _detected(self, sig: SignalState, i: int, signal: str, x: float, ctx, found: list[DriftRecord]) -> None:
        model, segment, timestamp, pid = ctx
        det = sig.detectors[i]
        self.tally.detections[(model, segment, signal, det.name)] += 1
        sig.last_detection[i] = timestamp
        sig.last_direction[i] = det.direction
        found.append(DriftRecord(model, segment, signal, det.name, timestamp, pid, float(x), det.statistics(),
                                 "up" if det.direction > 0 else "down"))
        if sig.std is not None:
            self._rewarm(sig)  # after reading the detector's direction and statistics
