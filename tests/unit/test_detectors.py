"""Detector wrappers, rolling metrics and the categorical transform, on seeded streams."""
import math
import random

import pytest
from river import drift, metrics, utils

from driftline.detectors.accuracy import RollingAccuracy, RollingError
from driftline.detectors.categorical import CategorySurprisal
from driftline.detectors.drift import ADWINDetector, PageHinkleyDetector, build_detector
from driftline.detectors.spec import ADWINParams, PageHinkleyParams


def bernoulli(p_before, p_after, change_at, n, seed):
    rng = random.Random(seed)
    return [1.0 if rng.random() < (p_before if i < change_at else p_after) else 0.0 for i in range(n)]


def detections(det, stream):
    return [i for i, x in enumerate(stream) if det.update(x)]


def test_adwin_matches_river_exactly():
    stream = bernoulli(0.1, 0.5, 2000, 4000, seed=1)
    river_adwin = drift.ADWIN()
    expected = []
    for i, x in enumerate(stream):
        river_adwin.update(x)
        if river_adwin.drift_detected:
            expected.append(i)
    assert detections(ADWINDetector(), stream) == expected
    assert expected and expected[0] >= 2000  # sanity: River itself finds the jump, and not before it


def test_adwin_detects_error_rate_jump_within_bound():
    stream = bernoulli(0.05, 0.30, 3000, 6000, seed=2)
    hits = detections(ADWINDetector(), stream)
    assert [h for h in hits if h < 3000] == []  # no false alarm on the stationary part
    first = min(h for h in hits if h >= 3000)
    assert first - 3000 < 300


def test_page_hinkley_matches_river_and_exposes_statistic():
    rng = random.Random(3)
    stream = [rng.gauss(0, 1) for _ in range(1000)] + [rng.gauss(5, 1) for _ in range(300)]
    river_ph = drift.PageHinkley()
    expected = []
    for i, x in enumerate(stream):
        river_ph.update(x)
        if river_ph.drift_detected:
            expected.append(i)
    ph = PageHinkleyDetector()
    assert detections(ph, stream) == expected
    assert any(1000 <= h < 1100 for h in expected)
    stats = ph.statistics()
    assert stats["threshold"] == 50.0 and stats["statistic"] >= 0.0


def test_page_hinkley_statistic_grows_toward_threshold():
    ph = PageHinkleyDetector(PageHinkleyParams(threshold=1e9, min_instances=1))
    for _ in range(100):
        ph.update(0.0)
    before = ph.statistic
    for _ in range(20):
        ph.update(10.0)
    assert ph.statistic > before + 100


def test_parameters_reach_river():
    det = ADWINDetector(ADWINParams(delta=0.1, clock=1))
    assert det._adwin.delta == 0.1 and det._adwin.clock == 1
    ph = PageHinkleyDetector(PageHinkleyParams(threshold=7.0, mode="up"))
    assert ph._ph.threshold == 7.0 and ph._ph.mode == "up"
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("cusum", ADWINParams(), PageHinkleyParams())


@pytest.mark.parametrize("window", [1, 7, 100])
def test_rolling_accuracy_equals_river_rolling(window):
    rng = random.Random(window)
    ours = RollingAccuracy(window)
    theirs = utils.Rolling(metrics.Accuracy, window_size=window)
    for _ in range(3 * window + 11):
        y, p = rng.random() < 0.5, rng.random() < 0.5
        ours.update(y == p)
        theirs.update(y, p)
        assert ours.get() == pytest.approx(theirs.get(), abs=1e-12)
    assert ours.count == window


def test_rolling_error_equals_direct_computation():
    rng = random.Random(5)
    errors = [rng.gauss(0, 3) for _ in range(2500)]
    roll = RollingError(window=1000)
    for e in errors:
        roll.update(e)
    last = errors[-1000:]
    assert roll.mae() == pytest.approx(sum(abs(e) for e in last) / 1000, rel=1e-9)
    assert roll.rmse() == pytest.approx(math.sqrt(sum(e * e for e in last) / 1000), rel=1e-9)


def test_rolling_window_memory_is_small():
    import sys

    assert sys.getsizeof(RollingAccuracy(1000)._ring) < 1200


def test_category_surprisal_learns_then_scores():
    s = CategorySurprisal(reference_size=100)
    values = ["a"] * 90 + ["b"] * 10
    assert all(s.transform(v) is None for v in values)
    assert not s.learning
    total = 100 + 2 + 1
    assert s.transform("a") == pytest.approx(-math.log(91 / total))
    assert s.transform("b") == pytest.approx(-math.log(11 / total))
    assert s.transform("never") == pytest.approx(-math.log(1 / total))


def test_category_shift_is_detected_through_surprisal():
    rng = random.Random(9)
    s = CategorySurprisal(reference_size=500)
    det = ADWINDetector()
    hits = []
    for i in range(6000):
        p_a = 0.8 if i < 3000 else 0.4
        x = s.transform("a" if rng.random() < p_a else "b")
        if x is not None and det.update(x):
            hits.append(i)
    assert [h for h in hits if h < 3000] == []
    assert min(h for h in hits if h >= 3000) < 3300


@pytest.mark.parametrize("make", [ADWINDetector, PageHinkleyDetector])
def test_detectors_say_which_way_the_mean_moved(make):
    rng = random.Random(11)
    for before, after, way in ((0.1, 0.6, 1), (0.6, 0.1, -1)):
        det = make()
        hits = [det.direction for i in range(4000)
                if det.update(1.0 if rng.random() < (before if i < 2000 else after) else 0.0) and i >= 2000]
        assert hits and hits[0] == way


def test_the_detectors_load_without_the_rest_of_rivers_drift_package():
    """driftline.detectors.drift loads River's ADWIN and Page-Hinkley modules alone: the drift
    package's __init__ (every River detector, so scipy.stats; River's data sets, so river.stream
    and scikit-learn) cost ~1.3 s of CPU at every worker start. The whole package still loads, with
    the same classes, as soon as a name of its own is used."""
    import subprocess
    import sys

    code = "\n".join([
        "import sys",
        "from driftline.detectors.drift import ADWINDetector, PageHinkleyDetector",
        "ADWINDetector().update(0.5), PageHinkleyDetector().update(0.5)",
        "heavy = ('river.drift.kswin', 'river.datasets', 'river.stream', 'scipy.stats', 'sklearn')",
        "print(sorted(m for m in heavy if m in sys.modules))",
        "from river import drift",
        "print(drift.ADWIN is sys.modules['river.drift.adwin'].ADWIN, drift.KSWIN.__name__, 'scipy.stats' in sys.modules)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "True KSWIN True"]
