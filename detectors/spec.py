"""What the core needs to know about a model: plain frozen values, no parsing.

`stream.settings` turns YAML into these; the core never reads files or the environment.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Literal, Mapping

from driftline.detectors.llm import LLMSpec

Task = Literal["classification", "regression", "llm"]
FeatureKind = Literal["numeric", "categorical"]

ALL_SEGMENT = "__all__"
OTHER_VALUE = "__other__"


@dataclasses.dataclass(frozen=True)
class ADWINParams:
    """River's `drift.ADWIN` parameters; the defaults are River's."""

    delta: float = 0.002
    clock: int = 32
    max_buckets: int = 5
    min_window_length: int = 5
    grace_period: int = 10


@dataclasses.dataclass(frozen=True)
class PageHinkleyParams:
    """River's `drift.PageHinkley` parameters; the defaults are River's."""

    min_instances: int = 30
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    mode: Literal["up", "down", "both"] = "both"


@dataclasses.dataclass(frozen=True)
class BaselineChecks:
    """How live traffic is compared with the model's reference profile (docs/baselines.md).

    The three drift thresholds are set to the same size of change: a normal feature whose mean
    moves by half a standard deviation gives PSI ~0.25, JS distance ~0.2 and KS ~0.2.
    """

    environment: str = "training"  # which published profile (training, validation, ...)
    model_version: str | None = None  # pin a published profile's model version; None: the newest
    window: int = 1000  # values per (segment, feature) in the live window
    # Values in the window before its statistics are exported: with 20 bins and no drift, 99% of
    # 500-value windows stay below PSI 0.08, JS 0.12, KS 0.07 (at 200 values: 0.21, 0.19, 0.10).
    min_values: int = 500
    psi: float = 0.25  # the usual "major shift" mark for the population stability index
    js_distance: float = 0.2
    ks_statistic: float = 0.2
    range_tolerance: float = 0.1  # share of the baseline's span added beyond its min and max
    missing_increase: float = 0.05  # live missing ratio above the baseline's by more than this
    invalid_ratio: float = 0.01  # share of a model's events with an invalid value of one feature


@dataclasses.dataclass(frozen=True)
class OutcomeCosts:
    """Money per labelled outcome: `pairs[(predicted, actual)]`, else `default_error` for a wrong
    prediction and `default_correct` for a right one. A negative entry is a value (a gain): it is
    summed apart from costs, so both totals are counters that only grow."""

    pairs: Mapping[tuple[str, str], float] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    default_error: float = 0.0
    default_correct: float = 0.0
    budget_per_second: float | None = None  # from `outcome_costs.budget` (amount per period)

    def of(self, predicted: str, actual: str) -> float:
        c = self.pairs.get((predicted, actual))
        if c is not None:
            return c
        return self.default_correct if predicted == actual else self.default_error


@dataclasses.dataclass(frozen=True)
class QualitySpec:
    """A classification model's quality settings (keys of `models.<name>` in the config)."""

    classes: tuple[str, ...] = ()  # fixed class list (by label value); empty: first seen
    max_classes: int = 20
    positive_class: str | None = None  # None: no precision/recall/F1/ROC AUC gauges
    # What an event's `score` is: the probability of the positive class, or the model's
    # confidence in the class it predicted (then a binary model's P(positive) is derived).
    score_of: Literal["positive_class", "predicted_class"] = "positive_class"
    costs: OutcomeCosts | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model's monitoring settings (the `models.<name>` block of the config)."""

    name: str
    task: Task = "classification"
    segments: tuple[str, ...] = ()
    max_segments: int = 50
    features: Mapping[str, FeatureKind] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    accuracy_window: int = 1000
    label_ttl: float = 3 * 86400.0  # seconds
    drift_hold: float = 600.0  # seconds
    baseline: str | None = None
    detectors: tuple[str, ...] = ("adwin", "page_hinkley")
    adwin: ADWINParams = ADWINParams()
    page_hinkley: PageHinkleyParams = PageHinkleyParams()
    # Events a categorical feature's reference frequencies are learnt from before its
    # surprisal stream is watched (see detectors/categorical.py).
    categorical_reference: int = 500
    accuracy_objective: float | None = None
    baseline_checks: BaselineChecks = BaselineChecks()
    # Expected events of this model between two false detections on stationary data; the
    # detectors' thresholds are set from it (detectors/calibration.py), and `adwin` and
    # `page_hinkley` above are then unused. None: River's parameters as given.
    false_alarm_budget: float | None = None
    warmup: int = 500  # values a numeric signal is standardised from before it is watched
    # Classes, positive class, score meaning and outcome costs (detectors/classification.py).
    quality: QualitySpec = QualitySpec()
    # Champion vs challenger (detectors/challenger.py): the model this one is compared with on
    # the requests both scored, and the error rate of the comparison's decision.
    champion: str | None = None
    challenger_error_rate: float = 0.05
    llm: LLMSpec | None = None  # `task: llm` only (detectors/llm.py)

    def numeric_features(self) -> tuple[str, ...]:
        return tuple(n for n, k in self.features.items() if k == "numeric")

    def categorical_features(self) -> tuple[str, ...]:
        return tuple(n for n, k in self.features.items() if k == "categorical")


def default_spec(name: str, template: ModelSpec | None = None) -> ModelSpec:
    """The spec of a model that sends events but has no config entry."""
    if template is None:
        return ModelSpec(name=name)
    return dataclasses.replace(template, name=name)
