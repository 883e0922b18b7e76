"""Label-free accuracy figures for bench/quality.py (`--estimate`): the error of
driftline_estimated_accuracy against the true accuracy of the same recent predictions, beside the
error of the label-based rolling accuracy, with label delays of minutes to days; and how long a
concept change takes to show as a departure beyond the bound.

Stream (River's SEA generator): a logistic regression trained on concept 0 and frozen scores one
prediction every 10 s for 3 days. Day 0-1: concept 0 as trained. From day 1: a covariate shift
(inputs concentrate near the decision boundary: harder, and the scores say so). From day 2: a
concept change (SEA variant 3: another threshold, the same inputs; the scores do not know). Each
label arrives `delay` after its prediction. The production object `AccuracyEstimate` is fed in
event-time order (predictions at their time, labels at theirs); every hour the bench compares
its estimate, and the rolling accuracy of the last window of labels (what driftline_accuracy
shows), with the true accuracy of the last window of predictions.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import statistics
import time
from pathlib import Path

import numpy as np

from driftline.detectors.estimate import AccuracyEstimate

WINDOW = 1000
STEP = 10.0  # seconds between predictions
DAY = 86400.0
DAYS = 3
DELAYS = {"5m": 300.0, "1h": 3600.0, "1d": DAY}
PHASES = (("stable", 0.0), ("covariate shift", DAY), ("concept change", 2 * DAY))


def stream(seed: int):
    """(time, confidence, correct) per prediction, and the phase boundaries."""
    from river import datasets, linear_model, preprocessing

    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in datasets.synth.SEA(variant=0, seed=1000 + seed).take(4000):
        model.learn_one(x, y)
    n = int(DAYS * DAY / STEP)
    out = []
    gens = {0: iter(datasets.synth.SEA(variant=0, seed=seed)), 3: iter(datasets.synth.SEA(variant=3, seed=seed))}
    for i in range(n):
        t = i * STEP
        variant = 3 if t >= 2 * DAY else 0
        while True:
            x, y = next(gens[variant])
            if t < DAY or abs(x[0] + x[1] - 8.0) < 0.7:  # after day 1: near SEA's boundary (threshold 8)
                break
        p = model.predict_proba_one(x).get(True, 0.5)
        pred = p >= 0.5
        out.append((t, p if pred else 1 - p, pred == y))
    return out


def one(task: tuple) -> dict:
    seed, delay_name = task
    delay = DELAYS[delay_name]
    events = stream(seed)
    est = AccuracyEstimate(WINDOW)
    labelled: list[bool] = []
    # Merge predictions and labels in time order (a prediction before a label at the same time).
    queue = sorted([(t, 0, i) for i, (t, _, _) in enumerate(events)] + [(t + delay, 1, i) for i, (t, _, _) in enumerate(events)])
    next_sample = 3600.0
    samples = []
    flagged_at = None
    for t, kind, i in queue:
        while t >= next_sample and next_sample <= DAYS * DAY:
            k = int(next_sample // STEP)  # predictions made before the sample time
            if k >= WINDOW:
                truth = float(np.mean([ok for _, _, ok in events[k - WINDOW:k]]))
                lab = abs(float(np.mean(labelled[-WINDOW:])) - truth) if len(labelled) >= WINDOW else None
                samples.append((next_sample, abs(est.estimated() - truth), lab, truth))
            next_sample += 3600.0
        _, c, ok = events[i]
        if kind == 0:
            est.predicted(c, WINDOW)
        else:
            est.labelled(c, ok, WINDOW)
            labelled.append(ok)
            d = est.departure()
            if flagged_at is None and t >= 2 * DAY and d is not None and d < -1:
                flagged_at = t
    phases = {}
    for k, (name, start) in enumerate(PHASES):
        end = PHASES[k + 1][1] if k + 1 < len(PHASES) else DAYS * DAY + DAY
        # skip the first window after a change: both figures need a window to catch up on it
        rows = [s for s in samples if start + WINDOW * STEP <= s[0] < end]
        lab = [r[2] for r in rows if r[2] is not None]
        phases[name] = {"estimate_mae": float(np.mean([r[1] for r in rows])) if rows else None,
                        "labels_mae": float(np.mean(lab)) if lab else None, "samples": len(rows),
                        "true_accuracy": float(np.mean([r[3] for r in rows])) if rows else None}
    return {"seed": seed, "delay": delay_name, "phases": phases,
            "concept_change_flagged_after_s": None if flagged_at is None else flagged_at - 2 * DAY}


def run_estimate(out_dir: Path, seeds: int, jobs: int) -> dict:
    started = time.perf_counter()
    tasks = [(s, d) for d in DELAYS for s in range(seeds)]
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(one, tasks))
    summary = []
    for d in DELAYS:
        rs = [r for r in rows if r["delay"] == d]
        entry = {"delay": d, "seeds": len(rs), "phases": {}}
        for name, _ in PHASES:
            est = [r["phases"][name]["estimate_mae"] for r in rs if r["phases"][name]["estimate_mae"] is not None]
            lab = [r["phases"][name]["labels_mae"] for r in rs if r["phases"][name]["labels_mae"] is not None]
            acc = [r["phases"][name]["true_accuracy"] for r in rs if r["phases"][name]["true_accuracy"] is not None]
            entry["phases"][name] = {"estimate_mae": statistics.mean(est) if est else None,
                                     "labels_mae": statistics.mean(lab) if lab else None,
                                     "true_accuracy": statistics.mean(acc) if acc else None}
        flagged = [r["concept_change_flagged_after_s"] for r in rs if r["concept_change_flagged_after_s"] is not None]
        entry["concept_change_flagged"] = len(flagged)
        entry["concept_change_flagged_after_s_median"] = statistics.median(flagged) if flagged else None
        summary.append(entry)
    result = {"meta": {"seconds": round(time.perf_counter() - started, 1), "seeds": seeds, "window": WINDOW,
                       "step_s": STEP, "command": f"bench/quality.py --estimate --seeds {seeds}"}, "summary": summary}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality-estimate.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "quality-estimate.md").write_text(markdown(result))
    return result


def _h(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 3600:.1f} h"


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"### Label-free accuracy ({m['seeds']} seeds, window {m['window']}, a prediction every {m['step_s']:.0f} s, "
             f"`{m['command']}`)", "",
             "Mean absolute error against the true accuracy of the last window of predictions, sampled hourly: "
             "the estimate (driftline_estimated_accuracy) and the rolling accuracy of the last window of labels "
             "(driftline_accuracy; empty until a window of labels came). Before the first window of labels the "
             "estimate takes the raw scores as calibrated.", "",
             "| label delay | stable: estimate / labels | covariate shift: estimate / labels | concept change: "
             "estimate / labels | concept change flagged (seeds, median time) |", "|---|---|---|---|---|"]
    f = lambda v: "" if v is None else f"{v:.3f}"
    for s in result["summary"]:
        ph = s["phases"]
        lines.append(f"| {s['delay']} | " + " | ".join(
            f"{f(ph[n]['estimate_mae'])} / {f(ph[n]['labels_mae'])}" for n, _ in PHASES)
            + f" | {s['concept_change_flagged']}/{s['seeds']}, {_h(s['concept_change_flagged_after_s_median'])} |")
    first = result["summary"][0]["phases"]
    lines += ["", "True accuracy per phase: " + ", ".join(f"{n} {first[n]['true_accuracy']:.3f}" for n, _ in PHASES
                                                       if first[n]["true_accuracy"] is not None) + ".", ""]
    return "\n".join(lines)
