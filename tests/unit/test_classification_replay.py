"""`driftline replay` exports classification quality and outcome costs per segment that equal
scikit-learn's figures on the same events (River's bundled Phishing data, an online model)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from river import datasets, linear_model, preprocessing
from sklearn.metrics import f1_score, log_loss, precision_score, recall_score, roc_auc_score

from driftline.stream.replay import replay
from driftline.stream.settings import load_settings
from tests.integration.harness import parse, total

REPO = Path(__file__).resolve().parents[2]
WINDOW = 300
COST_FN, COST_FP, VALUE_TP = 120.0, 15.0, 4.0

CONFIG = f"""\
models:
  phish:
    segments: [https]
    accuracy_window: {WINDOW}
    positive_class: true
    outcome_costs:
      default_error: {COST_FP}
      pairs:
        - {{predicted: false, actual: true, cost: {COST_FN}}}
        - {{predicted: true, actual: true, cost: -{VALUE_TP}}}
      budget: {{amount: 1000, per: 1h}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phish")
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    inferences, labels, rows = [], [], []
    t0 = 1_767_225_600.0
    for i, (x, y) in enumerate(datasets.Phishing()):
        p = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, y)
        seg = {0.0: "no", 0.5: "mixed", 1.0: "yes"}[float(x["https"])]
        pid = f"p{i}"
        inferences.append({"prediction_id": pid, "model": "phish", "timestamp": t0 + i, "features": {},
                           "prediction": p >= 0.5, "score": p, "segment": {"https": seg}})
        labels.append({"prediction_id": pid, "label": y, "timestamp": t0 + i + 60})
        rows.append((seg, p >= 0.5, y, p))
    (tmp / "inferences.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in inferences))
    (tmp / "labels.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in labels))
    (tmp / "driftline.yml").write_text(CONFIG)
    result = replay(load_settings(tmp / "driftline.yml"), tmp / "inferences.jsonl", tmp / "labels.jsonl")
    return tmp, rows, parse(result.exposition().decode())


def by_segment(rows):
    out = {"__all__": rows}
    for seg in {r[0] for r in rows}:
        out[f"https={seg}"] = [r for r in rows if r[0] == seg]
    return out


def test_rolling_quality_per_segment_equals_scikit_learn(run):
    _, rows, s = run
    checked = 0
    for segment, seg_rows in by_segment(rows).items():
        last = seg_rows[-WINDOW:]
        yp, yt, pp = (np.array([r[k] for r in last]) for k in (1, 2, 3))
        lv = dict(model="phish", segment=segment)
        if yp.any() and yt.any():
            assert total(s, "driftline_precision", **lv) == pytest.approx(precision_score(yt, yp), abs=1e-12)
            assert total(s, "driftline_recall", **lv) == pytest.approx(recall_score(yt, yp), abs=1e-12)
            assert total(s, "driftline_f1", **lv) == pytest.approx(f1_score(yt, yp), abs=1e-12)
        if len(set(yt)) == 2:
            assert total(s, "driftline_roc_auc", **lv) == pytest.approx(roc_auc_score(yt, pp), abs=1e-12)
            assert total(s, "driftline_log_loss", **lv) == pytest.approx(log_loss(yt, pp, labels=[False, True]), abs=1e-9)
            checked += 1
    assert checked >= 3  # __all__ and at least two https segments had both classes


def test_confusion_counters_and_costs_equal_an_independent_count(run):
    _, rows, s = run
    for segment, seg_rows in by_segment(rows).items():
        for pred in (False, True):
            for actual in (False, True):
                n = sum(1 for r in seg_rows if r[1] == pred and r[2] == actual)
                got = total(s, "driftline_confusion_total", model="phish", segment=segment,
                            predicted=str(pred).lower(), actual=str(actual).lower())
                assert got == n
                if n:
                    assert total(s, "driftline_confusion_total", model="phish", segment=segment, predicted=str(pred).lower(),
                                 actual=str(actual).lower(), correct=str(pred == actual).lower()) == n
        fn = sum(1 for r in seg_rows if not r[1] and r[2])
        fp = sum(1 for r in seg_rows if r[1] and not r[2])
        tp = sum(1 for r in seg_rows if r[1] and r[2])
        assert total(s, "driftline_outcome_cost_total", model="phish", segment=segment) == pytest.approx(
            fn * COST_FN + fp * COST_FP)
        assert total(s, "driftline_outcome_value_total", model="phish", segment=segment) == pytest.approx(tp * VALUE_TP)
    assert total(s, "driftline_outcome_cost_budget", model="phish") == pytest.approx(1000 / 3600)


def test_exposition_passes_promtool(run, tmp_path):
    tmp, _, _ = run
    out = tmp_path / "metrics.txt"
    subprocess.run([sys.executable, "-m", "driftline.stream.cli", "replay", "--config", str(tmp / "driftline.yml"),
                    "--inferences", str(tmp / "inferences.jsonl"), "--labels", str(tmp / "labels.jsonl"),
                    "--metrics-out", str(out)], check=True, cwd=REPO)
    text = out.read_text()
    assert "driftline_confusion_total{" in text and "driftline_roc_auc{" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_estimated_accuracy_per_segment_equals_an_isotonic_calibration_by_scikit_learn(run):
    from sklearn.isotonic import IsotonicRegression

    from driftline.detectors.estimate import BINS, bin_of

    _, rows, s = run
    checked = 0
    for segment, seg_rows in by_segment(rows).items():
        conf = [p if pred else 1 - p for _, pred, _, p in seg_rows]
        ok = [pred == y for _, pred, y, _ in seg_rows]
        lv = dict(model="phish", segment=segment)
        if len(seg_rows) < WINDOW:  # not calibrated yet: the raw confidence (bin centres)
            expected = np.mean([(bin_of(c) + 0.5) / BINS for c in conf[-WINDOW:]])
        else:
            bins = [bin_of(c) for c in conf[:WINDOW]]
            used = sorted(set(bins))
            acc = [np.mean([o for b, o in zip(bins, ok) if b == u]) for u in used]
            ir = IsotonicRegression(out_of_bounds="clip").fit(used, acc, sample_weight=[bins.count(u) for u in used])
            calib = dict(zip(used, ir.predict(used)))
            nearest = lambda b: calib[max([u for u in used if u <= b], default=used[0])]
            expected = np.mean([nearest(bin_of(c)) for c in conf[-WINDOW:]])
            checked += 1
            assert total(s, "driftline_estimate_calibrated", **lv) == 1
        assert total(s, "driftline_estimated_accuracy", **lv) == pytest.approx(expected, abs=1e-9), segment
    assert checked >= 2
