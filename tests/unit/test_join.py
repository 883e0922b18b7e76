"""The label join as a pure object: exact fates on scripted sequences, returned as values."""
import copy
import zlib
from collections import Counter

import orjson

from driftline.detectors.join import WAITING, Fate, Joined, JoinResult, LabelJoin, PendingPrediction
from driftline.detectors.state import decode_state, encode_state

TTL = 100.0


def pred(pid, ts, model="m", segments=("__all__",), prediction=1):
    return PendingPrediction(pid, model, segments, prediction, None, ts)


def make(max_pending=1000):
    return LabelJoin(lambda model: TTL, max_pending=max_pending)


def one(result: JoinResult) -> Joined:
    """The single prediction a call joined."""
    assert len(result.joined) == 1 and result.refused is None, result
    return result.joined[0]


def test_label_after_prediction_joins():
    j = make()
    assert j.add_prediction(pred("a", 0.0)) == WAITING  # nothing joined, no fate: it waits
    out = j.add_label("a", 0, 5.0)
    joined = one(out)
    assert joined.label == 0 and joined.delay == 5.0
    assert out.fates == ()  # a join is not a fate; fates are the events that did not join
    assert j.pending_predictions == 0


def test_label_before_prediction_is_held_then_joined():
    j = make()
    assert j.add_label("a", 1, 10.0, model="m") == WAITING
    assert j.held_labels == 1
    joined = one(j.add_prediction(pred("a", 12.0)))
    assert joined.label == 1 and joined.delay == -2.0
    assert j.held_labels == 0


def test_duplicate_label_counted_once():
    j = make()
    j.add_prediction(pred("a", 0.0))
    one(j.add_label("a", 1, 1.0))
    second, third = j.add_label("a", 1, 2.0), j.add_label("a", 0, 3.0)
    assert second.joined == third.joined == ()
    assert second.fates == third.fates == (Fate(None, "label", "duplicate"),)


def test_duplicate_held_label_and_duplicate_prediction():
    j = make()
    assert j.add_label("a", 1, 0.0) == WAITING
    assert j.add_label("a", 1, 1.0).fates == (Fate(None, "label", "duplicate"),)
    j.add_prediction(pred("b", 0.0))
    assert j.knows_prediction("b")
    assert j.add_prediction(pred("b", 1.0)) == JoinResult(fates=(Fate("m", "inference", "duplicate"),))


def test_prediction_expires_after_ttl_and_late_label_is_unmatched():
    j = make()
    j.add_prediction(pred("a", 0.0))
    assert j.expire(99.0) == ()
    assert j.expire(100.0) == (Fate("m", "inference", "expired"),)
    assert j.add_label("a", 1, 150.0, model="m") == WAITING  # held: its prediction is gone
    assert j.expire(250.0) == (Fate("m", "label", "unmatched"),)
    assert j.pending_predictions == 0 and j.held_labels == 0


def test_model_mismatch_is_refused_and_prediction_kept():
    j = make()
    j.add_prediction(pred("a", 0.0, model="m"))
    refused = j.add_label("a", 1, 1.0, model="other")
    assert refused.refused == "model_mismatch" and refused.joined == () and refused.fates == ()
    one(j.add_label("a", 1, 2.0, model="m"))


def test_early_label_naming_another_model_does_not_grade_the_prediction():
    j = make()
    assert j.add_label("a", 1, 0.0, model="other") == WAITING
    waits = j.add_prediction(pred("a", 1.0, model="m"))  # waits for a label of its own
    assert waits.joined == () and waits.fates == (Fate("other", "label", "unmatched"),)
    one(j.add_label("a", 0, 2.0, model="m"))


def test_cap_bounds_memory_and_counts_fates():
    j = make(max_pending=10)
    fates = Counter()
    for i in range(25):
        fates.update(j.add_prediction(pred(f"p{i}", float(i))).fates)
        fates.update(j.add_label(f"orphan{i}", 1, float(i)).fates)
    assert j.pending_predictions == 10 and j.held_labels == 10
    assert fates == {("m", "inference", "expired"): 15, (None, "label", "unmatched"): 15}
    # The newest survive the cap.
    one(j.add_label("p24", 1, 30.0))


def test_heap_stays_bounded_under_churn():
    j = make(max_pending=10)
    for i in range(20_000):
        j.add_prediction(pred(f"p{i}", 0.0))
    assert all(len(heap) <= 4 * 10 + 1024 + 1 for heap in j._deadlines.values())


def test_exactly_once_fates_on_random_script():
    import random

    rng = random.Random(4)
    j = make()
    n = 2000
    t = 0.0
    events = [("p", i) for i in range(n)] + [("l", i) for i in range(n) if rng.random() < 0.7]
    rng.shuffle(events)
    joined = 0
    fates = Counter()
    for kind, i in events:
        t += 0.01
        out = j.add_prediction(pred(str(i), t)) if kind == "p" else j.add_label(str(i), 1, t)
        joined += len(out.joined)
        fates.update(out.fates)
    fates.update(j.expire(t + 10 * TTL))
    assert joined == len([e for e in events if e[0] == "l"])
    assert fates == {("m", "inference", "expired"): n - joined}


def test_snapshots_of_the_version_before_restore():
    """Version 1 of the join's checkpoint wrote every waiting prediction and deadline as its own
    value, and an (always empty) `fates` list: such snapshots restore here. (The committed
    fixture tests/fixtures/checkpoints/dls2-signals-v1.bin holds one: tests/unit/test_state.py.)"""
    j = make()
    j.add_prediction(pred("a", 0.0))
    older = {k: copy.deepcopy(v) for k, v in j.__dict__.items() if k != "_ttl_for"} | {"fates": []}
    back = LabelJoin.__new__(LabelJoin)
    back.__setstate__(LabelJoin.upgrade_state(1, older))
    back.bind(lambda model: TTL)
    assert not hasattr(back, "fates")
    assert back.expire(200.0) == (Fate("m", "inference", "expired"),)
    again = decode_state(encode_state({"join": j}))["join"].bind(lambda model: TTL)
    assert one(again.add_label("a", 1, 5.0)).label == 1


def test_a_snapshot_packs_the_waiting_predictions_and_they_come_back_the_same():
    """The waiting predictions and each deadline heap are one JSON text each in the snapshot (a
    backlog's intake holds tens of thousands, written again at every checkpoint round), not one
    state object each; restored, they are equal, in order, and go on joining and expiring."""
    j = make()
    for i in range(50):
        j.add_prediction(PendingPrediction(f"p{i}", "m", ("__all__", f"band={i % 3}"), i % 3, 0.5 + i / 100,
                                           float(i), (1.5 * i, "x", None, True, {"k": [1, 2]})))
    j.add_label("p3", 1, 10.0)  # joined: its id waits in the "j" heap
    j.add_label("early", 0, 11.0)  # held: the "h" heap
    state = j.__getstate__()
    assert type(state["_pending"]) is list and all(type(h) is str for h in state["_deadlines"].values())
    assert b"join.pending" not in zlib.decompress(encode_state({"join": j})[4:])
    back = decode_state(encode_state({"join": j}))["join"].bind(lambda model: TTL)
    assert list(back._pending.items()) == list(j._pending.items())
    assert all(type(p.segments) is tuple and type(p.values) is tuple for p in back._pending.values())
    assert back._deadlines == j._deadlines and back._joined == j._joined
    assert one(back.add_label("p7", 0, 20.0)).prediction == one(j.add_label("p7", 0, 20.0)).prediction
    assert Counter(back.expire(500.0)) == Counter(j.expire(500.0))


def test_values_json_would_not_give_back_stay_objects():
    """A value JSON would change (a tuple prediction, an infinite score or deadline) keeps the
    object-by-object form, exactly."""
    j = LabelJoin(lambda model: float("inf"))
    j.add_prediction(PendingPrediction("a", "m", ("__all__",), (1, 2), float("inf"), 0.0, ((3, 4),)))
    state = j.__getstate__()
    assert type(state["_pending"]) is dict and type(state["_deadlines"]["p"]) is list
    back = decode_state(encode_state({"join": j}))["join"]
    assert back._pending == j._pending and back._deadlines == j._deadlines


def test_deadlines_out_of_order_expire_in_deadline_order_and_survive_a_snapshot():
    """Deadlines mostly come in order (one TTL, events in time order) and leave from the front
    of a queue; one scheduled earlier than the newest (a shorter TTL, an older event) must still
    leave at its own deadline, before later ones, and a snapshot keeps both kinds (as a sorted
    list: a valid heap for checkpoints' older readers)."""
    ttls = {"long": 1000.0, "short": 10.0}
    j = LabelJoin(lambda model: ttls.get(model, TTL))
    j.add_prediction(pred("l1", 0.0, model="long"))  # deadline 1000
    j.add_prediction(pred("l2", 1.0, model="long"))  # 1001
    j.add_prediction(pred("s1", 2.0, model="short"))  # 12: earlier than the newest deadline
    j.add_prediction(pred("s0", 1.5, model="short"))  # 11.5: earlier still
    j.add_prediction(pred("l3", 3.0, model="long"))  # 1003
    queue = j._deadlines["p"]
    assert len(queue.heap) == 2 and len(queue) == 5  # the two early ones beside the in-order run
    entries = j.__getstate__()["_deadlines"]["p"]
    restored = decode_state(encode_state({"join": j}))["join"].bind(lambda model: ttls.get(model, TTL))
    assert [e[2] for e in orjson.loads(entries)] == ["s0", "s1", "l1", "l2", "l3"]  # sorted
    for join in (j, restored):
        assert join.expire_streams(inferences=11.9, labels=11.9) == (Fate("short", "inference", "expired"),)
        assert join.pending_predictions == 4 and "s0" not in join._pending
        assert join.expire_streams(inferences=12.0, labels=12.0) == (Fate("short", "inference", "expired"),)
        assert join.expire_streams(inferences=1001.0, labels=1001.0) == (Fate("long", "inference", "expired"),) * 2
        assert set(join._pending) == {"l3"}


def _pending_rows(state: dict) -> list[int]:
    """How many rows each pack of a join's state holds, gone ones included."""
    return [len(orjson.loads(zlib.decompress(blob))) for blob, _ in state["_pending"]]


def test_a_checkpoint_round_encodes_only_the_predictions_registered_since_the_last():
    """A backlog's intake holds ~100k waiting predictions for many rounds: a round packs the new
    ones and writes the older packs as they were (the same bytes), with the rows that left them;
    restored, the waiting predictions are the same, in the same order (the cap lets the oldest go)."""
    j = make(max_pending=10_000)
    for i in range(100):
        j.add_prediction(pred(f"a{i}", float(i)))
    first = j.__getstate__()["_pending"]
    assert _pending_rows({"_pending": first}) == [100]
    for i in range(10):
        j.add_prediction(pred(f"b{i}", 200.0 + i))
    for i in range(0, 100, 4):
        one(j.add_label(f"a{i}", 1, 300.0))
    second = j.__getstate__()
    assert second["_pending"][0][0] is first[0][0]  # the old pack, not encoded again
    assert second["_pending"][0][1] == list(range(0, 100, 4))  # ... with the rows that left it
    assert _pending_rows(second) == [100, 10]  # only the new predictions were packed
    back = decode_state(encode_state({"join": j}))["join"].bind(lambda model: TTL)
    assert list(back._pending.items()) == list(j._pending.items())
    # The restored join writes its packs on as they are, its gone rows still gone.
    one(back.add_label("a1", 1, 300.0))
    one(j.add_label("a1", 1, 300.0))
    back.add_prediction(pred("c", 400.0))
    j.add_prediction(pred("c", 400.0))
    again = back.__getstate__()["_pending"]
    assert [blob for blob, _ in again[:2]] == [blob for blob, _ in second["_pending"]]
    assert again[0][1] == sorted(list(range(0, 100, 4)) + [1])
    assert list(decode_state(encode_state({"join": back}))["join"]._pending.items()) == list(j._pending.items())


def test_packs_are_packed_again_once_they_hold_more_gone_rows_than_waiting_ones():
    """Churn (every round joins what the last one registered) must not grow the checkpoint: the
    packs carry at most about twice the waiting predictions, in a bounded number of packs."""
    j = make(max_pending=100_000)
    for r in range(200):
        for i in range(50):
            j.add_prediction(pred(f"r{r}-{i}", float(r)))
        if r:
            for i in range(50):
                one(j.add_label(f"r{r - 1}-{i}", 1, float(r)))
        state = j.__getstate__()
        rows = sum(_pending_rows(state))
        assert j.pending_predictions == 50
        assert rows <= 2 * j.pending_predictions + 256 and len(state["_pending"]) <= 32, (r, rows)
    back = decode_state(encode_state({"join": j}))["join"]
    assert list(back._pending.items()) == list(j._pending.items())


def test_a_prediction_registered_again_after_it_left_is_packed_as_new():
    """An id that expired and came back (a replayed inference after its TTL) is another object:
    its old row is gone, the new one packed, and the restored join holds the new one."""
    j = make()
    j.add_prediction(pred("x", 0.0, prediction=1))
    j.__getstate__()
    assert j.expire(TTL + 1.0) == (Fate("m", "inference", "expired"),)
    j.add_prediction(pred("x", 2 * TTL + 5.0, prediction=2))  # ("j" does not hold an expired id)
    state = j.__getstate__()
    assert [g for _, g in state["_pending"]] in ([[]], [[0], []])
    back = decode_state(encode_state({"join": j}))["join"]
    assert back._pending["x"].prediction == 2 and back.pending_predictions == 1


def test_a_version_2_checkpoint_one_text_of_every_prediction_still_restores():
    """Checkpoints written before the packs (join version 2: the waiting predictions as one JSON
    text) restore the same predictions, in order, and are written in packs from then on."""
    j = make()
    for i in range(20):
        j.add_prediction(pred(f"p{i}", float(i)))
    doc = orjson.loads(zlib.decompress(encode_state({"join": j})[4:]))
    fields = doc["state"]["$d"][1]
    assert fields["$o"] == "join" and fields["v"] == 3
    rows = [[p.prediction_id, p.model, list(p.segments), p.prediction, p.score, p.timestamp, None]
            for p in j._pending.values()]
    fields["v"], fields["f"]["_pending"] = 2, orjson.dumps(rows).decode()
    doc["format"] = 2
    doc.pop("attached", None)
    back = decode_state(b"DLS2" + zlib.compress(orjson.dumps(doc)))["join"].bind(lambda model: TTL)
    assert list(back._pending.items()) == list(j._pending.items())
    assert _pending_rows(back.__getstate__()) == [20]
