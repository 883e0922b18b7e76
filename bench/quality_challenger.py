"""Champion vs challenger figures for bench/quality.py (`--challenger`): how often the anytime-valid
comparison (detectors/challenger.py) calls identical models different (A/A), and how fast it
finds a challenger that is 3 points better in one segment, watched after every pair.

Each seed streams requests split evenly over two segments, `a` and `b`; per request both models
are graded (a label for every request). A model is right with its segment's accuracy; the
challenger copies the champion's right/wrong with probability `rho` (two models trained on the
same data mostly make the same mistakes) and is otherwise drawn on its own, so its accuracy is
exactly the stated one. Every pair updates the production object `ChallengerComparison` of the
challenger's segment and of `__all__`; a decision is read after every pair. A/A: both models
0.80 everywhere, any decision is wrong. Better: in `a` the challenger is 0.83 against 0.80, in
`b` both are 0.80 (a decision there is wrong); `__all__` is +1.5 points.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import statistics
import time
from pathlib import Path

import numpy as np

from driftline.detectors.challenger import ChallengerComparison

ALPHA = 0.05
CHAMPION_ACCURACY = 0.80
BETTER_BY = 0.03
SEGMENTS = ("a", "b")


def graded(rng: np.random.Generator, n: int, p_champion: float, p_challenger: float, rho: float):
    """(champion correct, challenger correct) for n requests, marginals exactly p_champion, p_challenger.

    With probability rho the challenger's outcome is the champion's; otherwise it is drawn with
    q chosen so that rho * p_champion + (1 - rho) * q = p_challenger."""
    q = (p_challenger - rho * p_champion) / (1 - rho)
    champ = rng.random(n) < p_champion
    copy = rng.random(n) < rho
    chall = np.where(copy, champ, rng.random(n) < q)
    return champ, chall


def one_seed(task: tuple) -> dict:
    scenario, seed, n, rho = task
    rng = np.random.default_rng([seed, int(rho * 100), 0 if scenario == "aa" else 1])
    seg = rng.integers(0, 2, n)
    out = {}
    comps = {"__all__": ChallengerComparison(), "a": ChallengerComparison(), "b": ChallengerComparison()}
    champ = np.empty(n, bool)
    chall = np.empty(n, bool)
    for k, name in enumerate(SEGMENTS):
        mask = seg == k
        better = BETTER_BY if (scenario == "better" and name == "a") else 0.0
        c, h = graded(rng, int(mask.sum()), CHAMPION_ACCURACY, CHAMPION_ACCURACY + better, rho)
        champ[mask], chall[mask] = c, h
    decided = {name: None for name in comps}
    for i in range(n):
        ch, cc = bool(chall[i]), bool(champ[i])
        for name in ("__all__", SEGMENTS[seg[i]]):
            if decided[name] is not None:
                continue  # the running intersection makes a decision final
            cmp = comps[name]
            cmp.update(ch, cc, ALPHA)
            d = cmp.decision()
            if d:
                decided[name] = (d, cmp.n)
    for name, cmp in comps.items():
        out[name] = {"decision": decided[name][0] if decided[name] else 0,
                     "pairs_to_decision": decided[name][1] if decided[name] else None, "pairs": cmp.n}
    return {"scenario": scenario, "seed": seed, "rho": rho, "segments": out}


def summarise(rows: list[dict], scenario: str, rho: float, n: int) -> dict:
    rows = [r for r in rows if r["scenario"] == scenario and r["rho"] == rho]
    seeds = len(rows)
    out = {"scenario": scenario, "rho": rho, "seeds": seeds, "requests_per_seed": n, "alpha": ALPHA, "segments": {}}
    for name in ("__all__", "a", "b"):
        decisions = [r["segments"][name]["decision"] for r in rows]
        times = [r["segments"][name]["pairs_to_decision"] for r in rows if r["segments"][name]["decision"] == 1]
        truth = 1 if scenario == "better" and name in ("a", "__all__") else 0
        wrong = sum(1 for d in decisions if d != 0 and d != truth)
        seg = {"true_delta": BETTER_BY if truth and name == "a" else (BETTER_BY / 2 if truth else 0.0),
               "wrong_decisions": wrong, "wrong_rate": wrong / seeds,
               "found_better": sum(1 for d in decisions if d == 1) if truth else None}
        if truth:
            seg["found_better_rate"] = seg["found_better"] / seeds
            if times:
                seg["pairs_to_decision_median"] = statistics.median(times)
                seg["pairs_to_decision_p90"] = float(np.percentile(times, 90))
        out["segments"][name] = seg
    out["any_segment_wrong_rate"] = sum(
        1 for r in rows if any(r["segments"][s]["decision"] not in (0, 1 if scenario == "better" and s in ("a", "__all__")
                                                                    else 0) for s in ("__all__", "a", "b"))) / seeds
    return out


def run_challenger(out_dir: Path, seeds: int, jobs: int, n: int = 20_000, rhos=(0.0, 0.7)) -> dict:
    started = time.perf_counter()
    tasks = [(sc, s, n, rho) for sc in ("aa", "better") for rho in rhos for s in range(seeds)]
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(one_seed, tasks, chunksize=4))
    summary = [summarise(rows, sc, rho, n) for sc in ("aa", "better") for rho in rhos]
    result = {"meta": {"seconds": round(time.perf_counter() - started, 1), "seeds": seeds, "alpha": ALPHA,
                       "champion_accuracy": CHAMPION_ACCURACY, "better_by": BETTER_BY,
                       "command": f"bench/quality.py --challenger --seeds {seeds}"},
               "summary": summary}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality-challenger.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "quality-challenger.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"### Champion vs challenger ({m['seeds']} seeds per row, error rate {m['alpha']}, "
             f"`{m['command']}`)", "",
             "Requests split over segments a and b, a decision read after every pair (rho: share of requests "
             "where the challenger makes the champion's call).", "",
             "| scenario | rho | requests | segment | true delta | wrong decisions | found better | pairs to decision "
             "(median / p90) |", "|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        for name, seg in s["segments"].items():
            found = "" if seg["found_better"] is None else f"{seg['found_better_rate']:.1%}"
            pairs = (f"{seg['pairs_to_decision_median']:,.0f} / {seg['pairs_to_decision_p90']:,.0f}"
                     if "pairs_to_decision_median" in seg else "")
            lines.append(f"| {'A/A' if s['scenario'] == 'aa' else 'better by 3 points in a'} | {s['rho']} | "
                         f"{s['requests_per_seed']:,} | {name} | {seg['true_delta']:+.3f} | "
                         f"{seg['wrong_decisions']} ({seg['wrong_rate']:.1%}) | {found} | {pairs} |")
    lines.append("")
    return "\n".join(lines)
