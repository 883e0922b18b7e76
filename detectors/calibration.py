"""False-alarm control: detector thresholds set from a false-alarm budget, not by hand.

Page-Hinkley's `threshold` and `delta` are in the units of the signal it watches, so one fixed
threshold cannot suit a 0/1 error stream, a score in [0, 1] and a feature in the thousands; and
ADWIN's bound assumes values in [0, 1]. driftline therefore puts a `Standardizer` in front of
the detectors of every numeric signal: it learns the signal's mean and standard deviation over
the segment's first `warmup` values (like `CategorySurprisal` learns its reference), then feeds
the detectors z-scores clipped to +-3. Thresholds are then in standard deviations, and one table,
computed once by simulation (`bench/quality.py --calibrate`, numbers below), maps a budget to
them:

- a *false-alarm budget* is the expected number of events between two false alarms of one
  detector on one stationary signal: its average run length (ARL);
- a model's budget, `events_between_false_alarms` of the model's traffic, is split over its
  detector streams: every event updates `streams_per_event(...)` detectors (each detector on
  each signal of `__all__` and of the one segment per attribute that the event falls in), so
  each detector gets `stream_arl(budget, streams)` and the model's expected false alarms per
  event is at most `1 / budget`, whatever the number of segment values;
- a fleet's false alarms per second are then predictable: the sum over models of
  `events per second / events_between_false_alarms`.

The classification error stream (0/1 values) is the exception: ADWIN reads it raw (it is what
ADWIN's bound is made for), Page-Hinkley reads it standardised by the warm-up error rate, with a
threshold from a table per error rate, because a 0/1 stream with a low rate is far from normal.

>>> params = page_hinkley_params(stream_arl(1e7, streams_per_event(1, 2, 2)))
>>> params.delta, round(params.threshold, 1), params.alpha
(0.25, 32.2, 1.0)
>>> round(page_hinkley_arl(params.threshold) / 8e7, 2)
1.0
>>> det = CalibratedDetector("page_hinkley", arl=1e6, warmup=100)
>>> [det.update(1000.0 + (i % 7)) for i in range(100)].count(True)
0
>>> det.update(1000.0 + 3), det.statistics()["scale"] > 0
(False, True)
"""
from __future__ import annotations

import bisect
import math
from typing import Literal

from driftline.detectors.drift import ADWINDetector, PageHinkleyDetector
from driftline.detectors.spec import ADWINParams, PageHinkleyParams
from driftline.detectors.state import persistent

SignalKind = Literal["numeric", "binary"]

# Values a Standardizer learns mean and scale from before the detectors see anything. 500 gives
# the scale to ~3% (normal data); measured with it, false alarms run at 1.2-1.3x the budget at
# 1e6-1e7 events (docs/quality.md).
DEFAULT_WARMUP = 500
# A 0/1 stream's rate is known to ~1/sqrt(ones): its warm-up also waits for BINARY_MIN_COUNT ones
# (and zeros), up to BINARY_MAX_WARMUP values. Measured: with 500 values alone, a 1% error rate
# raised 9x the budgeted false alarms at 1e7 events; with 30 ones, 0.9x.
BINARY_MIN_COUNT = 30
BINARY_MAX_WARMUP = 10_000
# z-scores are clipped to +-CLIP before the detectors. Measured (bench/quality.py, robustness
# table): without it, heavy tails (lognormal, Student t3) raise 10-30x the budgeted false alarms
# of normal data at the same threshold; clipped at 3 every tested distribution is at or below
# the normal rate, and a 1-sigma shift is detected as fast.
CLIP = 3.0
# Model-level default budget: events of the model's traffic between two false alarms on any of
# its detectors (docs/quality.md: delay vs budget trade-off).
DEFAULT_EVENTS_BETWEEN_FALSE_ALARMS = 1e7

# --- Page-Hinkley tables ---------------------------------------------------------------------
# River PageHinkley(min_instances=30, alpha=1, mode="both", delta=k) fed standardised values
# whose scale is exact. Over thresholds h, ln(ARL) = a + theta * h, where theta is the
# Cramer-Lundberg root of E[exp(theta * (z - k))] = 1 for the clipped z (theory: 2k for
# normal z; measured slopes agree within 3%) and a is fitted on simulated ARLs: a vectorised
# replica of River's update (checked against River itself), 1,000 streams x 50,000 events at
# four thresholds per row (ARL ~2e3 to ~2e5), a from the upper three (`--calibrate`).
PH_MIN_INSTANCES = 30
PH_DELTAS = (0.1, 0.25, 0.5)
# The drift allowance k, in standard deviations, chosen from the harness (docs/quality.md):
# error-rate changes worth a page are small in standard deviations (0.05 -> 0.10 is 0.23 sd),
# and Page-Hinkley cannot see a shift below k; numeric features get 0.25, which finds 0.5-1 sd
# shifts 2x faster than 0.1 while ADWIN covers the smaller ones.
DEFAULT_PH_DELTA: dict[str, float] = {"numeric": 0.25, "binary": 0.1}
# k -> (a, theta): normal noise clipped to +-3.
PH_NUMERIC: dict[float, tuple[float, float]] = {
    0.1: (3.410, 0.2010),
    0.25: (1.971, 0.5034),
    0.5: (1.154, 1.0130),
}
# k -> ((p, a, theta), ...) for a 0/1 stream with rate p, standardised by sqrt(p (1 - p)).
# The table covers p in [0.0005, 0.5] (a rate below reads the first row: more false alarms than
# budgeted); a rate above 0.5 reads the row of 1 - p (mirror image).
PH_BINARY: dict[float, tuple[tuple[float, float, float], ...]] = {
    0.1: (
        (0.0005, 6.190, 0.0625),
        (0.001, 5.537, 0.0759),
        (0.002, 5.260, 0.0906),
        (0.005, 5.007, 0.1112),
        (0.01, 4.788, 0.1267),
        (0.02, 4.562, 0.1416),
        (0.05, 4.340, 0.1595),
        (0.1, 4.120, 0.1717),
        (0.2, 3.875, 0.1833),
        (0.3, 3.723, 0.1903),
        (0.5, 3.388, 0.2013),
    ),
    0.25: (
        (0.0005, 4.205, 0.0870),
        (0.001, 5.020, 0.1100),
        (0.002, 4.328, 0.1374),
        (0.005, 4.026, 0.1805),
        (0.01, 3.612, 0.2179),
        (0.02, 3.394, 0.2588),
        (0.05, 3.061, 0.3170),
        (0.1, 2.870, 0.3642),
        (0.2, 2.718, 0.4168),
        (0.3, 2.509, 0.4539),
        (0.5, 1.797, 0.5221),
    ),
    0.5: (
        (0.0005, 4.908, 0.1061),
        (0.001, 4.060, 0.1371),
        (0.002, 3.958, 0.1759),
        (0.005, 3.009, 0.2411),
        (0.01, 3.043, 0.3026),
        (0.02, 2.577, 0.3760),
        (0.05, 2.210, 0.4952),
        (0.1, 2.069, 0.6088),
        (0.2, 1.784, 0.7609),
        (0.3, 1.725, 0.8918),
        (0.5, 0.749, 1.2188),
    ),
}

# --- ADWIN tables ----------------------------------------------------------------------------
# River ADWIN (clock=32, max_buckets=5, min_window_length=5, grace_period=10) on stationary runs
# of 10^6 events (`--calibrate`): (delta, false alarms per event), ascending. Between points the
# rate is interpolated in log-log; below the smallest delta it is taken as proportional to delta
# (the bound's tail is linear in delta as delta -> 0, and the measured local slope is 1.2-1.3, so
# this over-predicts false alarms there: conservative).
# standardised numeric signals (clipped standard normal)
ADWIN_NUMERIC: tuple[tuple[float, float], ...] = (
    (0.005, 9.67e-07),
    (0.02, 5.7e-06),
    (0.05, 1.81e-05),
    (0.1, 4.46e-05),
    (0.2, 0.00011),
    (0.5, 0.000361),
    (1, 0.000969),
)
# raw 0/1 signals: per delta, the worst rate of p in (0.01, 0.05, 0.2, 0.5)
ADWIN_BINARY: tuple[tuple[float, float], ...] = (
    (0.005, 4.67e-07),
    (0.02, 2.1e-06),
    (0.05, 8.2e-06),
    (0.1, 2.03e-05),
    (0.2, 5.19e-05),
    (0.5, 0.000175),
    (1, 0.000516),
)
ADWIN_MAX_DELTA = 1.0


def streams_per_event(attributes: int, signals: int, detectors: int) -> int:
    """Detector updates one event of a model causes: each detector on each signal, in `__all__`
    and in the one segment per attribute that the event belongs to."""
    return (1 + attributes) * max(signals, 1) * max(detectors, 1)


def stream_arl(events_between_false_alarms: float, streams: int) -> float:
    """The ARL each detector needs so that a model whose events feed `streams` detector
    updates has, on stationary data, at most one false alarm per `events_between_false_alarms`."""
    if events_between_false_alarms <= 0 or streams < 1:
        raise ValueError("events_between_false_alarms must be > 0 and streams >= 1")
    return float(events_between_false_alarms) * streams


def _ph_row(kind: SignalKind, delta: float | None, p: float | None) -> tuple[float, float]:
    if kind not in ("numeric", "binary"):
        raise ValueError(f"unknown signal kind {kind!r}; known: numeric, binary")
    if delta is None:
        delta = DEFAULT_PH_DELTA[kind]
    if delta not in PH_NUMERIC:
        raise ValueError(f"Page-Hinkley delta {delta!r} is not calibrated; use one of {PH_DELTAS}")
    if kind == "numeric":
        return PH_NUMERIC[delta]
    if p is None:
        raise ValueError("a binary signal needs its rate p")
    rows = PH_BINARY[delta]
    q = min(max(min(p, 1.0 - p), rows[0][0]), rows[-1][0])
    ps = [r[0] for r in rows]
    i = bisect.bisect_left(ps, q)
    if ps[i] == q:
        return rows[i][1], rows[i][2]
    (p0, a0, t0), (p1, a1, t1) = rows[i - 1], rows[i]
    w = (math.log(q) - math.log(p0)) / (math.log(p1) - math.log(p0))
    return a0 + w * (a1 - a0), t0 + w * (t1 - t0)


def page_hinkley_params(
    arl: float, kind: SignalKind = "numeric", delta: float | None = None, p: float | None = None
) -> PageHinkleyParams:
    """Page-Hinkley parameters, in standard deviations of the signal, for the given ARL; `delta`
    defaults by kind (DEFAULT_PH_DELTA); a binary signal needs its rate `p`."""
    a, theta = _ph_row(kind, delta, p)
    threshold = max((math.log(arl) - a) / theta, 1.0)
    k = DEFAULT_PH_DELTA[kind] if delta is None else delta
    return PageHinkleyParams(min_instances=PH_MIN_INSTANCES, delta=k, threshold=threshold, alpha=1.0, mode="both")


def page_hinkley_arl(
    threshold: float, kind: SignalKind = "numeric", delta: float | None = None, p: float | None = None
) -> float:
    """The predicted ARL of a calibrated Page-Hinkley with this threshold (inverse of the above)."""
    a, theta = _ph_row(kind, delta, p)
    return math.exp(a + theta * threshold)


def _adwin_table(kind: SignalKind) -> tuple[tuple[float, float], ...]:
    if kind not in ("numeric", "binary"):
        raise ValueError(f"unknown signal kind {kind!r}; known: numeric, binary")
    return ADWIN_NUMERIC if kind == "numeric" else ADWIN_BINARY


def adwin_params(arl: float, kind: SignalKind = "numeric") -> ADWINParams:
    """ADWIN parameters (River's, but delta) for the given ARL."""
    table = _adwin_table(kind)
    rate = 1.0 / arl
    d0, r0 = table[0]
    if rate <= r0:
        return ADWINParams(delta=d0 * rate / r0)
    for (d1, r1), (d2, r2) in zip(table, table[1:]):
        if rate <= r2:
            w = (math.log(rate) - math.log(r1)) / (math.log(r2) - math.log(r1))
            return ADWINParams(delta=math.exp(math.log(d1) + w * (math.log(d2) - math.log(d1))))
    return ADWINParams(delta=min(table[-1][0], ADWIN_MAX_DELTA))


def adwin_arl(delta: float, kind: SignalKind = "numeric") -> float:
    """The predicted ARL of ADWIN with this delta (inverse of the above, within the table)."""
    table = _adwin_table(kind)
    d0, r0 = table[0]
    if delta <= d0:
        return d0 / (r0 * delta)
    for (d1, r1), (d2, r2) in zip(table, table[1:]):
        if delta <= d2:
            w = (math.log(delta) - math.log(d1)) / (math.log(d2) - math.log(d1))
            return 1.0 / math.exp(math.log(r1) + w * (math.log(r2) - math.log(r1)))
    return 1.0 / table[-1][1]


@persistent("calibration.standardizer")
class Standardizer:
    """z = (x - mean) / scale, clipped, with mean and scale frozen after `warmup` values.

    `binary=True` is for 0/1 streams: the warm-up lasts until `warmup` values and
    BINARY_MIN_COUNT ones and zeros have been seen (at most BINARY_MAX_WARMUP values); the scale
    is sqrt(p (1 - p)) of the Laplace-smoothed rate p = (ones + 1) / (n + 2), never 0; nothing is
    clipped. For other streams a constant warm-up gets a tiny scale, so that any later change of
    value stands out.

    >>> s = Standardizer(warmup=3)
    >>> [s.transform(x) for x in (9.0, 11.0, 13.0)]
    [None, None, None]
    >>> s.center, s.scale, s.transform(14.0), s.transform(100.0)
    (11.0, 2.0, 1.5, 3.0)
    """

    __slots__ = ("warmup", "binary", "clip", "_n", "_mean", "_m2", "center", "scale")

    def __init__(self, warmup: int = DEFAULT_WARMUP, binary: bool = False, clip: float | None = CLIP):
        if warmup < 2:
            raise ValueError("warmup must be >= 2")
        self.warmup = warmup
        self.binary = binary
        self.clip = None if binary else clip  # a 0/1 stream's rare jump is its signal: never clipped
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self.center: float | None = None
        self.scale: float | None = None

    @property
    def learning(self) -> bool:
        return self.scale is None

    @property
    def remaining(self) -> int:
        return 0 if self.scale is not None else self.warmup - self._n

    @property
    def count(self) -> int:
        """Values learnt from."""
        return self._n

    @property
    def rate(self) -> float | None:
        """The smoothed rate of ones (binary streams), once learnt."""
        if not self.binary or self.scale is None:
            return None
        return (self._mean * self._n + 1.0) / (self._n + 2.0)

    @property
    def rate_low(self) -> float | None:
        """A cautious rate for thresholds: the rate of the rarer value, one standard error down.
        A rarer value needs a higher threshold, so an error in the estimate errs to fewer alarms."""
        p = self.rate
        if p is None:
            return None
        q = min(p, 1.0 - p)
        return max(q - math.sqrt(q * (1.0 - q) / self._n), 1.0 / (self._n + 2.0))

    def transform(self, x: float) -> float | None:
        scale = self.scale
        if scale is not None:
            z = (x - self.center) / scale
            c = self.clip
            if c is not None:
                if z > c:
                    return c
                if z < -c:
                    return -c
            return z
        self._n += 1
        d = x - self._mean
        self._mean += d / self._n
        self._m2 += d * (x - self._mean)
        n = self._n
        if n >= self.warmup:
            if self.binary and n < BINARY_MAX_WARMUP:
                ones = round(self._mean * n)
                if min(ones, n - ones) < BINARY_MIN_COUNT:
                    return None
            self._freeze()
        return None

    def _freeze(self) -> None:
        n = self._n
        if self.binary:
            p = (self._mean * n + 1.0) / (n + 2.0)
            self.center, self.scale = self._mean, math.sqrt(p * (1.0 - p))
            return
        sd = math.sqrt(self._m2 / (n - 1))
        self.center = self._mean
        self.scale = sd if sd > 0.0 else 1e-9 * max(1.0, abs(self._mean))


def raw_detector(name: str, arl: float, kind: SignalKind) -> ADWINDetector | None:
    """The detector of a calibrated stream that reads raw values (ADWIN on a 0/1 stream: what its
    bound is made for), built at once; None for one that reads z-scores."""
    return ADWINDetector(adwin_params(arl, "binary")) if name == "adwin" and kind == "binary" else None


def standardised_detector(name: str, arl: float, kind: SignalKind, ph_delta: float,
                          std: Standardizer) -> ADWINDetector | PageHinkleyDetector:
    """The detector of a calibrated stream that reads z-scores of `std`, built once `std` is
    learnt (a binary Page-Hinkley's threshold depends on the learnt rate)."""
    if name == "adwin":
        return ADWINDetector(adwin_params(arl, "numeric"))
    return PageHinkleyDetector(page_hinkley_params(arl, kind, ph_delta, std.rate_low))


@persistent("calibration.detector")
class CalibratedDetector:
    """A River detector whose threshold comes from a per-stream ARL; the `Detector` protocol.

    numeric signals: standardised, then ADWIN or Page-Hinkley with the numeric tables.
    binary signals (0/1 errors): ADWIN raw with the binary table (no warm-up); Page-Hinkley
    standardised by the warm-up error rate, threshold from the binary table at a cautious
    (one standard error lower) rate.
    Nothing is detected during the warm-up.

    One detector on one stream, with its own Standardizer (bench/quality.py, tests): the bank's
    signals (detectors/bank.py `SignalState`) standardise once for all their detectors, with the
    same `raw_detector` / `standardised_detector` builds. Checkpoints written before a signal was
    one object hold these (`bank.signal` version 1), and are upgraded from them.
    """

    __slots__ = ("name", "arl", "kind", "ph_delta", "_std", "_inner")

    def __init__(
        self,
        name: str,
        arl: float,
        kind: SignalKind = "numeric",
        warmup: int = DEFAULT_WARMUP,
        ph_delta: float | None = None,
        clip: float | None = CLIP,
    ):
        if name not in ("adwin", "page_hinkley"):
            raise ValueError(f"unknown detector {name!r}; known: adwin, page_hinkley")
        if kind not in ("numeric", "binary"):
            raise ValueError(f"unknown signal kind {kind!r}; known: numeric, binary")
        if ph_delta is None:
            ph_delta = DEFAULT_PH_DELTA[kind]
        _ph_row("numeric", ph_delta, None)  # refuse an uncalibrated delta now, not after warm-up
        self.name = name
        self.arl = float(arl)
        self.kind = kind
        self.ph_delta = ph_delta
        self._inner: ADWINDetector | PageHinkleyDetector | None = raw_detector(name, self.arl, kind)
        self._std: Standardizer | None = None
        if self._inner is None:
            self._std = Standardizer(warmup, binary=kind == "binary", clip=clip)

    @property
    def takes_z(self) -> bool:
        """True if this detector reads standardised values (False: raw ADWIN on a 0/1 stream)."""
        return self._std is not None

    def update(self, x: float) -> bool:
        std = self._std
        if std is None:
            return self._inner.update(x)
        z = std.transform(x)
        if z is None:
            return False
        inner = self._inner
        if inner is None:
            inner = self._inner = self._build(std)
        return inner.update(z)

    def _build(self, std: Standardizer) -> ADWINDetector | PageHinkleyDetector:
        return standardised_detector(self.name, self.arl, self.kind, self.ph_delta, std)

    @property
    def inner(self) -> ADWINDetector | PageHinkleyDetector | None:
        return self._inner

    @property
    def direction(self) -> int:
        return 0 if self._inner is None else self._inner.direction

    @property
    def warmup_count(self) -> int:
        """Values consumed by the warm-up so far (0 for raw ADWIN on a 0/1 stream)."""
        return 0 if self._std is None else self._std.count

    def statistics(self) -> dict[str, float]:
        return calibrated_statistics(self._inner, self._std)


def calibrated_statistics(inner: ADWINDetector | PageHinkleyDetector | None, std: Standardizer | None) -> dict[str, float]:
    """A calibrated detector's statistics: its inner detector's, with the z-scores' center and
    scale when it reads them (`std`); only the warm-up left while it is not built yet."""
    if inner is None:
        return {"warmup_remaining": float(std.remaining)}
    out = inner.statistics()
    if std is not None:
        out["center"] = float(std.center)
        out["scale"] = float(std.scale)
    return out
