"""The label join as a pure object: exact fates on scripted sequences."""
from driftline.detectors.join import Joined, LabelJoin, PendingPrediction
from collections import Counter

TTL = 100.0


def pred(pid, ts, model="m", segments=("__all__",), prediction=1):
    return PendingPrediction(pid, model, segments, prediction, None, ts)


def make(max_pending=1000):
    return LabelJoin(lambda model: TTL, max_pending=max_pending)


def test_label_after_prediction_joins():
    j = make()
    assert j.add_prediction(pred("a", 0.0)) is None
    out = j.add_label("a", 0, 5.0)
    assert isinstance(out, Joined) and out.label == 0 and out.delay == 5.0
    assert j.fates == []  # a join is the return value; fates are the events that did not join
    assert j.pending_predictions == 0


def test_label_before_prediction_is_held_then_joined():
    j = make()
    assert j.add_label("a", 1, 10.0, model="m") is None
    assert j.held_labels == 1
    out = j.add_prediction(pred("a", 12.0))
    assert isinstance(out, Joined) and out.label == 1 and out.delay == -2.0
    assert j.held_labels == 0


def test_duplicate_label_counted_once():
    j = make()
    j.add_prediction(pred("a", 0.0))
    assert isinstance(j.add_label("a", 1, 1.0), Joined)
    assert j.add_label("a", 1, 2.0) == "duplicate"
    assert j.add_label("a", 0, 3.0) == "duplicate"
    assert j.fates == [(None, "label", "duplicate")] * 2


def test_duplicate_held_label_and_duplicate_prediction():
    j = make()
    assert j.add_label("a", 1, 0.0) is None
    assert j.add_label("a", 1, 1.0) == "duplicate"
    j.add_prediction(pred("b", 0.0))
    assert j.knows_prediction("b")
    assert j.add_prediction(pred("b", 1.0)) == "duplicate"
    assert Counter(j.fates)[("m", "inference", "duplicate")] == 1


def test_prediction_expires_after_ttl_and_late_label_is_unmatched():
    j = make()
    j.add_prediction(pred("a", 0.0))
    assert j.expire(99.0) == 0
    assert j.expire(100.0) == 1
    assert j.fates == [("m", "inference", "expired")]
    assert j.add_label("a", 1, 150.0, model="m") is None  # held: its prediction is gone
    j.expire(250.0)
    assert j.fates[1:] == [("m", "label", "unmatched")]
    assert j.pending_predictions == 0 and j.held_labels == 0


def test_model_mismatch_is_refused_and_prediction_kept():
    j = make()
    j.add_prediction(pred("a", 0.0, model="m"))
    assert j.add_label("a", 1, 1.0, model="other") == "model_mismatch"
    assert isinstance(j.add_label("a", 1, 2.0, model="m"), Joined)


def test_early_label_naming_another_model_does_not_grade_the_prediction():
    j = make()
    assert j.add_label("a", 1, 0.0, model="other") is None
    assert j.add_prediction(pred("a", 1.0, model="m")) is None  # waits for a label of its own
    assert j.fates == [("other", "label", "unmatched")]
    assert isinstance(j.add_label("a", 0, 2.0, model="m"), Joined)


def test_cap_bounds_memory_and_counts_fates():
    j = make(max_pending=10)
    for i in range(25):
        j.add_prediction(pred(f"p{i}", float(i)))
        j.add_label(f"orphan{i}", 1, float(i))
    assert j.pending_predictions == 10 and j.held_labels == 10
    fates = Counter(j.fates)
    assert fates[("m", "inference", "expired")] == 15
    assert fates[(None, "label", "unmatched")] == 15
    # The newest survive the cap.
    assert isinstance(j.add_label("p24", 1, 30.0), Joined)


def test_heap_stays_bounded_under_churn():
    j = make(max_pending=10)
    for i in range(20_000):
        j.add_prediction(pred(f"p{i}", 0.0))
    assert all(len(heap) <= 4 * 10 + 1024 + 1 for heap in j._deadlines.values())


def test_exactly_once_fates_on_random_script():
    import random

    rng = random.Random(4)
    j = make()
    n = 2000
    labelled = set()
    t = 0.0
    events = [("p", i) for i in range(n)] + [("l", i) for i in range(n) if rng.random() < 0.7]
    rng.shuffle(events)
    joined = 0
    for kind, i in events:
        t += 0.01
        out = j.add_prediction(pred(str(i), t)) if kind == "p" else j.add_label(str(i), 1, t)
        if isinstance(out, Joined):
            joined += 1
            labelled.add(i)
    j.expire(t + 10 * TTL)
    assert joined == len([e for e in events if e[0] == "l"])
    assert Counter(j.fates) == {("m", "inference", "expired"): n - joined}
