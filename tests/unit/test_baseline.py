"""Reference baselines: the statistics against scipy and hand computation, profiles, live windows."""
import doctest
import math
import random

import numpy as np
import orjson
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

import driftline.detectors.baseline as baseline
from driftline.detectors.bank import DetectorBank
from driftline.detectors.baseline import (
    SMOOTHING,
    BaselineProfile,
    Binner,
    ProfileBook,
    ProfileBuilder,
    ProfileError,
    Window,
    compare,
    js_distance,
    ks_statistic,
    psi,
)
from driftline.detectors.spec import BaselineChecks, ModelSpec
from driftline.stream.exporter import DriftlineMetrics
from driftline.stream.settings import parse_settings

SPEC = ModelSpec(name="churn", segments=("plan",), features={"tenure": "numeric", "plan": "categorical"},
                 baseline_checks=BaselineChecks(window=500, min_values=100))


def test_docstring_examples():
    failed, attempted = doctest.testmod(baseline, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def numeric_reference(sample, bins=20):
    b = ProfileBuilder(ModelSpec(name="m", features={"x": "numeric"}), bins=bins)
    for v in sample:
        b.add({"x": float(v)})
    return b.build("v", "training", 0.0).overall.features["x"]


def live_counts(dist, sample):
    binner = Binner("x", 0, dist)
    counts = [0] * len(dist.counts)
    for v in sample:
        counts[binner.bin(float(v))] += 1
    return counts


# ------------------------------------------------------------------------- the statistics
@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.1, 1.0), (0.3, 1.0), (0.0, 1.5), (1.0, 0.5)])
@pytest.mark.parametrize("bins", [10, 20, 50])
def test_ks_at_the_edges_against_scipy_ks_2samp(shift, scale, bins):
    """Ours is the exact two-sample statistic evaluated at the bin edges only. Between two edges
    each empirical CDF moves by its bin's share, so ours is never above scipy's and below it by
    at most the largest share of one bin in either sample (bound checked exactly); with quantile
    bins that is ~1/bins plus the live sample's excess in one bin."""
    rng = np.random.default_rng(7)
    ref_sample = rng.normal(0, 1, 5000)
    live_sample = rng.normal(shift, scale, 1000)
    ref = numeric_reference(ref_sample, bins)
    live = live_counts(ref, live_sample)
    ours = ks_statistic(ref.counts, live)
    exact = ks_2samp(ref_sample, live_sample).statistic
    largest_bin = max(max(c / sum(ref.counts) for c in ref.counts), max(c / sum(live) for c in live))
    assert ours <= exact + 1e-12
    assert exact - ours <= largest_bin + 1e-12
    assert exact - ours <= 2.5 / bins  # quantile bins: ~1/bins each (the live ones may hold more)


def test_ks_is_exact_when_every_value_has_its_own_edge():
    rng = np.random.default_rng(3)
    ref_sample = rng.integers(0, 8, 3000)  # 8 distinct values: each is an edge
    live_sample = rng.integers(1, 9, 700)
    ref = numeric_reference(ref_sample, bins=20)
    assert ks_statistic(ref.counts, live_counts(ref, live_sample)) == pytest.approx(
        ks_2samp(ref_sample, live_sample).statistic, abs=1e-12)


def test_psi_by_hand():
    # p = (50.5, 30.5, 20.5) / 101.5, q = (20.5, 30.5, 50.5) / 101.5:
    # PSI = 2 * (30 / 101.5) * ln(50.5 / 20.5) = 0.532936...
    assert SMOOTHING == 0.5
    assert psi([50, 30, 20], [20, 30, 50]) == pytest.approx(0.532936, abs=1e-6)
    assert psi([50, 30, 20], [50, 30, 20]) == 0.0
    # An empty live bin costs a finite amount: p = 40.5/101.5, q = 0.5/101.5 in the first bin.
    assert math.isfinite(psi([40, 40, 20], [0, 60, 40]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_psi_and_js_on_seeded_samples_against_numpy_and_scipy(seed):
    rng = np.random.default_rng(seed)
    ref_sample = rng.gamma(2.0, 2.0, 4000)
    live_sample = rng.gamma(2.0, 2.0 + 0.3 * seed, 800)
    ref = numeric_reference(ref_sample, bins=20)
    live = live_counts(ref, live_sample)
    # Independent computation: numpy's histogram with the same right-closed edges.
    edges = np.array(ref.edges)
    r = np.bincount(np.searchsorted(edges, ref_sample, side="left"), minlength=len(edges) + 1)
    q = np.bincount(np.searchsorted(edges, live_sample, side="left"), minlength=len(edges) + 1)
    assert list(r) == list(ref.counts) and list(q) == live
    ps, qs = (r + 0.5) / (r.sum() + 0.5 * len(r)), (q + 0.5) / (q.sum() + 0.5 * len(q))
    assert psi(ref.counts, live) == pytest.approx(float(np.sum((qs - ps) * np.log(qs / ps))), rel=1e-9)
    assert js_distance(ref.counts, live) == pytest.approx(float(jensenshannon(r, q, base=2)), abs=1e-9)


def test_js_distance_with_empty_bins_and_bounds():
    assert js_distance([10, 0, 0], [0, 0, 10]) == pytest.approx(1.0)
    assert js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-9)
    assert js_distance([3, 0, 5, 2], [0, 4, 1, 5]) == pytest.approx(jensenshannon([3, 0, 5, 2], [0, 4, 1, 5], base=2))
    assert math.isnan(js_distance([1, 2], [0, 0]))


def test_default_thresholds_match_a_half_standard_deviation_shift():
    """docs/baselines.md: PSI 0.25, JS 0.2 and KS 0.2 all mark a normal shifted by ~0.5 sd."""
    rng = np.random.default_rng(11)
    ref = numeric_reference(rng.normal(0, 1, 200_000), bins=20)
    live = live_counts(ref, rng.normal(0.5, 1, 200_000))
    checks = BaselineChecks()
    assert psi(ref.counts, live) == pytest.approx(checks.psi, abs=0.03)
    assert js_distance(ref.counts, live) == pytest.approx(checks.js_distance, abs=0.03)
    assert ks_statistic(ref.counts, live) == pytest.approx(checks.ks_statistic, abs=0.03)


# ------------------------------------------------------------------------- profiles
def churn_rows(n, seed=0, plan_weights=(0.6, 0.3, 0.1), tenure_shift=0.0):
    rng = random.Random(seed)
    for i in range(n):
        plan = rng.choices(["basic", "pro", "team"], plan_weights)[0]
        tenure = rng.gauss(24 if plan == "basic" else 48, 6) + tenure_shift
        yield {"tenure": tenure if i % 20 else None, "plan": plan}, int(tenure > 36), rng.random()


def churn_profile(n=3000, **kw) -> BaselineProfile:
    b = ProfileBuilder(SPEC, bins=10, **kw)
    for feats, pred, score in churn_rows(n):
        b.add(feats, pred, score, label=pred)
    return b.build("v3", "training", 1_767_225_600.0, source="rows")


def test_profile_has_a_slice_per_segment_value_with_enough_rows():
    p = churn_profile(min_segment_rows=500)
    assert set(p.slices) == {"__all__", "plan=basic", "plan=pro"}  # team: ~300 rows
    tenure = p.overall.features["tenure"]
    assert tenure.kind == "numeric" and tenure.missing == 150 and tenure.missing_ratio == pytest.approx(0.05)
    assert tenure.edges[0] < tenure.minimum and tenure.edges[-1] == tenure.maximum
    assert tenure.counts[0] == 0 and tenure.counts[-1] == 0  # outside the reference range
    plan = p.overall.features["plan"]
    assert plan.categories == ("basic", "pro", "team") and plan.counts[-1] == 0
    assert p.overall.accuracy == 1.0 and p.overall.labeled == 3000
    assert p.slice("plan=team") is p.overall  # no reference of its own: the whole model's
    assert p.slice("plan=pro").features["tenure"].minimum > 20
    assert p.overall.prediction.categories == ("0", "1") or p.overall.prediction.categories == ("1", "0")


def test_profile_json_round_trip_and_digest():
    p = churn_profile()
    q = BaselineProfile.from_json(p.to_json())
    assert q.to_dict() == p.to_dict() and q.digest == p.digest
    assert q.key == "churn/v3/training"
    assert orjson.loads(p.to_json())["created"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d.update(format="other/9"), "format"),
    (lambda d: d.update(model="bad name"), "model"),
    (lambda d: d["segments"].pop("__all__"), "segments"),
    (lambda d: d["segments"]["__all__"]["features"]["tenure"]["edges"].pop(), "segments.__all__.features.tenure.edges"),
    (lambda d: d["segments"]["__all__"]["features"]["plan"].update(kind="ordinal"), "segments.__all__.features.plan.kind"),
    (lambda d: d["segments"]["__all__"]["features"]["plan"]["counts"].append(-1),
     "segments.__all__.features.plan.counts"),
    (lambda d: d.update(created="yesterday"), "created"),
])
def test_bad_profiles_are_refused_naming_the_field(mutate, where):
    d = churn_profile().to_dict()
    mutate(d)
    with pytest.raises(ProfileError) as err:
        BaselineProfile.from_dict(d)
    assert str(err.value).startswith(where), str(err.value)


def test_a_feature_named_like_the_prediction_is_refused():
    with pytest.raises(ValueError, match="rename the feature"):
        ProfileBuilder(ModelSpec(name="m", features={"score": "numeric"}))


# ------------------------------------------------------------------------- live windows
def test_window_counts_equal_the_last_n_values():
    rng = random.Random(5)
    w = Window(size=50, slots=8)
    seen = []
    for _ in range(500):
        i = rng.randrange(7)
        w.add(i)
        seen.append(i)
        last = seen[-50:]
        assert w.counts[:7] == [last.count(k) for k in range(7)]
        assert w.filled == len(last)


def bank_with(profile, spec=SPEC):
    book = ProfileBook(lambda m: spec)
    book.set(spec.name, profile)
    return DetectorBank(lambda m: spec, profiles=book), book


def feed(bank, rows, start=0):
    for i, (feats, pred, score) in enumerate(rows):
        for seg in ("__all__", f"plan={feats['plan']}"):
            bank.observe_inference("churn", seg, feats, pred, score, float(start + i), f"p{start + i}")


def test_live_windows_against_the_profile_and_quality_counters():
    profile = churn_profile(min_segment_rows=500)
    bank, book = bank_with(profile)
    feed(bank, churn_rows(2000, seed=9))
    compiled = book.get("churn")
    st = bank.get("churn", "plan=pro")
    results = {b.name: compare(b, st.windows[b.name]) for b in compiled.binners("plan=pro")}
    assert set(results) == {"tenure", "plan", "prediction", "score"}
    assert results["tenure"].filled == 500 and results["tenure"].psi < 0.1
    assert results["tenure"].ks_statistic < 0.1 and results["plan"].ks_statistic is None
    assert results["tenure"].missing_ratio == pytest.approx(0.05, abs=0.03)
    assert bank.tally.invalid_features.get(("churn", "tenure", "range"), 0) < 5
    # A shifted tenure and a new plan: PSI up, and range and unseen values counted once per event.
    before = dict(bank.tally.invalid_features)
    rows = [({"tenure": 500.0, "plan": "enterprise"}, 1, 0.5)] * 10
    feed(bank, rows, start=10_000)
    assert bank.tally.invalid_features[("churn", "tenure", "range")] - before.get(("churn", "tenure", "range"), 0) == 10
    assert bank.tally.invalid_features[("churn", "plan", "unseen_category")] == 10
    feed(bank, [({"tenure": t + 30.0, "plan": p}, pr, s) for (f, pr, s) in churn_rows(600, seed=4)
                for t, p in [(f["tenure"] or 0.0, f["plan"])]], start=20_000)
    shifted = compare(next(b for b in compiled.binners("__all__") if b.name == "tenure"),
                      bank.get("churn", "__all__").windows["tenure"])
    assert shifted.psi > 1.0 and shifted.ks_statistic > 0.5


def test_a_new_profile_resets_the_windows_and_snapshots_keep_them():
    profile = churn_profile()
    bank, book = bank_with(profile)
    feed(bank, churn_rows(300, seed=2))
    st = bank.get("churn", "__all__")
    assert st.windows["tenure"].filled == 300
    # Snapshot and restore: the windows travel, the profile is configuration and binds again.
    restored = DetectorBank.restore(bank.snapshot(), lambda m: SPEC, book)
    rst = restored.get("churn", "__all__")
    assert rst.dist is None and rst.windows["tenure"].counts == st.windows["tenure"].counts
    feed(restored, churn_rows(10, seed=3), start=1000)
    assert rst.windows["tenure"].filled == 310
    # Restored with another profile: reset on the next event.
    other = ProfileBook(lambda m: SPEC)
    other.set("churn", churn_profile(n=2000))
    again = DetectorBank.restore(bank.snapshot(), lambda m: SPEC, other)
    feed(again, churn_rows(5, seed=4), start=2000)
    assert again.get("churn", "__all__").windows["tenure"].filled == 5
    # The same content again does not reset; a different one does.
    gen = book.generation
    book.set("churn", BaselineProfile.from_json(profile.to_json()))
    assert book.generation == gen
    book.set("churn", churn_profile(n=2500))
    feed(bank, churn_rows(7, seed=5), start=3000)
    assert bank.get("churn", "__all__").windows["tenure"].filled == 7
    book.set("churn", None)
    feed(bank, churn_rows(1, seed=6), start=4000)
    assert bank.get("churn", "__all__").dist is None and not bank.get("churn", "__all__").windows


def test_exported_gauges_and_thresholds():
    bank, book = bank_with(churn_profile(min_segment_rows=500))
    feed(bank, churn_rows(1200, seed=9))
    settings = parse_settings({}, env={})
    families = {f.name: f for f in DriftlineMetrics(settings, banks=lambda: (bank,)).families()}
    psi_rows = dict(families["driftline_feature_psi"].rows)
    assert ("churn", "plan=pro", "tenure") in psi_rows and ("churn", "__all__", "prediction") in psi_rows
    assert ("churn", "__all__", "score") in psi_rows
    # plan=team has ~120 events in its window, above min_values=100; a window below it is not exported.
    ks_rows = dict(families["driftline_feature_ks_statistic"].rows)
    assert ("churn", "__all__", "tenure") in ks_rows and ("churn", "__all__", "plan") not in ks_rows
    missing = dict(families["driftline_feature_missing_ratio"].rows)
    assert ("churn", "__all__", "tenure") in missing and ("churn", "__all__", "prediction") not in missing
    assert dict(families["driftline_feature_psi_threshold"].rows) == {("churn",): 0.25}
    assert dict(families["driftline_feature_missing_ratio_threshold"].rows)[("churn", "tenure")] == pytest.approx(0.1)
    info = families["driftline_baseline_info"].rows
    assert info == [(("churn", "v3", "training", book.get("churn").id), 1)]
    assert dict(families["driftline_baseline_accuracy"].rows) == {("churn",): 1.0}
    small, _ = bank_with(churn_profile())
    feed(small, churn_rows(50, seed=1))
    fams = {f.name: f for f in DriftlineMetrics(settings, banks=lambda: (small,)).families()}
    assert fams["driftline_feature_psi"].rows == []  # 50 values < min_values
