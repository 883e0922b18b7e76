"""Classification quality (detectors/classification.py) on real data, against scikit-learn.

River's bundled Phishing data (binary) scored by an online logistic regression, and its bundled
ImageSegments data (7 classes) predicted by an online Gaussian naive Bayes: the figures
driftline keeps per segment must equal scikit-learn's on the same window.
"""
from __future__ import annotations

import numpy as np
import pytest
from river import datasets, linear_model, naive_bayes, preprocessing
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, f1_score, log_loss, precision_score, recall_score, roc_auc_score

from driftline.detectors.bank import DetectorBank
from driftline.detectors.classification import OTHER_CLASS, ClassQuality
from driftline.detectors.spec import ModelSpec, OutcomeCosts, QualitySpec

WINDOW = 400


@pytest.fixture(scope="module")
def phishing():
    """(prediction, label, P(positive)) per row, progressive validation (predict, then learn)."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    rows = []
    for x, y in datasets.Phishing():
        p = model.predict_proba_one(x).get(True, 0.5)
        rows.append((p >= 0.5, y, p))
        model.learn_one(x, y)
    return rows


@pytest.fixture(scope="module")
def segments():
    model = naive_bayes.GaussianNB()
    rows = []
    for x, y in datasets.ImageSegments():
        pred = model.predict_one(x)
        rows.append((pred if pred is not None else "unknown", y))
        model.learn_one(x, y)
    return rows


def independent_ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    # scikit-learn's reliability curve (per non-empty bin) weighted by its bin counts.
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    ids = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], p)
    counts = np.bincount(ids, minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(p))


def test_rolling_binary_metrics_equal_scikit_learn_on_the_window(phishing):
    spec = QualitySpec(positive_class="true")
    q = ClassQuality(spec, WINDOW)
    for i, (pred, y, p) in enumerate(phishing):
        q.update(spec, WINDOW, pred, y, p)
        if i + 1 in (150, 700, len(phishing)):  # a part-filled window, a full one, the end
            last = phishing[max(0, i + 1 - WINDOW):i + 1]
            yp = np.array([r[0] for r in last])
            yt = np.array([r[1] for r in last])
            pp = np.array([r[2] for r in last])
            assert q.precision() == pytest.approx(precision_score(yt, yp), abs=1e-12)
            assert q.recall() == pytest.approx(recall_score(yt, yp), abs=1e-12)
            assert q.f1() == pytest.approx(f1_score(yt, yp), abs=1e-12)
            assert q.roc_auc() == pytest.approx(roc_auc_score(yt, pp), abs=1e-12)
            assert q.log_loss() == pytest.approx(log_loss(yt, pp, labels=[False, True]), abs=1e-9)
            assert q.calibration_error() == pytest.approx(independent_ece(pp, yt), abs=1e-12)
    # The online model is far better than chance on this data: the figures mean something.
    assert q.roc_auc() > 0.9


def test_predicted_class_confidence_gives_the_same_figures_for_a_binary_model(phishing):
    """A score that is the confidence in the predicted class is P(positive) or its complement."""
    as_positive = QualitySpec(positive_class="true")
    as_predicted = QualitySpec(classes=("false", "true"), positive_class="true", score_of="predicted_class")
    a, b = ClassQuality(as_positive, WINDOW), ClassQuality(as_predicted, WINDOW)
    for pred, y, p in phishing:
        a.update(as_positive, WINDOW, pred, y, p)
        b.update(as_predicted, WINDOW, pred, y, p if pred else 1.0 - p)
    assert b.roc_auc() == pytest.approx(a.roc_auc(), abs=1e-12)
    assert b.log_loss() == pytest.approx(a.log_loss(), abs=1e-9)


def test_confusion_counts_equal_scikit_learn_and_classes_beyond_the_bound_fold(segments):
    spec = QualitySpec(max_classes=4)
    q = ClassQuality(spec)
    for pred, y in segments:
        q.update(spec, 1000, pred, y, None)
    kept = list(q.classes)
    assert len(kept) == 4
    names = kept + [OTHER_CLASS]
    fold = lambda c: c if c in kept else OTHER_CLASS
    expected = confusion_matrix([fold(y) for _, y in segments], [fold(p) for p, _ in segments], labels=names)
    for i, actual in enumerate(names):
        for j, predicted in enumerate(names):
            got = q.confusion.get((predicted, actual, True), 0) + q.confusion.get((predicted, actual, False), 0)
            assert got == expected[i, j]
    # the diagonal of real classes is what `correct` marks
    assert all(ok == (p == a != OTHER_CLASS) for p, a, ok in q.confusion if OTHER_CLASS not in (p, a))
    # every class name outside the first four seen was counted as folded, predicted or actual
    assert q.folded == sum((p not in kept) + (y not in kept) for p, y in segments) > 0
    assert sum(q.confusion.values()) == len(segments)


def test_fixed_classes_fold_everything_else_and_outcome_costs_add_up(segments):
    costs = OutcomeCosts(pairs={("cement", "path"): 40.0, ("grass", "grass"): -3.0}, default_error=5.0)
    spec = QualitySpec(classes=("grass", "sky"), costs=costs)
    q = ClassQuality(spec)
    for pred, y in segments:
        q.update(spec, 1000, pred, y, None)
    assert set(q.classes) == {"grass", "sky"}
    assert {k for key in q.confusion for k in key[:2]} <= {"grass", "sky", OTHER_CLASS}
    # costs are looked up by the true class names, folded or not
    expected_cost = sum(40.0 if (p, y) == ("cement", "path") else (5.0 if p != y else 0.0) for p, y in segments)
    expected_value = 3.0 * sum(1 for p, y in segments if p == y == "grass")
    assert q.cost == pytest.approx(expected_cost) and q.value == pytest.approx(expected_value)
    assert expected_value > 0 and q.cost > 0


def test_undefined_metrics_are_none_not_zero():
    spec = QualitySpec(positive_class="1")
    q = ClassQuality(spec, 10)
    for _ in range(5):
        q.update(spec, 10, 0, 0, 0.2)  # no positive predicted, none actual
    assert q.precision() is None and q.recall() is None and q.f1() is None and q.roc_auc() is None
    assert q.log_loss() == pytest.approx(-np.log(0.8))


def test_bank_keeps_quality_per_segment_through_a_snapshot(phishing):
    spec = ModelSpec(name="phish", accuracy_window=WINDOW, quality=QualitySpec(positive_class="true"))
    bank = DetectorBank(lambda m: spec)
    half = len(phishing) // 2
    for i, (pred, y, p) in enumerate(phishing[:half]):
        bank.observe_outcome("phish", "__all__", pred, y, float(i), f"p{i}", 1.0, p)
    restored = DetectorBank.restore(bank.snapshot(), lambda m: spec)
    for i, (pred, y, p) in enumerate(phishing[half:], start=half):
        restored.observe_outcome("phish", "__all__", pred, y, float(i), f"p{i}", 1.0, p)
    q = restored.get("phish", "__all__").quality
    last = phishing[-WINDOW:]
    assert q.roc_auc() == pytest.approx(roc_auc_score([r[1] for r in last], [r[2] for r in last]), abs=1e-12)
    assert sum(q.confusion.values()) == len(phishing)
