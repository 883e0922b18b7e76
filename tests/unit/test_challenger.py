"""Champion vs challenger: request_id in the codec and the join, pairing, and the anytime-valid
confidence sequence (detectors/challenger.py), checked against an independent computation."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from driftline.detectors.challenger import ChallengerComparison, ShadowPairs, comparisons
from driftline.detectors.join import WAITING, Fate, Joined, LabelJoin, PendingPrediction
from driftline.stream.codec import decode_inference, decode_label
from driftline.stream.events import Invalid, Label


# ---------------------------------------------------------------------------------- codec
def test_request_id_is_decoded_on_inferences_and_labels():
    ev = decode_inference(b'{"prediction_id": "p1", "request_id": "r1", "model": "a", "features": {}, "prediction": 1}', 0.0)
    assert ev.request_id == "r1"
    assert decode_label(b'{"request_id": "r1", "label": 1, "timestamp": 5}', 0.0) == Label(None, 1, 5.0, None, "r1")
    assert decode_label(b'{"prediction_id": "p1", "request_id": "r1", "label": 0}', 2.0) == Label("p1", 0, 2.0, None, "r1")
    for raw, reason in [
        (b'{"label": 1}', "missing_field"),
        (b'{"request_id": 7, "label": 1}', "wrong_type"),
        (b'{"request_id": "", "label": 1}', "out_of_range"),
        (b'{"request_id": "r", "prediction_id": 3, "label": 1}', "wrong_type"),
    ]:
        out = decode_label(raw, 0.0)
        assert isinstance(out, Invalid) and out.reason == reason, (raw, out)
    bad = decode_inference(b'{"prediction_id": "p", "request_id": ["r"], "model": "a", "features": {}, "prediction": 1}', 0.0)
    assert isinstance(bad, Invalid) and bad.reason == "wrong_type" and "request_id" in bad.detail


# ---------------------------------------------------------------------------------- join
def pred(pid, model="a", ts=0.0):
    return PendingPrediction(pid, model, ("__all__",), 1, None, ts)


def test_a_request_label_grades_every_prediction_of_the_request_also_later_ones():
    j = LabelJoin(lambda m: 100.0)
    assert j.add_prediction(pred("a1", "a"), "r1") == WAITING
    assert j.add_prediction(pred("b1", "b"), "r1") == WAITING
    assert j.add_prediction(pred("a2", "a"), "r2") == WAITING
    graded = j.add_label(None, 1, 5.0, request_id="r1").joined
    assert sorted(x.prediction.prediction_id for x in graded) == ["a1", "b1"]
    assert all(isinstance(x, Joined) and x.request_id == "r1" and x.label == 1 for x in graded)
    (late,) = j.add_prediction(pred("c1", "c", 6.0), "r1").joined  # a third model's prediction of r1, after the label
    assert isinstance(late, Joined) and late.label == 1
    assert j.add_label(None, 0, 7.0, request_id="r1").fates == (Fate(None, "label", "duplicate"),)
    assert j.add_label("a1", 0, 7.0).fates == (Fate(None, "label", "duplicate"),)  # graded already, by its request
    assert j.pending_predictions == 1  # a2 waits for its own label
    fates = j.expire(200.0)
    assert ("a", "inference", "expired") in fates and (None, "label", "unmatched") not in fates


def test_a_request_label_that_grades_nothing_is_unmatched_at_its_ttl():
    j = LabelJoin(lambda m: 100.0)
    assert j.add_label(None, 1, 5.0, request_id="nobody") == WAITING  # graded none (yet)
    assert j.expire(104.0) == ()
    assert j.expire(106.0) == (Fate(None, "label", "unmatched"),)


def test_disagreeing_ids_are_refused_or_counted_invalid():
    j = LabelJoin(lambda m: 100.0)
    j.add_prediction(pred("a1"), "r1")
    assert j.add_label("a1", 1, 1.0, request_id="r2").refused == "request_mismatch"
    assert j.pending_predictions == 1  # the prediction still waits for a right label
    assert len(j.add_label("a1", 1, 2.0, request_id="r1").joined) == 1
    # the label first: its prediction then carries another request_id
    assert j.add_label("a9", 1, 3.0, request_id="r9") == WAITING
    waits = j.add_prediction(pred("a9", ts=4.0), "r8")
    assert waits.joined == () and waits.fates == (Fate("a", "label", "invalid"),)
    assert j.pending_predictions == 1  # a9 waits on


def test_requests_survive_a_snapshot():
    j = LabelJoin(lambda m: 100.0)
    j.add_prediction(pred("a1", "a"), "r1")
    back = LabelJoin.restore(j.snapshot(), lambda m: 100.0)
    graded = back.add_label(None, 1, 5.0, request_id="r1").joined
    assert [x.prediction.prediction_id for x in graded] == ["a1"]


# ---------------------------------------------------------------------------------- pairing
def test_pairs_form_when_both_models_are_graded_and_leftovers_are_unpaired():
    champion_of, challengers_of = comparisons({"b": "a", "c": "a"})
    sp = ShadowPairs(champion_of, challengers_of, lambda m: 10.0)
    assert sp.add("b", "r1", True, ("__all__", "x=1"), 1.0) == []
    pairs = sp.add("a", "r1", False, ("__all__",), 2.0)
    assert [(p.challenger, p.champion, p.segments, p.challenger_correct, p.champion_correct) for p in pairs] == [
        ("b", "a", ("__all__", "x=1"), True, False)]
    assert [p.challenger for p in sp.add("c", "r1", True, ("__all__",), 3.0)] == ["c"]
    sp.add("a", "r2", True, ("__all__",), 4.0)  # c and b never graded for r2
    sp.expire(100.0)
    assert sp.counts == {("a", "unpaired"): 1} and len(sp) == 0


# ---------------------------------------------------------------------------------- confidence sequence
def reference_cs(d: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Waudby-Smith & Ramdas (2023), Theorem 2 (PrPl-EB), written from the paper with numpy, on
    x = (d + 1) / 2, returning the running intersection mapped back to d."""
    x = (d + 1) / 2.0
    t = np.arange(1, len(x) + 1)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    mu_prev = np.concatenate([[0.5], mu[:-1]])
    var_prev = np.concatenate([[0.25], var[:-1]])
    lam = np.minimum(np.sqrt(2 * math.log(2 / alpha) / (var_prev * t * np.log1p(t))), 0.5)
    v = 4 * (x - mu_prev) ** 2
    psi = (-np.log1p(-lam) - lam) / 4
    centre = np.cumsum(lam * x) / np.cumsum(lam)
    radius = (math.log(2 / alpha) + np.cumsum(v * psi)) / np.cumsum(lam)
    lo = np.maximum.accumulate(np.maximum(centre - radius, 0.0))  # x is in [0, 1]: so is its mean
    hi = np.minimum.accumulate(np.minimum(centre + radius, 1.0))
    return 2 * lo - 1, 2 * hi - 1


def test_confidence_sequence_equals_the_papers_formula():
    rng = random.Random(3)
    d = np.array([int(rng.random() < 0.82) - int(rng.random() < 0.8) for _ in range(5000)])
    lo, hi = reference_cs(d, 0.05)
    cmp = ChallengerComparison()
    for i, di in enumerate(d):
        cmp.update(di == 1, di == -1, 0.05)
        if i in (0, 10, 999, 4999):
            assert cmp.lower() == pytest.approx(lo[i], abs=1e-12)
            assert cmp.upper() == pytest.approx(hi[i], abs=1e-12)
    assert -1 < lo[-1] < hi[-1] < 1  # the last check compared a real interval, not the clipped start
    assert cmp.delta() == pytest.approx(d.mean())


def test_identical_quality_is_rarely_called_better_or_worse_even_watched_after_every_pair():
    wrong, seeds = 0, 60
    for seed in range(seeds):
        rng = random.Random(seed)
        cmp = ChallengerComparison()
        for _ in range(3000):
            cmp.update(rng.random() < 0.8, rng.random() < 0.8, 0.05)
            if cmp.decision() != 0:
                wrong += 1
                break
    assert wrong <= 3  # <= 5% of 60 (bench/quality.py runs many more seeds)


def test_a_better_challenger_is_found_better_and_the_interval_covers_the_truth():
    rng = random.Random(11)
    cmp = ChallengerComparison()
    decided_at = None
    for i in range(40_000):
        cmp.update(rng.random() < 0.9, rng.random() < 0.8, 0.05)  # +10 points
        assert cmp.lower() <= 0.1 <= cmp.upper()
        if decided_at is None and cmp.decision():
            decided_at = i
    assert cmp.decision() == 1 and decided_at < 5000


# ---------------------------------------------------------------------------------- SDK
def test_the_sdk_encodes_request_ids_that_the_worker_decodes():
    from driftline.stream.publish import encode_inference, encode_label

    raw = encode_inference(prediction_id="p1", model="a", features={}, prediction=1, timestamp=5.0, request_id="r1")
    assert decode_inference(raw, 0.0).request_id == "r1"
    assert decode_label(encode_label(prediction_id=None, request_id="r1", label=1, timestamp=6.0), 0.0) == Label(
        None, 1, 6.0, None, "r1")
    bad = encode_inference(prediction_id="p1", model="a", features={}, prediction=1, timestamp=5.0, request_id="")
    assert isinstance(bad, Invalid) and "request_id" in bad.detail
    assert isinstance(encode_label(prediction_id=None, label=1, timestamp=6.0), Invalid)  # neither id
