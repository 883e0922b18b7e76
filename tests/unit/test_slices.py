"""Slice accounting: the slice that explains an accuracy drop ranks first, bad values have a place,
the change point is placed, refreshes come at 100/400/1,600, state survives a snapshot."""
import math
import pickle
import random

import orjson
import pytest

from driftline.detectors.bank import DetectorBank, ExplanationRecord
from driftline.detectors.slices import (BLOCK, RECENT, MISSING, OTHER, REFRESH_AT, WARMUP, FeatureBins,
                                        SliceAccountant)
from driftline.detectors.spec import ModelSpec
from driftline.detectors.state import restore, snapshot

FEATURES = (("tenure", "numeric"), ("plan", "categorical"), ("noise", "numeric"), ("decoy", "numeric"))
PLANS = ("free", "basic", "pro", "team", "enterprise")


def event(rng, drifted, blame="tenure"):
    """One outcome: 90% correct everywhere, except, once drifted, 35% in tenure >= 48 (numeric
    blame) or plan == "team" (categorical blame); the decoy shifts by 2 sd and hurts nothing."""
    tenure, plan, noise = rng.uniform(0, 60), rng.choice(PLANS), rng.gauss(0, 1)
    decoy = rng.gauss(2.0 if drifted else 0.0, 1)
    p = 0.9
    if drifted and ((blame == "tenure" and tenure >= 48) or (blame == "plan" and plan == "team")):
        p = 0.35
    return (tenure, plan, noise, decoy), rng.random() < p


def run(acc, rng, n, drifted, start, blame="tenure"):
    for i in range(n):
        values, correct = event(rng, drifted, blame)
        acc.observe(values, None, correct, float(start + i))


@pytest.mark.parametrize("blame,feature,check", [
    ("tenure", "tenure", lambda s: s.lower is not None and s.lower >= 40 and s.category is None),
    ("plan", "plan", lambda s: s.category == "team" and s.lower is None and s.upper is None),
])
def test_the_injected_slice_ranks_first_and_the_decoy_is_not_blamed(blame, feature, check):
    rng = random.Random(7)
    acc = SliceAccountant(FEATURES)
    run(acc, rng, 4000, False, 0)
    run(acc, rng, 600, True, 4000, blame)
    e = acc.detected(4599.0, hold=3600.0)
    top = e.slices[0]
    assert top.feature == feature and check(top)
    assert top.accuracy_before > 0.8 and top.accuracy_after < 0.5
    assert e.slices == tuple(sorted(e.slices, key=lambda s: -s.contribution))
    shifts = {f.feature: f for f in e.features}
    # The decoy's distribution moved (PSI far above 0.25) but none of its bins lost accuracy
    # beyond the rest of the traffic: it is not blamed.
    assert shifts["decoy"].psi > 1.0 and shifts[feature].psi < 0.1
    assert shifts["decoy"].contribution < 0.25 * top.contribution
    assert all(s.contribution < 0.1 * top.contribution for s in e.slices if s.feature == "decoy")


def test_the_change_point_is_placed_at_the_block_where_errors_rose():
    rng = random.Random(3)
    acc = SliceAccountant(FEATURES)
    run(acc, rng, 3000, False, 0)
    run(acc, rng, 700, True, 3000)
    e = acc.detected(3699.0, hold=3600.0)
    assert abs(e.since - 3000.0) <= BLOCK  # the detector fired 700 events late; the window starts at the change
    assert e.accuracy_before > 0.88 and e.accuracy_after < 0.85
    assert e.labelled_before + e.labelled_after == 3700 - WARMUP


def test_bad_values_each_have_a_place():
    acc = SliceAccountant((("x", "numeric"), ("c", "categorical")),
                          profile={"x": FeatureBins("x", "numeric", (10.0, 20.0)),
                                   "c": FeatureBins("c", "categorical", categories=("a", "b"))})
    acc.start(0.0)  # everything from here on is "after"
    for values in [(5.0, "a"), (15, "b"), (25.0, "zzz"), (-1e9, 7), (math.nan, None), ("12", True), (None, "a"),
                   (math.inf, "b"), (), None]:
        acc.observe(values, None, True, 1.0)
    bins = {}
    for fb, off in zip(acc.layout, acc.offsets):
        for i in range(fb.size):
            if acc.after.lab[off + i]:
                bins[(fb.name, fb.describe(i)[0])] = acc.after.lab[off + i]
    assert bins == {("x", "[-inf, 10)"): 2, ("x", "[10, 20)"): 1, ("x", "[20, +inf)"): 2, ("x", MISSING): 5,
                    ("c", "a"): 2, ("c", "b"): 2, ("c", OTHER): 3, ("c", MISSING): 3}
    assert acc.after.n == 10


def test_explanation_of_all_names_the_segment_that_accounts_for_the_drop():
    rng = random.Random(5)
    acc = SliceAccountant((("x", "numeric"),), attributes=("region",))
    for t in range(5000):
        region = rng.choice(("eu", "us", "apac"))
        bad = t >= 4200 and region == "apac"
        acc.observe((rng.random(),), ("__all__", f"region={region}"), rng.random() < (0.4 if bad else 0.92), float(t))
    top = acc.detected(4999.0, hold=600.0).slices[0]
    assert (top.feature, top.category) == ("region", "apac")


def test_memory_is_bounded_by_bins_features_and_blocks():
    rng = random.Random(1)
    acc = SliceAccountant(FEATURES)
    run(acc, rng, 30_000, False, 0)
    bins = sum(fb.size for fb in acc.layout)
    assert bins <= 4 * 14 and acc.counters() <= bins * (RECENT + 2)
    acc.detected(30_000.0, hold=1e9)
    run(acc, rng, 20_000, True, 30_001)
    assert acc.counters() == 2 * bins  # reference + after, whatever the traffic


def test_state_round_trips_as_plain_values_and_counting_goes_on_identically():
    rng = random.Random(11)
    acc = SliceAccountant(FEATURES, attributes=("region",))
    for t in range(4500):
        values, ok = event(rng, t >= 4000)
        acc.observe(values, ("__all__", "region=eu"), ok, float(t))
    acc.detected(4499.0, hold=1e6)
    plain = orjson.loads(orjson.dumps(acc.to_state()))  # JSON-able: no Python objects inside
    copies = [SliceAccountant.from_state(plain), pickle.loads(pickle.dumps(acc))]
    tail = [event(rng, True) for _ in range(300)]
    for a in [acc] + copies:
        for t, (values, ok) in enumerate(tail):
            a.observe(values, ("__all__", "region=eu"), ok, 4500.0 + t)
    assert copies[0].explain() == acc.explain() == copies[1].explain()
    # and during the warm-up too (the reservoir is state)
    young = SliceAccountant(FEATURES)
    run(young, random.Random(2), WARMUP // 2, False, 0)
    again = SliceAccountant.from_state(orjson.loads(orjson.dumps(young.to_state())))
    run(young, random.Random(4), WARMUP, False, 1000)
    run(again, random.Random(4), WARMUP, False, 1000)
    assert young.layout == again.layout and young.block.lab == again.block.lab


SPEC = ModelSpec(name="churn", segments=("region",), features={"tenure": "numeric", "plan": "categorical",
                                                              "noise": "numeric", "decoy": "numeric"},
                 accuracy_window=500, drift_hold=10_000.0, false_alarm_budget=1e6)


def feed_bank(bank, n, drifted, start, rng):
    out = []
    for i in range(n):
        values, ok = event(rng, drifted)
        t = float(start + i)
        out += bank.observe_outcome("churn", "__all__", 1, 1 if ok else 0, t, f"p{start + i}", 0.0, values=values,
                                    segments=("__all__", "region=eu"))
    return out


def test_bank_error_drift_carries_the_explanation_and_refreshes_it():
    rng = random.Random(21)
    bank = DetectorBank(lambda m: SPEC)
    assert not [r for r in feed_bank(bank, 5000, False, 0, rng) if r.signal == "error"]
    recs = feed_bank(bank, 3000, True, 5000, rng)
    error_up = [r for r in recs if r.kind == "detection" and r.signal == "error" and r.direction == "up"]
    assert error_up, "the drop was not detected"
    first = error_up[0].to_dict()
    e = first["explanation"]
    assert set(e["slices"][0]) == {"feature", "bin", "lower", "upper", "category", "labelled_before",
                                   "accuracy_before", "labelled_after", "accuracy_after", "share_before",
                                   "share_after", "contribution"}
    assert e["slices"][0]["feature"] == "tenure" and e["slices"][0]["lower"] >= 40
    assert abs(e["since"] - 5000) <= BLOCK and e["since"] <= first["timestamp"]
    refreshes = [r for r in recs if isinstance(r, ExplanationRecord)]
    counts = [r.labelled_after for r in refreshes]
    assert counts == [k for k in REFRESH_AT if k > e["labelled_after"]]  # each threshold once, in order
    for r in refreshes:
        d = r.to_dict()
        assert d["kind"] == "explanation" and d["explanation"]["since"] == e["since"]
        assert d["explanation"]["labelled_after"] == r.labelled_after
        assert d["explanation"]["slices"][0]["feature"] == "tenure"
    # Detections without a drop carry none.
    assert all("explanation" not in r.to_dict() for r in recs if r.kind == "detection" and r.signal != "error")


def test_drift_ends_after_the_hold_and_a_fresh_reference_builds():
    rng = random.Random(8)
    acc = SliceAccountant(FEATURES)
    run(acc, rng, 3000, False, 0)
    acc.detected(3000.0, hold=100.0)
    run(acc, rng, 50, True, 3001)
    assert acc.active
    acc.observe(event(rng, True)[0], None, True, 3101.0)  # past the hold
    assert not acc.active and acc.ring == [] and acc.block.n == 1


def test_a_bank_snapshot_keeps_the_accountant():
    rng = random.Random(2)
    bank = DetectorBank(lambda m: SPEC)
    feed_bank(bank, 1200, False, 0, rng)
    restored = DetectorBank.restore(bank.snapshot(), lambda m: SPEC)
    assert restored.get("churn", "__all__").slices.to_state() == bank.get("churn", "__all__").slices.to_state()
    assert restore(snapshot(bank.get("churn", "__all__").slices)).to_state() == bank.get("churn", "__all__").slices.to_state()


def test_metrics_carry_the_top_slices_of_active_error_drifts_only():
    import shutil
    import subprocess

    from prometheus_client.parser import text_string_to_metric_families

    from driftline.stream.exporter import TOP_SLICES, DriftlineMetrics
    from driftline.stream.settings import parse_settings

    rng = random.Random(21)
    bank = DetectorBank(lambda m: SPEC)
    feed_bank(bank, 5000, False, 0, rng)
    feed_bank(bank, 3000, True, 5000, rng)
    last = bank.get("churn", "__all__").slices.last_detection
    settings = parse_settings({}, env={})

    def series(now):
        body = DriftlineMetrics(settings, banks=lambda: (bank,), clock=lambda: now).render()
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name.startswith("driftline_slice_"):
                    out[(s.name, s.labels.get("rank"), s.labels.get("window"))] = (s.labels, s.value)
        return body, out

    body, active = series(last + 1.0)
    top, value = active[("driftline_slice_contribution", "1", None)]
    assert (top["model"], top["segment"], top["feature"]) == ("churn", "__all__", "tenure")
    assert top["bin"].startswith("[") and value > 0
    ranks = {r for (name, r, _) in active if name == "driftline_slice_contribution"}
    listed = len(bank.get("churn", "__all__").slices.explain(TOP_SLICES).slices)
    assert 1 <= listed <= TOP_SLICES and ranks == {str(i) for i in range(1, listed + 1)}
    before = active[("driftline_slice_accuracy", "1", "before")][1]
    after = active[("driftline_slice_accuracy", "1", "after")][1]
    assert before > 0.8 > 0.5 > after
    res = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # Once the drift hold has passed without another detection, the series leave /metrics.
    assert series(last + SPEC.drift_hold + 1.0)[1] == {}


def _cells(acc, cells, start):
    """Feed (x, y, events, errors) cells: the first `errors` events of each cell are wrong."""
    t = start
    for x, y, n, errors in cells:
        for k in range(n):
            acc.observe((x, y), None, k >= errors, float(t))
            t += 1
    return t


def test_joint_counts_put_the_slice_that_holds_the_loss_before_a_correlated_one():
    """x in [10, 20) lost accuracy; y in [10, 20) selects much of the same traffic and, as its
    reference accuracy was higher, accounts for more accuracy points by the marginal counts alone.
    The joint counts after the change show y's own part (outside x's slice) unharmed and x's own
    part harmed: x's slice is listed first, each keeping its contribution."""
    from driftline.detectors.slices import explain

    bins = FeatureBins("x", "numeric", (10.0, 20.0)), FeatureBins("y", "numeric", (10.0, 20.0))
    acc = SliceAccountant((("x", "numeric"), ("y", "numeric")), profile={"x": bins[0], "y": bins[1]})
    low, mid = 5.0, 15.0
    t = _cells(acc, [(mid, mid, 100, 9), (mid, low, 100, 21), (low, mid, 200, 0), (low, low, 600, 18)], 0)
    acc.start(float(t))
    _cells(acc, [(mid, mid, 100, 40), (mid, low, 20, 8), (low, mid, 60, 3), (low, low, 820, 25)], t)
    marginal = explain(acc.layout, acc.offsets, acc.reference, acc.after, acc.since)
    assert [(s.feature, s.bin) for s in marginal.slices[:2]] == [("y", "[10, 20)"), ("x", "[10, 20)")]
    e = acc.explain()
    assert [(s.feature, s.bin) for s in e.slices[:2]] == [("x", "[10, 20)"), ("y", "[10, 20)")]
    assert {s.feature: s.contribution for s in e.slices} == {s.feature: s.contribution for s in marginal.slices}
    assert e.slices[0].contribution < e.slices[1].contribution  # the order says which holds the loss
    # When it is y's own part that lost and x's that did not, y stays first.
    acc2 = SliceAccountant((("x", "numeric"), ("y", "numeric")), profile={"x": bins[0], "y": bins[1]})
    t = _cells(acc2, [(mid, mid, 100, 9), (mid, low, 100, 21), (low, mid, 200, 0), (low, low, 600, 18)], 0)
    acc2.start(float(t))
    _cells(acc2, [(mid, mid, 100, 40), (mid, low, 20, 2), (low, mid, 60, 24), (low, low, 820, 25)], t)
    assert acc2.explain().slices[0].feature == "y"


def test_memory_in_bytes_before_and_during_a_drift():
    rng = random.Random(1)
    acc = SliceAccountant(FEATURES)
    run(acc, rng, 30_000, False, 0)
    bins = acc.size
    # Before a drift: the decaying history (32-bit counters) and RECENT + 1 blocks (16-bit).
    assert acc.counter_bytes() == bins * 2 * (4 + 2 * (RECENT + 1))
    assert acc.history.n <= 4_000 + BLOCK
    acc.detected(30_000.0, hold=1e9)
    run(acc, rng, 20_000, True, 30_001)
    pairs = sum(acc.layout[a].size * acc.layout[b].size for a in range(4) for b in range(a + 1, 4))
    assert acc.counter_bytes() == bins * 2 * 4 * 2 + pairs * 2 * 2  # reference + after; joint tables


def test_a_version_1_state_restores_into_the_smaller_layout():
    """A checkpoint of the accountant as version 1 wrote it (16 blocks, two 64-bit count lists per
    window) restores: the older blocks become the history, no event is lost, counting goes on."""
    import zlib

    from driftline.detectors.state import MAGIC, _Encoder, decode_state

    rng = random.Random(4)
    acc = SliceAccountant(FEATURES)
    run(acc, rng, WARMUP, False, 0)
    size = acc.size

    def old_counts(n, correct, start):
        lab = [0] * size
        cor = [0] * size
        for fb, off in zip(acc.layout, acc.offsets):
            lab[off], cor[off] = n, correct
        return [start, n, correct, lab, cor]

    v1 = acc.to_state()
    v1.pop("history")
    v1.pop("joint")
    v1["ring"] = [old_counts(BLOCK, BLOCK - 10, float(i * BLOCK)) for i in range(16)]
    v1["block"] = old_counts(7, 7, 4000.0)
    tree = {"$o": "slices.accountant", "v": 1, "id": 0, "f": {k: _Encoder().enc(v) for k, v in v1.items()}}
    doc = {"format": 2, "driftline": "0.1.0", "river": None, "state": tree}
    restored = decode_state(MAGIC + zlib.compress(orjson.dumps(doc)))
    assert isinstance(restored, SliceAccountant), restored
    assert len(restored.ring) == RECENT
    assert restored.history.n + sum(b.n for b in restored.ring) + restored.block.n <= 16 * BLOCK + 7
    assert restored.history.n >= 4_000 // 2 and restored.block.n == 7
    e = restored.detected(4010.0, hold=1e6)
    assert e.labelled_before + e.labelled_after == restored.reference.n + restored.after.n > 2_000


def test_a_new_baseline_profile_rebins_the_accountant_once_no_drift_is_active():
    from driftline.detectors.baseline import ProfileBook, ProfileBuilder

    spec = ModelSpec(name="churn", features={"tenure": "numeric", "plan": "categorical"}, accuracy_window=500,
                     drift_hold=100.0, false_alarm_budget=1e6)

    def profile(shift):
        b = ProfileBuilder(spec, bins=10)
        rng = random.Random(int(shift))
        for _ in range(2000):
            feats = {"tenure": rng.uniform(0, 60) + shift, "plan": rng.choice(PLANS)}
            b.add(feats, 1, 0.9, label=1)
        return b.build("v1", "training", 1_767_225_600.0, source="rows")

    def tenure_edges(acc):
        return list(next(fb for fb in acc.layout if fb.name == "tenure").edges)

    book = ProfileBook(lambda m: spec)
    book.set("churn", profile(0.0))
    bank = DetectorBank(lambda m: spec, profiles=book)
    rng = random.Random(3)

    def one(t):
        tenure, plan = rng.uniform(0, 60), rng.choice(PLANS)
        bank.observe_inference("churn", "__all__", {"tenure": tenure, "plan": plan}, 1, 0.9, float(t), f"p{t}")
        bank.observe_outcome("churn", "__all__", 1, 1, float(t), f"p{t}", 0.0, values=(tenure, plan),
                             segments=("__all__",))

    for t in range(300):
        one(t)
    first = tenure_edges(bank.get("churn", "__all__").slices)
    assert max(first) < 60
    # A drift is active: its windows keep the bins they were counted in.
    bank.get("churn", "__all__").slices.detected(299.0, hold=100.0)
    book.set("churn", profile(100.0))
    for t in range(300, 350):
        one(t)
    assert tenure_edges(bank.get("churn", "__all__").slices) == first
    # Past the hold, the first outcome ends the drift; the next ones count in the new profile's bins.
    for t in range(500, 503):
        one(t)
    acc = bank.get("churn", "__all__").slices
    assert min(tenure_edges(acc)) > 90 and not acc.stale and acc.block.n == 2
