"""Observation records and their wire form: every kind round-trips through the observations
topic's JSON, records of older workers (fewer fields, held in old checkpoints) still decode, and
a message tagged with a format this worker does not read is refused before anything is applied."""
from __future__ import annotations

import orjson
import pytest

from driftline.detectors.bank import DetectorBank
from driftline.detectors.llm import LLMObservation
from driftline.detectors.observations import (
    RECORD_OF_KIND,
    WIRE_TIME,
    FateObservation,
    FoldObservation,
    InferenceObservation,
    LLMCallObservation,
    OutcomeObservation,
    PairObservation,
    UnknownObservation,
    from_wire,
    to_wire,
)
from driftline.detectors.state import restore as restore_state
from driftline.detectors.state import snapshot as snapshot_state
from driftline.stream.events import Inference, Label
from driftline.stream.eventtime import WatermarkBuffer, held_observation, ordering_key
from driftline.stream.ordering import FORMAT_HEADER, FORMAT_HEADERS, OBS_FORMAT, UnknownFormat, message_format
from driftline.stream.pipeline import Intake, feed
from driftline.stream.settings import parse_settings

CALL = LLMObservation(120, 40, 1.5, 0.2, "stop", 0.003, {"helpful": 1.0}, [0.1, -0.2, 0.3])
EVERY_KIND = [
    InferenceObservation("m", "region=eu", "p1", 10.0, "yes", 0.8, {"x": 1.5, "plan": "pro"}),
    OutcomeObservation("m", "__all__", "p1", 12.0, "yes", "no", 2.0, 0.8, [1.5, "pro"], ["__all__", "region=eu"]),
    FateObservation("m", "__all__", "label", "unmatched"),
    FoldObservation("m", "__all__", "region"),
    PairObservation("challenger", "__all__", "champion", 12.0, True, False),
    LLMCallObservation("bot", "__all__", "c1", 11.0, CALL),
]


def over_the_wire(rec: list) -> list:
    return orjson.loads(orjson.dumps(rec))


def test_every_kind_round_trips_through_json_with_its_fields_by_name():
    assert {type(o) for o in EVERY_KIND} == set(RECORD_OF_KIND)
    for k, o in enumerate(EVERY_KIND):
        rec = over_the_wire(to_wire(7, k, o))
        assert rec[:3] == [7, k, o.KIND]
        back = from_wire(rec)
        assert type(back) is type(o)
        # JSON has no tuples: compare field by field, sequences as lists
        for name in o._fields:
            want, got = getattr(o, name), getattr(back, name)
            assert (list(got) if isinstance(got, tuple) else got) == (list(want) if isinstance(want, tuple) else want), name
    llm = from_wire(over_the_wire(to_wire(0, 0, EVERY_KIND[-1])))
    assert type(llm.call) is LLMObservation and llm.call.finish_reason == "stop" and llm.call.sketch == [0.1, -0.2, 0.3]


def test_the_ordering_buffer_reads_the_time_of_every_timed_kind_at_one_position():
    for o in EVERY_KIND:
        rec = to_wire(0, 0, o)
        key = ordering_key(rec)
        if hasattr(o, "timestamp"):
            assert rec[WIRE_TIME] == o.timestamp and key == (o.timestamp, 1 if isinstance(o, (OutcomeObservation, PairObservation)) else 0)
        else:
            assert key is None


def test_records_of_older_workers_decode_with_the_later_fields_absent():
    # An outcome before the score (issue 19) and before the slice accountant's values (issue 16).
    old = [3, 0, 1, "m", "__all__", "p1", 12.0, 1, 1, 0.5]
    o = from_wire(old)
    assert type(o) is OutcomeObservation and o.delay == 0.5 and o.score is None and o.values is None
    bank = DetectorBank(lambda m: parse_settings({"models": {"m": {}}}, env={}).spec_for(m))
    feed(bank, [from_wire([2, 0, 0, "m", "__all__", "p1", 11.5, 1, None, {}]), o])
    assert bank.tally.labeled[("m", "__all__")] == 1 and bank.tally.correct[("m", "__all__")] == 1


def test_an_inference_without_raw_bytes_is_written_as_before_the_field():
    plain = EVERY_KIND[0]
    assert plain.raw is None and len(to_wire(0, 0, plain)) == 10  # as workers before max_models wrote it
    assert from_wire(over_the_wire(to_wire(0, 0, plain))).raw is None
    carrying = plain._replace(raw="eyJ9")
    assert from_wire(over_the_wire(to_wire(0, 0, carrying))).raw == "eyJ9"


def test_fields_a_newer_worker_added_at_the_end_are_not_read():
    newer = [*to_wire(0, 0, EVERY_KIND[1]), "a field of a later version"]
    assert from_wire(newer) == from_wire(to_wire(0, 0, EVERY_KIND[1]))
    llm = [*over_the_wire(to_wire(0, 0, EVERY_KIND[-1])), 42]
    assert from_wire(llm).call == EVERY_KIND[-1].call


def test_an_unknown_kind_is_refused_by_name():
    for kind in (6, -1, "0", None):
        with pytest.raises(UnknownObservation, match="unknown observation kind"):
            from_wire([0, 0, kind, "m", "__all__"])


def test_held_records_of_an_old_checkpoint_are_released_and_decode():
    """A bank checkpoint holds wire records; older ones held them as JSON values, not bytes."""
    buf = WatermarkBuffer(sources=1, max_held=100, max_bytes=1 << 20, now=0.0)
    rec = to_wire(5, 0, EVERY_KIND[0])
    assert buf.add_records(0, "e1i", [rec], 50) == []
    state = restore_state(snapshot_state(buf.to_state()))
    # As written before bytes (and before the held entries were packed): one JSON value per entry.
    old = {k: v for k, v in state.items() if k not in ("held_layout", "held_packs")}
    old["heap"] = [(*e[:7], orjson.loads(e[7]), e[8]) for e in buf.queue]
    for st in (state, old):
        again = WatermarkBuffer.from_state(st, 1, 100, 1 << 20, 0.0)
        again.note(0, 100.0, False, 0.0)
        (entry,) = map(held_observation, again.release(0.0))
        assert entry.src == "e1i" and (entry.offset, entry.index, entry.partition) == (5, 0, 0)
        assert entry.observation == from_wire(over_the_wire(rec))


def test_an_intake_emits_typed_records_that_the_wire_carries_unchanged():
    s = parse_settings({"models": {"m": {"segments": ["region"], "features": {"x": "numeric"}}}}, env={})
    intake = Intake(s)
    out, _ = intake.take_inference(Inference(prediction_id="p1", model="m", features={"x": 2.0, "extra": 1},
                                             prediction=1, timestamp=5.0, segment={"region": "eu"}, model_version="v"))
    out += intake.take_label(Label(prediction_id="p1", label=1, timestamp=6.0))[0]
    assert [type(o).__name__ for o in out] == ["InferenceObservation"] * 2 + ["OutcomeObservation"] * 2
    assert [o.segment for o in out] == ["__all__", "region=eu"] * 2
    assert out[0].features == {"x": 2.0} and out[2].delay == 1.0 and out[2].segments == ("__all__", "region=eu")
    assert [from_wire(over_the_wire(to_wire(0, k, o))).prediction_id for k, o in enumerate(out)] == ["p1"] * 4


# -- the message envelope's format (stream/ordering.py) -------------------------------------------
def test_messages_carry_the_format_and_untagged_ones_are_the_formats_before_it():
    assert FORMAT_HEADERS == [(FORMAT_HEADER, str(OBS_FORMAT).encode())]
    assert message_format(FORMAT_HEADERS) == OBS_FORMAT
    assert message_format(None) is None and message_format([]) is None  # formats 1 and 2
    assert message_format([("traceparent", b"00-ab")]) is None  # another tool's header only
    assert message_format([("traceparent", b"00-ab"), *FORMAT_HEADERS]) == OBS_FORMAT


def test_a_message_of_an_unknown_format_is_refused_with_what_to_do():
    for declared in (b"4", b"99", b"x", b""):
        with pytest.raises(UnknownFormat, match="upgrade this worker") as info:
            message_format([(FORMAT_HEADER, declared)])
        assert info.value.declared == declared
