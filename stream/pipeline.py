"""The core wired for one partition: decoded events in, observations out, observations into a bank.

Two halves, because the Kafka worker runs them on different partitions (the join is
partitioned by prediction_id, the detectors by (model, segment)):

- `Intake` routes an event to its segments (their raw values), joins labels to predictions,
  and emits observations: typed records, one per segment an event reaches, plus the fates of
  events that reach no detector (invalid, duplicate, expired, unmatched).
- `feed()` applies observations to a `DetectorBank` and returns the drift records they caused;
  the bank holds both cardinality guards: it refuses models past `max_models` (their inferences
  become `too_many_models` refusals for the caller to dead-letter) and folds segment values past
  `max_segments` into `attr=__other__`. The worker routes every value of a (model, attribute),
  and every observation of a model not in the config, to one bank, so both hold fleet-wide.

`driftline replay` runs both in one loop; the worker puts the observations topic between them.
Both are deterministic: the same events in the same order give the same observations, which is
what lets a worker resume a crashed one's partitions from a checkpoint by replaying.

Observations are typed records, one type per kind (detectors/observations.py: their fields,
and their wire form on the observations topic); `key = (model, segment)`, their first two fields.
"""
from __future__ import annotations

from base64 import b64decode, b64encode
from typing import Iterable

from driftline.detectors.bank import DetectorBank, DriftRecord, is_correct
from driftline.detectors.challenger import ShadowPairs, comparisons
from driftline.detectors.join import Fate, Joined, LabelJoin, PendingPrediction
from driftline.detectors.llm import observation as llm_observation
from driftline.detectors.observations import (
    FATE,
    FOLD,
    INFERENCE,
    LLM,
    OUTCOME,
    PAIR,
    FateObservation,
    FoldObservation,
    InferenceObservation,
    LLMCallObservation,
    Observation,
    OutcomeObservation,
    PairObservation,
)
from driftline.detectors.segments import SegmentRouter
from driftline.detectors.spec import ALL_SEGMENT, ModelSpec
from driftline.detectors.state import SnapshotError
from driftline.detectors.state import restore as restore_state
from driftline.detectors.state import snapshot as snapshot_state
from driftline.stream.events import Inference, Invalid, Label

UNKNOWN_MODEL = "__unknown__"
# Records built on the hot path with tuple.__new__ (one C call; a NamedTuple's own __new__ is a
# Python function): the fields in declaration order, all of them.
_new = tuple.__new__
__all__ = ["Intake", "observe", "feed", "UNKNOWN_MODEL", "INFERENCE", "OUTCOME", "FATE", "FOLD", "PAIR", "LLM"]

# Events between sweeps of idle segment values (router) and idle segments (bank).
EVICT_EVERY = 50_000


class Intake:
    """Routing and the label join for one input partition (or a whole replay).

    Models are admitted at stage 2 (`observe`, the bank's ModelGuard): the intake passes every
    model's events on, holding nothing per model name beyond the join's bounded waits.
    """

    def __init__(self, settings):
        self.settings = settings
        self._ttls: dict[str | None, float] = {}  # model -> label_ttl (see _ttl_for)
        self.router = SegmentRouter()
        self.join = LabelJoin(self._ttl_for, max_pending=settings.limits.max_pending)
        self.shadow = self._new_shadow()
        self.admitted: set[str] = set(settings.models)  # kept for the snapshot shape only
        # Event time read so far on each stream: the join's TTLs run on them (a prediction
        # expires on label progress, a held label on inference progress). `watermark` is the
        # larger of the two: the clock of the router's idle sweep and of /metrics.
        self.inference_time = 0.0
        self.label_time = 0.0
        self.embedding_dims: dict[str, int] = {}  # model -> length of its embeddings (LLM calls)
        self.watermark = 0.0
        self.idle: set[str] = set()  # streams with nothing left unread (see set_idle)
        self._since_evict = 0

    # -- state: settings are configuration, not state (detectors/state.py) -----------------------
    def resume_state(self) -> dict:
        """Plain resume state (for detectors.state.encode_state); `from_resume_state` rebuilds."""
        return {"router": self.router, "join": self.join, "admitted": self.admitted,
                "watermark": self.watermark, "since_evict": self._since_evict,
                "inference_time": self.inference_time, "label_time": self.label_time,
                "shadow": self.shadow,
                "embedding_dims": self.embedding_dims}

    @classmethod
    def from_resume_state(cls, state: dict, settings) -> "Intake":
        if not isinstance(state, dict) or not isinstance(state.get("join"), LabelJoin):
            raise SnapshotError("snapshot does not hold an Intake")
        intake = cls(settings)
        intake.router = state["router"]
        intake.join = state["join"].bind(intake._ttl_for)
        intake.admitted = state["admitted"] | set(settings.models)
        intake.watermark = state["watermark"]
        intake._since_evict = state["since_evict"]
        # Snapshots from before per-stream clocks: both streams had reached the watermark.
        intake.inference_time = state.get("inference_time", intake.watermark)
        intake.label_time = state.get("label_time", intake.watermark)
        # `idle` is not restored (snapshots before this one carry it): idleness is what the
        # worker's alignment observes of the topics now, and it has observed nothing yet. A stream
        # idle at the stop may hold a backlog at the restart; believed idle, its clock would
        # follow the other stream's first batch and expire what waits for it (issue 13b).
        if state.get("shadow") is not None:  # absent from snapshots before champion/challenger
            intake.shadow = state["shadow"].bind(*intake._comparisons(), intake._ttl_for)
        intake.embedding_dims = state.get("embedding_dims", {})
        return intake

    def snapshot(self) -> bytes:
        return snapshot_state(self.resume_state())

    @classmethod
    def restore(cls, blob: bytes, settings) -> "Intake":
        return cls.from_resume_state(restore_state(blob), settings)

    def _comparisons(self):
        return comparisons({name: spec.champion for name, spec in self.settings.models.items()
                            if spec.champion is not None})

    def _new_shadow(self) -> ShadowPairs:
        return ShadowPairs(*self._comparisons(), self._ttl_for, max_pending=self.settings.limits.max_pending)

    def spec_for(self, model: str) -> ModelSpec:
        return self.settings.spec_for(model)

    def _ttl_for(self, model: str | None) -> float:
        # The join asks once or twice per event: cached (settings are frozen), bounded like the
        # settings' own cache of unconfigured models' specs.
        ttl = self._ttls.get(model)
        if ttl is None:
            if len(self._ttls) >= 4 * self.settings.limits.max_models:
                self._ttls.clear()
            ttl = self._ttls[model] = (self.settings.spec_for(model).label_ttl if model
                                       else self.settings.defaults.label_ttl)
        return ttl

    # -- events ---------------------------------------------------------------------------------
    def take_invalid(self, invalid: Invalid) -> list[Observation]:
        model = invalid.model if invalid.model is not None else UNKNOWN_MODEL  # the bank maps refused ones
        return [FateObservation(model, ALL_SEGMENT, invalid.kind, "invalid")]

    def take_inference(self, ev: Inference, raw: bytes = b"") -> tuple[list[Observation], Invalid | None]:
        """Observations of one inference event, and the Invalid to dead-letter if it was refused."""
        model = ev.model
        out: list[Observation] = []
        ts = ev.timestamp
        spec = self.settings.spec_for(model)
        call = None
        if ev.llm is not None and spec.llm is not None:
            emb = ev.llm.embedding
            if emb is not None:
                # The config's embedding_dim, else the length of the model's first embedding.
                dim = spec.llm.embedding_dim or self.embedding_dims.setdefault(model, len(emb))
                if len(emb) != dim:
                    # Refused before it moves the event clock: a refused event (often stamped
                    # with its Kafka time) must not expire what waits in the join.
                    invalid = Invalid("inference", "bad_embedding",
                                      f"llm.embedding has {len(emb)} numbers, model {model}'s embeddings have {dim} "
                                      f"(models.{model}.llm.embedding_dim or its first embedding)", raw, model)
                    return self.take_invalid(invalid), invalid
            call = llm_observation(ev.llm, spec.llm)
        if self.idle:
            self.idle.discard("inference")
        if ts > self.inference_time:
            self.inference_time = ts
            self._advance(out)
        pid = ev.prediction_id
        if self.join.knows_prediction(pid):
            out.append(FateObservation(model, ALL_SEGMENT, "inference", "duplicate"))
            return out, None
        router = self.router
        features = ev.features
        segments = router.route(spec, features, ev.segment, ts)  # raw values: the bank's guard folds
        monitored = spec.features
        if len(features) > len(monitored):
            # Observations carry only the monitored features (they travel once per segment).
            features = {name: features[name] for name in monitored if name in features}
        prediction, score = ev.prediction, ev.score
        rid = ev.request_id
        if rid is not None and not self.shadow.compared(model):
            self.shadow.count(model, "uncompared")  # still graded by request labels; compared with nothing
        values = tuple([features.get(name) for name in monitored])  # what the slice accountant bins
        result = self.join.add_prediction(PendingPrediction(pid, model, segments, prediction, score, ts, values), rid)
        for seg in segments:
            if raw and seg == ALL_SEGMENT and model not in self.settings.models:
                # The admission bank may refuse the model: it dead-letters these bytes then.
                out.append(_new(InferenceObservation, (model, seg, pid, ts, prediction, score, features,
                                                       b64encode(raw).decode())))
            else:
                out.append(_new(InferenceObservation, (model, seg, pid, ts, prediction, score, features, None)))
            if call is not None:
                out.append(LLMCallObservation(model, seg, pid, ts, call))
        for joined in result.joined:
            self._outcomes(joined, out)
        if result.fates:
            self._fates(result.fates, out)
        self._tick()
        return out, None

    def take_label(self, ev: Label, raw: bytes = b"") -> tuple[list[Observation], Invalid | None]:
        out: list[Observation] = []
        if self.idle:
            self.idle.discard("label")
        if ev.timestamp > self.label_time:
            self.label_time = ev.timestamp
            self._advance(out)
        result = self.join.add_label(ev.prediction_id, ev.label, ev.timestamp, ev.model, ev.request_id)
        refused = result.refused
        if refused == "model_mismatch":
            invalid = Invalid("label", "model_mismatch",
                              f"label names model {ev.model!r}, its prediction another model", raw, ev.model)
            return out + self.take_invalid(invalid), invalid
        if refused == "request_mismatch":
            invalid = Invalid("label", "request_mismatch", f"label names request_id {ev.request_id!r}, its prediction "
                              f"{ev.prediction_id!r} another request (or none)", raw, ev.model)
            return out + self.take_invalid(invalid), invalid
        for joined in result.joined:
            self._outcomes(joined, out)
        if result.fates:
            self._fates(result.fates, out)
        self._tick()
        return out, None

    def expire(self, now: float | None = None) -> list[Observation]:
        """Let the join drop what its TTL passed; returns the fates as observations."""
        out: list[Observation] = []
        if now is None:
            fates = self.join.expire_streams(self.inference_time, self.label_time)
        else:
            fates = self.join.expire(now)
        # A pair's partner is graded by a label or by a late prediction: the slower clock.
        self.shadow.expire(min(self.inference_time, self.label_time) if now is None else now)
        self._fates(fates, out)
        return out

    def set_idle(self, kind: str, idle: bool = True) -> list[Observation]:
        """Say whether the `kind` stream ("inference" or "label") has nothing left unread.

        While it is idle its clock follows the other stream's, so what waits for it can expire
        (without this a model whose labels never come would keep every prediction until the
        `max_pending` cap); reading an event of that kind ends the idleness. Returns the fates.
        """
        out: list[Observation] = []
        if idle:
            self.idle.add(kind)
            self._advance(out)
        else:
            self.idle.discard(kind)
        return out

    # -- internals ------------------------------------------------------------------------------
    def _advance(self, out: list[Observation]) -> None:
        if self.idle:
            if "label" in self.idle and self.inference_time > self.label_time:
                self.label_time = self.inference_time
            if "inference" in self.idle and self.label_time > self.inference_time:
                self.inference_time = self.label_time
        inferences, labels = self.inference_time, self.label_time
        self.watermark = inferences if inferences > labels else labels
        fates = self.join.expire_streams(inferences, labels)
        if fates:
            self._fates(fates, out)
        self.shadow.expire(inferences if inferences < labels else labels)

    @staticmethod
    def _fates(fates: Iterable[Fate], out: list[Observation]) -> None:
        """The join's fates as observations (counted at `__all__`; a model-less label's under
        `__unknown__`)."""
        for model, kind, outcome in fates:
            out.append(FateObservation(model if model is not None else UNKNOWN_MODEL, ALL_SEGMENT, kind, outcome))

    def _tick(self) -> None:
        self._since_evict += 1
        if self._since_evict >= EVICT_EVERY:
            self._since_evict = 0

    def _outcomes(self, joined: Joined, out: list[Observation]) -> None:
        p = joined.prediction
        delay = joined.label_timestamp - p.timestamp
        delay = delay if delay > 0.0 else 0.0
        values = getattr(p, "values", None)  # None: held in a snapshot from before slices
        for seg in p.segments:
            out.append(_new(OutcomeObservation, (p.model, seg, p.prediction_id, joined.label_timestamp, p.prediction,
                                                 joined.label, delay, p.score, values,
                                                 p.segments if seg == ALL_SEGMENT else None)))
        rid = joined.request_id
        if rid is not None and self.shadow.compared(p.model):
            for pair in self.shadow.add(p.model, rid, is_correct(p.prediction, joined.label), p.segments,
                                        joined.label_timestamp):
                for seg in pair.segments:
                    out.append(PairObservation(pair.challenger, seg, pair.champion, pair.timestamp,
                                               pair.challenger_correct, pair.champion_correct))


def observe(bank: DetectorBank, o: Observation, refused: list[Invalid] | None = None) -> list[DriftRecord]:
    """Apply one observation to the bank (a record of the observations topic: decode it first
    with detectors.observations.from_wire); an inference of a model the bank refuses
    (`max_models`) is appended to `refused`."""
    t = type(o)
    models = bank.models
    if models.slots is not None and o.model not in models.known and (t is FateObservation or not models.admit(o.model)):
        return _refuse(bank, o, refused)
    segment = o.segment
    if segment != ALL_SEGMENT and t is not FateObservation and t is not FoldObservation:
        # The cardinality guard: this bank owns every value of the segment's (model, attribute).
        segment = bank.admit(o.model, segment, t is InferenceObservation)
    if t is InferenceObservation:
        return bank.observe_inference(o.model, segment, o.features or {}, o.prediction, o.score, o.timestamp,
                                      o.prediction_id)
    if t is OutcomeObservation:
        return bank.observe_outcome(o.model, segment, o.prediction, o.label, o.timestamp, o.prediction_id, o.delay,
                                    o.score, o.values, o.segments)
    if t is LLMCallObservation:
        return bank.observe_llm(o.model, segment, o.call, o.timestamp, o.prediction_id)
    if t is FateObservation:
        bank.observe_fate(o.model, o.event_kind, o.outcome)
    elif t is FoldObservation:
        bank.observe_fold(o.model, o.attribute)
    elif t is PairObservation:
        bank.observe_pair(o.model, segment, o.champion, o.timestamp, o.challenger_correct, o.champion_correct)
    else:
        raise TypeError(f"not an observation: {o!r}")
    return []


def _refuse(bank: DetectorBank, o: Observation, refused: list[Invalid] | None) -> list[DriftRecord]:
    """An observation of a model the bank does not monitor: each of its events counts once under
    `__unknown__`. Its inference (at `__all__`) is refused (`invalid`, dead-lettered by the caller
    with reason `too_many_models`); a label that joined it counts as `unmatched` (it matched no
    monitored prediction), as before stage 2 decided; its other segments, LLM calls and pairs
    count nothing. Fates count under `__unknown__`, but the expiry of a refused inference, which
    was counted when it was refused."""
    t = type(o)
    if t is FateObservation:
        if not (o.event_kind == "inference" and o.outcome == "expired"):
            bank.observe_fate(UNKNOWN_MODEL, o.event_kind, o.outcome)
    elif o.segment == ALL_SEGMENT:
        if t is InferenceObservation:
            bank.observe_fate(UNKNOWN_MODEL, "inference", "invalid")
            if refused is not None:
                limit = bank.models.slots + len(bank.models.configured)
                raw = b64decode(o.raw) if o.raw else b""
                refused.append(Invalid("inference", "too_many_models",
                                       f"model {o.model!r} would exceed limits.max_models={limit}", raw, o.model))
        elif t is OutcomeObservation:
            bank.observe_fate(UNKNOWN_MODEL, "label", "unmatched")
    return []


def feed(bank: DetectorBank, observations: Iterable[Observation], refused: list[Invalid] | None = None) -> list[DriftRecord]:
    """Apply observations to the bank; returns every detection they caused (and appends the
    inferences it refused to `refused`)."""
    found: list[DriftRecord] = []
    for o in observations:
        hits = observe(bank, o, refused)
        if hits:
            found += hits
    return found
