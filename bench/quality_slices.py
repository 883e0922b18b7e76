"""Slice-explanation quality (issue 16): how often the injected slice ranks first.

Run through bench/quality.py:

    .venv/bin/python bench/quality.py --slices [--seeds N] [--out bench/results]

Real data: NASA Shuttle (River's `datasets.Shuttle`, 49,097 rows, shipped in its wheel) and the
demo's model on it, a Hoeffding tree trained on the first 5,000 rows and frozen (stream/demo.py).
Features monitored: f1, f5, f7, f8 numeric; f3 and f9 categorical (coded sensor readings, as
strings). Each trial takes 6,100 other rows in a seeded random order (stationary), with a change
after 4,500 labelled events:

- the injected drop: in one slice only, each prediction after the change is replaced by the
  wrong class with probability `drop` (40 and 20 points); the slice is a value range of 15% of
  the traffic of one numeric feature (f1, f5 or f7, random position), or one category of f3 or
  f9 holding 5-35% of the traffic;
- the decoy: f8's logged value reads one standard deviation high after the change (a logging
  change: the model saw the true value), a feature that moves without hurting accuracy.

Two measures, at 100, 400 and 1,600 labelled events after the change:

- `oracle`: a SliceAccountant told the true change point (`start()`, the `driftline explain
  --since` path) explains then: is the top slice on the injected feature, over the injected range
  (numeric: its bin overlaps the range; categorical: the category)?
- `stream`: the DetectorBank as the worker runs it (calibrated detectors, default false-alarm
  budget): the explanation in effect at that point (the error drift's record, or its latest
  refresh); a trial with no detection yet counts as a miss.

Also reported: how often the decoy ranks first (should be ~0), and the detection delay.
"""
from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
import zlib
from types import MappingProxyType

from driftline.detectors.bank import DetectorBank
from driftline.detectors.slices import SliceAccountant
from driftline.detectors.spec import ModelSpec

NUMERIC = ("f1", "f5", "f7")
CATEGORICAL = ("f3", "f9")
DECOY = "f8"
FEATURES = {"f1": "numeric", "f5": "numeric", "f7": "numeric", DECOY: "numeric", "f3": "categorical",
            "f9": "categorical"}
PRE, POST = 4_500, 1_600  # labelled events before and after the change
CHECKS = (100, 400, 1_600)
DROPS = (0.4, 0.2)
SLICE_SHARE = 0.15


@dataclasses.dataclass(frozen=True)
class Injected:
    feature: str
    lower: float | None = None  # numeric: [lower, upper)
    upper: float | None = None
    category: str | None = None

    def contains(self, x: dict) -> bool:
        v = x[self.feature]
        if self.category is not None:
            return str(v) == self.category
        return self.lower <= v < self.upper

    def hit(self, top: dict | None) -> bool:
        """Is the explanation's top slice the injected one?"""
        if top is None or top["feature"] != self.feature:
            return False
        if self.category is not None:
            return top["category"] == self.category
        lo = -math.inf if top["lower"] is None else top["lower"]
        hi = math.inf if top["upper"] is None else top["upper"]
        return lo < self.upper and self.lower < hi  # the bin overlaps the injected range

    def describe(self) -> str:
        return f"{self.feature}={self.category}" if self.category is not None else \
            f"{self.feature} in [{self.lower:g}, {self.upper:g})"


def purity_weighted(s: dict) -> float:
    """An alternative order, measured but not used: contribution x sqrt(its loss per event), which
    prefers the purer of two slices that account for the same drop (correlated features)."""
    return s["contribution"] * math.sqrt(s["contribution"] / s["share_after"]) if s["share_after"] else 0.0


def _model():
    from driftline.stream.demo import TRAIN_ROWS, _predict, _trained

    rows, model = _trained()
    stream = rows[TRAIN_ROWS:]
    preds = [_predict(model, x)[0] for x, _ in stream]
    return stream, preds


def choose_slice(rng: random.Random, feature: str, rows: list) -> Injected:
    if feature in CATEGORICAL:
        counts: dict[str, int] = {}
        for x, _ in rows:
            counts[str(x[feature])] = counts.get(str(x[feature]), 0) + 1
        ok = sorted(c for c, n in counts.items() if 0.05 <= n / len(rows) <= 0.35)
        return Injected(feature, category=rng.choice(ok))
    xs = sorted(x[feature] for x, _ in rows)
    for _ in range(100):  # a range holding ~15% of the traffic (integer readings: ties decide)
        a = rng.uniform(0.05, 0.95 - SLICE_SHARE)
        lo, hi = xs[int(a * len(xs))], xs[int((a + SLICE_SHARE) * len(xs))]
        share = sum(1 for v in xs if lo <= v < hi) / len(xs)
        if hi > lo and 0.07 <= share <= 0.3:
            return Injected(feature, float(lo), float(hi))
    raise RuntimeError(f"no 15% range on {feature}")


def spec() -> ModelSpec:
    # drift_hold of a day: the drift stays active for the whole post-change stream, so every
    # refresh (100/400/1,600) is emitted; accuracy_window as the demo's.
    return ModelSpec(name="shuttle", features=MappingProxyType(dict(FEATURES)), accuracy_window=500,
                     drift_hold=86_400.0, false_alarm_budget=1e7)


def trial(stream, preds, seed: int, feature: str, drop: float) -> dict:
    rng = random.Random(zlib.crc32(f"{seed}:{feature}:{drop}".encode()))
    idx = rng.sample(range(len(stream)), PRE + POST)
    rows = [stream[i] for i in idx]
    pred = [preds[i] for i in idx]
    inj = choose_slice(rng, feature, rows[:PRE])
    decoy_sd = statistics.pstdev(x[DECOY] for x, _ in rows[:PRE])
    names = list(FEATURES)
    acc = SliceAccountant(tuple(FEATURES.items()))
    bank = DetectorBank(lambda m: spec())
    oracle: dict[int, dict | None] = {}
    in_effect: dict | None = None
    stream_at: dict[int, dict | None] = {}
    detected_after: int | None = None
    decoy_top = {k: False for k in CHECKS}
    last_400 = None
    weighted: dict[int, dict | None] = {}
    for i, ((x, y), p) in enumerate(zip(rows, pred)):
        t = float(i)
        after = i - PRE  # labelled events after the change (0 = the first one)
        if after >= 0:
            if inj.contains(x) and rng.random() < drop:
                p = 1 - y  # binary classes: the wrong one
            x = dict(x)
            x[DECOY] = x[DECOY] + decoy_sd
        values = tuple(str(x[n]) if FEATURES[n] == "categorical" else x[n] for n in names)
        if after == 0:
            acc.start(t)
        acc.observe(values, None, p == y, t)
        for rec in bank.observe_outcome("shuttle", "__all__", p, y, t, f"p{i}", 0.0, values=values, segments=("__all__",)):
            if rec.signal != "error" or getattr(rec, "direction", "up") != "up":
                continue
            in_effect = rec.explanation if rec.kind == "detection" else rec.explanation
            if rec.kind == "detection" and after >= 0 and detected_after is None:
                detected_after = after + 1
        n_after = after + 1
        if n_after in CHECKS:
            e = acc.explain(top=30).to_dict()
            weighted[n_after] = max(e["slices"], key=purity_weighted) if e["slices"] else None
            e["slices"] = e["slices"][:10]
            if n_after == 400:
                last_400 = e
            oracle[n_after] = e["slices"][0] if e["slices"] else None
            decoy_top[n_after] = bool(e["slices"]) and e["slices"][0]["feature"] == DECOY
            valid = in_effect is not None and detected_after is not None
            stream_at[n_after] = (in_effect["slices"][0] if in_effect["slices"] else None) if valid else None
    return {"seed": seed, "feature": feature, "kind": "categorical" if feature in CATEGORICAL else "numeric",
            "drop": drop, "slice": inj.describe(),
            "oracle": {k: inj.hit(oracle[k]) for k in CHECKS},
            "weighted": {k: inj.hit(weighted[k]) for k in CHECKS},
            "stream": {k: inj.hit(stream_at[k]) for k in CHECKS},
            "decoy_first": decoy_top, "detected_after": detected_after,
            "top_at_400": (oracle[400] or {}).get("feature", "") + " " + (oracle[400] or {}).get("bin", ""),
            "explanation_at_400": last_400}


def per_event_cost(stream, preds, n: int = 20_000) -> dict:
    """Seconds per labelled event of the bank's outcome path with and without the accountant
    (the same events; a bank whose spec has no features and no segments has an empty accountant)."""
    names = list(FEATURES)
    rows = [(tuple(str(x[k]) if FEATURES[k] == "categorical" else x[k] for k in names), p == y, p, y)
            for (x, y), p in zip(stream[:n], preds[:n])]
    out = {}
    for label, sp in (("with_slices", spec()),
                      ("without_features", ModelSpec(name="shuttle", accuracy_window=500, drift_hold=86_400.0,
                                                     false_alarm_budget=1e7))):
        acc_alone = SliceAccountant(tuple(FEATURES.items()))
        bank = DetectorBank(lambda m, sp=sp: sp)
        start = time.perf_counter()
        for i, (values, _, p, y) in enumerate(rows):
            bank.observe_outcome("shuttle", "__all__", p, y, float(i), "p", 0.0, values=values, segments=("__all__",))
        out[label] = (time.perf_counter() - start) / n
        if label == "with_slices":
            start = time.perf_counter()
            for i, (values, ok, _, _) in enumerate(rows):
                acc_alone.observe(values, None, ok, float(i))
            out["accountant_alone"] = (time.perf_counter() - start) / n
    return {"seconds_per_outcome": out, "features": len(FEATURES), "events": n}


def run_slices(seeds: int) -> dict:
    started = time.perf_counter()
    stream, preds = _model()
    trials = [trial(stream, preds, s, f, d) for d in DROPS for f in NUMERIC + CATEGORICAL for s in range(seeds)]
    for t in trials:
        t.pop("explanation_at_400")  # kept for debugging a trial, too big for the results file
    summary = {}
    for d in DROPS:
        for kind in ("numeric", "categorical", "all"):
            sel = [t for t in trials if t["drop"] == d and (kind == "all" or t["kind"] == kind)]
            summary[f"drop={d:g} {kind}"] = {
                "trials": len(sel),
                **{f"oracle_first_at_{k}": sum(t["oracle"][k] for t in sel) / len(sel) for k in CHECKS},
                **{f"stream_first_at_{k}": sum(t["stream"][k] for t in sel) / len(sel) for k in CHECKS},
                **{f"weighted_first_at_{k}": sum(t["weighted"][k] for t in sel) / len(sel) for k in CHECKS},
                "decoy_first_any": sum(any(t["decoy_first"].values()) for t in sel) / len(sel),
                "detected": sum(t["detected_after"] is not None for t in sel) / len(sel),
                "median_detection_delay": (statistics.median(t["detected_after"] for t in sel
                                                             if t["detected_after"] is not None)
                                           if any(t["detected_after"] is not None for t in sel) else None),
            }
    return {"trials": trials, "summary": summary, "cost": per_event_cost(stream, preds),
            "seeds": seeds, "seconds": time.perf_counter() - started}


def markdown(result: dict) -> str:
    lines = ["Injected slice ranked first (top slice on the injected feature and range), at 100 / 400 / 1,600 "
             "labelled events after the change: told the change point (`driftline explain --since`), in the "
             "stream (the drift record or its latest refresh; no detection yet = a miss), and, for comparison, "
             "with the list ordered by contribution x sqrt(loss per event) instead of contribution.", "",
             "| injected drop | trials | first at 100 | at 400 | at 1,600 | stream: at 100 | at 400 | "
             "at 1,600 | purity-weighted: at 100 | at 400 | at 1,600 | decoy first | detected | median delay |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    for key, s in result["summary"].items():
        lines.append(f"| {key} | {s['trials']} | {pct(s['oracle_first_at_100'])} | {pct(s['oracle_first_at_400'])} | "
                     f"{pct(s['oracle_first_at_1600'])} | {pct(s['stream_first_at_100'])} | "
                     f"{pct(s['stream_first_at_400'])} | {pct(s['stream_first_at_1600'])} | "
                     f"{pct(s['weighted_first_at_100'])} | {pct(s['weighted_first_at_400'])} | "
                     f"{pct(s['weighted_first_at_1600'])} | {pct(s['decoy_first_any'])} | "
                     f"{pct(s['detected'])} | {s['median_detection_delay'] if s['median_detection_delay'] is not None else '-'} |")
    c = result["cost"]["seconds_per_outcome"]
    lines += ["", f"Per labelled event ({result['cost']['features']} features, one segment): outcome path "
                  f"{c['with_slices'] * 1e6:.1f} us with the slice accountant vs {c['without_features'] * 1e6:.1f} us "
                  f"for a model without features; the accountant alone {c['accountant_alone'] * 1e6:.1f} us "
                  f"(ratio with/without {c['with_slices'] / c['without_features']:.2f})."]
    return "\n".join(lines)
