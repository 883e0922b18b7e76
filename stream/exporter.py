"""The metrics contract, rendered from the core's state when Prometheus scrapes.

A custom Collector (prometheus client_python's pattern): nothing is set per event; `collect()`
walks the intake and the bank and builds metric families. Series of evicted segments vanish
with their state, so there is nothing to `remove()`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from detectors.bank import DetectorBank
from stream.pipeline import UNKNOWN_MODEL, Intake


class DriftlineCollector(Collector):
    def __init__(
        self,
        intake: Intake | None,
        bank: DetectorBank | None,
        clock: Callable[[], float] = time.time,
    ):
        self.intake = intake
        self.bank = bank
        self.clock = clock  # drift_active is judged against this: wall time in a worker, event time in replay

    def collect(self) -> Iterator[Metric]:
        if self.intake is not None:
            yield from self._intake_metrics(self.intake)
        if self.bank is not None:
            yield from self._bank_metrics(self.bank)

    def _intake_metrics(self, intake: Intake) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "driftline_events", "Events read, by model, kind and fate.", labels=["model", "kind", "outcome"]
        )
        merged: dict[tuple[str, str, str], int] = {}
        for source in (intake.tally.events, intake.join.outcomes):
            for (model, kind, outcome), n in source.items():
                key = (model or UNKNOWN_MODEL, kind, outcome)
                merged[key] = merged.get(key, 0) + n
        for key, n in sorted(merged.items()):
            events.add_metric(key, n)
        yield events

        delay = HistogramMetricFamily(
            "driftline_label_delay_seconds", "Label event time minus prediction event time.", labels=["model"]
        )
        for model, hist in sorted(intake.tally.delays.items()):
            delay.add_metric([model], hist.cumulative(), hist.total)
        yield delay

        folded = CounterMetricFamily(
            "driftline_segments_folded", "Events whose segment value folded into __other__.", labels=["model", "attribute"]
        )
        for (model, attr), n in sorted(intake.router.folded.items()):
            folded.add_metric([model, attr], n)
        yield folded

        pending = GaugeMetricFamily(
            "driftline_join_pending", "Entries waiting in the label join.", labels=["kind"]
        )
        pending.add_metric(["prediction"], intake.join.pending_predictions)
        pending.add_metric(["label"], intake.join.held_labels)
        yield pending

        objective = GaugeMetricFamily(
            "driftline_accuracy_objective", "The accuracy a model is expected to keep (from config).", labels=["model"]
        )
        for name, spec in sorted(intake.settings.models.items()):
            if spec.accuracy_objective is not None:
                objective.add_metric([name], spec.accuracy_objective)
        yield objective

    def _bank_metrics(self, bank: DetectorBank) -> Iterator[Metric]:
        seg_labels = ["model", "segment"]
        sig_labels = ["model", "segment", "signal", "detector"]
        labeled = CounterMetricFamily("driftline_labeled", "Predictions joined to a label.", labels=seg_labels)
        correct = CounterMetricFamily("driftline_correct", "Labelled predictions that were correct.", labels=seg_labels)
        inferences = CounterMetricFamily(
            "driftline_segment_inferences", "Inference events seen per segment (volume, for alert noise control).",
            labels=seg_labels,
        )
        accuracy = GaugeMetricFamily("driftline_accuracy", "Rolling accuracy over the model's window.", labels=seg_labels)
        mae = GaugeMetricFamily("driftline_mae", "Rolling mean absolute error over the model's window.", labels=seg_labels)
        rmse = GaugeMetricFamily("driftline_rmse", "Rolling root mean squared error over the model's window.", labels=seg_labels)
        detected = CounterMetricFamily("driftline_drift_detected", "Drift detections.", labels=sig_labels)
        active = GaugeMetricFamily(
            "driftline_drift_active", "1 from a detection until the model's drift hold passes without another.",
            labels=sig_labels,
        )
        now = self.clock()
        for (model, segment), st in bank.items():
            spec = bank.spec(model)
            key = [model, segment]
            labeled.add_metric(key, st.labeled)
            inferences.add_metric(key, st.observed)
            if st.accuracy is not None:
                correct.add_metric(key, st.correct)
                if st.accuracy.count:
                    accuracy.add_metric(key, st.accuracy.get())
            if st.errors is not None and st.errors.count:
                mae.add_metric(key, st.errors.mae())
                rmse.add_metric(key, st.errors.rmse())
            for signal, sig in st.signals.items():
                for det, n, last in zip(sig.detectors, sig.detections, sig.last_detection):
                    lv = [model, segment, signal, det.name]
                    detected.add_metric(lv, n)
                    active.add_metric(lv, 1.0 if last is not None and now - last < spec.drift_hold else 0.0)
        yield from (labeled, correct, inferences, accuracy, mae, rmse, detected, active)

        invalid = CounterMetricFamily(
            "driftline_feature_invalid", "Feature values that break the model's expectations.",
            labels=["model", "feature", "reason"],
        )
        for (model, feature, reason), n in sorted(bank.invalid_features.items()):
            invalid.add_metric([model, feature, reason], n)
        yield invalid

        segments = GaugeMetricFamily("driftline_segments", "Segments with live detector state in this process.")
        segments.add_metric([], len(bank))
        yield segments
