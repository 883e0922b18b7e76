"""The metrics contract, rendered from the core's state when Prometheus scrapes.

A custom Collector (prometheus client_python's pattern): nothing is set per event; `collect()`
walks the intake and the bank and builds metric families. Series of evicted segments vanish
with their state, so there is nothing to `remove()`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from detectors.bank import DetectorBank
from detectors.tally import Tally
from stream.pipeline import UNKNOWN_MODEL, Intake


class DriftlineCollector(Collector):
    """Renders one process's `Tally` (counters) and its live state (gauges).

    `intakes` and `banks` are callables returning the live objects, because a worker's set of
    partitions changes with every rebalance.
    """

    def __init__(
        self,
        tally: Tally,
        settings,
        intakes: Callable[[], Iterable[Intake]] = tuple,
        banks: Callable[[], Iterable[DetectorBank]] = tuple,
        clock: Callable[[], float] = time.time,
    ):
        self.tally = tally
        self.settings = settings
        self.intakes = intakes
        self.banks = banks
        self.clock = clock  # drift_active is judged against this: wall time in a worker, event time in replay

    def collect(self) -> Iterator[Metric]:
        yield from self._counters(self.tally)
        yield from self._join_gauges(list(self.intakes()))
        yield from self._bank_gauges(list(self.banks()))

    def _counters(self, tally: Tally) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "driftline_events", "Events read, by model, kind and fate.", labels=["model", "kind", "outcome"]
        )
        merged: dict[tuple[str, str, str], int] = {}
        for (model, kind, outcome), n in list(tally.events.items()):
            key = (model or UNKNOWN_MODEL, kind, outcome)
            merged[key] = merged.get(key, 0) + n
        for key, n in sorted(merged.items()):
            events.add_metric(key, n)
        yield events

        delay = HistogramMetricFamily(
            "driftline_label_delay_seconds", "Label event time minus prediction event time.", labels=["model"]
        )
        for model, hist in sorted(tally.delays.items()):
            delay.add_metric([model], hist.cumulative(), hist.total)
        yield delay

        folded = CounterMetricFamily(
            "driftline_segments_folded", "Events whose segment value folded into __other__.", labels=["model", "attribute"]
        )
        for key, n in sorted(tally.folded.items()):
            folded.add_metric(list(key), n)
        yield folded

        seg_labels = ["model", "segment"]
        for name, doc, counter in (
            ("driftline_labeled", "Predictions joined to a label.", tally.labeled),
            ("driftline_correct", "Labelled predictions that were correct (classification).", tally.correct),
            ("driftline_segment_inferences", "Inference events per segment (volume, for alert noise control).",
             tally.inferences),
        ):
            family = CounterMetricFamily(name, doc, labels=seg_labels)
            for key, n in sorted(counter.items()):
                family.add_metric(list(key), n)
            yield family

        invalid = CounterMetricFamily(
            "driftline_feature_invalid", "Feature values that break the model's expectations.",
            labels=["model", "feature", "reason"],
        )
        for key, n in sorted(tally.invalid_features.items()):
            invalid.add_metric(list(key), n)
        yield invalid

        objective = GaugeMetricFamily(
            "driftline_accuracy_objective", "The accuracy a model is expected to keep (from config).", labels=["model"]
        )
        for name, spec in sorted(self.settings.models.items()):
            if spec.accuracy_objective is not None:
                objective.add_metric([name], spec.accuracy_objective)
        yield objective

    def _join_gauges(self, intakes: list[Intake]) -> Iterator[Metric]:
        pending = GaugeMetricFamily("driftline_join_pending", "Entries waiting in the label join.", labels=["kind"])
        pending.add_metric(["prediction"], sum(i.join.pending_predictions for i in intakes))
        pending.add_metric(["label"], sum(i.join.held_labels for i in intakes))
        yield pending

    def _bank_gauges(self, banks: list[DetectorBank]) -> Iterator[Metric]:
        seg_labels = ["model", "segment"]
        sig_labels = ["model", "segment", "signal", "detector"]
        accuracy = GaugeMetricFamily("driftline_accuracy", "Rolling accuracy over the model's window.", labels=seg_labels)
        mae = GaugeMetricFamily("driftline_mae", "Rolling mean absolute error over the model's window.", labels=seg_labels)
        rmse = GaugeMetricFamily("driftline_rmse", "Rolling root mean squared error over the model's window.", labels=seg_labels)
        detected = CounterMetricFamily("driftline_drift_detected", "Drift detections.", labels=sig_labels)
        active = GaugeMetricFamily(
            "driftline_drift_active", "1 from a detection until the model's drift hold passes without another.",
            labels=sig_labels,
        )
        detections = self.tally.detections
        exported: set[tuple[str, str, str, str]] = set()
        now = self.clock()
        n_segments = 0
        for bank in banks:
            for (model, segment), st in bank.items():
                n_segments += 1
                key = [model, segment]
                if st.accuracy is not None and st.accuracy.count:
                    accuracy.add_metric(key, st.accuracy.get())
                if st.errors is not None and st.errors.count:
                    mae.add_metric(key, st.errors.mae())
                    rmse.add_metric(key, st.errors.rmse())
                hold = bank.spec(model).drift_hold
                for signal, sig in st.signals.items():
                    for det, last in zip(sig.detectors, sig.last_detection):
                        lv = (model, segment, signal, det.name)
                        exported.add(lv)
                        # A live signal exports 0 before its first detection, so increase() works.
                        detected.add_metric(list(lv), detections.get(lv, 0))
                        active.add_metric(list(lv), 1.0 if last is not None and now - last < hold else 0.0)
        for lv, n in list(detections.items()):
            if lv not in exported:  # counted here, state since moved to another worker
                detected.add_metric(list(lv), n)
        yield from (accuracy, mae, rmse, detected, active)

        segments = GaugeMetricFamily("driftline_segments", "Segments with live detector state in this process.")
        segments.add_metric([], n_segments)
        yield segments
