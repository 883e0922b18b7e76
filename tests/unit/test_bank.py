"""Segments, the detector bank and snapshots."""
import random

import pytest

from driftline.detectors.bank import DetectorBank
from driftline.detectors.segments import SegmentRouter
from driftline.detectors.spec import ModelSpec, PageHinkleyParams
from driftline.detectors.state import SnapshotError, restore, snapshot
from driftline.detectors.observations import InferenceObservation, OutcomeObservation
from driftline.stream.pipeline import feed

SPEC = ModelSpec(
    name="churn", segments=("region", "plan"), max_segments=3,
    features={"tenure": "numeric", "plan": "categorical"}, accuracy_window=200,
    page_hinkley=PageHinkleyParams(threshold=1e6),  # isolate ADWIN in these tests
)


def test_routing_reads_segment_object_then_features():
    r = SegmentRouter()
    assert r.route(SPEC, {"plan": "pro"}, {"region": "eu"}, 0.0) == ("__all__", "region=eu", "plan=pro")
    assert r.route(SPEC, {"plan": True}, None, 0.0) == ("__all__", "plan=true")
    assert r.route(SPEC, {}, None, 0.0) == ("__all__",)
    assert r.route(ModelSpec(name="x"), {"plan": "pro"}, None, 0.0) == ("__all__",)


def test_cardinality_flood_folds_and_counts():
    # The guard is the bank's: the router names raw values, the bank admits max_segments of them.
    r = SegmentRouter()
    bank = DetectorBank(lambda m: SPEC)
    for i in range(10_000):
        for seg in r.route(SPEC, {"region": f"user-{i}"}, None, float(i)):
            feed(bank, [InferenceObservation("churn", seg, f"p{i}", float(i), 1, None, {"tenure": 1.0})])
    keys = {seg for (_, seg), _ in bank.items()}
    assert keys == {"__all__", "region=user-0", "region=user-1", "region=user-2", "region=__other__"}
    assert bank.tally.folded == {("churn", "region"): 10_000 - 3}
    assert bank.tally.inferences[("churn", "region=__other__")] == 10_000 - 3
    assert bank.guard.value_count("churn", "region") == 3


def test_a_folded_value_stays_folded_for_its_outcomes_and_an_admitted_one_keeps_all_its_events():
    bank = DetectorBank(lambda m: SPEC)
    obs = []
    for i in range(40):
        region = f"r{i % 5}"  # 5 values, 3 slots: r0..r2 admitted, r3 and r4 folded on every event
        obs.append(InferenceObservation("churn", f"region={region}", f"p{i}", float(i), 1, None, {}))
        obs.append(OutcomeObservation("churn", f"region={region}", f"p{i}", float(i), 1, 1, 0.0))
    feed(bank, obs)
    assert {seg: bank.tally.inferences[("churn", seg)] for (_, seg), _ in bank.items()} == {
        "region=r0": 8, "region=r1": 8, "region=r2": 8, "region=__other__": 16}
    assert bank.tally.labeled[("churn", "region=__other__")] == 16 and bank.tally.labeled[("churn", "region=r1")] == 8
    assert bank.tally.folded[("churn", "region")] == 16  # inferences only, not their outcomes


def test_idle_values_free_their_slot():
    bank = DetectorBank(lambda m: SPEC)
    for i in range(3):
        feed(bank, [InferenceObservation("churn", f"region=r{i}", f"p{i}", 0.0, 1, None, {})])
    assert bank.admit("churn", "region=new", True) == "region=__other__"
    assert len(bank.evict_idle(older_than=5.0)) == 3
    assert bank.admit("churn", "region=new", True) == "region=new"


def test_a_restored_bank_rebuilds_its_guard_from_its_segments():
    bank = DetectorBank(lambda m: SPEC)
    for i in range(3):
        feed(bank, [InferenceObservation("churn", f"region=r{i}", f"p{i}", 0.0, 1, None, {})])
    again = DetectorBank.restore(bank.snapshot(), lambda m: SPEC)
    assert again.admit("churn", "region=r9", True) == "region=__other__"
    assert again.admit("churn", "region=r1", True) == "region=r1"


def feed_segment(bank, segment, error_rate_before, error_rate_after, change_at, n, seed, start=0.0):
    rng = random.Random(seed)
    found = []
    for i in range(n):
        rate = error_rate_before if i < change_at else error_rate_after
        label = 1 if rng.random() >= rate else 0
        pid = f"{segment}-{i}"
        t = start + i
        found += bank.observe_inference("churn", segment, {"tenure": rng.gauss(10, 2), "plan": "pro"}, 1, None, t, pid)
        found += bank.observe_outcome("churn", segment, 1, label, t, pid)
    return found


def test_error_drift_only_in_the_drifted_segment():
    bank = DetectorBank(lambda m: SPEC)
    drifted = feed_segment(bank, "region=eu", 0.05, 0.4, 2000, 4000, seed=1)
    calm = feed_segment(bank, "region=us", 0.05, 0.05, 2000, 4000, seed=2)
    err = [r for r in drifted if r.signal == "error"]
    assert err and all(r.timestamp >= 2000 for r in err)
    assert err[0].detector == "adwin" and err[0].segment == "region=eu" and err[0].prediction_id.startswith("region=eu-")
    assert set(err[0].statistics) == {"width", "mean"}
    assert [r for r in calm if r.signal == "error"] == []


def test_accuracy_and_counters_match_direct_computation():
    bank = DetectorBank(lambda m: SPEC)
    rng = random.Random(7)
    truth = []
    for i in range(500):
        label = rng.choice([0, 1])
        pred = rng.choice([0, 1])
        truth.append(pred == label)
        bank.observe_outcome("churn", "__all__", pred, label, float(i), str(i))
    st = bank.get("churn", "__all__")
    assert bank.tally.labeled[("churn", "__all__")] == 500
    assert bank.tally.correct[("churn", "__all__")] == sum(truth)
    assert st.accuracy.get() == pytest.approx(sum(truth[-200:]) / 200)


def test_per_model_counts_are_taken_once_per_event_at_all():
    bank = DetectorBank(lambda m: SPEC)
    bank.observe_inference("churn", "__all__", {"tenure": "ten"}, 1, None, 0.0, "a")
    bank.observe_inference("churn", "region=eu", {"tenure": "ten"}, 1, None, 0.0, "a")
    bank.observe_inference("churn", "__all__", {"tenure": None}, 1, None, 0.0, "b")
    bank.observe_outcome("churn", "__all__", 1, 1, 5.0, "a", delay=5.0)
    bank.observe_outcome("churn", "region=eu", 1, 1, 5.0, "a", delay=5.0)
    assert bank.tally.invalid_features == {("churn", "tenure", "type"): 1}
    assert bank.tally.events == {("churn", "inference", "accepted"): 2, ("churn", "label", "accepted"): 1}
    assert bank.tally.delays["churn"].count == 1 and bank.tally.delays["churn"].total == 5.0
    assert bank.tally.inferences == {("churn", "__all__"): 2, ("churn", "region=eu"): 1}


def test_regression_errors():
    spec = ModelSpec(name="eta", task="regression", accuracy_window=10)
    bank = DetectorBank(lambda m: spec)
    for i, (p, y) in enumerate([(10, 12), (5, 5), (3, 0)]):
        bank.observe_outcome("eta", "__all__", p, y, float(i), str(i))
    st = bank.get("eta", "__all__")
    assert st.errors.mae() == pytest.approx(5 / 3)
    assert st.errors.rmse() == pytest.approx((13 / 3) ** 0.5)
    assert st.accuracy is None


def test_idle_segments_are_evicted():
    bank = DetectorBank(lambda m: SPEC)
    bank.observe_outcome("churn", "region=eu", 1, 1, 10.0, "a")
    bank.observe_outcome("churn", "region=us", 1, 1, 100.0, "b")
    assert bank.evict_idle(older_than=50.0) == [("churn", "region=eu")]
    assert len(bank) == 1
    assert ("churn", "region=eu") not in bank.tally.labeled  # its series leave /metrics too


def test_snapshot_restore_continues_identically():
    """A bank restored from bytes halfway must detect exactly what an uninterrupted one does."""
    whole = DetectorBank(lambda m: SPEC)
    first = feed_segment(whole, "region=eu", 0.05, 0.4, 2000, 1500, seed=3)
    blob = whole.snapshot()
    resumed = DetectorBank.restore(blob, lambda m: SPEC)
    rest_whole = feed_segment(whole, "region=eu", 0.4, 0.4, 0, 2500, seed=4, start=1500.0)
    rest_resumed = feed_segment(resumed, "region=eu", 0.4, 0.4, 0, 2500, seed=4, start=1500.0)
    # Detections and explanation refreshes alike, explanations included (the slice counters are state).
    assert [r.to_dict() for r in rest_whole] == [r.to_dict() for r in rest_resumed]
    assert any(r.signal == "error" for r in rest_resumed)
    assert resumed.get("churn", "region=eu").accuracy.get() == whole.get("churn", "region=eu").accuracy.get()
    # Counters are state too: the resumed bank goes on from the snapshot's counts.
    assert resumed.tally.labeled[("churn", "region=eu")] == whole.tally.labeled[("churn", "region=eu")] == 4000
    # The first 1,500 labels are all at the 5% error rate: no error detection before the snapshot.
    assert not [r for r in first if r.signal == "error"]


def test_snapshot_of_join_round_trips():
    from driftline.detectors.join import Joined, LabelJoin, PendingPrediction

    join = LabelJoin(lambda m: 100.0)
    join.add_prediction(PendingPrediction("a", "churn", ("__all__",), 1, None, 0.0))
    join.add_label("b", 0, 1.0)
    back = LabelJoin.restore(join.snapshot(), lambda m: 100.0)
    assert [type(x) for x in back.add_label("a", 1, 2.0).joined] == [Joined]
    assert [type(x) for x in back.add_prediction(PendingPrediction("b", "churn", ("__all__",), 0, None, 1.5)).joined] == [Joined]
    with pytest.raises(SnapshotError, match="not a LabelJoin"):
        LabelJoin.restore(snapshot({"x": 1}), lambda m: 1.0)


def test_snapshot_rejects_foreign_bytes():
    with pytest.raises(SnapshotError, match="not a driftline snapshot"):
        restore(b"{}")
    with pytest.raises(SnapshotError, match="corrupt"):
        restore(b"DLS2garbage")


def test_budgeted_signal_detects_a_level_shift_once_then_learns_the_new_level():
    """Under the false-alarm budget a standardised signal re-learns its normal after a detection:
    a shift that persists is one detection, not one every few hundred values."""
    spec = ModelSpec(name="m", features={"x": "numeric"}, false_alarm_budget=1e7, warmup=200)
    bank = DetectorBank(lambda m: spec)
    rng = random.Random(3)
    hits = []
    for i in range(20_000):
        x = rng.gauss(0 if i < 5_000 else 3, 1)
        hits += [(i, r.detector, r.direction) for r in
                 bank.observe_inference("m", "__all__", {"x": x}, None, None, float(i), str(i)) if r.signal == "x"]
    assert hits and all(i >= 5_000 for i, _, _ in hits)
    assert all(way == "up" for _, _, way in hits)
    assert len(hits) <= 2  # one per detector at most
    assert hits[0][0] < 5_100


def test_a_signal_builds_its_detectors_when_its_warm_up_ends_and_again_after_a_detection():
    """One object per signal: while a standardised signal learns its normal it holds no detector
    (most segments of a high-cardinality model never leave the warm-up), and what /metrics reads
    of it says how much warm-up is left; the detectors exist from the first z-score, and a
    detection returns them to the warm-up (the records carry the detector's statistics)."""
    spec = ModelSpec(name="m", features={"x": "numeric"}, false_alarm_budget=1e7, warmup=200)
    bank = DetectorBank(lambda m: spec)
    rng = random.Random(3)

    def feed_one(i: int, x: float) -> list:
        return [r for r in bank.observe_inference("m", "__all__", {"x": x}, None, None, float(i), str(i))
                if r.signal == "x"]

    for i in range(150):
        feed_one(i, rng.gauss(0, 1))
    sig = bank.get("m", "__all__").signals["x"]
    assert sig.detectors is None and sig.last_detection is None
    (_, readings), = [r for r in bank.get("m", "__all__").detector_readings(("x",)) if r[0] == "x"]
    assert [(r.detector, r.last_detection, r.direction, r.statistics) for r in readings] == [
        ("adwin", None, 0, {"warmup_remaining": 50.0}), ("page_hinkley", None, 0, {"warmup_remaining": 50.0})]
    for i in range(150, 260):
        feed_one(i, rng.gauss(0, 1))
    assert [type(d).__name__ for d in sig.detectors] == ["ADWINDetector", "PageHinkleyDetector"]
    hits = []
    i = 260
    while not hits:
        hits = feed_one(i, rng.gauss(4, 1))
        i += 1
    assert {"center", "scale"} <= set(hits[0].statistics)
    assert sig.detectors is None  # learning the new level
    assert sig.last_detection[[r.detector for r in sig.readings()].index(hits[0].detector)] == float(i - 1)
