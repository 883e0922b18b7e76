"""The config contract: YAML (and a few environment variables) read and checked once, at start.

Everything downstream gets a frozen `Settings`; nothing else reads the config file or the
environment. A bad config is refused with a `ConfigError` that names the key, says what is
wrong and how to fix it:

>>> parse_settings({"models": {"churn": {"task": "clasification"}}}, env={})
Traceback (most recent call last):
...
driftline.stream.settings.ConfigError: config models.churn.task: must be one of classification, regression, llm (got 'clasification')

Environment:
- `DRIFTLINE_BOOTSTRAP` overrides `kafka.bootstrap`;
- `DRIFTLINE_KAFKA_<KEY>` sets librdkafka setting `<key>` in `kafka.config`, with `_` read as
  `.` (`DRIFTLINE_KAFKA_SASL_PASSWORD` -> `sasl.password`), so secrets need not sit in the file.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from types import MappingProxyType
from typing import Any, Mapping

from driftline.detectors.baseline import BaselineProfile, ProfileError
from driftline.detectors.segments import format_value
from driftline.detectors.spec import (ADWINParams, BaselineChecks, ModelSpec, OutcomeCosts, PageHinkleyParams,
                                     QualitySpec, default_spec)
from driftline.detectors.drift import DETECTOR_NAMES
from driftline.detectors.llm import LLMSpec, Price

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, None: 1.0}
# librdkafka settings that hold secrets: never printed (see Settings.describe()).
SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret")
ENV_BOOTSTRAP = "DRIFTLINE_BOOTSTRAP"
ENV_KAFKA_PREFIX = "DRIFTLINE_KAFKA_"


class ConfigError(ValueError):
    """A config the worker refuses to start with; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Topics:
    inferences: str = "driftline.inferences"
    labels: str = "driftline.labels"
    observations: str = "driftline.observations"
    dead_letters: str = "driftline.dead-letters"
    drift_events: str = "driftline.drift-events"
    checkpoints: str = "driftline.checkpoints"
    checkpoint_data: str = "driftline.checkpoint-data"
    baselines: str = "driftline.baselines"


def prefixed_topics(prefix: str) -> dict[str, str]:
    """`kafka.topics` with every topic under one prefix (`P.inferences`, `P.dead-letters`, ...),
    for runs that must share no state with others (demos, tests, benchmarks).

    >>> prefixed_topics("run1")["checkpoint_data"]
    'run1.checkpoint-data'
    """
    return {f.name: f"{prefix}.{f.name.replace('_', '-')}" for f in dataclasses.fields(Topics)}


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "localhost:9092"
    group_id: str = "driftline"
    # Partitions of the topics driftline creates. Inferences and labels must share the count
    # (the join is per partition); more partitions = more workers can share the load.
    partitions: int = 6
    topics: Topics = Topics()
    # librdkafka settings passed through untouched (security.protocol, sasl.*, ssl.*, ...).
    client_config: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what event content can make a worker hold; see docs/detectors.md."""

    max_models: int = 100
    max_pending: int = 1_000_000  # per join (per input partition): predictions waiting, held labels
    max_event_bytes: int = 256 * 1024
    max_depth: int = 32
    # A segment with no event for this long (event time) is evicted with its series.
    segment_idle: float = 7 * 86400.0
    # Events stamped further ahead of the worker's clock are dead-lettered (future_timestamp).
    max_future: float = 3600.0


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How a `driftline run` process batches, checkpoints and commits."""

    batch: int = 2000  # messages per poll: larger amortises per-call costs, smaller cuts latency
    # Seconds between checkpoints of changed partition state. With exactly_once each checkpoint
    # is a Kafka transaction that also commits the outputs and the input offsets, so this is
    # also how long outputs wait before readers see them. Each checkpoint costs time in
    # proportion to the state's size: a slow one stretches the interval, to 10x its duration
    # while the worker is busy, 2x once it waits for input, at most transaction_timeout / 3
    # (stream/checkpoint.py CheckpointCadence, docs/guarantees.md).
    checkpoint_interval: float = 1.0
    # Without exactly_once: seconds between offset commits (lag and replay accounting).
    commit_interval: float = 1.0
    # Kafka transactions: outputs, checkpoints and input offsets commit together (exact counts
    # after a crash). Off: at-least-once outputs with replay de-duplication (docs/guarantees.md).
    exactly_once: bool = True
    # The outage bound: a broker outage (no heartbeat answered, the broker's own shutdown and
    # start included) shorter than this keeps the worker's partitions; a dead worker's
    # partitions move to the others after this long. 45 s: Kafka's own default (KIP-735).
    session_timeout: float = 45.0
    # A transaction open longer than this is aborted by the broker (a killed worker's), and
    # readers of the topics it wrote wait at most this long behind it.
    transaction_timeout: float = 30.0
    # Events whose message key is not their prediction_id land on a partition where their
    # prediction or label is not: `rekey` publishes them again keyed by prediction_id (they
    # join where they belong), `dead_letter` refuses them with reason wrong_key.
    miskeyed: str = "rekey"
    # Event-time alignment (docs/guarantees.md, "Event time"). The two topics of an input
    # partition are read within `align_window` of event time of each other (the one ahead is
    # paused): a bound on what the join holds. Input partitions stay within `max_skew` of the
    # fleet's slowest one: a bound on what stage 2 holds. Small values churn pause/resume (each
    # resume re-fetches), large ones hold more; both hold in event time, so a fleet at R events/s
    # holds about R x max_skew observations.
    align_window: float = 300.0
    max_skew: float = 900.0
    # A topic caught up for this long is idle: its progress stops holding back the watermark
    # (what idleness adds to publish -> counted when some partitions are silent).
    idle_timeout: float = 0.2
    # Stage-2 buffer bounds per observations partition; past them the oldest are released early.
    max_held: int = 200_000
    max_held_bytes: int = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class OTLPSettings:
    """`otlp:`: LLM calls read from OpenTelemetry spans (stream/otlp.py, docs/events.md)."""

    enabled: bool = False
    topic: str = "otlp_spans"
    encoding: str = "otlp_proto"  # or otlp_json: the Collector Kafka exporter's `encoding`
    model: str | None = None  # one model name for every call; else read from model_attribute
    model_attribute: str = "service.name"  # span attribute, else resource attribute
    # segment attribute name (as in models.<m>.segments) -> span or resource attribute
    segments: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    embedding_attribute: str = "driftline.embedding"  # a double array attribute of the span
    group_id: str | None = None  # default: kafka.group_id + ".otlp"


@dataclasses.dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = KafkaSettings()
    models: Mapping[str, ModelSpec] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    defaults: ModelSpec = ModelSpec(name="__default__", false_alarm_budget=1e7)
    limits: Limits = Limits()
    worker: WorkerSettings = WorkerSettings()
    listen: str | None = None
    source: str = "<defaults>"
    otlp: OTLPSettings = OTLPSettings()
    # Reference profiles named by models' `baseline:` files (model -> profile), read by
    # load_settings(); profiles published to the baselines topic are the worker's business.
    baselines: Mapping[str, BaselineProfile] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    # Models seen in events but not configured get `defaults`; cached so that the hot path does
    # not build a spec per event (at most 4 x limits.max_models: stage 1 sees every name).
    _unconfigured: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def spec_for(self, model: str) -> ModelSpec:
        spec = self.models.get(model)
        if spec is not None:
            return spec
        cache = self._unconfigured
        spec = cache.get(model)
        if spec is None:
            if len(cache) >= 4 * self.limits.max_models:
                cache.clear()  # a flood of model names (refused at stage 2) must not grow it
            spec = cache[model] = default_spec(model, self.defaults)
        return spec

    def describe(self) -> str:
        """One line for the start-up log, with secrets masked."""
        cfg = {k: ("***" if k in SECRET_KEYS else v) for k, v in self.kafka.client_config.items()}
        files = "".join(f" {m}={p.key}@{p.digest}" for m, p in sorted(self.baselines.items()))
        return (f"config {self.source}: bootstrap={self.kafka.bootstrap} group={self.kafka.group_id} "
                f"models={sorted(self.models)} kafka.config={cfg}" + (f" baselines:{files}" if files else ""))


# ------------------------------------------------------------------------------------- parsing
# Allowed ranges of durations, in seconds: outside them a setting cannot work (an infinite
# checkpoint interval never checkpoints, a 1 ms idle bound evicts every segment at once).
DURATION_RANGES = {
    "label_ttl": (1.0, 365 * 86400.0),
    "drift_hold": (1.0, 365 * 86400.0),
    "segment_idle": (60.0, 365 * 86400.0),
    "checkpoint_interval": (0.1, 3600.0),  # at most stream.checkpoint.MAX_CHECKPOINT_AGE
    "commit_interval": (0.01, 3600.0),
    "session_timeout": (6.0, 1800.0),  # the broker's default group.{min,max}.session.timeout.ms
    "transaction_timeout": (1.0, 900.0),  # the broker's default transaction.max.timeout.ms
}
DEFAULT_DURATION_RANGE = (0.001, 365 * 86400.0)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def parse_duration(value: Any, key: str) -> float:
    """Seconds from `90`, `"90s"`, `"10m"`, `"3d"`, ..., within the key's allowed range.

    >>> parse_duration(float("inf"), "worker.checkpoint_interval")
    Traceback (most recent call last):
    ...
    driftline.stream.settings.ConfigError: config worker.checkpoint_interval: must be from 100ms to 1h (got inf)
    """
    if isinstance(value, bool):
        raise ConfigError(f"config {key}: must be a duration like 30s, 10m, 3d (got {value!r})")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = DURATION.match(str(value))
        if not m:
            raise ConfigError(f"config {key}: must be a duration like 30s, 10m, 3d, or a number of seconds (got {value!r})")
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    if not seconds > 0:
        raise ConfigError(f"config {key}: must be more than zero (got {value!r})")
    low, high = DURATION_RANGES.get(key.rsplit(".", 1)[-1], DEFAULT_DURATION_RANGE)
    if not low <= seconds <= high:  # also refuses .inf and .nan
        raise ConfigError(f"config {key}: must be from {_span(low)} to {_span(high)} (got {value!r})")
    return seconds


class _Reader:
    """Walks one mapping of the YAML, checking each key once and refusing unknown ones."""

    def __init__(self, data: Any, path: str):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"config {path or '<top level>'}: must be a mapping of keys to values (got {type(data).__name__})")
        self.data, self.path, self.used = data, path, set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def string(self, name: str, default: str | None) -> str | None:
        v = self.raw(name, default)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"config {self.key(name)}: must be a non-empty string (got {v!r})")
        return v

    def integer(self, name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        v = self.raw(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
            span = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"config {self.key(name)}: must be an integer {span} (got {v!r})")
        return v

    def number(self, name: str, default: float, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        v = self.raw(name, default)
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or v != v
        if not bad and low is not None:
            bad = v <= low if low_open else v < low
        if not bad and high is not None:
            bad = v > high
        if bad:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else f"<= {high}"
            span = " and ".join(s for s in (lo, hi) if s)
            raise ConfigError(f"config {self.key(name)}: must be a number{' ' + span if span else ''} (got {v!r})")
        return float(v)

    def boolean(self, name: str, default: bool) -> bool:
        v = self.raw(name, default)
        if not isinstance(v, bool):
            raise ConfigError(f"config {self.key(name)}: must be true or false (got {v!r})")
        return v

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.raw(name, default)
        if v not in choices:
            raise ConfigError(f"config {self.key(name)}: must be one of {', '.join(choices)} (got {v!r})")
        return v

    def duration(self, name: str, default: float) -> float:
        return parse_duration(self.raw(name, default), self.key(name))

    def section(self, name: str) -> "_Reader":
        return _Reader(self.raw(name), self.key(name))

    def done(self, known: tuple[str, ...] = ()) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        for k in self.data:
            if k in self.used:
                continue
            choices = list(known) or sorted(self.used)
            hint = difflib.get_close_matches(str(k), choices, n=1)
            fix = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(choices)}"
            raise ConfigError(f"config {self.key(str(k))}: unknown key{fix}")


def _adwin(r: _Reader, base: ADWINParams) -> ADWINParams:
    p = ADWINParams(
        delta=r.number("delta", base.delta, 0.0, 1.0, low_open=True),
        clock=r.integer("clock", base.clock),
        max_buckets=r.integer("max_buckets", base.max_buckets),
        min_window_length=r.integer("min_window_length", base.min_window_length),
        grace_period=r.integer("grace_period", base.grace_period),
    )
    r.done()
    return p


def _page_hinkley(r: _Reader, base: PageHinkleyParams) -> PageHinkleyParams:
    p = PageHinkleyParams(
        min_instances=r.integer("min_instances", base.min_instances),
        delta=r.number("delta", base.delta, 0.0),
        threshold=r.number("threshold", base.threshold, 0.0, low_open=True),
        alpha=r.number("alpha", base.alpha, 0.0, 1.0, low_open=True),
        mode=r.choice("mode", base.mode, ("up", "down", "both")),
    )
    r.done()
    return p


def _baseline_checks(r: _Reader, base: BaselineChecks) -> BaselineChecks:
    env = r.string("environment", base.environment)
    if not MODEL_NAME.fullmatch(env):
        raise ConfigError(f"config {r.key('environment')}: must be 1-64 of A-Z a-z 0-9 _ . -, e.g. training (got {env!r})")
    version = r.string("model_version", base.model_version)
    if version is not None and not MODEL_NAME.fullmatch(version):
        raise ConfigError(f"config {r.key('model_version')}: must be 1-64 of A-Z a-z 0-9 _ . - (got {version!r})")
    window = r.integer("window", base.window, 10, 1_000_000)
    checks = BaselineChecks(
        environment=env,
        model_version=version,
        window=window,
        min_values=r.integer("min_values", min(base.min_values, window), 1, window),
        psi=r.number("psi", base.psi, 0.0, low_open=True),
        js_distance=r.number("js_distance", base.js_distance, 0.0, 1.0, low_open=True),
        ks_statistic=r.number("ks_statistic", base.ks_statistic, 0.0, 1.0, low_open=True),
        range_tolerance=r.number("range_tolerance", base.range_tolerance, 0.0),
        missing_increase=r.number("missing_increase", base.missing_increase, 0.0, 1.0),
        invalid_ratio=r.number("invalid_ratio", base.invalid_ratio, 0.0, 1.0, low_open=True),
    )
    r.done()
    return checks


def _model(r: _Reader, name: str, base: ModelSpec) -> ModelSpec:
    task = r.choice("task", base.task, ("classification", "regression", "llm"))
    segs = r.raw("segments", list(base.segments))
    if not isinstance(segs, list) or not all(isinstance(s, str) and s for s in segs):
        raise ConfigError(f"config {r.key('segments')}: must be a list of attribute names, e.g. [region, plan] (got {segs!r})")
    if len(set(segs)) != len(segs):
        raise ConfigError(f"config {r.key('segments')}: names an attribute twice ({segs!r})")
    feats = r.raw("features", dict(base.features))
    if feats is None:
        feats = {}
    if not isinstance(feats, Mapping):
        raise ConfigError(f"config {r.key('features')}: must map feature names to numeric or categorical (got {feats!r})")
    for fname, kind in feats.items():
        if kind not in ("numeric", "categorical"):
            raise ConfigError(f"config {r.key('features')}.{fname}: must be numeric or categorical (got {kind!r})")
    dets = r.raw("detectors", list(base.detectors))
    if not isinstance(dets, list) or not dets or any(d not in DETECTOR_NAMES for d in dets):
        raise ConfigError(f"config {r.key('detectors')}: must be a non-empty list of {', '.join(DETECTOR_NAMES)} (got {dets!r})")
    objective = r.raw("accuracy_objective", base.accuracy_objective)
    if objective is not None and (isinstance(objective, bool) or not isinstance(objective, (int, float))
                                  or not 0 < objective <= 1):
        raise ConfigError(f"config {r.key('accuracy_objective')}: must be a number in (0, 1], e.g. 0.9 (got {objective!r})")
    baseline = r.string("baseline", base.baseline)
    budget, warmup = _false_alarm_budget(r, base)
    spec = ModelSpec(
        name=name,
        task=task,
        segments=tuple(segs),
        max_segments=r.integer("max_segments", base.max_segments, 1, 10_000),
        features=MappingProxyType(dict(feats)),
        accuracy_window=r.integer("accuracy_window", base.accuracy_window, 1, 10_000_000),
        label_ttl=r.duration("label_ttl", base.label_ttl),
        drift_hold=r.duration("drift_hold", base.drift_hold),
        baseline=baseline,
        detectors=tuple(dets),
        adwin=_adwin(r.section("adwin"), base.adwin) if r.has("adwin") else base.adwin,
        page_hinkley=_page_hinkley(r.section("page_hinkley"), base.page_hinkley) if r.has("page_hinkley") else base.page_hinkley,
        categorical_reference=r.integer("categorical_reference", base.categorical_reference),
        accuracy_objective=None if objective is None else float(objective),
        baseline_checks=_baseline_checks(r.section("baseline_checks"), base.baseline_checks)
        if r.has("baseline_checks") else base.baseline_checks,
        false_alarm_budget=budget,
        warmup=warmup,
        quality=_quality(r, base.quality, task),
        champion=r.string("champion", base.champion),
        challenger_error_rate=r.number("challenger_error_rate", base.challenger_error_rate, 0.0, 0.5, low_open=True),
        llm=_llm(r, task, base.llm),
    )
    r.used.update(("adwin", "page_hinkley", "baseline_checks"))
    r.done(MODEL_KEYS)
    return spec


QUALITY_KEYS = ("classes", "max_classes", "positive_class", "score_of", "outcome_costs", "champion",
                "challenger_error_rate")
MODEL_KEYS = ("task", "segments", "max_segments", "features", "accuracy_window", "label_ttl", "drift_hold",
              "baseline", "detectors", "adwin", "page_hinkley", "categorical_reference", "accuracy_objective",
              "baseline_checks", "false_alarm_budget", "llm") + QUALITY_KEYS


def _check_champions(models: Mapping[str, ModelSpec]) -> None:
    """`champion:` names another configured classification model (docs/quality-metrics.md)."""
    for name, spec in models.items():
        c = spec.champion
        if c is None:
            continue
        key = f"config models.{name}.champion"
        if c == name:
            raise ConfigError(f"{key}: a model cannot be its own champion")
        if c not in models:
            hint = difflib.get_close_matches(c, list(models), n=1)
            raise ConfigError(f"{key}: {c!r} is not a configured model" + (f"; did you mean {hint[0]!r}?" if hint else
                              "; configure the champion under models too"))
        if models[c].task != "classification":
            raise ConfigError(f"{key}: {c!r} is a {models[c].task} model; champion vs challenger compares accuracy")


def _class(r: _Reader, key: str, v: Any) -> str:
    if isinstance(v, (str, int, float, bool)) and not (isinstance(v, str) and not v):
        return format_value(v)
    raise ConfigError(f"config {r.key(key)}: a class is a string, number or bool, as events send it (got {v!r})")


def _quality(r: _Reader, base: QualitySpec, task: str) -> QualitySpec:
    """Classes, positive class, score meaning and outcome costs (docs/config.md, classification)."""
    if task != "classification":
        for k in QUALITY_KEYS:
            if r.has(k):
                raise ConfigError(f"config {r.key(k)}: applies to classification models only (task is {task})")
        return base
    raw = r.raw("classes", list(base.classes))
    if not isinstance(raw, list) or len(raw) == 1:
        raise ConfigError(f"config {r.key('classes')}: must be a list of two or more classes, e.g. [0, 1] (got {raw!r})")
    classes = tuple(_class(r, "classes", c) for c in raw)
    if len(set(classes)) != len(classes):
        raise ConfigError(f"config {r.key('classes')}: names a class twice ({raw!r})")
    max_classes = r.integer("max_classes", base.max_classes, 2, 1000)
    positive = r.raw("positive_class", base.positive_class)
    positive = None if positive is None else _class(r, "positive_class", positive)
    if positive is not None and classes and positive not in classes:
        raise ConfigError(f"config {r.key('positive_class')}: {positive!r} is not one of classes {list(classes)}")
    score_of = r.choice("score_of", base.score_of, ("positive_class", "predicted_class"))
    if score_of == "predicted_class" and positive is not None and len(classes) != 2:
        raise ConfigError(f"config {r.key('score_of')}: predicted_class scores give P({positive}) only for a binary "
                          f"model: list its two classes under classes, e.g. classes: [0, 1]")
    costs = _outcome_costs(r.section("outcome_costs")) if r.has("outcome_costs") else base.costs
    return QualitySpec(classes=classes, max_classes=max_classes, positive_class=positive, score_of=score_of,
                       costs=costs)


def _outcome_costs(r: _Reader) -> OutcomeCosts:
    """`outcome_costs: {default_error, default_correct, pairs: [{predicted, actual, cost}], budget: {amount, per}}`."""
    pairs_raw = r.raw("pairs", [])
    if not isinstance(pairs_raw, list):
        raise ConfigError(f"config {r.key('pairs')}: must be a list of {{predicted, actual, cost}} (got {pairs_raw!r})")
    pairs: dict[tuple[str, str], float] = {}
    for i, item in enumerate(pairs_raw):
        pr = _Reader(item, f"{r.key('pairs')}[{i}]")
        for k in ("predicted", "actual", "cost"):
            if not pr.has(k):
                raise ConfigError(f"config {pr.key(k)}: is required, e.g. {{predicted: 1, actual: 0, cost: 25}}")
        key = (_class(pr, "predicted", pr.raw("predicted")), _class(pr, "actual", pr.raw("actual")))
        if key in pairs:
            raise ConfigError(f"config {pr.key('predicted')}: the pair {key} is listed twice")
        pairs[key] = pr.number("cost", 0.0)
        pr.done()
    budget = None
    if r.has("budget"):
        br = r.section("budget")
        amount = br.number("amount", 0.0, 0.0, low_open=True)
        budget = amount / br.duration("per", 3600.0)
        br.done()
    costs = OutcomeCosts(pairs=MappingProxyType(pairs), default_error=r.number("default_error", 0.0),
                         default_correct=r.number("default_correct", 0.0), budget_per_second=budget)
    r.done()
    return costs
DEFAULT_FALSE_ALARM_BUDGET = 1e7  # events of a model between false detections (docs/quality.md)


def _false_alarm_budget(r: _Reader, base: ModelSpec) -> tuple[float | None, int]:
    """`false_alarm_budget: {events_between_false_alarms: 1e7, warmup: 500}`, or `off`."""
    key = r.key("false_alarm_budget")
    if not r.has("false_alarm_budget"):
        budget, warmup = base.false_alarm_budget, base.warmup
    else:
        raw = r.raw("false_alarm_budget")
        if raw in (False, None, "off"):  # YAML reads a bare `off` as false
            budget, warmup = None, base.warmup
        else:
            sec = _Reader(raw, key)
            budget = sec.number("events_between_false_alarms", base.false_alarm_budget or DEFAULT_FALSE_ALARM_BUDGET,
                                100.0)
            warmup = sec.integer("warmup", base.warmup, 10, 100_000)
            sec.done()
    hand_set = [k for k in ("adwin", "page_hinkley") if r.has(k)]
    if budget is not None and hand_set:
        raise ConfigError(f"config {r.key(hand_set[0])}: hand-set detector parameters and the false-alarm budget "
                          f"exclude each other (the budget sets the thresholds); remove them, or set "
                          f"{key}: off to use them as given")
    return budget, warmup


def _llm(r: _Reader, task: str, base: LLMSpec | None) -> LLMSpec | None:
    """The `llm:` block of a `task: llm` model: price table, cost budget, embedding settings."""
    if task != "llm":
        if r.has("llm"):
            raise ConfigError(f"config {r.key('llm')}: only a model with task: llm has an llm block")
        return None
    base = base or LLMSpec()
    sec = r.section("llm")
    raw_prices = sec.raw("prices", dict(base.prices)) or {}
    if not isinstance(raw_prices, Mapping):
        raise ConfigError(f"config {sec.key('prices')}: must map request models to {{input: X, output: Y}} "
                          f"(currency per million tokens) (got {raw_prices!r})")
    prices = {}
    for rm, entry in raw_prices.items():
        if isinstance(entry, Price):
            prices[rm] = entry
            continue
        pr = _Reader(entry, f"{sec.key('prices')}.{rm}")
        prices[str(rm)] = Price(pr.number("input", None, 0.0), pr.number("output", None, 0.0))
        pr.done(("input", "output"))
    budget = sec.raw("cost_budget_per_hour", base.cost_budget_per_hour)
    if budget is not None:
        budget = sec.number("cost_budget_per_hour", None, 0.0, low_open=True)
    dim = sec.raw("embedding_dim", base.embedding_dim)
    if dim is not None:
        dim = sec.integer("embedding_dim", None, 2, 8192)
    spec = LLMSpec(
        prices=MappingProxyType(prices),
        cost_budget_per_hour=budget,
        embedding_dim=dim,
        embedding_reference=sec.integer("embedding_reference", base.embedding_reference, 50, 1_000_000),
        embedding_window=sec.integer("embedding_window", base.embedding_window, 10, 1_000_000),
        max_evaluations=sec.integer("max_evaluations", base.max_evaluations, 0, 64),
        truncation_share=sec.number("truncation_share", base.truncation_share, 0.0, 1.0, low_open=True),
    )
    sec.done(("prices", "cost_budget_per_hour", "embedding_dim", "embedding_reference", "embedding_window",
              "max_evaluations", "truncation_share"))
    return spec


def _otlp(r: _Reader) -> OTLPSettings:
    base = OTLPSettings()
    enabled = r.raw("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"config {r.key('enabled')}: must be true or false (got {enabled!r})")
    model = r.string("model", None)
    if model is not None and not MODEL_NAME.fullmatch(model):
        raise ConfigError(f"config {r.key('model')}: a model name is 1-64 of A-Z a-z 0-9 _ . - (got {model!r})")
    segs = r.raw("segments", {}) or {}
    if not isinstance(segs, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in segs.items()):
        raise ConfigError(f"config {r.key('segments')}: must map segment attribute names to span or resource "
                          f"attributes, e.g. {{route: http.route}} (got {segs!r})")
    otlp = OTLPSettings(
        enabled=enabled,
        topic=r.string("topic", base.topic),
        encoding=r.choice("encoding", base.encoding, ("otlp_proto", "otlp_json")),
        model=model,
        model_attribute=r.string("model_attribute", base.model_attribute),
        segments=MappingProxyType(dict(segs)),
        embedding_attribute=r.string("embedding_attribute", base.embedding_attribute),
        group_id=r.string("group_id", None),
    )
    r.done(("enabled", "topic", "encoding", "model", "model_attribute", "segments", "embedding_attribute", "group_id"))
    return otlp


def _kafka(r: _Reader, env: Mapping[str, str]) -> KafkaSettings:
    base = KafkaSettings()
    bootstrap = env.get(ENV_BOOTSTRAP) or r.string("bootstrap", base.bootstrap)
    r.used.add("bootstrap")
    t = r.section("topics")
    topics = Topics(**{f.name: t.string(f.name, getattr(base.topics, f.name)) for f in dataclasses.fields(Topics)})
    t.done()
    raw_cfg = r.raw("config", {}) or {}
    if not isinstance(raw_cfg, Mapping):
        raise ConfigError(f"config {r.key('config')}: must map librdkafka settings to values, "
                          f"e.g. {{security.protocol: SASL_SSL}} (got {type(raw_cfg).__name__})")
    client = {str(k): str(v) for k, v in raw_cfg.items()}
    for k, v in env.items():
        if k.startswith(ENV_KAFKA_PREFIX) and len(k) > len(ENV_KAFKA_PREFIX):
            client[k[len(ENV_KAFKA_PREFIX):].lower().replace("_", ".")] = v
    if "bootstrap.servers" in client:
        raise ConfigError("config kafka.config.bootstrap.servers: set kafka.bootstrap (or DRIFTLINE_BOOTSTRAP) instead")
    ks = KafkaSettings(
        bootstrap=bootstrap,
        group_id=r.string("group_id", base.group_id),
        partitions=r.integer("partitions", base.partitions, 1, 10_000),
        topics=topics,
        client_config=MappingProxyType(client),
    )
    r.done(("bootstrap", "group_id", "partitions", "topics", "config"))
    return ks


def _limits(r: _Reader) -> Limits:
    base = Limits()
    lim = Limits(
        max_models=r.integer("max_models", base.max_models),
        max_pending=r.integer("max_pending", base.max_pending, 10),
        max_event_bytes=r.integer("max_event_bytes", base.max_event_bytes, 256, 16 * 1024 * 1024),
        max_depth=r.integer("max_depth", base.max_depth, 2, 1000),
        segment_idle=r.duration("segment_idle", base.segment_idle),
        max_future=r.duration("max_future", base.max_future),
    )
    r.done()
    return lim


def _worker(r: _Reader) -> WorkerSettings:
    base = WorkerSettings()
    ws = WorkerSettings(
        batch=r.integer("batch", base.batch, 1, 100_000),
        checkpoint_interval=r.duration("checkpoint_interval", base.checkpoint_interval),
        commit_interval=r.duration("commit_interval", base.commit_interval),
        align_window=r.duration("align_window", base.align_window),
        max_skew=r.duration("max_skew", base.max_skew),
        idle_timeout=r.duration("idle_timeout", base.idle_timeout),
        max_held=r.integer("max_held", base.max_held, 1000, 100_000_000),
        max_held_bytes=r.integer("max_held_bytes", base.max_held_bytes, 1 << 20, 1 << 40),
        exactly_once=r.boolean("exactly_once", base.exactly_once),
        session_timeout=r.duration("session_timeout", base.session_timeout),
        transaction_timeout=r.duration("transaction_timeout", base.transaction_timeout),
        miskeyed=r.choice("miskeyed", base.miskeyed, ("rekey", "dead_letter")),
    )
    if ws.exactly_once and ws.transaction_timeout < 3 * ws.checkpoint_interval:
        raise ConfigError(f"config worker.transaction_timeout: must be at least 3x worker.checkpoint_interval "
                          f"({_span(3 * ws.checkpoint_interval)}), since a transaction stays open for one interval "
                          f"(got {_span(ws.transaction_timeout)})")
    r.done()
    return ws


def parse_settings(data: Any, env: Mapping[str, str] | None = None, source: str = "<dict>") -> Settings:
    """Settings from an already-parsed YAML document."""
    env = os.environ if env is None else env
    top = _Reader(data, "")
    kafka = _kafka(top.section("kafka"), env)
    default_spec = ModelSpec(name="__default__", false_alarm_budget=DEFAULT_FALSE_ALARM_BUDGET)
    defaults = _model(top.section("defaults"), "__default__", default_spec) if top.has("defaults") else default_spec
    if defaults.baseline is not None:
        raise ConfigError("config defaults.baseline: a profile belongs to one model: set it under models.<name>.baseline "
                          "(unconfigured models can use profiles published with `driftline baseline publish`)")
    if defaults.champion is not None:
        raise ConfigError("config defaults.champion: a comparison belongs to one model: set it under "
                          "models.<challenger>.champion")
    top.used.add("defaults")
    models_raw = top.raw("models", {}) or {}
    if not isinstance(models_raw, Mapping):
        raise ConfigError("config models: must map model names to their settings")
    models = {}
    for name, block in models_raw.items():
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"config models.{name}: a model name is 1-64 of A-Z a-z 0-9 _ . - (got {name!r})")
        models[name] = _model(_Reader(block, f"models.{name}"), name, defaults)
    _check_champions(models)
    limits = _limits(top.section("limits"))
    worker = _worker(top.section("worker"))
    listen = top.string("listen", None)
    otlp = _otlp(top.section("otlp")) if top.has("otlp") else OTLPSettings()
    top.used.add("otlp")
    top.done(("kafka", "models", "defaults", "limits", "worker", "listen", "otlp"))
    if len(models) > limits.max_models:
        raise ConfigError(f"config limits.max_models: {limits.max_models} is fewer than the {len(models)} configured models")
    return Settings(kafka=kafka, models=MappingProxyType(models), defaults=defaults, limits=limits,
                    worker=worker, listen=listen, source=source, otlp=otlp)


def load_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Settings:
    import yaml

    try:
        with open(path, "rb") as f:
            data = yaml.load(f, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from exc
    if data is None:
        # An empty file is a mistake (a wrong path, a truncated write), not a wish for every
        # default: those would run against localhost:9092 in group `driftline`.
        raise ConfigError(f"config {path}: the file is empty; write at least `kafka: {{bootstrap: HOST:PORT}}` "
                          f"(see docs/config.md)")
    settings = parse_settings(data, env, source=str(path))
    models, profiles = dict(settings.models), {}
    for name, spec in settings.models.items():
        if spec.baseline is None:
            continue
        # Relative to the config file, or else to the working directory.
        found = os.path.join(os.path.dirname(os.path.abspath(path)), spec.baseline)
        if not os.path.exists(found):
            found = os.path.abspath(spec.baseline)
        if not os.path.exists(found):
            raise ConfigError(f"config models.{name}.baseline: file {spec.baseline!r} not found "
                              f"(build it with `driftline baseline build`)")
        profiles[name] = load_profile(found, spec, f"models.{name}.baseline")
        models[name] = dataclasses.replace(spec, baseline=found)
    if not profiles:
        return settings
    return dataclasses.replace(settings, models=MappingProxyType(models), baselines=MappingProxyType(profiles),
                               _unconfigured={})


def _unique_key_loader():
    """A YAML SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: construct_mapping below reports it
                if first is not key_node:
                    raise ConfigError(f"config {key}: given twice (lines {first.start_mark.line + 1} and "
                                      f"{key_node.start_mark.line + 1}); keep one")
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_profile(path: str | os.PathLike, spec: ModelSpec, key: str) -> BaselineProfile:
    """A model's reference profile file, checked against the model's config; errors name `key`."""
    try:
        with open(path, "rb") as f:
            profile = BaselineProfile.from_json(f.read())
    except OSError as exc:
        raise ConfigError(f"config {key}: cannot read {str(path)!r}: {exc.strerror}") from exc
    except ProfileError as exc:
        raise ConfigError(f"config {key}: {str(path)!r} is not a driftline baseline profile: {exc}") from exc
    if profile.model != spec.name:
        raise ConfigError(f"config {key}: {str(path)!r} profiles model {profile.model!r}, not {spec.name!r}")
    if profile.task != spec.task:
        raise ConfigError(f"config {key}: {str(path)!r} was built for a {profile.task} model, the config says "
                          f"{spec.task}: rebuild it with `driftline baseline build`")
    overall = profile.overall.features
    for fname, kind in spec.features.items():
        dist = overall.get(fname)
        if dist is None:
            raise ConfigError(f"config {key}: {str(path)!r} has no feature {fname!r}: rebuild it with "
                              f"`driftline baseline build` (it profiles the config's features)")
        if dist.kind != kind:
            raise ConfigError(f"config {key}: feature {fname!r} is {dist.kind} in {str(path)!r} but {kind} in "
                              f"models.{spec.name}.features: rebuild the profile or fix the config")
    return profile
