"""The metrics contract, built from the core's state when Prometheus scrapes.

Nothing is set per event: at scrape time `DriftlineMetrics.families()` walks the banks (and the
intakes, for join sizes) and returns plain `Family` values. Two renderers take them:

- `render()` writes the Prometheus text format directly, caching each series' label string: a
  worker's `/metrics` uses it (100k series in well under a second; prometheus-client's
  `generate_latest` spends ~20 us per sample);
- `DriftlineCollector` adapts the same families to a prometheus-client custom Collector, for
  code that wants them in a `CollectorRegistry` (tests check both give the same samples).

Series of evicted segments vanish with their state, so there is nothing to `remove()`. Every
counter lives in the bank that owns its (model, segment) key (see detectors/tally.py), so a
worker exports the series of the partitions it owns and the sum over workers is the fleet's.

The walk runs in the HTTP server's thread while the worker's loop mutates state. It never holds
the worker's `lock` for the whole walk: the counters (tallies) and the join sizes are copied
under one short hold, then the segments are read in slices of `WALK_SLICE` (`PacedBanks`), the
lock held while one slice is read and released between slices, so the loop waits for at most one
slice, however many series there are. A slice re-reads its segments under the lock (one evicted
meanwhile is skipped) and a bank the worker no longer owns is not read further. The text is
formatted after the last slice, without the lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time
from typing import Callable, ContextManager, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from driftline.detectors.bank import ERROR, PREDICTION, SCORE, DetectorBank
from driftline.detectors.baseline import FEATURE_SOURCE, compare
from driftline.detectors.spec import ALL_SEGMENT
from driftline.detectors.tally import DelayHistogram, Tally
from driftline.stream.pipeline import UNKNOWN_MODEL, Intake

# Detector internals are exported for these signals on every segment, and for feature signals
# on `__all__` only: they are for judging how close a signal is to alarm, and a series per
# feature x segment x detector x statistic would multiply /metrics by ten.
INTERNAL_SIGNALS = (ERROR, PREDICTION, SCORE)
TOP_SLICES = 3  # slices per active error drift exported as driftline_slice_* (the page names the first)
WALK_SLICE = 200  # segments read per hold of the worker's lock during a scrape (~3k series, a few ms)
# bench/scrape_load.py's "whole walk" variant only: hold the lock for the whole walk, as before.
ENV_WHOLE_WALK = "DRIFTLINE_BENCH_WHOLE_WALK_LOCK"


class Family:
    """One metric family as plain values: rows of (label values, value).

    A histogram's rows are (label values, [(upper bound, cumulative count)], sum).
    """

    __slots__ = ("name", "kind", "help", "labels", "rows")

    def __init__(self, name: str, kind: str, help: str, labels: Sequence[str] = ()):
        self.name, self.kind, self.help, self.labels = name, kind, help, tuple(labels)
        self.rows: list = []

    def add(self, values: tuple, value) -> None:
        self.rows.append((values, value))


def merge_tallies(tallies: Iterable[Tally], copy: bool = False) -> Tally:
    """One Tally holding the sums of several (a worker owns several partitions' banks); `copy`:
    a new one even for a single tally (to read it after the lock is released)."""
    tallies = list(tallies)
    if len(tallies) == 1 and not copy:
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


from driftline.stream.llm_export import llm_families  # noqa: E402 (it needs Family above)


class BankSlice:
    """Up to WALK_SLICE segments of one bank, as the family builders read a bank (`items()`,
    `spec()`, `profiles`, `tally`); read only while `PacedBanks` holds the lock."""

    __slots__ = ("bank", "keys")

    def __init__(self, bank: DetectorBank, keys: list):
        self.bank, self.keys = bank, keys

    def items(self):
        get = self.bank.get
        out = []
        for key in self.keys:
            st = get(*key)
            if st is not None:  # evicted since the keys were listed
                out.append((key, st))
        return out

    def spec(self, model: str):
        return self.bank.spec(model)

    @property
    def profiles(self):
        return self.bank.profiles

    @property
    def tally(self) -> Tally:
        return self.bank.tally


class PacedBanks:
    """The banks of one scrape, handed out as `BankSlice`s with the lock held while the caller
    reads each one and released between them. Re-iterable: each family builder walks it again."""

    def __init__(self, banks: list[DetectorBank], live: Callable[[], Iterable[DetectorBank]],
                 lock: ContextManager, size: int = WALK_SLICE):
        self.banks, self.live, self.lock, self.size = banks, live, lock, size

    def __iter__(self):
        lock, size = self.lock, self.size
        for bank in self.banks:
            with lock:
                if not any(b is bank for b in self.live()):
                    continue  # given up since the scrape began: its new owner exports it
                keys = [key for key, _ in bank.items()]
            for i in range(0, max(len(keys), 1), size):
                with lock:
                    if i and not any(b is bank for b in self.live()):
                        break
                    yield BankSlice(bank, keys[i:i + size])
                # Let the loop take the lock: a release followed at once by an acquire would
                # usually win it back before the waiting thread runs.
                time.sleep(0.0002)


@dataclasses.dataclass(frozen=True)
class IntakeFigures:
    """What /metrics reads of an intake, copied under the lock."""

    pending_predictions: int
    held_labels: int
    shadow_counts: dict  # (model, outcome) -> shadow-traffic outcomes that made no pair

    @classmethod
    def of(cls, intake: Intake) -> "IntakeFigures":
        return cls(intake.join.pending_predictions, intake.join.held_labels, dict(intake.shadow.counts))


class DriftlineMetrics:
    """The contract's families from the banks and intakes a process owns.

    `intakes` and `banks` are callables returning the live objects, because a worker's set of
    partitions changes with every rebalance. `clock` judges `driftline_drift_active`: wall time
    in a worker, the last event time in a replay.
    """

    def __init__(self, settings, intakes: Callable[[], Iterable[Intake]] = tuple,
                 banks: Callable[[], Iterable[DetectorBank]] = tuple, clock: Callable[[], float] = time.time,
                 lock: ContextManager | None = None):
        self.settings = settings
        self.intakes = intakes
        self.banks = banks
        self.clock = clock
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self._paced = lock is not None  # with no lock to share there is no one to wait for
        self._walking = threading.Lock()
        # (model, segment) -> (its inference count, profile digest, comparisons): a segment's
        # windows change only with its inference events, so an idle one is not recomputed.
        self._comparisons: dict[tuple[str, str], tuple] = {}

    def families(self) -> list[Family]:
        with self._walking:  # one walk at a time (the comparisons cache is the walk's)
            if self._paced is False or os.environ.get(ENV_WHOLE_WALK) == "1":
                with self.lock:  # no lock to share (a replay), or the bench's "before"
                    return self._families(list(self.banks()), [IntakeFigures.of(i) for i in self.intakes()], None)
            with self.lock:  # the short hold: counters and join sizes, copied
                banks = list(self.banks())
                tally = merge_tallies([b.tally for b in banks], copy=True) if banks else Tally()
                intakes = [IntakeFigures.of(i) for i in self.intakes()]
            return self._families(PacedBanks(banks, self.banks, self.lock), intakes, tally)

    def _families(self, banks, intakes, tally: Tally | None) -> list[Family]:
        if tally is None:
            tally = merge_tallies([b.tally for b in banks]) if banks else Tally()
        return (self._counters(tally) + self._join(intakes) + self._state(banks, tally)
                + self._baselines(banks) + self._quality(banks) + self._challengers(banks, intakes)
                + llm_families(self.settings, banks))

    def render(self) -> bytes:
        return render(self.families())

    def _counters(self, tally: Tally) -> list[Family]:
        events = Family("driftline_events", "counter", "Events read, by model, kind and fate.",
                        ("model", "kind", "outcome"))
        merged: dict[tuple[str, str, str], int] = {}
        for (model, kind, outcome), n in tally.events.items():
            key = (model or UNKNOWN_MODEL, kind, outcome)
            merged[key] = merged.get(key, 0) + n
        events.rows = sorted(merged.items())
        delay = Family("driftline_label_delay_seconds", "histogram", "Label event time minus prediction event time.",
                       ("model",))
        delay.rows = [((model,), hist.cumulative(), hist.total) for model, hist in sorted(tally.delays.items())]
        folded = Family("driftline_segments_folded", "counter", "Events whose segment value folded into __other__.",
                        ("model", "attribute"))
        folded.rows = sorted(tally.folded.items())
        out = [events, delay, folded]
        for name, doc, counter in (
            ("driftline_labeled", "Predictions joined to a label.", tally.labeled),
            ("driftline_correct", "Labelled predictions that were correct (classification).", tally.correct),
            ("driftline_segment_inferences", "Inference events per segment (volume, for alert noise control).",
             tally.inferences),
        ):
            family = Family(name, "counter", doc, ("model", "segment"))
            family.rows = sorted(counter.items())
            out.append(family)
        invalid = Family("driftline_feature_invalid", "counter", "Feature values that break the model's expectations.",
                         ("model", "feature", "reason"))
        invalid.rows = sorted(tally.invalid_features.items())
        objective = Family("driftline_accuracy_objective", "gauge",
                           "The accuracy a model is expected to keep (from config).", ("model",))
        objective.rows = [((name,), spec.accuracy_objective) for name, spec in sorted(self.settings.models.items())
                          if spec.accuracy_objective is not None]
        return out + [invalid, objective]

    @staticmethod
    def _join(intakes: list[IntakeFigures]) -> list[Family]:
        pending = Family("driftline_join_pending", "gauge", "Entries waiting in the label join.", ("kind",))
        pending.add(("prediction",), sum(i.pending_predictions for i in intakes))
        pending.add(("label",), sum(i.held_labels for i in intakes))
        return [pending]

    def _state(self, banks: list[DetectorBank], tally: Tally) -> list[Family]:
        seg, sig = ("model", "segment"), ("model", "segment", "signal", "detector")
        accuracy = Family("driftline_accuracy", "gauge", "Rolling accuracy over the model's window.", seg)
        mae = Family("driftline_mae", "gauge", "Rolling mean absolute error over the model's window.", seg)
        rmse = Family("driftline_rmse", "gauge", "Rolling root mean squared error over the model's window.", seg)
        detected = Family("driftline_drift_detected", "counter", "Drift detections.", sig)
        active = Family("driftline_drift_active", "gauge",
                        "1 from a detection until the model's drift hold passes without another.", sig)
        direction = Family("driftline_drift_direction", "gauge",
                           "Which way the signal's mean moved at the last detection: 1 up, -1 down, 0 none yet "
                           "(for the error signal, 1 is worse).", sig)
        sig3 = ("model", "segment", "signal")
        width = Family("driftline_adwin_width", "gauge", "ADWIN's window: values since its last cut.", sig3)
        mean = Family("driftline_adwin_mean", "gauge", "ADWIN's estimate of the signal's mean over its window.", sig3)
        ph_stat = Family("driftline_page_hinkley_statistic", "gauge",
                         "Page-Hinkley's cumulative deviation; it alarms above its threshold.", sig3)
        ph_thr = Family("driftline_page_hinkley_threshold", "gauge", "Page-Hinkley's alarm threshold.", sig3)
        slice_lv = ("model", "segment", "feature", "bin", "rank")
        contribution = Family("driftline_slice_contribution", "gauge",
                              "Accuracy points of an active error drift that a slice accounts for (top slices).",
                              slice_lv)
        slice_acc = Family("driftline_slice_accuracy", "gauge",
                           "Accuracy of a top slice of an active error drift, before and after its change point.",
                           slice_lv + ("window",))
        detections = tally.detections
        exported: set[tuple[str, str, str, str]] = set()
        now = self.clock()
        n_segments = 0
        for bank in banks:
            for (model, segment), st in bank.items():
                n_segments += 1
                key = (model, segment)
                if st.accuracy is not None and st.accuracy.count:
                    accuracy.add(key, st.accuracy.get())
                if st.errors is not None and st.errors.count:
                    mae.add(key, st.errors.mae())
                    rmse.add(key, st.errors.rmse())
                hold = bank.spec(model).drift_hold
                at_all = segment == ALL_SEGMENT
                sl = st.slices
                if sl is not None and sl.active and now - sl.last_detection < hold:
                    # Active error drifts only, TOP_SLICES each: a bounded set of series.
                    for rank, ev in enumerate(sl.explain(TOP_SLICES).slices, 1):
                        lv = (model, segment, ev.feature, ev.bin, str(rank))
                        contribution.add(lv, ev.contribution)
                        if ev.accuracy_before is not None:
                            slice_acc.add(lv + ("before",), ev.accuracy_before)
                        slice_acc.add(lv + ("after",), ev.accuracy_after)
                for signal, readings in st.detector_readings(INTERNAL_SIGNALS, at_all):
                    for r in readings:
                        lv = (model, segment, signal, r.detector)
                        exported.add(lv)
                        # A live signal exports 0 before its first detection, so increase() works.
                        detected.add(lv, detections.get(lv, 0))
                        last = r.last_detection
                        active.add(lv, 1.0 if last is not None and now - last < hold else 0.0)
                        direction.add(lv, r.direction)
                        stats = r.statistics  # only {"warmup_remaining": n} while warming up
                        if stats is not None:
                            if r.detector == "adwin" and "width" in stats:
                                width.add((model, segment, signal), stats["width"])
                                mean.add((model, segment, signal), stats["mean"])
                            elif r.detector == "page_hinkley" and "statistic" in stats:
                                ph_stat.add((model, segment, signal), stats["statistic"])
                                ph_thr.add((model, segment, signal), stats["threshold"])
        for lv, n in detections.items():
            if lv not in exported:  # counted, but the signal's state was evicted since
                detected.add(lv, n)
        segments = Family("driftline_segments", "gauge", "Segments with live detector state in this process.")
        segments.add((), n_segments)
        return [accuracy, mae, rmse, detected, active, direction, width, mean, ph_stat, ph_thr, segments,
                contribution, slice_acc]


    def _quality(self, banks: list[DetectorBank]) -> list[Family]:
        """Classification quality per segment (detectors/classification.py): confusion counts,
        outcome costs, and the positive class's rolling metrics where they are defined."""
        seg = ("model", "segment")
        confusion = Family("driftline_confusion", "counter", "Labelled outcomes by predicted and actual class "
                           "(classes bounded per segment, the rest counted as __other__).",
                           ("model", "segment", "predicted", "actual", "correct"))
        folded = Family("driftline_classes_folded", "counter",
                        "Class names of labelled outcomes counted as __other__ (beyond the model's classes).", seg)
        cost = Family("driftline_outcome_cost", "counter", "Cost of labelled outcomes per the model's cost table.", seg)
        value = Family("driftline_outcome_value", "counter",
                       "Value (negative cost) of labelled outcomes per the model's cost table.", seg)
        rolling = [(Family("driftline_precision", "gauge", "Rolling precision of the positive class.", seg), "precision"),
                   (Family("driftline_recall", "gauge", "Rolling recall of the positive class.", seg), "recall"),
                   (Family("driftline_f1", "gauge", "Rolling F1 score of the positive class.", seg), "f1")]
        scored = [(Family("driftline_roc_auc", "gauge", "Rolling ROC AUC of the positive class's probability.", seg),
                   "roc_auc"),
                  (Family("driftline_log_loss", "gauge", "Rolling log loss of the positive class's probability.", seg),
                   "log_loss"),
                  (Family("driftline_calibration_error", "gauge", "Rolling expected calibration error of the "
                          "positive class's probability (10 equal-width bins).", seg), "calibration_error")]
        estimated = Family("driftline_estimated_accuracy", "gauge", "Label-free accuracy of the last accuracy_window "
                           "predictions, from their calibrated confidence.", seg)
        calibrated = Family("driftline_estimate_calibrated", "gauge", "1 once the estimate's calibration is fitted on "
                            "the first accuracy_window labelled outcomes, 0 while it takes scores as calibrated.", seg)
        expected = Family("driftline_estimate_expected_accuracy", "gauge", "Accuracy the calibrated scores expected of the "
                          "last accuracy_window labelled outcomes.", seg)
        realized = Family("driftline_estimate_realized_accuracy", "gauge", "Accuracy those labelled outcomes had.", seg)
        bound = Family("driftline_estimate_bound", "gauge", "Error bound of realized minus expected accuracy "
                       "(3 standard errors).", seg)
        departure = Family("driftline_estimate_departure", "gauge", "Realized minus expected accuracy in bound units: "
                           "beyond +-1 the scores no longer mean what they did (concept drift).", seg)
        for bank in banks:
            for key, st in bank.items():
                est = st.estimate
                if est is not None:
                    v = est.estimated()
                    if v is not None:
                        estimated.add(key, v)
                        calibrated.add(key, 1 if est.calibrated else 0)
                    if est.lab_n:
                        expected.add(key, est.expected())
                        realized.add(key, est.realized())
                        b, d = est.bound(), est.departure()
                        if b is not None:
                            bound.add(key, b)
                        if d is not None:
                            departure.add(key, d)
                q = st.quality
                if q is None:
                    continue
                model, segment = key
                for (p, a, ok), n in q.confusion.items():
                    confusion.add((model, segment, p, a, "true" if ok else "false"), n)
                folded.add(key, q.folded)
                costs = bank.spec(model).quality.costs
                if costs is not None:
                    cost.add(key, q.cost)
                    value.add(key, q.value)
                if q.window_count:
                    for family, name in rolling:
                        v = getattr(q, name)()
                        if v is not None:
                            family.add(key, v)
                if q.scored_count:
                    for family, name in scored:
                        v = getattr(q, name)()
                        if v is not None:
                            family.add(key, v)
        confusion.rows.sort()
        budget = Family("driftline_outcome_cost_budget", "gauge",
                        "Outcome cost a model may burn per second (config outcome_costs.budget).", ("model",))
        for name, spec in sorted(self.settings.models.items()):
            costs = spec.quality.costs
            if costs is not None and costs.budget_per_second is not None:
                budget.add((name,), costs.budget_per_second)
        return ([confusion, folded, cost, value] + [f for f, _ in rolling + scored] + [budget]
                + [estimated, calibrated, expected, realized, bound, departure])

    @staticmethod
    def _challengers(banks: list[DetectorBank], intakes: list[IntakeFigures]) -> list[Family]:
        """Champion vs challenger per challenger segment (detectors/challenger.py), and the fates of
        shadow-traffic outcomes that made no pair."""
        lv = ("model", "champion", "segment")
        delta = Family("driftline_challenger_accuracy_delta", "gauge",
                       "Challenger accuracy minus champion accuracy on the requests both scored.", lv)
        lower = Family("driftline_challenger_accuracy_delta_lower", "gauge",
                       "Lower end of the delta's anytime-valid confidence interval (challenger_error_rate).", lv)
        upper = Family("driftline_challenger_accuracy_delta_upper", "gauge",
                       "Upper end of the delta's anytime-valid confidence interval.", lv)
        decision = Family("driftline_challenger_decision", "gauge",
                          "1: the challenger is better, -1: worse, 0: not decided yet.", lv)
        pairs = Family("driftline_challenger_pairs", "counter", "Requests both models scored, graded.", lv)
        for bank in banks:
            for (model, segment), st in bank.items():
                if not st.challengers:
                    continue
                for champion, cmp in st.challengers.items():
                    key = (model, champion, segment)
                    delta.add(key, cmp.delta())
                    lower.add(key, cmp.lower())
                    upper.add(key, cmp.upper())
                    decision.add(key, cmp.decision())
                    pairs.add(key, cmp.n)
        shadow = Family("driftline_shadow_outcomes", "counter",
                        "Shadow-traffic predictions that made no comparison: uncompared (a request_id on a model in "
                        "no comparison), unpaired (graded, but the other model's prediction never was).",
                        ("model", "outcome"))
        counts: dict[tuple[str, str], int] = {}
        for intake in intakes:
            for k, n in intake.shadow_counts.items():
                counts[k] = counts.get(k, 0) + n
        shadow.rows = sorted(counts.items())
        return [delta, lower, upper, decision, pairs, shadow]

    def _baselines(self, banks: list[DetectorBank]) -> list[Family]:
        """Distribution drift and data quality against each model's reference profile, computed
        from the live windows in O(bins) per (segment, signal); see docs/baselines.md."""
        books = {id(b.profiles): b.profiles for b in banks if b.profiles is not None and len(b.profiles)}
        if not books:
            self._comparisons.clear()
            return []
        lv3 = ("model", "segment", "feature")
        psi = Family("driftline_feature_psi", "gauge",
                     "Population stability index of the live window against the baseline (a feature, the prediction "
                     "or the score).", lv3)
        js = Family("driftline_feature_js_distance", "gauge",
                    "Jensen-Shannon distance (log base 2) of the live window to the baseline.", lv3)
        ks = Family("driftline_feature_ks_statistic", "gauge",
                    "Two-sample KS statistic of the live window against the baseline, at the baseline's bin edges "
                    "(numeric signals).", lv3)
        missing = Family("driftline_feature_missing_ratio", "gauge", "Share of missing values in the live window.", lv3)
        cache, seen = self._comparisons, set()
        for bank in banks:
            book = bank.profiles
            if book is None or not len(book):
                continue
            inferences = bank.tally.inferences
            for key, st in bank.items():
                model, segment = key
                compiled = book.get(model)
                if compiled is None or st.profile_id != compiled.id or not st.windows:
                    continue  # no profile, or windows of a replaced profile (reset on the next event)
                seen.add(key)
                n = inferences.get(key, 0)
                hit = cache.get(key)
                if hit is None or hit[0] != n or hit[1] != compiled.id:
                    rows = []
                    for b in compiled.binners(segment):
                        w = st.windows.get(b.name)
                        if w is not None:
                            rows.append((b.name, b.source == FEATURE_SOURCE, compare(b, w)))
                    hit = cache[key] = (n, compiled.id, rows)
                least = compiled.checks.min_values
                for name, is_feature, c in hit[2]:
                    lv = (model, segment, name)
                    if is_feature and c.filled >= least:
                        missing.add(lv, c.missing_ratio)
                    if c.values >= least:  # fewer values: sampling noise would dominate
                        psi.add(lv, c.psi)
                        js.add(lv, c.js_distance)
                        if c.ks_statistic is not None:
                            ks.add(lv, c.ks_statistic)
        for key in [k for k in cache if k not in seen]:
            del cache[key]
        return [psi, js, ks, missing] + self._baseline_settings(books.values())

    @staticmethod
    def _baseline_settings(books) -> list[Family]:
        """Per model: which profile, and the thresholds the alert rules compare with."""
        m = ("model",)
        info = Family("driftline_baseline_info", "gauge", "The reference profile a model is compared with (always 1).",
                      ("model", "model_version", "environment", "digest"))
        thresholds = [
            (Family("driftline_feature_psi_threshold", "gauge", "PSI above which a signal has drifted (config).", m),
             "psi"),
            (Family("driftline_feature_js_distance_threshold", "gauge",
                    "Jensen-Shannon distance above which a signal has drifted (config).", m), "js_distance"),
            (Family("driftline_feature_ks_statistic_threshold", "gauge",
                    "KS statistic above which a numeric signal has drifted (config).", m), "ks_statistic"),
            (Family("driftline_feature_invalid_ratio_threshold", "gauge",
                    "Share of a model's events with an invalid value of one feature that is too many (config).", m),
             "invalid_ratio"),
        ]
        missing = Family("driftline_feature_missing_ratio_threshold", "gauge",
                         "Missing ratio above which a feature is missing too often: the baseline's plus the "
                         "config's missing_increase.", ("model", "feature"))
        accuracy = Family("driftline_baseline_accuracy", "gauge", "Accuracy on the baseline's labelled rows.", m)
        mae = Family("driftline_baseline_mae", "gauge", "Mean absolute error on the baseline's labelled rows.", m)
        done: set[str] = set()
        for book in books:
            for model in book.models():
                compiled = book.get(model)
                if compiled is None or model in done:
                    continue
                done.add(model)
                p = compiled.profile
                info.add((model, p.model_version, p.environment, p.digest), 1)
                for family, attr in thresholds:
                    family.add((model,), getattr(compiled.checks, attr))
                for feature in p.overall.features:
                    t = compiled.missing_threshold(feature)
                    if t is not None:
                        missing.add((model, feature), t)
                if p.overall.accuracy is not None:
                    accuracy.add((model,), p.overall.accuracy)
                if p.overall.mae is not None:
                    mae.add((model,), p.overall.mae)
        return [info] + [f for f, _ in thresholds] + [missing, accuracy, mae]


# ---------------------------------------------------------------------------------- rendering
def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _number(v) -> str:
    if type(v) is int:
        return str(v)
    v = float(v)
    if math.isfinite(v):
        return repr(v)
    return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")


class _LabelCache(dict):
    """Label strings by (label names, values): a series is formatted once, not per scrape."""

    def string(self, names: tuple, values: tuple) -> str:
        key = (names, values)
        s = self.get(key)
        if s is None:
            if len(self) > 2_000_000:  # bounded: series come and go with segments
                self.clear()
            s = self[key] = ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(names, values))
        return s


_labels = _LabelCache()


def render(families: Iterable[Family]) -> bytes:
    """The Prometheus text exposition format (version 0.0.4) of `families`."""
    out: list[str] = []
    append = out.append
    string = _labels.string
    for f in families:
        name = f.name + "_total" if f.kind == "counter" else f.name
        append(f"# HELP {name} {f.help}\n# TYPE {name} {f.kind}\n")
        names = f.labels
        if f.kind == "histogram":
            for values, buckets, total in f.rows:
                ls = string(names, values)
                sep = "," if ls else ""
                for bound, n in buckets:
                    append(f'{name}_bucket{{{ls}{sep}le="{bound}"}} {n}\n')
                append(f"{name}_sum{{{ls}}} {_number(total)}\n" if ls else f"{name}_sum {_number(total)}\n")
                append(f"{name}_count{{{ls}}} {buckets[-1][1]}\n" if ls else f"{name}_count {buckets[-1][1]}\n")
            continue
        if not names:
            for _, v in f.rows:
                append(f"{name} {_number(v)}\n")
            continue
        for values, v in f.rows:
            append(f"{name}{{{string(names, values)}}} {_number(v)}\n")
    return "".join(out).encode()


class DriftlineCollector(Collector):
    """The same families as a prometheus-client custom Collector (for a CollectorRegistry)."""

    def __init__(self, source):
        self.source = source  # anything with families(): DriftlineMetrics, WorkerMetrics

    def collect(self):
        for f in self.source.families():
            if f.kind == "histogram":
                fam = HistogramMetricFamily(f.name, f.help, labels=list(f.labels))
                for values, buckets, total in f.rows:
                    fam.add_metric(list(values), buckets, total)
            else:
                cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
                fam = cls(f.name, f.help, labels=list(f.labels))
                for values, v in f.rows:
                    fam.add_metric(list(values), v)
            yield fam


class WorkerMetrics:
    """A worker process's own figures: partitions, lag, checkpoints, replays (see WorkerStats)."""

    def __init__(self, stats, lock: ContextManager | None = None):
        self.stats = stats
        self.lock = lock if lock is not None else contextlib.nullcontext()

    def families(self) -> list[Family]:
        with self.lock:
            st = self.stats
            parts = Family("driftline_worker_partitions", "gauge", "Partitions this worker owns, by stage.", ("stage",))
            parts.rows = [((stage,), n) for stage, n in sorted(st.partitions.items())]
            lag = Family("driftline_consumer_lag", "gauge", "Messages behind the end of each owned partition.",
                         ("topic", "partition"))
            lag.rows = [((topic, str(p)), n) for (topic, p), n in sorted(st.lag.items())]
            behind = Family("driftline_consumer_lag_seconds", "gauge",
                            "Age of the last message read from each owned partition while more wait (0 when caught up).",
                            ("topic", "partition"))
            behind.rows = [((topic, str(p)), n) for (topic, p), n in sorted(st.lag_seconds.items())]
            read = Family("driftline_worker_messages", "counter", "Kafka messages this process read, by stage.",
                          ("stage",))
            read.rows = [((stage,), n) for stage, n in sorted(st.messages.items())]
            rekeyed = Family("driftline_events_rekeyed", "counter",
                             "Events whose message key was not their prediction_id, published again keyed by it.",
                             ("kind",))
            rekeyed.rows = [((kind,), n) for kind, n in sorted(getattr(st, "rekeyed", {}).items())]
            out = [parts, lag, behind, read, rekeyed]
            for name, kind, doc, value in (
                ("driftline_checkpoint_age_seconds", "gauge",
                 "Seconds since the last successful checkpoint round (one with nothing to write counts; "
                 "process start before the first).", st.checkpoint_age),
                ("driftline_checkpoint_duration_seconds", "gauge", "Duration of the last checkpoint round.",
                 st.checkpoint_seconds),
                ("driftline_checkpoint_size_bytes", "gauge", "Bytes written by the last checkpoint round.",
                 st.checkpoint_bytes),
                ("driftline_restore_duration_seconds", "gauge",
                 "Duration of the last partition assignment, restores included.", st.restore_seconds),
                ("driftline_events_replayed", "counter",
                 "Events read again after taking a partition over from its last checkpoint, or after a rewind.",
                 st.replayed),
                ("driftline_transaction_rewinds", "counter",
                 "Aborted transactions (exactly-once): owned state rewound to its last committed checkpoint.",
                 st.rewinds),
                ("driftline_observations_deduplicated", "counter",
                 "Observations skipped because a replay had applied them already.", st.deduplicated),
                ("driftline_rebalances", "counter", "Partition assignments received.", st.rebalances),
            ):
                f = Family(name, kind, doc)
                f.add((), value)
                out.append(f)
            ckpt = Family("driftline_checkpoints", "counter", "Checkpoint rounds, by outcome.", ("outcome",))
            ckpt.rows = [((o,), n) for o, n in sorted(st.checkpoints.items())]
            restores = Family("driftline_checkpoint_restores", "counter",
                              "Partition checkpoints found at assignment, by what became of them: restored, rebuilt "
                              "(unreadable: replayed from the retained history) or fresh (unreadable, no history left).",
                              ("outcome",))
            restores.rows = [((o,), n) for o, n in sorted(st.restores.items())]
            errors = Family("driftline_produce_errors", "counter", "Records Kafka refused, by topic.", ("topic",))
            errors.rows = [((t,), n) for t, n in sorted(st.produce_errors.items())]
            return out + [ckpt, restores, errors]


class EventTimeMetrics:
    """Event-time alignment figures of a worker (stream/ordering.EventTimeStats), per partition.

    Watermarks are event time (Unix seconds): an input partition's progress (stage "intake") and
    an observations partition's released watermark (stage "bank"); the lag is the wall clock
    minus that. A bank watermark that stops while events keep coming is what the
    DriftlineWatermarkStuck alert watches.
    """

    def __init__(self, stats, lock: ContextManager | None = None, clock: Callable[[], float] = time.time):
        self.stats = stats
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.clock = clock

    def families(self) -> list[Family]:
        now = self.clock()
        with self.lock:
            st = self.stats
            mark = Family("driftline_watermark_seconds", "gauge",
                          "Event time every observation up to has been read (intake) or applied in order (bank).",
                          ("stage", "partition"))
            lag = Family("driftline_event_time_lag_seconds", "gauge",
                         "Wall clock minus the watermark, by stage and partition.", ("stage", "partition"))
            for stage, table in (("intake", st.intake_progress), ("bank", st.bank_watermark)):
                for p, ts in sorted(table.items()):
                    mark.add((stage, str(p)), ts)
                    lag.add((stage, str(p)), max(now - ts, 0.0))
            held = Family("driftline_observations_held", "gauge",
                          "Observations held in a bank partition until the watermark passes them.", ("partition",))
            held_bytes = Family("driftline_observations_held_bytes", "gauge",
                                "Bytes (as on the wire) of the observations held, by bank partition.", ("partition",))
            for q, (n, b) in sorted(st.held.items()):
                held.add((str(q),), n)
                held_bytes.add((str(q),), b)
            late = Family("driftline_observations_late", "counter",
                          "Observations that arrived behind their bank's watermark (applied at once, out of order).",
                          ("partition",))
            late.rows = [((str(q),), n) for q, n in sorted(st.late.items())]
            early = Family("driftline_observations_released_early", "counter",
                           "Observations released before the watermark because the buffer reached worker.max_held(_bytes).",
                           ("partition",))
            early.rows = [((str(q),), n) for q, n in sorted(st.early.items())]
            paused = Family("driftline_alignment_paused_seconds", "counter",
                            "Seconds an input topic partition was paused: align (ahead of its partition's other "
                            "topic) or skew (ahead of the fleet's slowest partition).", ("topic", "partition", "reason"))
            paused.rows = [((t, str(p), r), s) for (t, p, r), s in sorted(st.paused_seconds.items())]
            return [mark, lag, held, held_bytes, late, early, paused]
