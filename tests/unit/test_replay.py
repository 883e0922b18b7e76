"""`driftline replay` and the demo: the whole core over files, checked against independent counts."""
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.stream.demo import DRIFT_SEGMENT, write_demo
from driftline.stream.replay import replay
from driftline.stream.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    files = write_demo(out)
    result = replay(load_settings(files.config), files.inferences, files.labels)
    return files, result


def samples(exposition: bytes) -> dict:
    out = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp, name, **labels):
    return smp.get((name, tuple(sorted(labels.items()))))


def test_error_drift_is_found_in_the_drifted_segment_and_nowhere_untouched(demo):
    files, result = demo
    error = [d for d in result.detections if d.signal == "error"]
    by_segment = defaultdict(list)
    for d in error:
        by_segment[d.segment].append(d)
    assert by_segment[DRIFT_SEGMENT], "no error drift in the drifted segment"
    assert all(d.timestamp >= files.drift_time for d in by_segment[DRIFT_SEGMENT])
    first = min(d.timestamp for d in by_segment[DRIFT_SEGMENT])
    assert first - files.drift_time < 3600  # within an hour of event time (~300 labelled events)
    assert not by_segment["band=low"] and not by_segment["band=mid"]
    assert all(d.timestamp >= files.drift_time for d in by_segment["__all__"])


def test_accuracy_and_counters_equal_an_independent_count(demo):
    files, result = demo
    preds = {}
    for line in files.inferences.read_bytes().splitlines():
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if ev.get("model") == "shuttle" and 0 <= ev.get("score", 0) <= 1:
            preds[ev["prediction_id"]] = ev
    graded = defaultdict(list)  # segment -> [(label time, correct)]
    for line in files.labels.read_bytes().splitlines():
        lab = orjson.loads(line)
        ev = preds[lab["prediction_id"]]
        ok = ev["prediction"] == lab["label"]
        for seg in ("__all__", "band=" + ev["segment"]["band"]):
            graded[seg].append((lab["timestamp"], ok))
    smp = samples(result.exposition())
    window = load_settings(files.config).models["shuttle"].accuracy_window
    for seg, rows in graded.items():
        rows.sort()
        oks = [ok for _, ok in rows]
        assert value(smp, "driftline_labeled_total", model="shuttle", segment=seg) == len(oks)
        assert value(smp, "driftline_correct_total", model="shuttle", segment=seg) == sum(oks)
        assert value(smp, "driftline_accuracy", model="shuttle", segment=seg) == pytest.approx(
            sum(oks[-window:]) / window, abs=1e-12)
    assert value(smp, "driftline_events_total", model="shuttle", kind="inference", outcome="accepted") == len(preds)


def test_bad_lines_are_counted_with_their_reason_and_skipped(demo):
    _, result = demo
    assert dict(result.invalid) == {("inference", "malformed_json"): 1, ("inference", "out_of_range"): 1,
                                    ("inference", "bad_model_name"): 1}
    smp = samples(result.exposition())
    assert value(smp, "driftline_events_total", model="__unknown__", kind="inference", outcome="invalid") == 2
    assert value(smp, "driftline_events_total", model="shuttle", kind="inference", outcome="invalid") == 1


def test_label_before_its_prediction_in_event_time_still_joins(tmp_path):
    (tmp_path / "c.yml").write_text("models:\n  m:\n    label_ttl: 1h\n")
    (tmp_path / "i.jsonl").write_bytes(b'{"prediction_id":"a","model":"m","features":{},"prediction":1,"timestamp":100}\n')
    (tmp_path / "l.jsonl").write_bytes(b'{"prediction_id":"a","label":1,"timestamp":50}\n'
                                       b'{"prediction_id":"a","label":1,"timestamp":60}\n'
                                       b'{"prediction_id":"zz","label":1,"timestamp":70}\n')
    result = replay(load_settings(tmp_path / "c.yml"), tmp_path / "i.jsonl", tmp_path / "l.jsonl")
    smp = samples(result.exposition())
    assert value(smp, "driftline_labeled_total", model="m", segment="__all__") == 1
    assert value(smp, "driftline_events_total", model="__unknown__", kind="label", outcome="duplicate") == 1
    assert value(smp, "driftline_join_pending", kind="label") == 1  # "zz" waits for its prediction


def test_replay_leaves_the_garbage_collector_as_it_found_it(tmp_path, monkeypatch):
    """Replay decodes the files with the cyclic collector off and keeps the decoded events out
    of its scans (gc.freeze) while it runs; afterwards, and after a failure in the middle, the
    collector is on and nothing stays frozen. While it runs, the young generation's threshold is
    the worker's (a backlog's worth of state grows in it: the default set off full collections
    that made a 100k-pair replay 1.2-1.7x slower); afterwards, the caller's again."""
    import gc

    import driftline.stream.replay as replay_module
    from driftline.stream.collector_policy import WORKER_YOUNG_THRESHOLD

    before = gc.get_threshold()
    assert before[0] != WORKER_YOUNG_THRESHOLD  # else the test could not tell

    (tmp_path / "c.yml").write_text("models:\n  m:\n    label_ttl: 1h\n")
    (tmp_path / "i.jsonl").write_bytes(b'{"prediction_id":"a","model":"m","features":{},"prediction":1,"timestamp":100}\n')
    (tmp_path / "l.jsonl").write_bytes(b'{"prediction_id":"a","label":1,"timestamp":150}\n')
    settings = load_settings(tmp_path / "c.yml")
    frozen = []

    def feed_watching(bank, observations, refused=None):
        frozen.append((gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()))
        return []

    monkeypatch.setattr(replay_module, "feed", feed_watching)
    replay(settings, tmp_path / "i.jsonl", tmp_path / "l.jsonl")
    assert frozen and all(enabled and count > 0 for enabled, count, _ in frozen)  # frozen while it ran
    assert all(thresholds == (WORKER_YOUNG_THRESHOLD, *before[1:]) for _, _, thresholds in frozen)
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_threshold() == before

    def feed_failing(bank, observations, refused=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(replay_module, "feed", feed_failing)
    with pytest.raises(RuntimeError, match="boom"):
        replay(settings, tmp_path / "i.jsonl", tmp_path / "l.jsonl")
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_cli_writes_exposition_and_drift_records(demo, tmp_path):
    files, result = demo
    metrics, drifts = tmp_path / "m.prom", tmp_path / "d.jsonl"
    res = subprocess.run([sys.executable, "-m", "driftline.stream.cli", "replay", "--config", str(files.config),
                          "--inferences", str(files.inferences), "--labels", str(files.labels),
                          "--metrics-out", str(metrics), "--drift-out", str(drifts)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "events/s" in res.stderr
    records = [orjson.loads(line) for line in drifts.read_bytes().splitlines()]
    # Detections and explanation refreshes, in stream order, as the library's replay has them.
    assert records == [orjson.loads(orjson.dumps(r.to_dict())) for r in result.records]
    found = [r for r in records if r["kind"] == "detection"]
    assert len(found) == len(result.detections) > 0
    for r in found:
        assert {"model", "segment", "signal", "detector", "timestamp", "prediction_id", "statistics"} <= set(r)
    smp = samples(metrics.read_bytes())
    detected = sum(v for (name, _), v in smp.items() if name == "driftline_drift_detected_total")
    assert detected == len(found)


def test_bad_config_is_refused_at_start_naming_the_key(tmp_path):
    (tmp_path / "c.yml").write_text("models:\n  m:\n    task: clasification\n")
    res = subprocess.run([sys.executable, "-m", "driftline.stream.cli", "replay", "--config", str(tmp_path / "c.yml"),
                          "--inferences", "x", "--labels", "y"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2
    assert "models.m.task" in res.stderr and "classification, regression" in res.stderr


def test_exposition_passes_promtool_check_metrics(demo):
    _, result = demo
    assert shutil.which("promtool"), "promtool missing: run deploy/setup (Debian's prometheus package)"
    res = subprocess.run(["promtool", "check", "metrics"], input=result.exposition(), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_fast_renderer_and_prometheus_client_collector_agree(demo):
    """/metrics is rendered by our own writer; the Collector adapter must expose the same samples."""
    from prometheus_client import CollectorRegistry, generate_latest

    from driftline.stream.exporter import DriftlineCollector

    _, result = demo
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DriftlineCollector(result.metrics()))
    ours, theirs = samples(result.exposition()), samples(generate_latest(registry))
    assert ours.keys() == theirs.keys() and len(ours) > 100
    assert all(ours[k] == pytest.approx(theirs[k]) for k in ours)


def test_detector_internals_are_exported_with_bounded_cardinality(demo):
    _, result = demo
    smp = samples(result.exposition())
    widths = {dict(lv)["signal"] + "@" + dict(lv)["segment"] for (n, lv) in smp if n == "driftline_adwin_width"}
    assert "error@band=high" in widths and "f7@__all__" in widths
    assert "f7@band=high" not in widths  # feature internals only at __all__
    # Thresholds come from the false-alarm budget, in standard deviations of the warm-up.
    from driftline.detectors.calibration import page_hinkley_params, stream_arl, streams_per_event

    expected = page_hinkley_params(stream_arl(1e7, streams_per_event(1, 3 + 4, 2))).threshold
    assert value(smp, "driftline_page_hinkley_threshold", model="shuttle", segment="__all__", signal="f7") == \
        pytest.approx(expected)


def test_demo_baseline_shows_a_feature_drift_while_accuracy_holds(demo):
    """The demo shifts f5 in band=mid (the model ignores f5): PSI, JS and KS against the training
    rows' profile show it there, and only there; accuracy in band=mid holds."""
    from driftline.stream.demo import FEATURE_DRIFT_FEATURE, FEATURE_DRIFT_SEGMENT

    _, result = demo
    smp = samples(result.exposition())
    f5 = {seg: value(smp, "driftline_feature_psi", model="shuttle", segment=seg, feature=FEATURE_DRIFT_FEATURE)
          for seg in ("band=low", "band=mid", "band=high")}
    assert f5[FEATURE_DRIFT_SEGMENT] > 0.25 and f5["band=low"] < 0.25 and f5["band=high"] < 0.25, f5
    assert value(smp, "driftline_feature_ks_statistic", model="shuttle", segment=FEATURE_DRIFT_SEGMENT,
                 feature=FEATURE_DRIFT_FEATURE) > 0.2
    assert value(smp, "driftline_feature_js_distance", model="shuttle", segment=FEATURE_DRIFT_SEGMENT,
                 feature=FEATURE_DRIFT_FEATURE) > 0.2
    assert value(smp, "driftline_accuracy", model="shuttle", segment=FEATURE_DRIFT_SEGMENT) > 0.99
    # The error drift in band=high shows in its f7 and, without labels, in its predictions.
    assert value(smp, "driftline_feature_psi", model="shuttle", segment=DRIFT_SEGMENT, feature="f7") > 1
    assert value(smp, "driftline_feature_psi", model="shuttle", segment=DRIFT_SEGMENT, feature="prediction") > 0.25
    assert value(smp, "driftline_feature_psi", model="shuttle", segment="band=low", feature="prediction") < 0.25
    assert value(smp, "driftline_feature_psi_threshold", model="shuttle") == 0.25
    assert value(smp, "driftline_baseline_accuracy", model="shuttle") > 0.99


def test_demo_report_tells_when_the_feature_drift_showed(tmp_path):
    from driftline.stream.demo import run_demo

    _, report = run_demo(tmp_path, plot=False)
    assert report.feature_drift_delay is not None and report.feature_drift_delay < 2000
    assert report.psi_before_drift is not None and report.psi_before_drift < 0.25  # no false alarm before
    assert any("accuracy holds" in line for line in report.lines)


def test_the_drift_is_explained_by_the_miscalibrated_sensor(demo):
    """Every error drift "up" in band=high blames f7 (the sensor that reads 20 high there), at
    values above the training range of band=high's healthy f7; __all__'s drop is put on band=high."""
    files, result = demo
    up = [r for r in result.detections if r.signal == "error" and r.direction == "up"]
    high = [r for r in up if r.segment == DRIFT_SEGMENT]
    assert high and all(r.explanation is not None for r in up)
    for r in high:
        e = r.explanation
        top = e["slices"][0]
        assert top["feature"] == "f7" and top["category"] is None and top["lower"] is not None
        assert top["accuracy_after"] < 0.5 < top["accuracy_before"] and top["share_after"] > top["share_before"]
        assert files.drift_time <= e["since"] <= r.timestamp
        assert e["labelled_after"] > 0 and e["accuracy_after"] < e["accuracy_before"]
    at_all = [r for r in up if r.segment == "__all__"]
    assert at_all and all(r.explanation["slices"][0]["bin"] == "high" for r in at_all)
    assert all(r.explanation["slices"][0]["feature"] == "band" for r in at_all)
    refreshes = [r for r in result.records if r.kind == "explanation"]
    assert refreshes and {r.segment for r in refreshes} <= {DRIFT_SEGMENT, "__all__"}
    for r in refreshes:
        assert r.labelled_after == r.explanation["labelled_after"] in (100, 400, 1600)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "driftline.stream.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_explain_cli_explains_the_last_error_drift_of_a_segment(demo):
    files, result = demo
    common = ["--config", str(files.config), "--inferences", str(files.inferences), "--labels", str(files.labels),
              "--model", "shuttle"]
    res = run_cli("explain", *common, "--segment", DRIFT_SEGMENT, "--json")
    assert res.returncode == 0, res.stderr
    out = orjson.loads(res.stdout)
    last = [r for r in result.detections if r.segment == DRIFT_SEGMENT and r.signal == "error" and r.direction == "up"][-1]
    assert (out["model"], out["segment"], out["since"]) == ("shuttle", DRIFT_SEGMENT, last.explanation["since"])
    slices = out["slices"]
    assert slices and set(slices[0]) == {"feature", "bin", "lower", "upper", "category", "labelled_before",
                                         "accuracy_before", "labelled_after", "accuracy_after", "share_before",
                                         "share_after", "contribution"}
    assert slices[0]["feature"] == "f7" and slices[0]["accuracy_after"] < 0.5
    assert [s["contribution"] for s in slices] == sorted((s["contribution"] for s in slices), reverse=True)
    # The after window runs to the end of the files: every labelled event of band=high since then.
    assert out["labelled_after"] == sum(1 for t in _label_times_since(files, out["since"]))
    table = run_cli("explain", *common, "--segment", DRIFT_SEGMENT, "--since", "2026-01-01T06:56:40Z")
    assert table.returncode == 0, table.stderr
    first_row = next(line for line in table.stdout.splitlines() if line.startswith("1 "))
    assert first_row.split()[1] == "f7"
    quiet = run_cli("explain", *common, "--segment", "band=low")
    assert quiet.returncode == 1 and "no error drift" in quiet.stderr and "--since" in quiet.stderr


def _label_times_since(files, since):
    seg_of = {}
    for line in files.inferences.read_bytes().splitlines():
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if ev.get("model") == "shuttle" and 0 <= ev.get("score", 0) <= 1 and "segment" in ev:
            seg_of[ev["prediction_id"]] = "band=" + ev["segment"]["band"]
    for line in files.labels.read_bytes().splitlines():
        lab = orjson.loads(line)
        if seg_of.get(lab["prediction_id"]) == DRIFT_SEGMENT and lab["timestamp"] >= since:
            yield lab["timestamp"]
