"""Detection quality harness: how fast driftline's detectors find known changes, and how often
they fire on stationary data (issue 7, parts 2 and 3).

    .venv/bin/python bench/quality.py [--quick] [--seeds N] [--out bench/results] [--jobs N]
    .venv/bin/python bench/quality.py --calibrate     # recompute the tables of detectors/calibration.py
    .venv/bin/python bench/quality.py --verify        # long runs: false alarms at budgets of 1e6, 1e7
    .venv/bin/python bench/quality.py --challenger    # champion vs challenger: A/A errors, time to find better
    .venv/bin/python bench/quality.py --estimate      # label-free accuracy: error with label delays 5m-1d

Every stream is replayed, one value at a time, through the detector objects that production
runs: `detectors.drift.build_detector` (River's defaults on the raw signal) and
`detectors.calibration.CalibratedDetector` (standardised signal, thresholds from a per-stream
false-alarm budget, the ARL). Streams, all seeded:

- error streams (0/1 per labelled prediction): Bernoulli jumps of the error rate;
- River's synthetic concepts (SEA, Agrawal, STAGGER) with `ConceptDriftStream` switching
  concept at a known position (a sigmoid 50 events wide); the error stream is that of a Hoeffding tree trained on 3,000
  examples of the first concept and then frozen, as a deployed model is;
- numeric features: Gaussian mean shifts of 0.25 to 2 standard deviations;
- stationary streams for false alarms: the pre-change distributions, a Gaussian in the
  thousands (scale), and non-normal shapes (robustness of the normal calibration);
- the annotated change-point series of `river.drift.datasets` (real data, timestamps).

Reported per stream x detector x parameter set: detection rate (a detection within the
post-change segment, or within a tolerance after an annotated change point), mean and median
delay in events and in seconds (1 event/s for synthetic streams, the series' own timestamps for
the annotated ones), and false alarms per 100k events on stationary data. Outputs:
`quality.json` (everything), `quality.md` (tables for the README and docs/quality.md) and
`quality.png` (the delay vs false-alarm trade-off).

`--calibrate` re-derives the constants of `detectors/calibration.py` by simulation: Page-Hinkley
with a vectorised replica of River's update (checked against River on the way), ADWIN with
River's own code; it writes `quality-calibration.json` and prints the constants.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from driftline.detectors import calibration as cal  # noqa: E402
from driftline.detectors.drift import build_detector  # noqa: E402
from driftline.detectors.spec import ADWINParams, PageHinkleyParams  # noqa: E402

BASE_SEED = 20_240_707


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded by (BASE_SEED, key): the same stream whatever the process or order."""
    words = [BASE_SEED] + [zlib.crc32(str(k).encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def int_seed(*key: object) -> int:
    return int(rng_for(*key).integers(0, 2**31 - 1))


# ---------------------------------------------------------------------------------------------
# Detector configurations
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """One detector with one parameter set. `arl=None`: River's defaults on the raw signal."""

    detector: str  # adwin | page_hinkley
    arl: float | None = None
    ph_delta: float | None = None  # None: the default for the signal's kind

    @property
    def label(self) -> str:
        if self.arl is None:
            return f"river-{'ph' if self.detector == 'page_hinkley' else 'adwin'}"
        if self.detector == "adwin":
            name = "adwin"
        elif self.ph_delta is None:
            name = "ph"
        else:
            name = f"ph(k={self.ph_delta:g})"
        return f"{name}@{self.arl:.0e}".replace("e+0", "e")

    @property
    def family(self) -> str:
        """The curve this config belongs to in the trade-off plot."""
        if self.arl is None:
            return self.label
        if self.detector == "adwin":
            return "adwin"
        return "ph" if self.ph_delta is None else f"ph(k={self.ph_delta:g})"

    def k(self, kind: str) -> float | None:
        """Page-Hinkley's drift allowance in standard deviations (calibrated configs)."""
        if self.detector != "page_hinkley" or self.arl is None:
            return None
        return cal.DEFAULT_PH_DELTA[kind] if self.ph_delta is None else self.ph_delta

    def make(self, kind: str, warmup: int = cal.DEFAULT_WARMUP):
        if self.arl is None:
            return build_detector(self.detector, ADWINParams(), PageHinkleyParams())
        return cal.CalibratedDetector(self.detector, self.arl, kind, warmup=warmup, ph_delta=self.ph_delta)

    def params(self, kind: str, p: float | None = None) -> dict:
        if self.arl is None:
            return dataclasses.asdict(ADWINParams() if self.detector == "adwin" else PageHinkleyParams())
        if self.detector == "adwin":
            return dataclasses.asdict(cal.adwin_params(self.arl, kind))
        return dataclasses.asdict(cal.page_hinkley_params(self.arl, kind, self.ph_delta, p))


RIVER = (Config("adwin"), Config("page_hinkley"))


def calibrated(arls: Iterable[float], ph_deltas: Sequence[float] = cal.PH_DELTAS) -> list[Config]:
    out = []
    for arl in arls:
        out.append(Config("adwin", arl))
        out.extend(Config("page_hinkley", arl, k) for k in ph_deltas)
    return out


def watched_from(det) -> int:
    """Index of the first value that could raise a detection: after the warm-up, if any."""
    return getattr(det, "warmup_count", 0)


def detections(det, values: Iterable[float]) -> list[int]:
    """Indices of the values on which `det.update` reported a detection."""
    upd = det.update
    return [i for i, x in enumerate(values) if upd(x)]


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------

def bernoulli_jump(p0: float, p1: float, n0: int, n1: int, rng: np.random.Generator) -> list[float]:
    u = rng.random(n0 + n1)
    p = np.where(np.arange(n0 + n1) < n0, p0, p1)
    return (u < p).astype(float).tolist()


def gaussian_shift(shift: float, n0: int, n1: int, rng: np.random.Generator, scale: float = 1.0,
                   offset: float = 0.0) -> list[float]:
    x = rng.standard_normal(n0 + n1)
    x[n0:] += shift
    return (offset + scale * x).tolist()


def _surprisal_table():
    cats = np.arange(1, 21)
    p = 1.0 / cats**1.1
    p /= p.sum()
    return p, -np.log(p)


def stationary(name: str, n: int, rng: np.random.Generator) -> list[float]:
    """Stationary streams by name: `bernoulli:p`, `normal`, `normal_x1000`, and the shapes of
    the robustness table (a numeric feature need not be normal)."""
    if name.startswith("bernoulli:"):
        return (rng.random(n) < float(name.split(":")[1])).astype(float).tolist()
    if name == "normal":
        x = rng.standard_normal(n)
    elif name == "normal_x1000":
        x = 5000.0 + 1000.0 * rng.standard_normal(n)
    elif name == "student_t3":
        x = rng.standard_t(3, n)
    elif name == "lognormal":
        x = rng.lognormal(0.0, 1.0, n)
    elif name == "exponential":
        x = rng.exponential(1.0, n)
    elif name == "uniform":
        x = rng.random(n)
    elif name == "poisson2":
        x = rng.poisson(2.0, n).astype(float)
    elif name == "zipf_surprisal":
        p, s = _surprisal_table()
        x = s[rng.choice(len(p), size=n, p=p)]
    else:
        raise ValueError(f"unknown stationary stream {name!r}")
    return x.tolist()


ROBUSTNESS_SHAPES = ("normal", "student_t3", "lognormal", "exponential", "uniform", "poisson2", "zipf_surprisal")

# Synthetic concepts: (generator, first concept, second concept). The second concept is chosen
# so that the frozen model's error rate rises (measured: SEA 0.12 -> 0.19, Agrawal 0.05 ->
# 0.52, STAGGER 0.12 -> 0.56).
SYNTH = {
    "SEA 0->1": ("SEA", 0, 1),
    "Agrawal 0->2": ("Agrawal", 0, 2),
    "STAGGER 0->1": ("STAGGER", 0, 1),
}


def _synth_gen(name: str, concept: int, seed: int):
    from river.datasets import synth

    if name == "SEA":
        return synth.SEA(variant=concept, noise=0.1, seed=seed)
    if name == "Agrawal":
        return synth.Agrawal(classification_function=concept, seed=seed, perturbation=0.05)
    if name == "STAGGER":
        return synth.STAGGER(classification_function=concept, seed=seed)
    raise ValueError(name)


_MODELS: dict[str, object] = {}


def frozen_model(gen: str, concept: int):
    """A Hoeffding tree trained on 3,000 examples of `concept`, then never updated."""
    key = f"{gen}:{concept}"
    if key not in _MODELS:
        from river import tree

        model = tree.HoeffdingTreeClassifier(grace_period=50)
        for x, y in itertools.islice(_synth_gen(gen, concept, int_seed("train", key)), 3000):
            model.learn_one(x, y)
        _MODELS[key] = model
    return _MODELS[key]


def synth_width(n0: int, n1: int) -> int:
    """ConceptDriftStream's transition width: 50 events (near-abrupt), or wider on long streams.
    River computes exp(-4 (t - position) / width) in floats: it overflows for width < ~4 |t -
    position| / 709, so width 1 (abrupt) fails on any stream longer than ~180 events."""
    return max(50, math.ceil(4 * max(n0, n1) / 700))


def synth_errors(case: str, n0: int, n1: int, seed: int, drift: bool = True) -> list[float]:
    """The frozen model's 0/1 error stream; the concept switches at index n0 (if `drift`)."""
    from river.datasets import synth

    gen, a, b = SYNTH[case]
    model = frozen_model(gen, a)
    if drift:
        stream = synth.ConceptDriftStream(
            stream=_synth_gen(gen, a, seed), drift_stream=_synth_gen(gen, b, seed + 1),
            position=n0, width=synth_width(n0, n1), seed=seed,
        )
    else:
        stream = _synth_gen(gen, a, seed)
    predict = model.predict_one
    return [0.0 if predict(x) == y else 1.0 for x, y in itertools.islice(stream, n0 + n1)]


# ---------------------------------------------------------------------------------------------
# Change cases
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    family: str  # error | synthetic | numeric
    name: str
    kind: str  # binary | numeric: how the signal is calibrated
    make: Callable[[int, int, int], list[float]]  # (n0, n1, seed index) -> values
    base_rate: float | None = None  # binary: error rate before the change
    shift_sigma: float | None = None  # size of the change in pre-change standard deviations


def _bern_case(p0, p1):
    return Case("error", f"error {p0:.2f}->{p1:.2f}", "binary",
                lambda n0, n1, s: bernoulli_jump(p0, p1, n0, n1, rng_for("bern", p0, p1, s)),
                base_rate=p0, shift_sigma=(p1 - p0) / math.sqrt(p0 * (1 - p0)))


def _gauss_case(mu):
    return Case("numeric", f"normal +{mu:g} sd", "numeric",
                lambda n0, n1, s: gaussian_shift(mu, n0, n1, rng_for("gauss", mu, s)), shift_sigma=mu)


def _synth_case(name):
    return Case("synthetic", name, "binary", lambda n0, n1, s: synth_errors(name, n0, n1, int_seed("synth", name, s)))


CASES = [
    _bern_case(0.05, 0.10), _bern_case(0.05, 0.30), _bern_case(0.20, 0.30),
    *[_synth_case(n) for n in SYNTH],
    _gauss_case(0.25), _gauss_case(0.5), _gauss_case(1.0), _gauss_case(2.0),
]


CASE_ORDER = {c.name: i for i, c in enumerate(CASES)}


def score_change(hits: Sequence[int], cp: int, n_total: int, watched_from: int) -> dict:
    """One stream with one change at `cp`: the first detection at or after it (delay = post-change
    events read up to and including the detecting one), and detections before it (false alarms
    among `cp - watched_from` watched stationary events)."""
    after = [h for h in hits if h >= cp]
    return {
        "delay": (after[0] - cp + 1) if after else None,
        "false_alarms": sum(1 for h in hits if h < cp),
        "stationary_events": max(cp - watched_from, 0),
        "post_events": n_total - cp,
    }


def _delay_stats(delays: list[int]) -> dict:
    if not delays:
        return {"delay_mean": None, "delay_median": None, "delay_p90": None}
    d = sorted(delays)
    return {
        "delay_mean": statistics.fmean(d),
        "delay_median": statistics.median(d),
        "delay_p90": d[min(len(d) - 1, int(math.ceil(0.9 * len(d))) - 1)],
    }


def run_case(case: Case, configs: Sequence[Config], seeds: int, n0: int, n1: int, warmup: int) -> list[dict]:
    """Every config on `seeds` streams of the case; one row per config."""
    acc = {c.label: {"delays": [], "fa": 0, "events": 0, "missed": 0} for c in configs}
    rate = []
    for s in range(seeds):
        values = case.make(n0, n1, s)
        rate.append(sum(values[:n0]) / n0)
        for c in configs:
            det = c.make(case.kind, warmup)
            hits = detections(det, values)
            r = score_change(hits, n0, len(values), watched_from(det))
            a = acc[c.label]
            a["fa"] += r["false_alarms"]
            a["events"] += r["stationary_events"]
            if r["delay"] is None:
                a["missed"] += 1
            else:
                a["delays"].append(r["delay"])
    p = case.base_rate if case.base_rate is not None else (statistics.fmean(rate) if case.kind == "binary" else None)
    rows = []
    for c in configs:
        a = acc[c.label]
        rows.append({
            "family": case.family, "case": case.name, "kind": case.kind, "config": c.label,
            "curve": c.family, "detector": c.detector, "arl": c.arl, "ph_delta": c.k(case.kind),
            "params": c.params(case.kind, p), "seeds": seeds, "change_at": n0, "post_events": n1,
            "shift_sigma": case.shift_sigma, "base_rate": p,
            "detection_rate": len(a["delays"]) / seeds,
            **_delay_stats(a["delays"]),
            "pre_change_false_alarms": a["fa"], "pre_change_events": a["events"],
        })
    return rows


def run_stationary(name: str, kind: str, configs: Sequence[Config], seeds: int, n: int, warmup: int,
                   values_for: Callable[[int], list[float]] | None = None) -> list[dict]:
    """False alarms per 100k watched events; each seed is a fresh stream with its own warm-up,
    as each segment of production has."""
    counts = {c.label: [0, 0] for c in configs}
    for s in range(seeds):
        values = values_for(s) if values_for else stationary(name, n, rng_for("stationary", name, s))
        for c in configs:
            det = c.make(kind, warmup)
            hits = detections(det, values)
            counts[c.label][0] += len(hits)
            counts[c.label][1] += len(values) - watched_from(det)
    rows = []
    for c in configs:
        k, ev = counts[c.label]
        lo, hi = poisson_ci(k)
        rows.append({
            "stream": name, "kind": kind, "config": c.label, "curve": c.family, "detector": c.detector,
            "arl": c.arl, "ph_delta": c.k(kind),
            "seeds": seeds, "events": ev, "false_alarms": k,
            "fa_per_100k": 1e5 * k / ev, "fa_per_100k_ci95": [1e5 * lo / ev, 1e5 * hi / ev],
            "budget_fa_per_100k": None if c.arl is None else 1e5 / c.arl,
        })
    return rows


def poisson_ci(k: int) -> tuple[float, float]:
    """Exact 95% interval of a Poisson count (chi-square bounds)."""
    from scipy.stats import chi2

    lo = 0.0 if k == 0 else chi2.ppf(0.025, 2 * k) / 2
    return lo, chi2.ppf(0.975, 2 * k + 2) / 2


# ---------------------------------------------------------------------------------------------
# Annotated change-point series (river.drift.datasets, from the TCPD benchmark)
# ---------------------------------------------------------------------------------------------

def annotated_series() -> dict[str, dict]:
    """name -> {signals: {name: values}, t: seconds, cps: merged annotated change points}.

    The annotations index the series as TCPD publishes them: Apple is River's CSV taken every 3rd
    row, BrentSpotPrice is from 2000 on, every 10th row (500 points, as in TCPD)."""
    from river.drift import datasets as d

    out = {}
    for cls in (d.AirlinePassengers, d.Apple, d.Bitcoin, d.BrentSpotPrice, d.Occupancy, d.RunLog, d.UKCoalEmploy):
        ds = cls()
        rows = list(ds)
        if cls is d.Apple:
            rows = rows[::3]
        if cls is d.BrentSpotPrice:
            rows = [r for r in rows if next(iter(r[0].values())).year >= 2000][::10]
        t = [next(iter(x.values())).replace(tzinfo=dt.timezone.utc).timestamp() for x, _ in rows]
        if isinstance(rows[0][1], dict):
            keys = ["Close", "Volume"] if cls is d.Apple else list(rows[0][1])
            signals = {k: [float(y[k]) for _, y in rows] for k in keys}
        else:
            signals = {"value": [float(y) for _, y in rows]}
        n = len(t)
        tol = max(10, n // 20)
        cps = merge_points(sorted({c for a in ds.annotations.values() for c in a}), tol)
        out[cls.__name__] = {"signals": signals, "t": t, "cps": cps, "n": n, "tolerance": tol,
                             "warmup": max(20, min(cal.DEFAULT_WARMUP, n // 10))}
    return out


def merge_points(points: Sequence[int], tol: int) -> list[int]:
    """Annotators' change points, pooled; points within `tol` of a kept one are the same change."""
    kept: list[int] = []
    for p in sorted(points):
        if not kept or p - kept[-1] > tol:
            kept.append(p)
    return kept


def score_annotated(hits: Sequence[int], cps: Sequence[int], tol: int, t: Sequence[float]) -> dict:
    """A change point is found by the first detection in [cp, cp + tol]; detections in no such
    window are false alarms."""
    delays, delays_s, used = [], [], set()
    for cp in cps:
        inside = [h for h in hits if cp <= h <= cp + tol]
        if inside:
            delays.append(inside[0] - cp + 1)
            delays_s.append(t[inside[0]] - t[cp])
        used.update(inside)
    fa = sum(1 for h in hits if h not in used)
    return {"found": len(delays), "delays": delays, "delays_seconds": delays_s, "false_alarms": fa, "detections": len(hits)}


def run_annotated(name: str, series: dict, configs: Sequence[Config]) -> list[dict]:
    rows = []
    for c in configs:
        hits: set[int] = set()
        for values in series["signals"].values():
            hits.update(detections(c.make("numeric", series["warmup"]), values))
        r = score_annotated(sorted(hits), series["cps"], series["tolerance"], series["t"])
        n_cp = len(series["cps"])
        prec = (r["detections"] - r["false_alarms"]) / r["detections"] if r["detections"] else None
        rows.append({
            "series": name, "config": c.label, "points": series["n"], "signals": list(series["signals"]),
            "change_points": n_cp, "tolerance": series["tolerance"], "warmup": series["warmup"],
            "detection_rate": r["found"] / n_cp if n_cp else None, "detections": r["detections"],
            "false_alarms": r["false_alarms"], "precision": prec,
            "delay_median": statistics.median(r["delays"]) if r["delays"] else None,
            "delay_median_seconds": statistics.median(r["delays_seconds"]) if r["delays_seconds"] else None,
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Calibration (--calibrate): vectorised Page-Hinkley replica, ADWIN on River's own code
# ---------------------------------------------------------------------------------------------

def ph_replica_alarms(draw: Callable[[np.random.Generator, tuple[int, int]], np.ndarray], streams: int,
                     length: int, delta: float, thresholds: Sequence[float], seed: int,
                     min_instances: int = cal.PH_MIN_INSTANCES, alpha: float = 1.0,
                     record: bool = False):
    """River's `PageHinkley.update`, line for line, over `streams` independent streams and every
    threshold at once (numpy, one row per threshold). A stream restarts after each alarm, as
    River's does on the next update. `thresholds` is one per row, or an array (rows, streams).
    Returns alarm counts per row (and, with `record`, the alarm indices of stream 0 per row, to
    compare with River)."""
    rng = np.random.default_rng(seed)
    h = np.asarray(thresholds, float)
    if h.ndim == 1:
        h = h[:, None]  # one threshold per row, the same for every stream
    shape = (h.shape[0], streams)
    n = np.zeros(shape)
    mean = np.zeros(shape)
    s_inc = np.zeros(shape)
    s_dec = np.zeros(shape)
    min_inc = np.full(shape, np.inf)
    max_dec = np.full(shape, -1.0)
    alarms = np.zeros(shape[0], dtype=np.int64)
    where: list[list[int]] = [[] for _ in range(shape[0])]
    t = 0
    block = 512
    for t0 in range(0, length, block):
        X = draw(rng, (min(block, length - t0), streams))
        for x in X:
            n += 1.0
            mean += (1.0 / n) * (x - mean)
            dev = x - mean
            s_inc = alpha * s_inc + dev - delta
            s_dec = alpha * s_dec + dev + delta
            np.minimum(min_inc, s_inc, out=min_inc)
            np.maximum(max_dec, s_dec, out=max_dec)
            hit = (n >= min_instances) & (((s_inc - min_inc) > h) | ((max_dec - s_dec) > h))
            if hit.any():
                alarms += hit.sum(axis=1)
                if record:
                    for i in np.flatnonzero(hit[:, 0]):
                        where[i].append(t)
                n[hit] = 0.0
                mean[hit] = 0.0
                s_inc[hit] = 0.0
                s_dec[hit] = 0.0
                min_inc[hit] = np.inf
                max_dec[hit] = -1.0
            t += 1
    return (alarms, where) if record else alarms


def check_replica(seed: int = 7, length: int = 20_000) -> bool:
    """The replica's alarms on stream 0 equal River's PageHinkley (through our wrapper)."""
    thresholds = [4.0, 8.0]
    draws: list[np.ndarray] = []

    def draw(rng, shape):
        x = rng.standard_normal(shape)
        draws.append(x[:, 0].copy())
        return x

    _, where = ph_replica_alarms(draw, 2, length, 0.5, thresholds, seed, record=True)
    xs = np.concatenate(draws).tolist()
    for h, got in zip(thresholds, where):
        det = build_detector("page_hinkley", ADWINParams(), PageHinkleyParams(
            min_instances=cal.PH_MIN_INSTANCES, delta=0.5, threshold=h, alpha=1.0, mode="both"))
        if detections(det, xs) != got:
            return False
    return True


def lundberg_theta(values: np.ndarray, probs: np.ndarray, k: float, direction: int) -> float:
    """The positive root theta of E[exp(theta (d z - k))] = 1 (d = +1 up, -1 down): the rate at
    which the ARL of a CUSUM on z grows with its threshold, ARL ~ C exp(theta h)."""
    from scipy.optimize import brentq

    y = direction * values - k
    if y.max() <= 0:
        return math.inf
    f = lambda th: float(np.dot(probs, np.exp(th * y))) - 1.0  # noqa: E731
    hi = 1.0
    while f(hi) < 0:
        hi *= 2
    return brentq(f, 1e-9, hi)


def clipped_normal_support(clip: float = cal.CLIP, points: int = 4001):
    """A fine discretisation of clip(Z, -clip, clip), Z standard normal (for lundberg_theta)."""
    from scipy.stats import norm

    z = np.linspace(-clip, clip, points)
    w = norm.pdf(z) * (z[1] - z[0])
    w[0] += norm.cdf(-clip)
    w[-1] += norm.sf(clip)
    return z, w / w.sum()


def calibrate_ph(kind: str, k: float, p: float | None, streams: int, length: int, seed: int) -> dict:
    if kind == "numeric":
        z, w = clipped_normal_support()
        c = cal.CLIP

        def draw(rng, shape):
            return np.clip(rng.standard_normal(shape), -c, c)
    else:
        s = math.sqrt(p * (1 - p))
        z, w = np.array([(1 - p) / s, -p / s]), np.array([p, 1 - p])

        def draw(rng, shape):
            return ((rng.random(shape) < p) - p) / s
    theta = min(lundberg_theta(z, w, k, +1), lundberg_theta(z, w, k, -1))
    # a pilot run places the thresholds so that the main run sees ARLs of ~2e3 to ~2e5
    pilot_h = [4.0 / theta, 6.0 / theta, 8.0 / theta]
    pilot = ph_replica_alarms(draw, 200, 20_000, k, pilot_h, seed + 1)
    good = [(h, math.log(4e6 / c), int(c)) for h, c in zip(pilot_h, pilot) if c >= 20]
    a0 = sum(c * (la - theta * h) for h, la, c in good) / sum(c for _, _, c in good)
    hs = [(math.log(target) - a0) / theta for target in (2e3, 1e4, 5e4, 2e5)]
    counts = ph_replica_alarms(draw, streams, length, k, hs, seed)
    arl = [streams * length / max(int(c), 1) for c in counts]
    # intercept at the theoretical slope, weighted by alarm counts (Poisson error ~ 1/sqrt(n)),
    # from the upper three points (ARL >= ~1e4: the lowest is short of the exponential regime)
    pts = [(h, math.log(a), int(c)) for h, a, c in list(zip(hs, arl, counts))[1:] if c >= 20]
    a = sum(c * (la - theta * h) for h, la, c in pts) / sum(c for _, _, c in pts)
    free = np.polyfit([q[0] for q in pts], [q[1] for q in pts], 1, w=[math.sqrt(q[2]) for q in pts]) if len(pts) >= 2 else [None, None]
    return {"kind": kind, "delta": k, "p": p, "theta": theta, "a": a, "free_fit_slope": float(free[0]) if free[0] is not None else None,
            "thresholds": hs, "alarms": [int(c) for c in counts], "arl": arl, "events": streams * length}


def calibrate_adwin(kind: str, p: float | None, runs: int, length: int, seed: int,
                    deltas: Sequence[float] = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.005)) -> dict:
    """ADWIN (River's code, through our wrapper) on stationary runs; deltas below 0.05 get 3x
    the runs, their alarms being rarer."""
    out = []
    for delta in deltas:
        k = 0
        n_runs = runs if delta >= 0.05 else 3 * runs
        for r in range(n_runs):
            rng = np.random.default_rng([seed, r])
            if kind == "numeric":
                xs = np.clip(rng.standard_normal(length), -cal.CLIP, cal.CLIP).tolist()
            else:
                xs = (rng.random(length) < p).astype(float).tolist()
            k += len(detections(build_detector("adwin", ADWINParams(delta=delta), PageHinkleyParams()), xs))
        out.append({"delta": delta, "alarms": k, "events": n_runs * length, "rate": k / (n_runs * length)})
    return {"kind": kind, "p": p, "points": out}


def adwin_table(points: list[dict]) -> list[tuple[float, float]]:
    """(delta, false alarms per event), ascending in delta, made strictly increasing (a smaller
    delta never has more false alarms: where noise says so, the larger rate is kept)."""
    pts = sorted((q for q in points if q["alarms"] > 0), key=lambda q: q["delta"])
    out: list[tuple[float, float]] = []
    for q in pts:
        r = q["rate"]
        if out and r <= out[-1][1]:
            r = out[-1][1] * 1.001
        out.append((q["delta"], r))
    return out


def local_slopes(points: list[dict]) -> list[float]:
    pts = sorted(points, key=lambda q: -q["delta"])
    return [math.log(a["rate"] / b["rate"]) / math.log(a["delta"] / b["delta"])
            for a, b in zip(pts, pts[1:]) if a["alarms"] and b["alarms"]]


BINARY_PS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
ADWIN_BINARY_PS = (0.01, 0.05, 0.2, 0.5)


def _calibration_task(task: tuple) -> dict:
    what, kind, k, p = task
    if what == "ph":
        return calibrate_ph(kind, k, p, streams=1000, length=50_000, seed=int_seed("cal-ph", kind, k, p))
    return calibrate_adwin(kind, p, runs=10, length=1_000_000, seed=int_seed("cal-adwin", kind, p))


def calibrate(out: Path, jobs: int) -> None:
    t0 = time.time()
    assert check_replica(), "the Page-Hinkley replica disagrees with River: fix it before calibrating"
    tasks = [("adwin", "numeric", None, None)] + [("adwin", "binary", None, p) for p in ADWIN_BINARY_PS]
    tasks += [("ph", "numeric", k, None) for k in cal.PH_DELTAS]
    tasks += [("ph", "binary", k, p) for k in cal.PH_DELTAS for p in BINARY_PS]
    with cf.ProcessPoolExecutor(jobs) as ex:
        results = list(ex.map(_calibration_task, tasks))
    adwin = [r for r in results if "points" in r]
    ph = [r for r in results if "points" not in r]
    num = next(r for r in adwin if r["kind"] == "numeric")
    num_table = adwin_table(num["points"])
    # binary: the worst (highest) false-alarm rate over the tested error rates, per delta
    worst = [max((r["points"][i] for r in adwin if r["kind"] == "binary"), key=lambda q: q["rate"])
             for i in range(len(num["points"]))]
    bin_table = adwin_table(worst)
    lines = ["PH_NUMERIC: dict[float, tuple[float, float]] = {"]
    for r in sorted((r for r in ph if r["kind"] == "numeric"), key=lambda r: r["delta"]):
        lines.append(f"    {r['delta']}: ({r['a']:.3f}, {r['theta']:.4f}),")
    lines.append("}")
    lines.append("PH_BINARY: dict[float, tuple[tuple[float, float, float], ...]] = {")
    for k in cal.PH_DELTAS:
        rows = sorted((r for r in ph if r["kind"] == "binary" and r["delta"] == k), key=lambda r: r["p"])
        lines.append(f"    {k}: (")
        lines.extend(f"        ({r['p']}, {r['a']:.3f}, {r['theta']:.4f})," for r in rows)
        lines.append("    ),")
    lines.append("}")
    fmt = lambda t: "(" + ", ".join(f"({d:g}, {r:.3g})" for d, r in t) + ")"  # noqa: E731
    lines.append(f"ADWIN_NUMERIC: tuple[tuple[float, float], ...] = {fmt(num_table)}")
    lines.append(f"ADWIN_BINARY: tuple[tuple[float, float], ...] = {fmt(bin_table)}")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality-calibration.json").write_text(json.dumps({
        "meta": _meta(time.time() - t0, jobs), "page_hinkley": ph, "adwin": adwin,
        "adwin_tables": {"numeric": num_table, "binary_worst": bin_table},
        "adwin_local_slopes": {f"{r['kind']}:{r['p']}": local_slopes(r["points"]) for r in adwin},
        "constants": text,
    }, indent=1))
    print(text)
    print(f"# calibration took {time.time() - t0:.0f} s; details in {out / 'quality-calibration.json'}")


def verify_ph(kind: str, k: float, arls: Sequence[float], p: float | None, streams: int, length: int,
              seed: int, warmup: int = cal.DEFAULT_WARMUP) -> dict:
    """Long stationary runs of the production pipeline, vectorised: per stream, a warm-up
    estimate of mean and scale (as `Standardizer`), then Page-Hinkley with the threshold
    `calibration.page_hinkley_params` gives for that estimate."""
    rng = np.random.default_rng(seed)
    if kind == "numeric":
        w = rng.standard_normal((warmup, streams))
        m, sd = w.mean(axis=0), w.std(axis=0, ddof=1)
        c = cal.CLIP

        def draw(r, shape):
            return np.clip((r.standard_normal(shape) - m) / sd, -c, c)
        h = [[cal.page_hinkley_params(a, "numeric", k).threshold] * streams for a in arls]
    else:
        # Standardizer(binary=True): at least `warmup` values and BINARY_MIN_COUNT of each value
        cap = cal.BINARY_MAX_WARMUP
        cs = (rng.random((cap, streams)) < p).cumsum(axis=0)
        idx = np.arange(1, cap + 1)[:, None]
        ok = (idx >= warmup) & (np.minimum(cs, idx - cs) >= cal.BINARY_MIN_COUNT)
        n = np.where(ok.any(axis=0), ok.argmax(axis=0) + 1, cap)
        ones = cs[n - 1, np.arange(streams)]
        m = ones / n
        pt = (ones + 1.0) / (n + 2.0)
        sd = np.sqrt(pt * (1 - pt))
        q = np.minimum(pt, 1 - pt)
        q_low = np.maximum(q - np.sqrt(q * (1 - q) / n), 1.0 / (n + 2.0))  # Standardizer.rate_low

        def draw(r, shape):
            return ((r.random(shape) < p) - m) / sd
        h = [[cal.page_hinkley_params(a, "binary", k, float(x)).threshold for x in q_low] for a in arls]
    counts = ph_replica_alarms(draw, streams, length, k, np.array(h), seed + 1)
    events = streams * length
    rows = []
    for a, n in zip(arls, counts):
        lo, hi = poisson_ci(int(n))
        rows.append({"detector": f"page_hinkley(k={k:g})", "kind": kind, "p": p, "arl": a, "events": events,
                     "false_alarms": int(n), "fa_per_100k": 1e5 * n / events,
                     "fa_per_100k_ci95": [1e5 * lo / events, 1e5 * hi / events], "budget_fa_per_100k": 1e5 / a})
    return {"rows": rows}


def verify_adwin(kind: str, arl: float, p: float | None, streams: int, length: int, seed: int,
                 warmup: int = cal.DEFAULT_WARMUP) -> dict:
    """Long stationary runs through `CalibratedDetector("adwin", ...)` itself."""
    k = 0
    watched = 0
    for j in range(streams):
        rng = np.random.default_rng([seed, j])
        xs = (rng.standard_normal(length) if kind == "numeric" else (rng.random(length) < p).astype(float)).tolist()
        k += len(detections(cal.CalibratedDetector("adwin", arl, kind, warmup=warmup), xs))
        watched += length - (warmup if kind == "numeric" else 0)  # ADWIN on 0/1: no warm-up
    lo, hi = poisson_ci(k)
    return {"rows": [{"detector": "adwin", "kind": kind, "p": p, "arl": arl, "events": watched, "false_alarms": k,
                      "fa_per_100k": 1e5 * k / watched, "fa_per_100k_ci95": [1e5 * lo / watched, 1e5 * hi / watched],
                      "budget_fa_per_100k": 1e5 / arl}]}


VERIFY_TASKS = (
    ("ph", "numeric", cal.DEFAULT_PH_DELTA["numeric"], None),
    ("ph", "binary", cal.DEFAULT_PH_DELTA["binary"], 0.01),
    ("ph", "binary", cal.DEFAULT_PH_DELTA["binary"], 0.05),
    ("ph", "binary", cal.DEFAULT_PH_DELTA["binary"], 0.2),
    ("adwin", "numeric", None, None),
    ("adwin", "binary", None, 0.05),
    ("adwin", "binary", None, 0.2),
)


def _verify_task(task: tuple) -> dict:
    what, kind, k, p = task
    seed = int_seed("verify", *task)
    if what == "ph":
        return verify_ph(kind, k, (1e6, 1e7), p, streams=1000, length=500_000, seed=seed)
    return verify_adwin(kind, 1e6, p, streams=40, length=1_000_000, seed=seed)


def verify(out: Path, jobs: int) -> None:
    t0 = time.time()
    with cf.ProcessPoolExecutor(jobs) as ex:
        rows = [r for res in ex.map(_verify_task, VERIFY_TASKS) for r in res["rows"]]
    out.mkdir(parents=True, exist_ok=True)
    data = {"meta": _meta(time.time() - t0, jobs), "rows": rows}
    (out / "quality-verify.json").write_text(json.dumps(data, indent=1, default=float))
    print("\n".join(verification_md(data)))


def verification_md(v: dict | None) -> list[str]:
    if not v:
        return []
    out = ["", "### Long-run check of the budget (`bench/quality.py --verify`)", "",
           f"Stationary streams at per-stream budgets of 1e6 and 1e7 events between false alarms, "
           f"fresh seeds, each stream with its own warm-up estimate ({v['meta']['seconds']:.0f} s on "
           f"{v['meta']['cpus']} CPUs). Page-Hinkley: the vectorised replica of River's update over the "
           "production pipeline (warm-up standardisation, per-stream threshold); ADWIN: "
           "`CalibratedDetector` itself.", "",
           "| detector | signal | events | false alarms | FA / 100k (95% CI) | budget FA / 100k | measured / budget |",
           "|---|---|---|---|---|---|---|"]
    for r in v["rows"]:
        sig = r["kind"] if r["p"] is None else f"0/1, rate {r['p']:g}"
        lo, hi = r["fa_per_100k_ci95"]
        out.append(f"| {r['detector']}@{r['arl']:.0e} | {sig} | {r['events']:.2g} | {r['false_alarms']} | "
                   f"{_f(r['fa_per_100k'])} ({_f(lo, 2)}–{_f(hi, 2)}) | {_f(r['budget_fa_per_100k'])} | "
                   f"{_f(r['fa_per_100k'] / r['budget_fa_per_100k'], 2)} |")
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    seeds: int = 20  # change streams per case
    n0: int = 2500  # stationary events before the change (the first `warmup` are the warm-up)
    n1: int = 5000  # events after it: a change not found within them is missed
    warmup: int = cal.DEFAULT_WARMUP
    delay_arls: tuple[float, ...] = (1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
    fa_arls: tuple[float, ...] = (1e4, 1e5)  # budgets whose false alarms are measured directly
    stat_seeds: int = 20
    stat_len: int = 100_000
    # (stream, share of stat_seeds): the headline streams get all seeds
    stat_streams: tuple[tuple[str, float], ...] = (("bernoulli:0.05", 1.0), ("normal", 1.0),
                                                  ("bernoulli:0.2", 0.5), ("normal_x1000", 0.5))
    synth_stat_seeds: int = 4
    synth_stat_len: int = 20_000
    robust_seeds: int = 10
    robust_len: int = 50_000
    robust_shapes: tuple[str, ...] = ROBUSTNESS_SHAPES
    annotated: bool = True
    cases: tuple[str, ...] | None = None  # a subset of CASES by name (tests); None: all
    default_arl: float = 1e8  # the per-stream ARL of the shipped default budget (docs/quality.md)


QUICK = Plan(seeds=3, n0=1500, n1=2500, delay_arls=(1e4, 1e6, 1e8), fa_arls=(1e4,), stat_seeds=3,
             stat_len=20_000, stat_streams=(("bernoulli:0.05", 1.0), ("normal", 1.0)), synth_stat_seeds=1,
             synth_stat_len=5_000, robust_seeds=2, robust_len=20_000,
             robust_shapes=("normal", "lognormal"), annotated=True)


def _work(task: tuple) -> list[dict]:
    what = task[0]
    if what == "case":
        _, case_i, configs, plan = task
        return run_case(CASES[case_i], configs, plan.seeds, plan.n0, plan.n1, plan.warmup)
    if what == "stationary":
        _, name, kind, configs, seeds, n, warmup = task
        return [dict(r, section="stationary") for r in run_stationary(name, kind, configs, seeds, n, warmup)]
    if what == "robust":
        _, name, configs, seeds, n, warmup = task
        return [dict(r, section="robustness") for r in run_stationary(name, "numeric", configs, seeds, n, warmup)]
    if what == "synth_stationary":
        _, case, configs, seeds, n, warmup = task
        rows = run_stationary(case, "binary", configs, seeds, n, warmup,
                              values_for=lambda s: synth_errors(case, n, 0, int_seed("synth-stat", case, s), drift=False))
        return [dict(r, section="stationary") for r in rows]
    if what == "annotated":
        _, configs = task
        rows = []
        for name, series in annotated_series().items():
            rows.extend(run_annotated(name, series, configs))
        return rows
    raise ValueError(what)


def build_tasks(plan: Plan) -> list[tuple]:
    """The run's work items, longest first (the pool hands them out in order)."""
    delay_configs = [*RIVER, *calibrated(plan.delay_arls)]
    fa_configs = [*RIVER, *calibrated(plan.fa_arls)]
    tasks: list[tuple] = []
    for name, share in plan.stat_streams:
        kind = "binary" if name.startswith("bernoulli") else "numeric"
        seeds = max(1, round(share * plan.stat_seeds))
        tasks.append(("stationary", name, kind, fa_configs, seeds, plan.stat_len, plan.warmup))
    chosen = [i for i, c in enumerate(CASES) if plan.cases is None or c.name in plan.cases]
    for i in sorted(chosen, key=lambda i: CASES[i].family != "synthetic"):
        tasks.append(("case", i, delay_configs, plan))
    for case in SYNTH if plan.synth_stat_seeds else ():
        tasks.append(("synth_stationary", case, fa_configs, plan.synth_stat_seeds, plan.synth_stat_len, plan.warmup))
    robust_configs = [c for c in calibrated(plan.fa_arls) if c.detector == "adwin" or c.ph_delta == cal.DEFAULT_PH_DELTA["numeric"]]
    for name in plan.robust_shapes:
        tasks.append(("robust", name, robust_configs, plan.robust_seeds, plan.robust_len, plan.warmup))
    if plan.annotated:
        # the shipped default, and a budget sized for series of a few hundred points
        tasks.append(("annotated", [*RIVER, *calibrated([1e3, plan.default_arl], (None,))]))
    return tasks


def _meta(seconds: float, jobs: int) -> dict:
    import river

    return {
        "python": platform.python_version(), "river": river.__version__, "numpy": np.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(), "jobs": jobs, "seconds": round(seconds, 1),
        "base_seed": BASE_SEED,
    }


def run(plan: Plan, out: Path, jobs: int, quick: bool) -> dict:
    t0 = time.time()
    tasks = build_tasks(plan)
    rows: list[dict] = []
    if jobs <= 1:
        for t in tasks:
            rows.extend(_work(t))
    else:
        with cf.ProcessPoolExecutor(jobs) as ex:
            for r in ex.map(_work, tasks):
                rows.extend(r)
    verify_file = out / "quality-verify.json"
    result = {
        "meta": {**_meta(time.time() - t0, jobs), "quick": quick, "plan": dataclasses.asdict(plan)},
        "verification": json.loads(verify_file.read_text()) if verify_file.exists() else None,
        "changes": sorted((r for r in rows if "case" in r), key=lambda r: CASE_ORDER[r["case"]]),
        "stationary": [r for r in rows if r.get("section") == "stationary"],
        "robustness": [r for r in rows if r.get("section") == "robustness"],
        "annotated": [r for r in rows if "series" in r],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "quality.md").write_text(markdown(result))
    plot(result, out / "quality.png")
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _f(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "∞"
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 10:
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


def _fa_lookup(result: dict) -> dict[tuple[str, str], dict]:
    return {(r["stream"], r["config"]): r for r in result["stationary"] + result["robustness"]}


STAT_FOR_CASE = {"error 0.05->0.10": "bernoulli:0.05", "error 0.05->0.30": "bernoulli:0.05",
                 "error 0.20->0.30": "bernoulli:0.2"}


def _stat_stream(row: dict) -> str:
    if row["family"] == "numeric":
        return "normal"
    if row["family"] == "synthetic":
        return row["case"]
    return STAT_FOR_CASE.get(row["case"], "")


def fa_value(row: dict, fa: dict) -> tuple[float | None, bool]:
    """False alarms per 100k for a change-case row: measured on the matching stationary stream
    when that config was measured (flag True), else the budget's prediction (flag False). River's
    ADWIN with no alarm measured reads the ADWIN table instead (its delta is calibrated there)."""
    m = fa.get((_stat_stream(row), row["config"]))
    if m is not None and (m["false_alarms"] > 0 or row["config"] != "river-adwin"):
        return m["fa_per_100k"], True
    if row["arl"] is not None:
        return 1e5 / row["arl"], False
    if row["config"] == "river-adwin":
        return 1e5 / cal.adwin_arl(ADWINParams().delta, row["kind"]), False
    return None, False


def markdown(result: dict) -> str:
    meta = result["meta"]
    plan = meta["plan"]
    fa = _fa_lookup(result)
    out = [
        f"<!-- bench/quality.py{' --quick' if meta['quick'] else ''}: river {meta['river']}, python {meta['python']}, "
        f"{meta['cpus']} CPUs, {meta['seconds']} s, base seed {meta['base_seed']} -->",
        "",
        "### Headline: River's defaults vs calibrated detectors",
        "",
        f"Delays are post-change events read up to the detection (median over {plan['seeds']} seeded streams; "
        "seconds = events at 1 event/s). False alarms per 100k events are measured on stationary "
        "streams, or, marked *, predicted by the budget (1e5 / ARL) where too rare to measure in a "
        "run of this size (for River's ADWIN, which raised none, its delta read in the ADWIN "
        "table). `@ARL` is the per-stream budget: expected events between false alarms; 1e8 is "
        "the shipped default for a model with one segment attribute and a few signals.",
        "",
    ]
    head_cases = ["error 0.05->0.10", "error 0.05->0.30", "error 0.20->0.30", "SEA 0->1",
                  "normal +0.25 sd", "normal +0.5 sd", "normal +1 sd"]
    arl = plan["default_arl"]
    out.append("| stream | detector | false alarms / 100k | detection rate | median delay (events = s) | mean delay |")
    out.append("|---|---|---|---|---|---|")
    for case in head_cases:
        rows = [x for x in result["changes"] if x["case"] == case]
        if not rows:
            continue
        kind = rows[0]["kind"]
        cfgs = ["river-adwin", "river-ph", Config("adwin", arl).label, Config("page_hinkley", arl, cal.DEFAULT_PH_DELTA[kind]).label]
        for cfg in cfgs:
            r = next((x for x in rows if x["config"] == cfg), None)
            if r is None:
                continue
            v, measured = fa_value(r, fa)
            out.append(f"| {case} | {cfg} | {_f(v)}{'' if measured else '*'} | {_f(r['detection_rate'])} | "
                       f"{_f(r['delay_median'])} | {_f(r['delay_mean'])} |")
    out += verification_md(result.get("verification"))
    out += ["", "### Detection delay and rate, every stream x detector x budget", "",
            f"{plan['seeds']} seeds per stream; change after {plan['n0']} stationary events "
            f"({plan['warmup']} of warm-up for calibrated detectors), {plan['n1']} events after it. "
            "Rate: share of streams with a detection after the change; delays over detected streams. "
            "Pre-change FA: false alarms before the change / watched stationary events.", "",
            "| family | stream | detector | detection rate | delay median | delay mean | delay p90 | FA / 100k (stationary) | pre-change FA |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in result["changes"]:
        v, measured = fa_value(r, fa)
        out.append(f"| {r['family']} | {r['case']} | {r['config']} | {_f(r['detection_rate'])} | {_f(r['delay_median'])} | "
                   f"{_f(r['delay_mean'])} | {_f(r['delay_p90'])} | {_f(v)}{'' if measured else '*'} | "
                   f"{r['pre_change_false_alarms']} / {r['pre_change_events']:,} |")
    out += ["", "### False alarms on stationary streams: measured vs budget", "",
            "Each seed is a fresh stream with its own warm-up, as each segment is in production. "
            "`normal_x1000` is N(5000, 1000²): River's Page-Hinkley thresholds are in signal units.", "",
            "| stream | detector | events | false alarms | FA / 100k (95% CI) | budget FA / 100k | measured / budget |",
            "|---|---|---|---|---|---|---|"]
    for r in result["stationary"]:
        ratio = r["fa_per_100k"] / r["budget_fa_per_100k"] if r["budget_fa_per_100k"] else None
        lo, hi = r["fa_per_100k_ci95"]
        out.append(f"| {r['stream']} | {r['config']} | {r['events']:,} | {r['false_alarms']} | {_f(r['fa_per_100k'])} "
                   f"({_f(lo, 2)}–{_f(hi, 2)}) | {_f(r['budget_fa_per_100k'])} | {_f(ratio, 2)} |")
    if result["robustness"]:
        out += ["", "### Robustness: non-normal numeric signals at normal-calibrated thresholds", "",
                "Standardised over the warm-up, clipped at ±3; measured / budget above 1 means more "
                "false alarms than budgeted.", "",
                "| shape | detector | events | false alarms | FA / 100k | budget | measured / budget |", "|---|---|---|---|---|---|---|"]
        for r in result["robustness"]:
            out.append(f"| {r['stream']} | {r['config']} | {r['events']:,} | {r['false_alarms']} | {_f(r['fa_per_100k'])} | "
                       f"{_f(r['budget_fa_per_100k'])} | {_f(r['fa_per_100k'] / r['budget_fa_per_100k'], 2)} |")
    if result["annotated"]:
        out += ["", "### Annotated change-point series (river.drift.datasets)", "",
                "Real series with annotators' change points (pooled, merged within the tolerance). A "
                "change point is found by a detection on any of the series' signals within `tolerance` "
                "points after it; other detections are false alarms. Calibrated detectors warm up on the "
                "first `warmup` points (a change point inside the warm-up cannot be found). `@1e3`: a "
                "budget of one false alarm per 1,000 points, sized for series this short; `@1e8`: the "
                "shipped default. Delay in points and in the series' own time.", "",
                "| series | points | change points | tolerance | detector | found | detections | false alarms | precision | median delay | median delay (days) |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["annotated"]:
            days = None if r["delay_median_seconds"] is None else r["delay_median_seconds"] / 86400
            found = None if r["detection_rate"] is None else round(r["detection_rate"] * r["change_points"])
            out.append(f"| {r['series']} | {r['points']} | {r['change_points']} | {r['tolerance']} | {r['config']} | "
                       f"{_f(found)} | {r['detections']} | {r['false_alarms']} | {_f(r['precision'], 2)} | "
                       f"{_f(r['delay_median'])} | {_f(days)} |")
    return "\n".join(out) + "\n"


PLOT_CASES = (("normal +0.5 sd", "numeric signal: mean shift of 0.5 sd"),
              ("normal +1 sd", "numeric signal: mean shift of 1 sd"),
              ("error 0.05->0.10", "error stream: error rate 0.05 -> 0.10"),
              ("error 0.05->0.30", "error stream: error rate 0.05 -> 0.30"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fa = _fa_lookup(result)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    axes = axes.ravel()
    colors = {"adwin": "tab:blue", "ph(k=0.1)": "tab:green", "ph(k=0.25)": "tab:orange", "ph(k=0.5)": "tab:red",
              "river-adwin": "tab:blue", "river-ph": "tab:red"}
    # the shipped default budget, 1e7 model events, over 4 (bare model) to 30 (two attributes,
    # five signals) detector updates per event
    lo, hi = 1e5 / (1e7 * 30), 1e5 / (1e7 * 4)
    for ax, (case, title) in zip(axes, PLOT_CASES):
        ax.axvspan(lo, hi, color="grey", alpha=0.15, label="shipped default budget")
        rows = [r for r in result["changes"] if r["case"] == case]
        curves: dict[str, list] = {}
        for r in rows:
            v, measured = fa_value(r, fa)
            if v is None or r["delay_median"] is None or r["detection_rate"] < 0.5:
                continue
            if r["arl"] is None:
                ax.scatter([v], [r["delay_median"]], marker="*", s=220, zorder=5, edgecolor="black",
                           color=colors[r["curve"]] if measured else "white",
                           label=f"{r['config']} (River defaults{'' if measured else ', FA from table'})")
                continue
            curves.setdefault(r["curve"], []).append((v, r["delay_median"], measured, r["detection_rate"]))
        for name, pts in sorted(curves.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[name], label=f"{name}, calibrated")
            for v, d, measured, rate in pts:
                ax.scatter([v], [d], color=colors[name] if measured else "white", edgecolor=colors[name], zorder=4)
                if rate < 0.95:
                    ax.annotate(f"{rate:.0%}", (v, d), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("false alarms per 100k events per signal (stationary)")
    for ax in axes[::2]:
        ax.set_ylabel("median detection delay (events)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
            break
    fig.suptitle("Delay vs false alarms, per detector and budget (filled: measured; hollow: predicted by the "
                 "budget;\n% = detection rate when below 95%, points under 50% left out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def slices_main(out: Path, seeds: int, first_seed: int = 0) -> int:
    """Slice-explanation ranking on real data with injected slice-confined drops (bench/quality_slices.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import quality_slices

    result = quality_slices.run_slices(seeds, first_seed)
    result["meta"] = _meta(round(result.pop("seconds"), 1), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality-slices.json").write_text(json.dumps(result, indent=1, default=str))
    md = quality_slices.markdown(result)
    (out / "quality-slices.md").write_text(md + "\n")
    print(md)
    if out.resolve() == (ROOT / "bench" / "results").resolve():
        quality_slices.write_docs(result, ROOT / "docs" / "explanations.md", ROOT / "README.md")
    print(f"wrote {out}/quality-slices.json, quality-slices.md in {result['meta']['seconds']} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small run (< 30 s): fewer seeds, shorter streams")
    ap.add_argument("--seeds", type=int, help="seeded streams per change case (default 20; quick 3)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all CPUs)")
    ap.add_argument("--calibrate", action="store_true", help="recompute detectors/calibration.py's tables (~8 min)")
    ap.add_argument("--verify", action="store_true",
                    help="long stationary runs at budgets of 1e6 and 1e7 events (~5 min); later runs' quality.md include them")
    ap.add_argument("--challenger", action="store_true",
                    help="champion vs challenger (bench/quality_challenger.py): A/A wrong decisions, a 3-point better "
                         "challenger found, over --seeds seeds (default 200)")
    ap.add_argument("--slices", action="store_true",
                    help="slice explanations (issue 16): how often the injected slice ranks first (~3 min); "
                         "writes quality-slices.json and .md and the figures in docs/explanations.md "
                         "(--seeds: per feature and drop, default 10; --first-seed: default 0)")
    ap.add_argument("--slices-docs", action="store_true",
                    help="rewrite the figures of docs/explanations.md and README.md from quality-slices.json (no run)")
    ap.add_argument("--first-seed", type=int, default=0, help="--slices: the first seed (a held-out set: e.g. 100)")
    ap.add_argument("--estimate", action="store_true",
                    help="label-free accuracy (bench/quality_estimate.py): estimate error and concept-change flagging "
                         "with label delays of 5 minutes to a day, over --seeds seeds (default 5)")
    args = ap.parse_args(argv)
    if args.estimate:
        from bench.quality_estimate import run_estimate

        result = run_estimate(args.out, args.seeds or (1 if args.quick else 5), args.jobs)
        print((args.out / "quality-estimate.md").read_text())
        print(f"wrote {args.out}/quality-estimate.json, quality-estimate.md in {result['meta']['seconds']} s")
        return 0
    if args.challenger:
        from bench.quality_challenger import run_challenger

        result = run_challenger(args.out, args.seeds or (20 if args.quick else 200), args.jobs,
                                n=10_000 if args.quick else 20_000)
        print((args.out / "quality-challenger.md").read_text())
        print(f"wrote {args.out}/quality-challenger.json, quality-challenger.md in {result['meta']['seconds']} s")
        return 0
    if args.slices_docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import quality_slices

        result = json.loads((args.out / "quality-slices.json").read_text())
        quality_slices.write_docs(result, ROOT / "docs" / "explanations.md", ROOT / "README.md")
        print("docs/explanations.md and README.md: figures of", args.out / "quality-slices.json")
        return 0
    if args.slices:
        return slices_main(args.out, args.seeds or 10, args.first_seed)
    if args.calibrate:
        calibrate(args.out, args.jobs)
        return 0
    if args.verify:
        verify(args.out, args.jobs)
        return 0
    plan = QUICK if args.quick else Plan()
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=args.seeds)
    result = run(plan, args.out, args.jobs, args.quick)
    print((args.out / "quality.md").read_text().split("### Detection delay")[0])
    print(f"wrote {args.out}/quality.json, quality.md, quality.png in {result['meta']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
