"""LLM calls through the whole core (replay): three changes found in their segments and nowhere
else, counters equal to an independent count, bad calls refused with a reason."""
import math
import random
import shutil
import subprocess
from collections import Counter, defaultdict

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from driftline.detectors.llm import DURATION_BUCKETS, SKETCH_DIM, EmbeddingDrift, EmbeddingReference, sketch
from driftline.stream.replay import replay
from driftline.stream.settings import ConfigError, load_settings, parse_settings

DIM = 24
T0 = 1_767_225_600.0
N = 4000  # calls per route; the change starts half way
PRICES = {"small": {"input": 0.5, "output": 1.5}, "*": {"input": 3.0, "output": 15.0}}


def centers(seed=7):
    rng = random.Random(seed)
    return [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(4)]


def write_calls(tmp_path):
    """Routes faq, search, chat: faq gets slower, search gets worse feedback, chat's questions move
    to a topic the reference never saw. Returns (config, inferences, labels, change time)."""
    rng = random.Random(11)
    topics = centers()
    inf, lab = [], []
    change = T0 + N / 2
    for i in range(N):
        for route in ("faq", "search", "chat"):
            late = i >= N / 2
            ts = T0 + i + {"faq": 0.1, "search": 0.2, "chat": 0.3}[route]
            topic = 3 if (route == "chat" and late) else rng.randrange(3)
            emb = [c + rng.gauss(0, 0.6) for c in topics[topic]]
            slow = 3.0 if (route == "faq" and late) else 1.0
            duration = rng.lognormvariate(math.log(0.8 * slow), 0.25)
            ttft = duration * rng.uniform(0.1, 0.2)
            in_tok, out_tok = rng.randint(50, 400), rng.randint(20, 300)
            reason = "length" if rng.random() < 0.05 else "stop"
            request_model = "small" if rng.random() < 0.7 else "large"
            pid = f"{route}-{i}"
            inf.append({"prediction_id": pid, "model": "assistant", "timestamp": ts, "segment": {"route": route},
                        "llm": {"input_tokens": in_tok, "output_tokens": out_tok, "duration": duration,
                                "time_to_first_token": ttft, "finish_reason": reason,
                                "request_model": request_model, "provider": "openai",
                                "evaluations": {"relevance": min(1.0, max(0.0, rng.gauss(0.8, 0.1)))},
                                "embedding": emb}})
            good_rate = 0.5 if (route == "search" and late) else 0.92
            lab.append({"prediction_id": pid, "label": rng.random() < good_rate, "timestamp": ts + 5})
    # Bad calls: each dead-lettered (counted as invalid), the rest goes on.
    bad = [
        {"prediction_id": "bad1", "model": "assistant", "llm": {"input_tokens": -1, "output_tokens": 1, "duration": 1}},
        {"prediction_id": "bad2", "model": "assistant", "llm": {"input_tokens": 1.5, "output_tokens": 1, "duration": 1}},
        {"prediction_id": "bad3", "model": "assistant", "llm": {"input_tokens": 1, "output_tokens": 1, "duration": -2}},
        {"prediction_id": "bad4", "model": "assistant", "llm": {"input_tokens": 1, "output_tokens": 1, "duration": 1,
                                                               "evaluations": {"relevance": 3}}},
        {"prediction_id": "bad5", "model": "assistant", "llm": {"input_tokens": 1, "output_tokens": 1, "duration": 1,
                                                               "embedding": [0.1] * (DIM - 1)}},
    ]
    config = {"models": {"assistant": {"task": "llm", "segments": ["route"],
                                       "llm": {"prices": PRICES, "embedding_dim": DIM, "cost_budget_per_hour": 2.0}}}}
    (tmp_path / "driftline.yml").write_text(yaml.safe_dump(config))
    lines = [orjson.dumps(e) for e in inf[:100]] + [orjson.dumps(e) for e in bad] + \
        [orjson.dumps(e) for e in inf[100:]] + [b'{"prediction_id": "x", "llm": {"duration": NaN}}']
    (tmp_path / "inferences.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "labels.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in lab) + b"\n")
    return tmp_path / "driftline.yml", tmp_path / "inferences.jsonl", tmp_path / "labels.jsonl", change, inf


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm")
    config, infs, labels, change, calls = write_calls(tmp)
    result = replay(load_settings(config), infs, labels)
    return result, change, calls


def samples(result):
    out = {}
    for family in text_string_to_metric_families(result.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp, name, **labels):
    return smp.get((name, tuple(sorted(labels.items()))))


def test_each_change_is_found_in_its_route_and_signal_and_nowhere_else(run):
    result, change, _ = run
    found = defaultdict(list)
    for d in result.detections:
        found[(d.segment, d.signal)].append(d)
    # The three changes, each after it started, in its own route.
    for segment, signal in (("route=faq", "duration"), ("route=search", "error"), ("route=chat", "embedding")):
        hits = found[(segment, signal)]
        assert hits, f"no {signal} drift in {segment}: {sorted(found)}"
        assert min(d.timestamp for d in hits) >= change
        assert min(d.timestamp for d in hits) - change < 600  # within ~600 calls of the route
    assert all(d.direction == "up" for d in found[("route=search", "error")])  # feedback got worse
    assert all(d.direction == "up" for d in found[("route=faq", "duration")])
    # Nothing in the routes a change did not touch, on any signal.
    expected = {("route=faq", "duration"), ("route=faq", "time_to_first_token"), ("route=search", "error"),
                ("route=chat", "embedding")}
    stray = [(k, len(v)) for k, v in found.items() if k[0] != "__all__" and k not in expected]
    assert not stray, stray


def test_counters_equal_an_independent_count(run):
    result, _, calls = run
    smp = samples(result)
    for route in ("faq", "search", "chat"):
        mine = [c["llm"] for c in calls if c["segment"]["route"] == route]
        seg = f"route={route}"
        assert value(smp, "driftline_llm_tokens_total", model="assistant", segment=seg, type="input") == \
            sum(c["input_tokens"] for c in mine)
        assert value(smp, "driftline_llm_tokens_total", model="assistant", segment=seg, type="output") == \
            sum(c["output_tokens"] for c in mine)
        cost = sum((c["input_tokens"] * PRICES[c["request_model"] if c["request_model"] in PRICES else "*"]["input"]
                    + c["output_tokens"] * PRICES[c["request_model"] if c["request_model"] in PRICES else "*"]["output"])
                   / 1e6 for c in mine)
        assert value(smp, "driftline_llm_cost_total", model="assistant", segment=seg) == pytest.approx(cost)
        reasons = Counter(c["finish_reason"] for c in mine)
        for reason, n in reasons.items():
            assert value(smp, "driftline_llm_finish_reasons_total", model="assistant", segment=seg, reason=reason) == n
        assert value(smp, "driftline_llm_duration_seconds_count", model="assistant", segment=seg) == len(mine)
        le1 = sum(1 for c in mine if c["duration"] <= 1.28)
        assert value(smp, "driftline_llm_duration_seconds_bucket", model="assistant", segment=seg, le="1.28") == le1
        assert value(smp, "driftline_llm_time_to_first_token_seconds_count", model="assistant", segment=seg) == len(mine)
        assert value(smp, "driftline_llm_evaluations_total", model="assistant", segment=seg,
                     evaluation="relevance") == len(mine)
        assert value(smp, "driftline_llm_evaluation_score_total", model="assistant", segment=seg,
                     evaluation="relevance") == pytest.approx(sum(c["evaluations"]["relevance"] for c in mine))
        good = value(smp, "driftline_correct_total", model="assistant", segment=seg)
        assert value(smp, "driftline_labeled_total", model="assistant", segment=seg) == len(mine)
        assert 0 < good < len(mine)
    assert value(smp, "driftline_llm_cost_budget_per_hour", model="assistant") == 2.0


def test_embedding_drift_gauge_is_above_its_threshold_only_where_the_topic_moved(run):
    result, _, _ = run
    smp = samples(result)
    for route, moved in (("faq", False), ("search", False), ("chat", True)):
        d = value(smp, "driftline_embedding_drift", model="assistant", segment=f"route={route}")
        t = value(smp, "driftline_embedding_drift_threshold", model="assistant", segment=f"route={route}")
        assert d is not None and t is not None
        assert (d > t) is moved, (route, d, t)


def test_detections_use_the_contract_metrics_with_signal_names(run):
    result, _, _ = run
    smp = samples(result)
    n = value(smp, "driftline_drift_detected_total", model="assistant", segment="route=faq", signal="duration",
              detector="page_hinkley")
    n2 = value(smp, "driftline_drift_detected_total", model="assistant", segment="route=faq", signal="duration",
               detector="adwin")
    assert (n or 0) + (n2 or 0) >= 1
    for signal in ("input_tokens", "output_tokens", "cost", "relevance", "finish_reason", "time_to_first_token"):
        assert value(smp, "driftline_drift_detected_total", model="assistant", segment="route=chat", signal=signal,
                     detector="adwin") == 0, signal


def test_bad_calls_are_dead_lettered_with_their_reason(run):
    result, _, _ = run
    assert result.invalid[("inference", "out_of_range")] == 3  # tokens < 0, duration < 0, score 3
    assert result.invalid[("inference", "wrong_type")] == 1  # 1.5 tokens
    assert result.invalid[("inference", "bad_embedding")] == 1  # wrong length
    assert result.invalid[("inference", "not_finite")] == 1  # NaN duration


def test_exposition_passes_promtool_check_metrics(run):
    result, _, _ = run
    assert shutil.which("promtool"), "promtool missing: run deploy/setup"
    res = subprocess.run(["promtool", "check", "metrics"], input=result.exposition(), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_bank_snapshot_keeps_llm_state(run):
    result, _, _ = run
    from driftline.detectors.bank import DetectorBank
    restored = DetectorBank.restore(result.bank.snapshot(), result.settings.spec_for)
    a, b = result.bank.get("assistant", "route=chat").llm, restored.get("assistant", "route=chat").llm
    assert (a.input_tokens, a.cost, a.finish) == (b.input_tokens, b.cost, b.finish)
    assert a.embedding.distance() == b.embedding.distance()


def test_embedding_state_is_a_fixed_sketch():
    d = EmbeddingDrift(window=50, learn_size=100)
    rng = random.Random(3)
    for _ in range(5000):
        d.observe(sketch([rng.gauss(0, 1) for _ in range(384)]))
    assert d._sum is None and d._outer is None  # the learning sums are dropped once frozen
    assert d._live.shape == (SKETCH_DIM,) and d._w.shape == (SKETCH_DIM, SKETCH_DIM)


def test_reference_round_trips_through_json():
    ref = EmbeddingReference.learn([[random.Random(i).gauss(0, 1) for _ in range(SKETCH_DIM)] for i in range(200)])
    assert EmbeddingReference.from_dict(orjson.loads(orjson.dumps(ref.to_dict()))) == ref


def test_duration_buckets_are_the_otel_genai_ones():
    # gen_ai.client.operation.duration's ExplicitBucketBoundaries advice (semantic conventions)
    assert DURATION_BUCKETS == (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


@pytest.mark.parametrize("block,key", [
    ({"task": "llm", "llm": {"prices": {"m": {"input": -1, "output": 1}}}}, "models.a.llm.prices.m.input"),
    ({"task": "llm", "llm": {"prices": {"m": {"input": 1}}}}, "models.a.llm.prices.m.output"),
    ({"task": "llm", "llm": {"embeding_dim": 3}}, "models.a.llm.embeding_dim"),
    ({"task": "classification", "llm": {}}, "models.a.llm"),
    ({"task": "llm", "llm": {"cost_budget_per_hour": 0}}, "models.a.llm.cost_budget_per_hour"),
])
def test_bad_llm_config_is_refused_naming_the_key(block, key):
    with pytest.raises(ConfigError, match=f"config {key}:"):
        parse_settings({"models": {"a": block}}, env={})


def test_baseline_build_learns_the_embedding_reference_and_replay_uses_it(tmp_path):
    """`driftline baseline build` on reference calls (the stream before the changes) gives each
    route its embedding reference; with it, replay watches embeddings from the first call on."""
    from driftline.stream.baselines import build_profile, write_profile

    config, infs, labels, change, calls = write_calls(tmp_path)
    reference = [c for c in calls if c["timestamp"] < change]
    (tmp_path / "reference.jsonl").write_bytes(b"\n".join(orjson.dumps(c) for c in reference) + b"\n")
    settings = load_settings(config)
    profile, report = build_profile(settings.spec_for("assistant"), tmp_path / "reference.jsonl")
    assert report.rows == len(reference) and profile.task == "llm"
    per_route = Counter(c["segment"]["route"] for c in reference)
    for route, n in per_route.items():
        assert profile.llm[f"route={route}"]["calls"] == n
    write_profile(profile, tmp_path / "assistant.json")
    cfg = yaml.safe_load(config.read_text())
    cfg["models"]["assistant"]["baseline"] = "assistant.json"
    config.write_text(yaml.safe_dump(cfg))
    result = replay(load_settings(config), infs, labels)
    for route in ("faq", "search", "chat"):
        emb = result.bank.get("assistant", f"route={route}").llm.embedding
        assert emb.reference.count == per_route[route]  # the profile's, not a warm-up's
        assert emb.live_count == N  # every call was compared with it, none spent on learning
    hits = [d for d in result.detections if d.signal == "embedding" and d.segment != "__all__"]
    assert hits and {d.segment for d in hits} == {"route=chat"}
    assert min(d.timestamp for d in hits) >= change
