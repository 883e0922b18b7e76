"""The live demo's own mechanics that need no services: pacing on a clock that moves between
reads, its config, and the detections it reads off successive /metrics samples."""
from __future__ import annotations

import itertools

import yaml

from driftline.stream import live_demo
from driftline.stream.live_demo import MetricsSampler, _Sample, live_config, sleep_until
from driftline.stream.settings import parse_settings


def test_sleep_until_never_sleeps_a_negative_time_when_the_clock_moves_between_reads(monkeypatch):
    # The crash this replaces: `if t > time.time(): time.sleep(t - time.time())` on a loaded
    # machine, where the second read is past the deadline. Here every read of the clock is
    # 0.6 s later than the one before, so a second read would always be past a 0.5 s deadline.
    reads = itertools.count(0.0, 0.6)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # as time.sleep does
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        slept.append(seconds)

    monkeypatch.setattr(live_demo.time, "monotonic", lambda: next(reads))
    monkeypatch.setattr(live_demo.time, "sleep", sleep)
    for deadline in (0.5, 0.5, 1.0, 5.0):
        sleep_until(deadline)
    # deadline 0.5 read at 0.0 -> 0.5; at 0.6 -> none; 1.0 at 1.2 -> none; 5.0 at 1.8 -> 3.2
    assert [round(s, 6) for s in slept] == [0.5, 3.2]


def test_live_config_is_a_valid_config_of_its_own_run():
    text = live_config("127.0.0.1:19092", "driftline-demo-x")
    settings = parse_settings(yaml.safe_load(text), env={})
    assert settings.kafka.group_id == "driftline-demo-x"
    assert settings.kafka.topics.inferences == "driftline-demo-x.inferences"
    assert settings.kafka.topics.dead_letters == "driftline-demo-x.dead-letters"
    # the page it leaves stays up for a newcomer to look at
    assert settings.models["shuttle"].drift_hold == 30 * 60


def test_sampler_reads_detections_as_rises_of_the_error_counters():
    s = MetricsSampler("http://127.0.0.1:1/metrics", started=0.0)
    s.samples = [
        _Sample(1.0, {"band=high": 0.99}, {("band=high", "adwin"): 0, ("band=low", "adwin"): 0}),
        _Sample(2.0, {"band=high": 0.80}, {("band=high", "adwin"): 0, ("band=high", "page_hinkley"): 1}),
        _Sample(3.0, {"band=high": 0.75}, {("band=high", "adwin"): 2, ("band=high", "page_hinkley"): 1}),
        _Sample(4.0, {"band=high": 0.74}, {("band=high", "adwin"): 2, ("band=high", "page_hinkley"): 1}),
    ]
    assert s.detections() == [(2.0, "band=high", "page_hinkley"), (3.0, "band=high", "adwin")]


def test_sampler_without_a_worker_records_nothing_and_does_not_raise():
    s = MetricsSampler("http://127.0.0.1:1/metrics", started=0.0, timeout=0.5)
    assert s.sample() is None and s.samples == [] and s.drift_seen_at is None


def test_the_why_is_the_drifted_segments_latest_explanation():
    def expl(acc_after, feature):
        return {"accuracy_before": 0.995, "accuracy_after": acc_after, "labelled_after": 100, "slices": [
            {"feature": feature, "bin": "[23, 25)", "accuracy_before": 0.98, "accuracy_after": 0.0,
             "share_before": 0.03, "share_after": 0.16, "contribution": 0.035}]}
    records = [
        {"kind": "detection", "model": "shuttle", "segment": "band=high", "signal": "f7", "explanation": None},
        {"kind": "detection", "model": "shuttle", "segment": "band=high", "signal": "error", "explanation": expl(0.82, "f7")},
        {"kind": "detection", "model": "shuttle", "segment": "band=low", "signal": "error", "explanation": expl(0.5, "f1")},
        {"kind": "explanation", "model": "shuttle", "segment": "band=high", "signal": "error", "explanation": expl(0.75, "f7")},
    ]
    e = live_demo.latest_explanation(records)
    assert e["accuracy_after"] == 0.75  # the refresh, not the detection's first look; not band=low's
    lines = live_demo._why_lines(e)
    assert lines[2] == "  f7 [23, 25): accuracy 0.980 -> 0.000, share 3.0% -> 16.0%, contribution 0.035"
    assert live_demo.latest_explanation(records[:1]) is None and live_demo._why_lines(None) == []
