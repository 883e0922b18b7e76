"""The `max_models` guard of the admission bank (detectors/segments.py ModelGuard, pipeline.observe):
a model is monitored on all of its events or refused on all of them, each event counted once."""
from collections import Counter

import orjson

from driftline.detectors.bank import DetectorBank
from driftline.detectors.segments import ModelGuard
from driftline.stream.codec import DecodeLimits, decode_inference, decode_label
from driftline.stream.pipeline import UNKNOWN_MODEL, Intake, feed
from driftline.stream.replay import replay
from driftline.stream.settings import load_settings

CONFIG = """\
kafka: {bootstrap: "localhost:1"}
limits: {max_models: 4}
models:
  churn: {task: classification, segments: [region]}
"""


def settings(tmp_path):
    (tmp_path / "c.yml").write_text(CONFIG)
    return load_settings(tmp_path / "c.yml", env={})


def test_configured_models_always_and_free_slots_first_come():
    guard = ModelGuard({"churn"}, max_models=3)
    assert guard.admit("churn")
    assert guard.admit("a") and guard.admit("b")  # slots are taken by state, not by asking
    guard.added("a")
    guard.added("a")  # a second segment of a
    guard.added("b")
    assert not guard.admit("c")
    assert guard.admit("a") and guard.admit("b") and guard.admit("churn")
    assert guard.admitted() == 2
    guard.removed("a")
    assert not guard.admit("c")  # a still holds a segment
    guard.removed("a")
    assert guard.admit("c")  # a's last segment evicted: its slot is free
    assert ModelGuard().admit("anything")  # no cap
    assert not ModelGuard({"x", "y"}, max_models=2).admit("z")  # the configured fill the cap


def inference(i, model, region="eu"):
    raw = orjson.dumps({"prediction_id": f"p{i}", "model": model, "prediction": 1,
                        "features": {"region": region}, "timestamp": 1000.0 + i})
    return decode_inference(raw, 0.0, DecodeLimits()), raw


def test_the_bank_refuses_models_past_the_cap_on_every_event_and_counts_each_once(tmp_path):
    s = settings(tmp_path)
    intake = Intake(s)
    bank = DetectorBank(s.spec_for, max_models=s.limits.max_models, configured=s.models)
    refused = []
    # 3 slots past the configured churn; m0..m9 interleaved, m0, m1, m2 first.
    names = [f"m{k % 10}" for k in range(200)]
    raws = {}
    for i, name in enumerate(["churn"] + names):
        ev, raw = inference(i, name)
        raws[f"p{i}"] = raw
        out, stage1_refused = intake.take_inference(ev, raw)
        assert stage1_refused is None  # stage 1 refuses no model: the bank decides
        feed(bank, out, refused)
    # A label for a refused model's prediction and one for an admitted model's.
    for pid in ("p5", "p2"):  # m4 (refused), m1 (admitted)
        out, _ = intake.take_label(_label(pid), b"")
        feed(bank, out, refused)
    models = {m for (m, _seg), _ in bank.items()}
    assert models == {"churn", "m0", "m1", "m2"}
    ev = bank.tally.events
    for m in ("m0", "m1", "m2"):
        assert ev[(m, "inference", "accepted")] == 20  # all of its events, early and late
    assert ev[(UNKNOWN_MODEL, "inference", "invalid")] == 140 == len(refused)
    assert {r.reason for r in refused} == {"too_many_models"}
    assert Counter(r.model for r in refused) == {f"m{k}": 20 for k in range(3, 10)}
    # The dead letter carries the event's bytes, as a stage-1 refusal did.
    assert refused[0].raw == raws["p4"]
    assert "limits.max_models=4" in refused[0].detail
    assert ev[(UNKNOWN_MODEL, "label", "unmatched")] == 1
    assert ev[("m1", "label", "accepted")] == 1
    # A refused prediction that expires is not counted a second time.
    feed(bank, intake.expire(10**9), refused)
    assert ev[(UNKNOWN_MODEL, "inference", "expired")] == 0
    assert ev[("m0", "inference", "expired")] > 0
    # Every inference counted once: accepted + invalid + expired of the admitted = events.
    assert sum(n for (m, kind, outcome), n in ev.items() if kind == "inference" and outcome != "expired") == 201


def _label(pid):
    return decode_label(orjson.dumps({"prediction_id": pid, "label": 1, "timestamp": 1500.0}), 0.0, DecodeLimits())


def test_a_restored_bank_keeps_its_admitted_models_and_refuses_the_rest(tmp_path):
    s = settings(tmp_path)
    intake = Intake(s)
    bank = DetectorBank(s.spec_for, max_models=s.limits.max_models, configured=s.models)
    for i, name in enumerate(["a", "b", "c", "d"]):
        feed(bank, intake.take_inference(*inference(i, name))[0], [])
    restored = DetectorBank.restore(bank.snapshot(), s.spec_for).bind(s.spec_for, None, s.limits.max_models, s.models)
    refused = []
    for i, name in enumerate(["d", "a", "e"], start=10):
        feed(restored, intake.take_inference(*inference(i, name))[0], refused)
    assert [r.model for r in refused] == ["d", "e"]  # the cap is full: d and e wait for a slot
    assert {m for (m, _), _ in restored.items()} == {"a", "b", "c"}


def test_replay_refuses_the_same_models_and_counts_them_as_too_many_models(tmp_path):
    s = settings(tmp_path)
    inferences = [orjson.loads(inference(i, f"m{i % 7}")[1]) for i in range(70)]
    (tmp_path / "i.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in inferences))
    (tmp_path / "l.jsonl").write_bytes(b"")
    result = replay(s, tmp_path / "i.jsonl", tmp_path / "l.jsonl")
    assert result.invalid[("inference", "too_many_models")] == 40
    assert {m for (m, _), _ in result.bank.items()} == {"m0", "m1", "m2"}  # churn, configured, takes the 4th
