"""Label-free accuracy (detectors/estimate.py): calibration equals scikit-learn's isotonic
regression on the same bins, the estimate tracks realized accuracy on River's SEA stream, and a
concept change (same inputs, another boundary) shows as a departure beyond the bound."""
from __future__ import annotations

import numpy as np
import pytest
from river import datasets, linear_model, preprocessing
from sklearn.isotonic import IsotonicRegression

from driftline.detectors.estimate import BINS, AccuracyEstimate, bin_of, isotonic

WINDOW = 1000


@pytest.fixture(scope="module")
def sea():
    """A logistic regression trained on SEA concept 0 and frozen, scoring concept 0, then concept 3
    (the same inputs, another threshold): (confidence in the predicted class, correct) per event."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in datasets.synth.SEA(variant=0, seed=1).take(4000):
        model.learn_one(x, y)

    def scored(variant, seed, n):
        out = []
        for x, y in datasets.synth.SEA(variant=variant, seed=seed).take(n):
            p = model.predict_proba_one(x).get(True, 0.5)
            pred = p >= 0.5
            out.append((p if pred else 1 - p, pred == y))
        return out

    return scored(0, 2, 6000), scored(3, 3, 3000)


def test_calibration_is_scikit_learns_isotonic_regression_on_the_bins(sea):
    stable, _ = sea
    counts, correct = [0] * BINS, [0] * BINS
    for c, ok in stable[:WINDOW]:
        counts[bin_of(c)] += 1
        correct[bin_of(c)] += ok
    mine = isotonic(counts, correct)
    used = [b for b in range(BINS) if counts[b]]
    ir = IsotonicRegression().fit(used, [correct[b] / counts[b] for b in used], sample_weight=[counts[b] for b in used])
    assert [mine[b] for b in used] == pytest.approx(list(ir.predict(used)), abs=1e-12)
    assert all(a <= b for a, b in zip(mine, mine[1:]))  # monotone, empty bins included


def test_the_estimate_tracks_realized_accuracy_and_a_concept_change_departs(sea):
    stable, drifted = sea
    est = AccuracyEstimate(WINDOW)
    departures = []
    for i, (c, ok) in enumerate(stable):
        est.predicted(c, WINDOW)
        est.labelled(c, ok, WINDOW)
        if i > 2 * WINDOW and i % 100 == 0:
            last = stable[i + 1 - WINDOW:i + 1]
            assert est.estimated() == pytest.approx(np.mean([ok for _, ok in last]), abs=0.04)
            departures.append(est.departure())
    assert est.calibrated and max(abs(d) for d in departures) < 1  # stable: within the bound
    accuracy_before = est.realized()
    for c, ok in drifted[:WINDOW]:
        est.predicted(c, WINDOW)
    # Before any label of the new concept the estimate still says what the scores mean...
    assert est.estimated() == pytest.approx(accuracy_before, abs=0.04)
    for c, ok in drifted[:WINDOW]:
        est.labelled(c, ok, WINDOW)
    # ...and once labels come, realized accuracy falls below it, beyond the bound.
    assert est.realized() < est.expected() - 0.05
    assert est.departure() < -1


def test_before_calibration_the_raw_confidence_is_the_estimate():
    est = AccuracyEstimate(10)
    for c in (0.95, 0.85, 0.65):
        est.predicted(c, 10)
    assert est.estimated() == pytest.approx(np.mean([(bin_of(c) + 0.5) / BINS for c in (0.95, 0.85, 0.65)]))
    assert not est.calibrated and est.bound() is None
