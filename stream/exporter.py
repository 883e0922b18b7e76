"""The metrics contract, rendered from the core's state when Prometheus scrapes.

A custom Collector (prometheus client_python's pattern): nothing is set per event; `collect()`
walks the banks (and the intakes, for join sizes) and builds metric families. Series of evicted
segments vanish with their state, so there is nothing to `remove()`. Every counter lives in the
bank that owns its (model, segment) key (see detectors/tally.py), so a worker exports the
series of the partitions it owns, and the sum over workers is the fleet's total.

`collect()` runs in the HTTP server's thread while the worker's loop mutates state: the worker
holds `lock` while it processes a batch, and the collector holds it while it reads.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from detectors.bank import DetectorBank
from detectors.tally import DelayHistogram, Tally
from stream.pipeline import UNKNOWN_MODEL, Intake


def merge_tallies(tallies: Iterable[Tally]) -> Tally:
    """One Tally holding the sums of several (a worker owns several partitions' banks)."""
    tallies = list(tallies)
    if len(tallies) == 1:
        return tallies[0]
    out = Tally()
    for t in tallies:
        for name in ("events", "folded", "invalid_features", "labeled", "correct", "inferences", "detections"):
            getattr(out, name).update(dict(getattr(t, name)))
        for model, hist in list(t.delays.items()):
            mine = out.delays.get(model)
            if mine is None:
                mine = out.delays[model] = DelayHistogram()
            mine.counts = [a + b for a, b in zip(mine.counts, hist.counts)]
            mine.total += hist.total
            mine.count += hist.count
    return out


class DriftlineCollector(Collector):
    """Renders the counters and live state of the banks (and intakes) a process owns.

    `intakes` and `banks` are callables returning the live objects, because a worker's set of
    partitions changes with every rebalance.
    """

    def __init__(
        self,
        settings,
        intakes: Callable[[], Iterable[Intake]] = tuple,
        banks: Callable[[], Iterable[DetectorBank]] = tuple,
        clock: Callable[[], float] = time.time,
        lock: ContextManager | None = None,
    ):
        self.settings = settings
        self.intakes = intakes
        self.banks = banks
        self.clock = clock  # drift_active is judged against this: wall time in a worker, event time in replay
        self.lock = lock if lock is not None else contextlib.nullcontext()

    def collect(self) -> Iterator[Metric]:
        # Families are built under the lock and yielded after it: a slow HTTP client never
        # holds up the worker.
        with self.lock:
            banks = list(self.banks())
            tally = merge_tallies([b.tally for b in banks]) if banks else Tally()
            families = list(self._counters(tally))
            families += self._join_gauges(list(self.intakes()))
            families += self._bank_gauges(banks, tally)
        yield from families

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

    def _bank_gauges(self, banks: list[DetectorBank], tally: Tally) -> Iterator[Metric]:
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
        detections = tally.detections
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


class WorkerCollector(Collector):
    """A worker process's own figures: partitions, lag, checkpoints, replays (see WorkerStats)."""

    def __init__(self, stats, lock: ContextManager | None = None):
        self.stats = stats
        self.lock = lock if lock is not None else contextlib.nullcontext()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            st = self.stats
            parts = GaugeMetricFamily("driftline_worker_partitions", "Partitions this worker owns, by stage.",
                                      labels=["stage"])
            for stage, n in sorted(st.partitions.items()):
                parts.add_metric([stage], n)
            lag = GaugeMetricFamily("driftline_consumer_lag", "Messages behind the end of each owned partition.",
                                    labels=["topic", "partition"])
            for (topic, p), n in sorted(st.lag.items()):
                lag.add_metric([topic, str(p)], n)
            age = GaugeMetricFamily("driftline_checkpoint_age_seconds",
                                    "Age of the oldest owned state not yet checkpointed (0 when all are).")
            age.add_metric([], st.checkpoint_age)
            ckpt = CounterMetricFamily("driftline_checkpoints", "Checkpoint rounds, by outcome.", labels=["outcome"])
            for outcome, n in sorted(st.checkpoints.items()):
                ckpt.add_metric([outcome], n)
            took = GaugeMetricFamily("driftline_checkpoint_duration_seconds", "Duration of the last checkpoint round.")
            took.add_metric([], st.checkpoint_seconds)
            size = GaugeMetricFamily("driftline_checkpoint_size_bytes", "Bytes written by the last checkpoint round.")
            size.add_metric([], st.checkpoint_bytes)
            restore = GaugeMetricFamily("driftline_restore_duration_seconds",
                                        "Duration of the last partition assignment, restores included.")
            restore.add_metric([], st.restore_seconds)
            replayed = CounterMetricFamily("driftline_events_replayed",
                                           "Events read again after taking a partition over from its last checkpoint.")
            replayed.add_metric([], st.replayed)
            dedup = CounterMetricFamily("driftline_observations_deduplicated",
                                        "Observations skipped because a replay had applied them already.")
            dedup.add_metric([], st.deduplicated)
            rebalances = CounterMetricFamily("driftline_rebalances", "Partition assignments received.")
            rebalances.add_metric([], st.rebalances)
            errors = CounterMetricFamily("driftline_produce_errors", "Records Kafka refused, by topic.", labels=["topic"])
            for topic, n in sorted(st.produce_errors.items()):
                errors.add_metric([topic], n)
            families = [parts, lag, age, ckpt, took, size, restore, replayed, dedup, rebalances, errors]
        yield from families
