"""The quality harness (bench/quality.py) and false-alarm calibration (detectors/calibration.py),
on tiny seeded configurations: what they measure must be true of the production detectors."""
import dataclasses
import doctest
import importlib.util
import json
import math
import pickle
import random
import sys
from pathlib import Path

import pytest

from driftline.detectors import calibration as cal
from driftline.detectors.calibration import CalibratedDetector, Standardizer
from driftline.detectors.drift import build_detector
from driftline.detectors.spec import ADWINParams, PageHinkleyParams
from driftline.detectors.state import restore, snapshot

ROOT = Path(__file__).resolve().parents[2]


def _load_harness():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


q = _load_harness()


def test_calibration_doctests():
    failed, attempted = doctest.testmod(cal, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_page_hinkley_replica_is_river():
    # the calibration tables come from this replica: it must alarm exactly where River does
    assert q.check_replica(seed=3, length=8_000)


def test_river_adwin_defaults_find_error_jump_fast():
    case = q._bern_case(0.05, 0.30)
    (row,) = q.run_case(case, [q.Config("adwin")], seeds=4, n0=2000, n1=2000, warmup=500)
    assert row["detection_rate"] == 1.0
    assert row["delay_median"] < 300 and row["delay_p90"] < 300
    assert row["pre_change_false_alarms"] == 0


def test_river_page_hinkley_defaults_flood_on_unit_noise():
    # the measurement: ~2.8 false alarms per 5,000 events of N(0, 1)
    (row,) = q.run_stationary("normal", "numeric", [q.Config("page_hinkley")], seeds=2, n=25_000, warmup=500)
    assert 20 < row["fa_per_100k"] < 150


@pytest.mark.parametrize("cfg, stream, kind", [
    (q.Config("page_hinkley", arl=2_000, ph_delta=0.5), "normal", "numeric"),
    (q.Config("page_hinkley", arl=2_000, ph_delta=0.25), "lognormal", "numeric"),
    (q.Config("page_hinkley", arl=2_000, ph_delta=0.25), "bernoulli:0.2", "binary"),
    (q.Config("adwin", arl=5_000), "normal", "numeric"),
    (q.Config("adwin", arl=5_000), "bernoulli:0.3", "binary"),
])
def test_calibrated_false_alarms_near_budget_on_fresh_seeds(cfg, stream, kind):
    # seeds the tables never saw; the budget is an upper bound, not to be beaten by more than 2x
    (row,) = q.run_stationary(stream, kind, [cfg], seeds=3, n=40_000, warmup=500,
                              values_for=lambda s: q.stationary(stream, 40_000, q.rng_for("test", stream, s)))
    ratio = row["fa_per_100k"] / row["budget_fa_per_100k"]
    assert row["false_alarms"] > 0
    assert 0.1 < ratio < 2.0, row


def test_standardiser_makes_page_hinkley_scale_free():
    rng = random.Random(5)
    noise = [rng.gauss(0, 1) for _ in range(30_000)]
    noise[20_000:] = [x + 1.0 for x in noise[20_000:]]
    unit = q.detections(CalibratedDetector("page_hinkley", 1e6), noise)
    scaled = q.detections(CalibratedDetector("page_hinkley", 1e6), [5000.0 + 1000.0 * x for x in noise])
    assert unit == scaled
    assert len(unit) == 1 and 20_000 <= unit[0] < 20_100  # one detection: the 1 sd shift, fast
    # River's defaults on the same two signals: thresholds in signal units
    raw_unit = q.detections(build_detector("page_hinkley", ADWINParams(), PageHinkleyParams()), noise[:20_000])
    raw_scaled = q.detections(build_detector("page_hinkley", ADWINParams(), PageHinkleyParams()),
                              [5000.0 + 1000.0 * x for x in noise[:20_000]])
    assert len(raw_scaled) > 20 * max(len(raw_unit), 1)


def test_budget_arithmetic():
    assert cal.streams_per_event(attributes=2, signals=5, detectors=2) == 30
    assert cal.stream_arl(1e7, 30) == 3e8
    lo, hi = cal.page_hinkley_params(1e5), cal.page_hinkley_params(1e9)
    assert lo.threshold < hi.threshold and lo.alpha == 1.0 and lo.mode == "both"
    # a rate and its complement are mirror images for a two-sided detector
    assert cal.page_hinkley_params(1e8, "binary", 0.25, 0.9).threshold == pytest.approx(
        cal.page_hinkley_params(1e8, "binary", 0.25, 0.1).threshold)
    assert cal.adwin_params(1e9, "binary").delta < cal.adwin_params(1e5, "binary").delta <= 1.0
    with pytest.raises(ValueError, match="not calibrated"):
        cal.page_hinkley_params(1e6, delta=0.3)
    with pytest.raises(ValueError):
        cal.stream_arl(0, 3)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _root(f, lo: float = 1e-6, hi: float = 20.0) -> float:
    for _ in range(200):  # bisection: f(lo) < 0 < f(hi)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def test_page_hinkley_slopes_are_the_cramer_lundberg_roots_computed_here():
    # theta of every row, computed independently of detectors/calibration.py: the positive root
    # of log E[exp(theta (z - k))] = 0, z the clipped standard normal (in closed form) or the
    # standardised 0/1 variable of rate p
    c = cal.CLIP

    def clipped_normal_mgf(t):
        return _phi(-c) * math.exp(-c * t) + math.exp(t * t / 2) * (_phi(c - t) - _phi(-c - t)) + _phi(-c) * math.exp(c * t)

    for k, (_, theta) in cal.PH_NUMERIC.items():
        assert theta == pytest.approx(_root(lambda t: math.log(clipped_normal_mgf(t)) - t * k), rel=2e-3), k
    for k, rows in cal.PH_BINARY.items():
        for p, _, theta in rows:
            sd = math.sqrt(p * (1 - p))
            up, down = (1 - p) / sd - k, -p / sd - k
            root = _root(lambda t: math.log(p * math.exp(t * up) + (1 - p) * math.exp(t * down)))
            assert theta == pytest.approx(root, rel=2e-3), (k, p)


def _alarms(detector, values) -> int:
    n = 0
    for x in values:
        detector.update(x)
        n += detector.drift_detected
    return n


@pytest.mark.parametrize("kind, delta, p", [("numeric", 0.25, None), ("binary", 0.1, 0.05)])
def test_page_hinkley_table_predicts_river_false_alarms(kind, delta, p):
    # The intercepts are fitted on a replica's simulations: check the prediction against River's
    # own PageHinkley on a fresh seeded stationary stream, 300,000 events at a predicted ARL of
    # 3,000 (~100 alarms): within 4 Poisson standard deviations (+-40%).
    from river.drift import PageHinkley

    arl, n = 3_000.0, 300_000
    prm = cal.page_hinkley_params(arl, kind, delta, p)
    rng = random.Random(f"ph-{kind}")
    if kind == "numeric":
        values = (max(-cal.CLIP, min(cal.CLIP, rng.gauss(0.0, 1.0))) for _ in range(n))
    else:
        sd = math.sqrt(p * (1 - p))
        values = (((1.0 if rng.random() < p else 0.0) - p) / sd for _ in range(n))
    found = _alarms(PageHinkley(min_instances=prm.min_instances, delta=prm.delta, threshold=prm.threshold,
                                alpha=prm.alpha, mode=prm.mode), values)
    expected = n / arl
    assert abs(found - expected) <= 4 * math.sqrt(expected), (found, expected)


def test_adwin_table_predicts_river_false_alarms():
    # River's ADWIN at the delta the table gives for an ARL of 1,000, on 150,000 events of clipped
    # normal noise (~150 alarms): within 4 Poisson standard deviations (+-33%).
    from river.drift import ADWIN

    arl, n = 1_000.0, 150_000
    rng = random.Random("adwin")
    found = _alarms(ADWIN(delta=cal.adwin_params(arl).delta),
                    (max(-cal.CLIP, min(cal.CLIP, rng.gauss(0.0, 1.0))) for _ in range(n)))
    expected = n / arl
    assert abs(found - expected) <= 4 * math.sqrt(expected), (found, expected)


def test_binary_threshold_depends_on_error_rate():
    # a rare 0/1 signal is far from normal: its upward excursions need a higher threshold
    h = [cal.page_hinkley_params(1e8, "binary", 0.25, p).threshold for p in (0.005, 0.05, 0.5)]
    assert h[0] > h[1] > h[2]


def test_standardizer():
    s = Standardizer(warmup=3)
    assert [s.transform(x) for x in (1.0, 1.0, 1.0)] == [None] * 3
    assert s.scale > 0 and s.transform(2.0) == cal.CLIP  # a constant warm-up: any change stands out
    # a 0/1 stream waits for BINARY_MIN_COUNT of each value: its rate's precision is in counts
    b = Standardizer(warmup=10, binary=True)
    assert [b.transform(float(i % 4 == 0)) for i in range(116)] == [None] * 116 and b.learning
    assert b.transform(1.0) is None and not b.learning and b.count == 117  # 30 ones, 87 zeros
    assert b.rate == pytest.approx(31 / 119) and b.scale == pytest.approx(math.sqrt(31 / 119 * 88 / 119))
    assert b.rate_low == pytest.approx(31 / 119 - math.sqrt(31 / 119 * 88 / 119 / 117))
    assert b.transform(1.0) > 1.5 and b.clip is None
    perfect = Standardizer(warmup=10, binary=True)
    for _ in range(cal.BINARY_MAX_WARMUP):
        perfect.transform(0.0)
    assert not perfect.learning and perfect.rate == pytest.approx(1 / (cal.BINARY_MAX_WARMUP + 2))
    assert perfect.transform(1.0) > 50  # binary: never clipped, the rare jump is the signal
    with pytest.raises(ValueError):
        Standardizer(warmup=1)


def test_calibrated_detector_warmup_statistics_and_snapshot():
    det = CalibratedDetector("page_hinkley", 1e8, warmup=50)
    rng = random.Random(9)
    xs = [rng.gauss(10, 2) for _ in range(3000)] + [rng.gauss(14, 2) for _ in range(400)]
    for x in xs[:40]:
        assert det.update(x) is False
    assert det.statistics() == {"warmup_remaining": 10.0}
    copy = restore(snapshot(det))
    rest = xs[40:]
    assert q.detections(det, rest) == q.detections(copy, rest)
    stats = det.statistics()
    assert set(stats) >= {"statistic", "threshold", "center", "scale"}
    assert stats["threshold"] == pytest.approx(cal.page_hinkley_params(1e8).threshold)
    hits = q.detections(CalibratedDetector("page_hinkley", 1e8, warmup=50), xs)
    assert len(hits) == 1 and 3000 <= hits[0] < 3100
    assert CalibratedDetector("adwin", 1e6, kind="binary").statistics()["width"] == 0.0
    with pytest.raises(ValueError):
        CalibratedDetector("kswin", 1e6)
    with pytest.raises(ValueError):
        CalibratedDetector("page_hinkley", 1e6, ph_delta=0.3)
    assert pickle.loads(pickle.dumps(det)).name == "page_hinkley"


def test_scoring():
    r = q.score_change([10, 50, 120, 130], cp=100, n_total=300, watched_from=20)
    assert r == {"delay": 21, "false_alarms": 2, "stationary_events": 80, "post_events": 200}
    assert q.score_change([], 100, 300, 0)["delay"] is None
    assert q.merge_points([5, 7, 30, 31, 60], tol=5) == [5, 30, 60]
    a = q.score_annotated([3, 12, 40, 41], cps=[10, 38], tol=5, t=[float(i) * 86400 for i in range(50)])
    assert a["found"] == 2 and a["delays"] == [3, 3] and a["false_alarms"] == 1 and a["delays_seconds"][0] == 2 * 86400


def test_annotated_series_follow_tcpd_indexing():
    series = q.annotated_series()
    assert set(series) == {"AirlinePassengers", "Apple", "Bitcoin", "BrentSpotPrice", "Occupancy", "RunLog", "UKCoalEmploy"}
    assert series["BrentSpotPrice"]["n"] == 500 and series["Apple"]["n"] == 623
    assert list(series["Apple"]["signals"]) == ["Close", "Volume"]
    for s in series.values():
        assert s["cps"] and max(s["cps"]) < s["n"] and len(s["t"]) == s["n"]


def test_harness_end_to_end_tiny(tmp_path):
    plan = dataclasses.replace(
        q.QUICK, seeds=1, n0=700, n1=600, warmup=200, delay_arls=(1e4,), fa_arls=(1e4,),
        stat_seeds=1, stat_len=4000, stat_streams=(("normal", 1.0),), synth_stat_seeds=0,
        robust_seeds=1, robust_len=2000, robust_shapes=("lognormal",), annotated=False, default_arl=1e4,
        cases=("error 0.05->0.30", "normal +2 sd", "STAGGER 0->1"))
    result = q.run(plan, tmp_path, jobs=1, quick=True)
    for name in ("quality.json", "quality.md", "quality.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "quality.json").read_text())
    assert {r["case"] for r in data["changes"]} == set(plan.cases)
    stagger = [r for r in data["changes"] if r["case"] == "STAGGER 0->1"]
    assert 0.0 < stagger[0]["base_rate"] < 0.5  # the frozen tree's error rate before the drift
    big = next(r for r in result["changes"] if r["case"] == "normal +2 sd" and r["config"] == "ph(k=0.5)@1e4")
    assert big["detection_rate"] == 1.0 and big["delay_median"] < 30
    assert "| error 0.05->0.30 | river-adwin |" in (tmp_path / "quality.md").read_text()
