"""The versioned state format (detectors/state.py): round trips, and what it refuses and why."""
from __future__ import annotations

import array
import pickletools
import zlib
from collections import Counter
from pathlib import Path

import orjson
import pytest

from driftline.detectors import state as st
from driftline.detectors.bank import DetectorBank
from driftline.detectors.state import StateError, Unreadable, decode_state, encode_state, persistent
from driftline.stream.demo import write_demo
from driftline.stream.events import Invalid
from driftline.stream.exporter import DriftlineMetrics
from driftline.stream.pipeline import Intake, feed
from driftline.stream.replay import read_events
from driftline.stream.settings import load_settings
from driftline.stream.codec import DecodeLimits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"


def _doc(blob: bytes) -> dict:
    return orjson.loads(zlib.decompress(blob[4:]))


def _redo(blob: bytes, change) -> bytes:
    inflate = zlib.decompressobj()
    doc = orjson.loads(inflate.decompress(blob[4:]))
    change(doc)
    return st.MAGIC + zlib.compress(orjson.dumps(doc)) + inflate.unused_data  # format 3's attached bytes


# -- today's (format 1) checkpoints: the committed fixtures ----------------------------------------
@pytest.mark.parametrize("name", ["dls1-intake.bin", "dls1-bank.bin"])
def test_format_1_checkpoints_are_unreadable_never_unpickled(name):
    blob = (FIXTURES / name).read_bytes()
    # The fixture is what driftline 0.1.0 wrote: zlib + a pickle naming our module paths.
    assert blob[:4] == b"DLS1"
    inner = zlib.decompress(blob[4:])
    assert any(op.name in ("PROTO",) for op, _, _ in pickletools.genops(inner))
    result = decode_state(blob)
    assert type(result) is Unreadable and result.reason == "format"
    assert "format 1" in result.detail
    with pytest.raises(st.SnapshotError, match="format 1"):
        st.restore(blob)


# -- a whole partition's state, mid-stream ---------------------------------------------------------
@pytest.fixture(scope="module")
def demo_stream(tmp_path_factory):
    files = write_demo(tmp_path_factory.mktemp("demo"))
    settings = load_settings(files.config)
    limits = DecodeLimits(max_bytes=settings.limits.max_event_bytes, max_depth=settings.limits.max_depth)
    merged = []
    for order, (kind, path) in enumerate((("inference", files.inferences), ("label", files.labels))):
        for seq, ev in enumerate(read_events(path, kind, limits)):
            if not isinstance(ev, Invalid):
                merged.append((ev.timestamp, order, seq, ev))
    merged.sort(key=lambda t: t[:3])
    drift_at = next(i for i, m in enumerate(merged) if m[0] >= files.drift_time)
    return settings, [(order, ev) for _, order, _, ev in merged], drift_at


def _run(intake, bank, events):
    found = []
    for order, ev in events:
        out, _ = intake.take_inference(ev) if order == 0 else intake.take_label(ev)
        found += feed(bank, out)
    return found


def test_a_restored_partition_continues_exactly_as_the_uninterrupted_one(demo_stream):
    """Intake + bank (detectors, River's ADWIN and Page-Hinkley inside, standardisers shared by
    several detectors, baseline windows, rolling accuracy, counters) through bytes at the middle
    of the demo stream, whose drift comes after: the same detections and the same exposition."""
    settings, events, drift_at = demo_stream
    from driftline.stream.baselines import profile_book

    book = profile_book(settings)
    intake = Intake(settings)
    bank = DetectorBank(settings.spec_for, settings.limits.segment_idle, book)
    half, end = drift_at - 4000, drift_at + 6000  # snapshot before the drift, continue past its detection
    _run(intake, bank, events[:half])
    blob = encode_state({"intake": intake.resume_state(), "bank": bank})
    back = decode_state(blob)
    assert type(back) is not Unreadable, back
    intake2 = Intake.from_resume_state(back["intake"], settings)
    bank2 = back["bank"].bind(settings.spec_for, book)

    # Shared objects stay shared: every signal of a kind (numeric, the 0/1 error) has one config.
    configs = {id(sig.config) for _, seg in bank2.items() for sig in seg.signals.values()}
    assert len(configs) == 2

    rest_a = _run(intake, bank, events[half:end])
    rest_b = _run(intake2, bank2, events[half:end])
    assert any(r.signal == "error" for r in rest_a)  # the drift is after the snapshot
    assert [r.to_dict() for r in rest_a] == [r.to_dict() for r in rest_b]

    def exposition(i, b):
        return DriftlineMetrics(settings, intakes=lambda: (i,), banks=lambda: (b,), clock=lambda: i.watermark).render()

    assert exposition(intake, bank) == exposition(intake2, bank2)


def test_a_checkpoint_of_signals_before_one_object_per_signal_restores_and_continues_the_same(demo_stream):
    """The committed fixture (tests/fixtures/checkpoints/make_dls2_signals.py, run at c252071:
    signals as `bank.signal` version 1, one CalibratedDetector per detector sharing the signal's
    Standardizer) restores into today's one-object signals, and the rest of the demo stream then
    makes exactly the drift records and the exposition that driftline made from it."""
    import hashlib

    from driftline.detectors.bank import SignalState

    settings, events, _ = demo_stream
    expected = orjson.loads((FIXTURES / "dls2-signals-v1.json").read_bytes())
    back = decode_state((FIXTURES / "dls2-signals-v1.bin").read_bytes())
    assert type(back) is not Unreadable, back
    intake = Intake.from_resume_state(back["intake"], settings)
    bank = back["bank"].bind(settings.spec_for)
    signals = [sig for _, seg in bank.items() for sig in seg.signals.values()]
    assert signals and all(type(sig) is SignalState for sig in signals)
    # Upgraded signals share their config, as new ones do (one per model and kind of signal).
    assert len({id(sig.config) for sig in signals}) == 2
    found = [r.to_dict() for r in _run(intake, bank, events[expected["snapshot_after_event"] + 1:])]
    assert len(found) == len(expected["drift_records"]) > 0
    assert found == expected["drift_records"]
    text = DriftlineMetrics(settings, intakes=lambda: (intake,), banks=lambda: (bank,),
                            clock=lambda: intake.watermark).render()
    assert hashlib.sha256(text).hexdigest() == expected["exposition_sha256"]


def test_the_bytes_name_no_python_module_and_carry_the_versions(demo_stream):
    settings, events, _ = demo_stream
    intake = Intake(settings)
    bank = DetectorBank(settings.spec_for, settings.limits.segment_idle)
    _run(intake, bank, events[:3000])
    blob = encode_state({"intake": intake.resume_state(), "bank": bank})
    assert blob[:4] == b"DLS2"
    doc = _doc(blob)
    import driftline
    import river

    # Format 3 (format 2 plus attached bytes): the join's waiting predictions travel in packs.
    assert intake.join.pending_predictions > 0 and len(doc["attached"]) == 1
    assert (doc["format"], doc["driftline"], doc["river"]) == (3, driftline.__version__, river.__version__)
    text = orjson.dumps(doc["state"]).decode()
    assert "driftline." not in text and "detectors." not in text and "stream." not in text
    assert '"$o":"bank"' in text and '"$river":' in text


# -- the upgrade rule's decisions -------------------------------------------------------------------
def _river_state():
    bank = DetectorBank(lambda m: __import__("driftline.detectors.spec", fromlist=["x"]).default_spec(m))
    for i in range(300):
        bank.observe_outcome("m", "__all__", 1, i % 3 == 0, float(i), str(i))
    return bank


def test_river_objects_from_another_river_version_are_unreadable_but_plain_state_is_not():
    bank_blob = encode_state({"bank": _river_state()})
    assert "$river" in orjson.dumps(_doc(bank_blob)).decode()

    def other_river(doc):
        def walk(v):
            if isinstance(v, dict):
                if "$river" in v:
                    v["$river"][0] = "0.25.0"
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
        walk(doc["state"])

    result = decode_state(_redo(bank_blob, other_river))
    assert type(result) is Unreadable and result.reason == "river"
    assert "0.25.0" in result.detail

    # An intake holds no River object: another River version reads it.
    from driftline.detectors.join import LabelJoin, PendingPrediction

    join = LabelJoin(lambda m: 100.0)
    join.add_prediction(PendingPrediction("a", "m", ("__all__",), 1, None, 0.0))
    blob = _redo(encode_state({"join": join}), lambda d: d.update(river="0.25.0"))
    back = decode_state(blob)
    assert type(back) is not Unreadable and back["join"].pending_predictions == 1


def test_unknown_objects_versions_fields_and_corrupt_bytes_are_unreadable():
    blob = encode_state({"bank": _river_state()})
    renamed = _redo(blob, lambda d: d["state"]["$d"][1].update({"$o": "bank.renamed"}))
    assert decode_state(renamed).reason == "unknown_object"
    bumped = _redo(blob, lambda d: d["state"]["$d"][1].update({"v": 99}))
    assert decode_state(bumped).reason == "object_version"
    assert decode_state(st.MAGIC + b"garbage").reason == "corrupt"
    assert decode_state(b"PK\x03\x04").reason == "format"
    newer = _redo(blob, lambda d: d.update(format=st.ATTACHED_FORMAT + 1))
    assert decode_state(newer).reason == "format"


@persistent("test.point")
class _Point:
    __slots__ = ("x", "y")


def test_fields_are_checked_against_the_class_and_defaults_fill_added_ones():
    p = _Point()
    p.x, p.y = 1, 2
    blob = encode_state(p)
    # An old checkpoint without `y`: unreadable unless `y` has a default.
    old = _redo(blob, lambda d: d["state"]["f"].pop("y"))
    assert decode_state(old).reason == "fields"
    persistent("test.point", defaults={"y": 0})(_Point)
    try:
        q = decode_state(old)
        assert (q.x, q.y) == (1, 0)
    finally:
        persistent("test.point")(_Point)
    extra = _redo(blob, lambda d: d["state"]["f"].update(z=3))
    assert decode_state(extra).reason == "fields"


def test_plain_values_round_trip_and_unregistered_objects_are_refused():
    value = {("m", "s"): [1, 2.5, float("inf"), None, True], "c": Counter({("a", "b"): 3}),
             "s": {1, 2}, "b": b"\x00\xff", "ba": bytearray(b"ab"), "a": array.array("d", [1.0, -2.0]),
             "t": (1, ("x",)), 7: "int key"}
    back = decode_state(encode_state(value))
    assert back == value and type(back["c"]) is Counter and type(back["a"]) is array.array
    nan = decode_state(encode_state([float("nan")]))[0]
    assert nan != nan
    import numpy as np

    m = np.arange(6, dtype=np.float64).reshape(2, 3)
    back = decode_state(encode_state({"m": m, "i": np.arange(3, dtype=np.int32), "x": np.float64(2.5)}))
    assert back["m"].shape == (2, 3) and (back["m"] == m).all() and back["m"].dtype == np.float64
    assert back["i"].dtype == np.int32 and back["x"] == 2.5

    class Stray:
        pass

    with pytest.raises(StateError, match="Stray is not registered"):
        encode_state({"x": Stray()})


def test_attached_bytes_travel_raw_after_the_compressed_document():
    """Bytes compressed already (a bank's held observations) are not base64 inside the JSON,
    compressed again at every snapshot: they follow the zlib stream (format 3)."""
    payload = zlib.compress(b'[1,0,0,"m","__all__","p1",5.0]\n' * 200, 1)
    blob = encode_state({"held": [[st.Attached(payload), [3, 4]], [st.Attached(b"\x00\n"), []]], "n": 1})
    assert blob.endswith(payload + b"\x00\n") and len(blob) < len(payload) + 200
    doc = _doc(blob)  # what a reader of format 2 only reads: it refuses format 3 (a rebuild)
    assert doc["format"] == 3 and doc["attached"] == [len(payload), 2]
    back = decode_state(blob)
    assert back == {"held": [[payload, [3, 4]], [b"\x00\n", []]], "n": 1} and type(back["held"][0][0]) is bytes
    for broken in (blob[:-1], blob + b"x"):
        assert decode_state(broken).reason == "corrupt"
    assert _doc(encode_state({"b": b"x"}))["format"] == 2  # plain bytes: base64 in the JSON, format 2
