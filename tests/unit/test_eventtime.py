"""Event time across partitions, as pure objects: the join's per-stream clocks, stage-1 read
alignment of an input partition's two topics, and the stage-2 watermark buffer."""
from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import orjson
import pytest

from driftline.detectors.join import Joined, LabelJoin, PendingPrediction
from driftline.detectors.observations import FateObservation, InferenceObservation, OutcomeObservation
from driftline.detectors.packs import RepackRule
from driftline.detectors.state import restore as restore_state
from driftline.detectors.state import snapshot as snapshot_state
from driftline.stream.events import Inference, Label
from driftline.stream import eventtime
from driftline.stream.eventtime import (
    INFERENCES,
    LABELS,
    SILENT_AFTER,
    HeldQueue,
    SourceAlignment,
    WatermarkBuffer,
    held_observation,
    ordering_key,
)
from driftline.stream.pipeline import FATE, INFERENCE, OUTCOME, Intake
from driftline.stream.settings import parse_settings

HOUR = 3600.0


def settings(ttl: str = "1h"):
    return parse_settings({"models": {"m": {"task": "classification", "features": {"x": "numeric"},
                                             "label_ttl": ttl}}}, env={})


def inference(i: int, ts: float) -> Inference:
    return Inference(prediction_id=f"p{i}", model="m", features={"x": 1.0}, prediction=1, score=None,
                     timestamp=ts, segment={}, model_version="v1")


def label(i: int, ts: float) -> Label:
    return Label(prediction_id=f"p{i}", label=1, timestamp=ts, model=None)


def fates(obs: list) -> Counter:
    return Counter((o.event_kind, o.outcome) for o in obs if type(o) is FateObservation)


# -- stage 1: the join's TTL runs on the stream that can still resolve it --------------------------
def test_backlog_read_inferences_first_loses_no_join():
    """All inferences (10 h of event time, TTL 1 h), then all labels: every label still joins."""
    intake = Intake(settings("1h"))
    out = []
    for i in range(600):
        out += intake.take_inference(inference(i, i * 60.0))[0]
    for i in range(600):
        out += intake.take_label(label(i, i * 60.0 + 30.0))[0]
    assert sum(1 for o in out if type(o) is OutcomeObservation) == 600
    assert fates(out)[("inference", "expired")] == 0


def test_one_clock_for_both_streams_would_lose_the_joins():
    """The mechanism the test above covers: with one clock (the old rule), the same backlog
    expires every prediction whose TTL the inference stream passed before its label was read."""
    join = LabelJoin(lambda model: HOUR)
    for i in range(600):
        join.add_prediction(PendingPrediction(f"p{i}", "m", ("__all__",), 1, None, i * 60.0))
        join.expire(i * 60.0)
    joined = sum(len(join.add_label(f"p{i}", 1, i * 60.0 + 30.0).joined) for i in range(600))
    assert joined == 60  # only the last hour's predictions were still waiting


def test_predictions_expire_when_the_label_stream_passes_them():
    intake = Intake(settings("1h"))
    intake.take_inference(inference(0, 0.0))
    intake.take_inference(inference(1, 10 * HOUR))  # the inference stream is far ahead: no expiry
    assert intake.join.pending_predictions == 2
    out, _ = intake.take_label(label(1, 10 * HOUR + 1))  # the label stream passes p0's deadline
    assert fates(out)[("inference", "expired")] == 1
    assert intake.join.pending_predictions == 0


def test_idle_label_stream_lets_predictions_expire_on_inference_time():
    """A model whose labels never come: once the label topic is caught up (idle), its clock
    follows the inferences', so predictions still expire at their TTL instead of piling up."""
    intake = Intake(settings("1h"))
    for i in range(10):
        intake.take_inference(inference(i, i * HOUR))
    assert intake.join.pending_predictions == 10
    out = intake.set_idle(LABELS)
    assert fates(out)[("inference", "expired")] == 9  # deadlines 1 h .. 9 h reached at 9 h
    intake.take_inference(inference(10, 10 * HOUR))
    assert intake.join.pending_predictions == 1  # p9 expired too: the label clock follows while idle
    intake.take_label(label(10, 10 * HOUR + 5))  # a label: the stream is live again
    assert LABELS not in intake.idle


def test_a_restored_intake_does_not_believe_its_streams_idle():
    """Stopped once both topics were caught up (idle); restarted on a backlog. Nothing has been
    observed of the new run's topics yet: were the old idleness restored, the label clock would
    follow the first batch of inferences and expire predictions whose labels wait unread."""
    s = settings("1h")
    intake = Intake(s)
    for i in range(600):  # 10 h of event time, each label 30 s after its prediction
        intake.take_inference(inference(i, i * 60.0))
    for i in range(600):
        intake.take_label(label(i, i * 60.0 + 30.0))
    intake.set_idle(INFERENCES)
    intake.set_idle(LABELS)
    restored = Intake.restore(intake.snapshot(), s)
    out = []
    for i in range(600, 1200):  # the backlog: the next 10 h of inferences, then their labels
        out += restored.take_inference(inference(i, i * 60.0))[0]
    for i in range(600, 1200):
        out += restored.take_label(label(i, i * 60.0 + 30.0))[0]
    assert fates(out)[("inference", "expired")] == 0
    assert sum(1 for o in out if type(o) is OutcomeObservation) == 600  # as in one uninterrupted run


def test_snapshot_before_per_stream_heaps_restores():
    join = LabelJoin(lambda model: HOUR)
    join.add_prediction(PendingPrediction("a", "m", ("__all__",), 1, None, 0.0))
    join.add_label("b", 1, 5.0)
    state = {k: v for k, v in vars(join).items() if k != "_ttl_for"}  # its fields as objects (join version 1)
    # The layout before that: one heap of (deadline, seq, which, id).
    state["_deadlines"] = sorted((d, seq, which, pid) for which, heap in state["_deadlines"].items()
                                 for d, seq, pid in heap)
    old = LabelJoin.__new__(LabelJoin)
    old.__setstate__(state)
    old.bind(lambda model: HOUR)
    old.expire_streams(inferences=2 * HOUR, labels=0.0)  # held label expires, prediction waits
    assert old.held_labels == 0 and old.pending_predictions == 1
    old.expire_streams(inferences=2 * HOUR, labels=2 * HOUR)
    assert old.pending_predictions == 0


# -- stage 1: reading an input partition's two topics in event-time order --------------------------
def aligner(window=60.0, skew=600.0, idle=1.0) -> SourceAlignment:
    return SourceAlignment(window, skew, idle)


def test_topic_ahead_is_paused_until_the_other_catches_up():
    al = aligner()
    al.observe(0.0, {INFERENCES: False, LABELS: False}, {INFERENCES: 10, LABELS: 0})
    assert al.decide({INFERENCES: 1000.0, LABELS: None}, 0.0, None) == {INFERENCES: "align"}
    assert al.decide({INFERENCES: 1000.0, LABELS: 950.0}, 0.1, None) == {INFERENCES: "align"}  # hysteresis
    assert al.decide({INFERENCES: 1000.0, LABELS: 1000.0}, 0.2, None) == {}
    assert al.decide({INFERENCES: 1050.0, LABELS: 1000.0}, 0.3, None) == {}  # within the window
    assert al.decide({INFERENCES: 1000.0, LABELS: 1100.0}, 0.4, None) == {LABELS: "align"}


def test_nothing_waits_for_a_caught_up_topic():
    al = aligner()
    al.observe(0.0, {INFERENCES: False, LABELS: True}, {INFERENCES: 10, LABELS: 0})
    assert al.decide({INFERENCES: 1000.0, LABELS: None}, 0.0, None) == {}


def test_fleet_skew_pauses_both_topics_with_hysteresis():
    al = aligner(skew=600.0)
    al.observe(0.0, {INFERENCES: False, LABELS: False}, {INFERENCES: 1, LABELS: 1})
    times = {INFERENCES: 2000.0, LABELS: 2000.0}
    assert al.decide(times, 0.0, fleet_min=1000.0) == {INFERENCES: "skew", LABELS: "skew"}
    assert al.decide(times, 0.1, fleet_min=1500.0) == {INFERENCES: "skew", LABELS: "skew"}
    assert al.decide(times, 0.2, fleet_min=1750.0) == {}


def test_progress_is_the_slower_topic_until_one_is_idle():
    al = aligner(idle=1.0)
    times = {INFERENCES: 500.0, LABELS: 400.0}
    al.observe(0.0, {INFERENCES: False, LABELS: True}, {INFERENCES: 5, LABELS: 4})
    assert al.progress(times, 0.5) == (400.0, False)  # caught up, not yet idle
    al.observe(0.9, {INFERENCES: False, LABELS: True}, {INFERENCES: 6, LABELS: 4})
    assert al.progress(times, 1.0) == (500.0, False)  # labels idle: they hold nothing back
    al.observe(1.1, {INFERENCES: False, LABELS: True}, {INFERENCES: 6, LABELS: 5})  # read one more
    assert al.progress(times, 1.2) == (400.0, False)  # so not idle again for 1 s
    assert al.progress({INFERENCES: 500.0, LABELS: None}, 1.2) == (None, False)


def test_a_topic_waking_makes_the_other_topics_idleness_start_over():
    """Both topics idle (an empty partition); a burst is published, inferences first: the labels
    topic's "caught up" still rests on a high watermark cached before the burst, so it must not
    stay idle (its clock out of the progress) the moment the inferences wake."""
    al = aligner(idle=1.0)
    al.observe(0.0, {INFERENCES: True, LABELS: True}, {INFERENCES: 0, LABELS: 0})
    al.observe(1.5, {INFERENCES: True, LABELS: True}, {INFERENCES: 0, LABELS: 0})
    assert al.progress({INFERENCES: None, LABELS: None}, 1.5) == (None, True)  # both idle
    al.observe(2.0, {INFERENCES: False, LABELS: True}, {INFERENCES: 40, LABELS: 0})  # inferences read
    times = {INFERENCES: 100.0, LABELS: None}
    assert al.idle(LABELS, 2.5) is False  # labels: idle again only after idle_timeout
    assert al.progress(times, 2.5) == (None, False)  # so nothing is passed on the labels' behalf
    al.observe(3.0, {INFERENCES: True, LABELS: True}, {INFERENCES: 40, LABELS: 0})
    assert al.idle(LABELS, 3.0) is True and al.progress(times, 3.0) == (100.0, False)


# -- stage 2: the watermark buffer ---------------------------------------------------------------
def wire(offset: int, ts: float, kind=INFERENCE) -> list:
    return [offset, 0, kind, "m", "__all__", "id", ts, 1, None, {}]


def put(buf, p, ts, offset, kind=INFERENCE):
    rec = wire(offset, ts, kind)
    return buf.add(ordering_key(rec), p, offset, 0, f"s{p}", rec, 100)


def test_release_in_event_time_order_across_sources():
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0)
    rng = random.Random(7)
    times = {0: sorted(rng.uniform(0, 100) for _ in range(50)), 1: sorted(rng.uniform(0, 100) for _ in range(50))}
    released = []
    # Source 0 is read far ahead of source 1 (a backlog): nothing leaves until 1 says where it is.
    for k, ts in enumerate(times[0]):
        assert put(buf, 0, ts, k)
    buf.note(0, 100.0, False, 0.0)
    assert buf.release(0.0) == [] and buf.held == 50
    for k, ts in enumerate(times[1]):
        assert put(buf, 1, ts, k)
        buf.note(1, ts, False, 0.0)
        released += buf.release(0.0)
    buf.note(1, 100.0, True, 0.0)  # caught up: idle
    released += buf.release(0.0)
    keys = [e[0] for e in released]
    assert keys == sorted(times[0] + times[1]) and buf.held == 0 and buf.late == 0


def test_arrival_behind_the_watermark_is_late_and_counted():
    buf = WatermarkBuffer(sources=1, max_held=1000, max_bytes=1 << 20, now=0.0)
    put(buf, 0, 10.0, 0)
    buf.note(0, 20.0, False, 0.0)
    assert [e[0] for e in buf.release(0.0)] == [10.0]
    assert put(buf, 0, 15.0, 1) is False and buf.late == 1  # the caller applies it at once
    assert put(buf, 0, 25.0, 2) is True


def test_inference_before_label_at_the_same_instant():
    buf = WatermarkBuffer(sources=1, max_held=1000, max_bytes=1 << 20, now=0.0)
    put(buf, 0, 5.0, 0, kind=OUTCOME)
    put(buf, 0, 5.0, 1, kind=INFERENCE)
    buf.note(0, 6.0, False, 0.0)
    assert [type(held_observation(e).observation) for e in buf.release(0.0)] == [InferenceObservation, OutcomeObservation]


def test_unheard_and_silent_sources():
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0)
    put(buf, 0, 1.0, 0)
    buf.note(0, 5.0, False, 0.0)
    assert buf.watermark(1.0) == -math.inf and buf.release(1.0) == []  # source 1 never heard
    buf.note(0, 5.0, False, SILENT_AFTER)
    assert buf.watermark(SILENT_AFTER + 1) == 5.0  # ... until it has been silent too long
    assert len(buf.release(SILENT_AFTER + 1)) == 1


def test_bounds_release_the_oldest_early():
    buf = WatermarkBuffer(sources=2, max_held=3, max_bytes=1 << 20, now=0.0)
    for k in range(5):
        put(buf, 0, float(k), k)
    out = buf.release(0.0)
    assert [e[0] for e in out] == [0.0, 1.0] and buf.early == 2 and buf.held == 3
    assert put(buf, 1, 0.5, 0) is False  # behind what left early: late
    buf2 = WatermarkBuffer(sources=1, max_held=100, max_bytes=250, now=0.0)
    for k in range(5):
        put(buf2, 0, float(k), k)
    buf2.release(0.0)
    assert buf2.held_bytes <= 250 and buf2.early == 3


def test_buffer_state_round_trips_through_a_snapshot():
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0)
    for k in range(4):
        put(buf, k % 2, float(k), k)
    buf.note(0, 4.0, False, 0.0)
    buf.note(1, 1.5, False, 0.0)
    first = buf.release(0.0)
    back = WatermarkBuffer.from_state(restore_state(snapshot_state(buf.to_state())), 2, 1000, 1 << 20, now=50.0)
    assert back.held == buf.held == 2 and back.floor == buf.floor == 1.5
    back.note(1, 10.0, False, 50.0)
    assert [e[0] for e in first + back.release(50.0)] == [0.0, 1.0, 2.0, 3.0]


def test_metrics_report_watermarks_lag_held_late_and_pauses():
    from prometheus_client.parser import text_string_to_metric_families

    from driftline.stream.exporter import EventTimeMetrics, render
    from driftline.stream.ordering import EventTimeStats

    st = EventTimeStats()
    st.intake_progress, st.bank_watermark = {3: 1000.0}, {1: 900.0}
    st.held, st.late, st.early = {1: (7, 700)}, {1: 2}, {1: 0}
    st.paused_seconds = {("t.inferences", 3, "align"): 1.5}
    text = render(EventTimeMetrics(st, clock=lambda: 1060.0).families()).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("driftline_watermark_seconds", (("partition", "1"), ("stage", "bank")))] == 900.0
    assert got[("driftline_event_time_lag_seconds", (("partition", "3"), ("stage", "intake")))] == 60.0
    assert got[("driftline_observations_held", (("partition", "1"),))] == 7
    assert got[("driftline_observations_late_total", (("partition", "1"),))] == 2
    assert got[("driftline_alignment_paused_seconds_total",
                (("partition", "3"), ("reason", "align"), ("topic", "t.inferences")))] == 1.5


def test_every_ordered_kind_is_held_and_counters_are_not():
    from driftline.stream.pipeline import FOLD, LLM, PAIR

    buf = WatermarkBuffer(sources=1, max_held=1000, max_bytes=1 << 20, now=0.0)
    recs = [[0, 0, INFERENCE, "m", "s", "id", 5.0, 1, None, {}], [0, 1, LLM, "m", "s", "id", 5.0, [1, 1, 0.5] + [None] * 5],
            [1, 0, OUTCOME, "m", "s", "id", 4.0, 1, 1, 0.5], [1, 1, PAIR, "c", "s", "m", 4.0, True, False],
            [1, 2, FATE, "m", "__all__", "label", "duplicate"], [1, 3, FOLD, "m", "__all__", "a"]]
    now = buf.add_records(0, "src", recs, 10)
    assert [e.observation.KIND for e in now] == [FATE, FOLD] and buf.held == 4
    assert [(e.offset, e.index, e.src, e.partition) for e in now] == [(1, 2, "src", 0), (1, 3, "src", 0)]
    assert all(ordering_key(r) is not None for r in recs[:4]) and ordering_key(recs[4]) is None
    buf.note(0, 6.0, False, 0.0)
    assert [held_observation(e).observation.KIND for e in buf.release(0.0)] == [OUTCOME, PAIR, INFERENCE, LLM]


def test_a_refused_llm_call_does_not_move_the_event_clock():
    """An LLM call refused at intake (embedding of the wrong length), stamped hours ahead (a bad
    event without a timestamp takes its Kafka time), expires nothing that waits in the join."""
    from driftline.detectors.llm import LLMCall
    s = parse_settings({"models": {"a": {"task": "llm", "llm": {"embedding_dim": 3}}}}, env={})
    intake = Intake(s)

    def call(i, ts, dim):
        return Inference(prediction_id=f"c{i}", model="a", features={}, prediction=None, timestamp=ts,
                         segment={}, model_version="v1",
                         llm=LLMCall(input_tokens=10, output_tokens=5, duration=0.5, embedding=[0.1] * dim))

    for i in range(5):
        intake.take_inference(call(i, float(i), 3))
    intake.set_idle("label")  # the label stream has nothing unread: its clock follows inferences
    out, refused = intake.take_inference(call(99, 10 * HOUR, 2))
    assert refused is not None and refused.reason == "bad_embedding"
    assert fates(out)[("inference", "expired")] == 0
    assert intake.join.pending_predictions == 5
    assert intake.inference_time == 4.0


def test_idle_sources_must_say_so_again_after_an_observation_was_sent():
    """The fleet idle, then a burst published to every partition (the max_models test's
    scenario): source 1's observations reach the bank first, source 0's idleness was said before
    the burst. Released at once (source 0 idle), source 1's later events would pass source 0's
    earlier ones, which then arrive late: first-come admission (max_models, max_segments) would
    differ from replay. The bank waits until source 0 has spoken since they were sent."""
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0, confirm_after=0.2)
    buf.note(0, None, True, 1.0, said_at=100.0)
    buf.note(1, None, True, 1.0, said_at=100.0)
    assert buf.watermark(1.0) == math.inf  # both idle: nothing to wait for
    woke = [wire(0, 50.0 + k, INFERENCE) for k in range(3)]  # source 1's events at 50, 51, 52
    assert buf.add_records(1, "s1", woke, 100, sent_at=101.0, now=1.05) == []
    assert buf.release(1.1) == []  # source 1's own progress comes with its next heartbeat
    buf.note(1, 60.0, False, 1.1, said_at=101.05)
    assert buf.release(1.1) == []  # source 0 said idle before they were sent
    buf.note(0, None, True, 1.15, said_at=101.1)  # said within confirm_after of it: not yet
    assert buf.release(1.15) == []
    # Source 0's worker has now seen its own part of the burst: not idle, progress 49.
    assert buf.add_records(0, "s0", [wire(0, 40.0, INFERENCE), wire(1, 49.0, INFERENCE)], 100, sent_at=101.3,
                           now=1.3) == []
    buf.note(0, 49.0, False, 1.3, said_at=101.3)
    assert [e[0] for e in buf.release(1.3)] == [40.0]
    buf.note(0, None, True, 1.6, said_at=101.6)  # read everything: idle, said after all was sent
    assert [e[0] for e in buf.release(1.6)] == [49.0, 50.0, 51.0, 52.0]
    assert buf.late == 0 and buf.held == 0


def test_a_steady_stream_past_idle_sources_is_not_starved():
    """Observations keep coming while another source stays idle: each waits only for that
    source's next word after it was sent, never for a quiet moment of the whole stream."""
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0, confirm_after=0.2)
    buf.note(0, None, True, 0.0, said_at=0.0)  # source 0: no traffic at all
    released = []
    for k in range(20):  # source 1: an event every 0.1 s, sent at once; heartbeats of both follow
        t = 1.0 + k * 0.1
        buf.add_records(1, "s1", [wire(k, 1000.0 + k, INFERENCE)], 100, sent_at=t, now=t)
        buf.note(1, 1000.0 + k + 0.5, False, t, said_at=t)
        buf.note(0, None, True, t, said_at=t)
        released += buf.release(t)
    keys = [e[0] for e in released]
    # Everything sent more than confirm_after before source 0's last word has left, in order.
    assert keys == [1000.0 + k for k in range(len(keys))] and len(keys) >= 17 and buf.late == 0


def test_without_sender_times_the_earlier_events_arrive_late():
    """The same arrival order without the senders' times (the rule cannot apply, as before it
    existed): source 1's events leave at once and source 0's earlier ones are late."""
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0, confirm_after=0.2)
    buf.note(0, None, True, 1.0)
    buf.note(1, None, True, 1.0)
    buf.add_records(1, "s1", [wire(0, 50.0, INFERENCE)], 100)
    buf.note(1, 60.0, False, 1.1)
    assert [e[0] for e in buf.release(1.1)] == [50.0]
    assert buf.add_records(0, "s0", [wire(0, 40.0, INFERENCE)], 100) != [] and buf.late == 1


def test_sender_times_travel_with_the_buffer_state():
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0, confirm_after=0.2)
    buf.note(0, None, True, 1.0, said_at=100.0)
    buf.note(1, None, True, 1.0, said_at=100.0)
    buf.add_records(1, "s1", [wire(0, 50.0, INFERENCE)], 100, sent_at=101.0, now=1.0)
    buf.note(1, 60.0, False, 1.1, said_at=101.05)
    back = WatermarkBuffer.from_state(restore_state(snapshot_state(buf.to_state())), 2, 1000, 1 << 20, now=5.0,
                                      confirm_after=0.2)
    assert back.marks[0].said_at == 100.0 and back.queue.first()[9] == 101.0
    assert back.release(5.0) == []  # source 0 still owes its word since the entry was sent
    back.note(0, None, True, 5.0, said_at=102.0)
    assert [e[0] for e in back.release(5.0)] == [50.0]
    # A checkpoint written before marks and entries had sender times restores (none asked).
    for layout in ("packed", "one value per entry"):
        old = buf.to_state()
        old["marks"] = {p: m[:2] for p, m in old["marks"].items()}
        del old["held_layout"], old["held_packs"]
        if layout == "packed":
            old["held_keys"] = orjson.dumps([e[:7] + (e[8],) for e in buf.queue])
            old["held_records"] = b"\n".join(e[7] for e in buf.queue)
        else:
            old["heap"] = [e[:9] for e in buf.queue]
        legacy = WatermarkBuffer.from_state(old, 2, 1000, 1 << 20, now=5.0, confirm_after=0.2)
        assert legacy.marks[0].said_at is None and legacy.queue.first()[9] is None, layout
        assert [e[0] for e in legacy.release(5.0)] == [50.0], layout


def test_an_entry_waits_for_a_fresh_word_for_a_bounded_time():
    """A source whose word never comes fresh enough (its clock far behind the sender's) holds an
    entry at most SILENT_AFTER of the bank's clock; then idle sources pass as before."""
    buf = WatermarkBuffer(sources=2, max_held=1000, max_bytes=1 << 20, now=0.0, confirm_after=0.2)
    buf.note(0, None, True, 1.0, said_at=100.0)
    buf.note(1, None, True, 1.0, said_at=100.0)
    buf.add_records(1, "s1", [wire(0, 50.0, INFERENCE)], 100, sent_at=5000.0, now=1.0)  # its clock: far ahead
    buf.note(1, None, True, 1.0, said_at=5000.0)
    for t in (2.0, 10.0, 30.0):
        buf.note(0, None, True, t, said_at=100.0 + t)
        assert buf.release(t) == []
    buf.note(0, None, True, 1.0 + SILENT_AFTER, said_at=131.0)
    assert [e[0] for e in buf.release(1.0 + SILENT_AFTER)] == [50.0]


def test_a_budgeted_release_continues_in_order_and_nothing_behind_it_is_late():
    buf = WatermarkBuffer(sources=1, max_held=1000, max_bytes=1 << 20, now=0.0)
    for k in range(10):
        put(buf, 0, float(k), k)
    buf.note(0, 100.0, False, 0.0)
    first = buf.release(0.0, budget=4)
    assert [e[0] for e in first] == [0.0, 1.0, 2.0, 3.0] and buf.held == 6
    # The watermark passed 100, but only what was released counts as behind it: an arrival
    # between the last released and the watermark is held and released in order, not late.
    assert put(buf, 0, 5.5, 20) is True and buf.late == 0
    rest = buf.release(0.0, budget=4) + buf.release(0.0)
    assert [e[0] for e in first + rest] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0]
    assert buf.release(0.0, budget=0) == [] and buf.held == 0
    assert put(buf, 0, 50.0, 21) is False and buf.late == 1  # now the whole way to 100 is passed


def earlier_layouts(buf: WatermarkBuffer) -> dict[str, dict]:
    """The buffer's state as the two layouts before layout 3 held its entries."""
    state = {k: v for k, v in buf.to_state().items() if k not in ("held_layout", "held_packs")}
    packed = dict(state, held_keys=orjson.dumps([e[:7] + (e[8], e[9]) for e in buf.queue]),
                  held_records=b"\n".join(e[7] for e in buf.queue))  # layout 2 (issue 18c)
    return {"2": packed, "1": dict(state, heap=list(buf.queue))}  # 1: one value per entry


def test_held_entries_restore_from_the_packed_and_the_earlier_layout():
    buf = WatermarkBuffer(sources=1, max_held=1000, max_bytes=1 << 20, now=0.0)
    for k in range(5):
        put(buf, 0, float(5 - k), k, kind=OUTCOME if k % 2 else INFERENCE)
    state = buf.to_state()
    assert state["held_layout"] == 3 and "heap" not in state and "held_keys" not in state
    for snap in (state, *earlier_layouts(buf).values()):
        back = WatermarkBuffer.from_state(restore_state(snapshot_state(snap)), 1, 1000, 1 << 20, now=1.0)
        back.note(0, 10.0, False, 1.0)
        assert [held_observation(e) for e in back.release(1.0)] == [held_observation(e) for e in sorted(buf.queue)]
    empty = WatermarkBuffer(sources=1, max_held=10, max_bytes=1 << 20, now=0.0)
    assert WatermarkBuffer.from_state(restore_state(snapshot_state(empty.to_state())), 1, 10, 1 << 20, 0.0).held == 0
    with pytest.raises(ValueError, match="layout 4"):  # a newer driftline's: the restorer rebuilds the partition
        WatermarkBuffer.from_state(dict(state, held_layout=4), 1, 1000, 1 << 20, now=1.0)


def held_as_restored(buf: WatermarkBuffer) -> list:
    back = WatermarkBuffer.from_state(restore_state(snapshot_state(buf.to_state())), buf.sources, 10**6, 1 << 40, 0.0)
    return sorted(e[:10] for e in back.queue)


def test_a_checkpoint_round_encodes_only_the_entries_held_since_the_last(monkeypatch):
    """A backlog's bank holds its entries for many rounds: each is encoded in the first round
    that finds it held; later rounds write that pack as it is, with the seqs released since."""
    monkeypatch.setattr(eventtime, "REPACK", RepackRule(slack=0))
    buf = WatermarkBuffer(sources=1, max_held=10**6, max_bytes=1 << 40, now=0.0)
    for k in range(100):
        put(buf, 0, float(k), k)
    first = buf.to_state()["held_packs"]
    buf.note(0, 10.0, False, 0.0)
    assert len(buf.release(0.0)) == 10
    for k in range(100, 150):
        put(buf, 0, float(k), k)
    again = buf.to_state()["held_packs"]
    assert len(first) == 1 and len(again) == 2
    assert again[0][0] is first[0][0]  # the same bytes: not encoded again
    assert sorted(again[0][1]) == list(range(1, 11)) and again[1][1] == []  # what left since, by seq
    assert held_as_restored(buf) == sorted(e[:10] for e in buf.queue) and buf.held == 140
    # Once more has left than is held, what is held is packed again as one, and nothing released
    # is written any more.
    buf.note(0, 149.0, False, 0.0)  # all but the entry at 149
    assert len(buf.release(0.0)) == 139
    (pack,) = buf.to_state()["held_packs"]
    assert pack[1] == [] and held_as_restored(buf) == sorted(e[:10] for e in buf.queue) and buf.held == 1


def test_held_entries_restore_exactly_whatever_was_released_between_rounds():
    for trial in range(60):
        rnd = random.Random(trial)
        buf = WatermarkBuffer(sources=2, max_held=300, max_bytes=1 << 40, now=0.0)
        progress, offset = [0.0, 0.0], 0
        for _ in range(rnd.randint(1, 150)):
            step = rnd.random()
            if step < 0.5:
                p = rnd.randint(0, 1)
                for _ in range(rnd.randint(1, 40)):
                    offset += 1
                    put(buf, p, progress[p] + rnd.random() * 5, offset)
            elif step < 0.8:
                p = rnd.randint(0, 1)
                progress[p] += rnd.random() * 3
                buf.note(p, progress[p], False, 0.0)
                buf.release(0.0, rnd.choice([3, 50, math.inf]))  # max_held 300: some leave early too
            else:
                assert held_as_restored(buf) == sorted(e[:10] for e in buf.queue), trial
        assert held_as_restored(buf) == sorted(e[:10] for e in buf.queue), trial


def test_the_skew_bound_counts_owned_partitions_at_their_live_progress():
    """With exactly-once a bank hears an input partition's progress only when the heartbeat's
    transaction commits; the partitions this worker owns are known first-hand. A backlog at
    1 s of event time per event moves thousands of seconds between two commits: measured
    against what the bank heard at the last commit, every owned partition ran past max_skew
    and paused until the next commit."""
    buf = WatermarkBuffer(sources=3, max_held=1000, max_bytes=1 << 20, now=0.0)
    buf.note(0, 1000.0, False, 0.0)  # as heard at the last commit
    buf.note(1, 1200.0, False, 0.0)
    buf.note(2, 9000.0, False, 0.0)  # another worker's partition, committed far ahead
    live = {0: (4800.0, False), 1: (5000.0, False)}  # this worker's partitions 0 and 1 now
    assert buf.lowest_progress(0.0) == 1000.0
    assert buf.lowest_progress(0.0, live) == 4800.0
    assert buf.watermark(0.0) == 1000.0  # what the bank releases still waits for the commit
    al = aligner(skew=900.0)
    al.observe(0.0, {INFERENCES: False, LABELS: False}, {INFERENCES: 1, LABELS: 1})
    ahead = {INFERENCES: 5000.0, LABELS: 5000.0}
    assert al.decide(ahead, 0.0, buf.lowest_progress(0.0)) == {INFERENCES: "skew", LABELS: "skew"}
    assert al.decide(ahead, 0.1, buf.lowest_progress(0.1, live)) == {}
    # An owned partition that is idle is left out; one that has read nothing yet keeps what
    # the bank heard of it (a restored mark), as does one this worker does not own.
    assert buf.lowest_progress(0.0, {0: (None, True), 1: (5000.0, False)}) == 5000.0
    assert buf.lowest_progress(0.0, {0: (None, False), 1: (5000.0, False)}) == 1000.0
    # A partition truly behind still holds the owned ones back.
    assert al.decide(ahead, 0.2, buf.lowest_progress(0.2, {0: (3000.0, False), 1: (5000.0, False)})) == \
           {INFERENCES: "skew", LABELS: "skew"}


def test_the_release_allowance_of_a_loop_step_is_served_to_the_banks_in_turn():
    """One step releases at most RELEASE_PER_STEP over all of a worker's banks. Served in a fixed
    order, the first bank took all of it step after step while another, with as much released
    by its watermark, applied nothing (a backlog's `__all__` bank counted every event while a
    segment bank had applied none). In turn, each step starts with the next bank."""
    from types import SimpleNamespace

    from driftline.stream.ordering import RELEASE_PER_STEP, EventTimeDriver

    held = RELEASE_PER_STEP + RELEASE_PER_STEP // 2
    banks = {}
    for q in (2, 3):
        buf = WatermarkBuffer(sources=1, max_held=10 * held, max_bytes=1 << 40, now=0.0)
        buf.add_records(0, f"s{q}", [wire(k, float(k)) for k in range(held)], 10)
        buf.note(0, float(held), False, 0.0)  # the watermark passes every one of them
        banks[q] = SimpleNamespace(buffer=buf)
    applied = Counter()
    ws = settings().worker
    worker = SimpleNamespace(
        settings=SimpleNamespace(worker=ws), topics=SimpleNamespace(inferences="i", labels="l"), banks=banks,
        intakes={}, obs_partitions=6, lock=SimpleNamespace(yield_to_readers=lambda: False),
        repartition=SimpleNamespace(heartbeat=lambda *a: None),
        apply_observation=lambda bp, h: applied.update([next(q for q, b in banks.items() if b is bp)]))
    clock = iter(float(t) for t in range(100))
    driver = EventTimeDriver(worker, sources=1, clock=lambda: next(clock))
    driver.tick()
    assert sum(applied.values()) == RELEASE_PER_STEP  # one step's allowance, to one bank
    driver.tick()
    assert applied == {2: RELEASE_PER_STEP, 3: RELEASE_PER_STEP}  # the next step began with the other
    driver.tick()
    assert applied == {2: held, 3: held}


def test_a_held_record_costs_its_own_size_in_memory_not_a_json_buffer():
    """orjson.dumps returns its 4 KiB working buffer whatever the length; a backlog's bank holds
    ~300k records, so each must be kept in a bytes object of its own size (compact_json)."""
    import tracemalloc

    recs = [[k, 0, INFERENCE, "shuttle", "band=high", f"shuttle-{k:06d}", 1000.0 + k, 0, 0.99, {"f1": 41.0, "f5": 40.0}]
            for k in range(2_000)]
    buf = WatermarkBuffer(sources=1, max_held=10_000, max_bytes=1 << 30, now=0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert buf.add_records(0, "src", recs[:1_000], 120) == []
        for r in recs[1_000:]:
            assert buf.add(ordering_key(r), 0, r[0], 0, "src", r, 120)
        per_record = (tracemalloc.get_traced_memory()[0] - before) / len(recs)
    finally:
        tracemalloc.stop()
    assert buf.held == 2_000
    assert per_record < 600, per_record  # the entry tuple and ~120 bytes of JSON (4,200 without the copy)
    assert orjson.loads(buf.queue.first()[7]) == recs[0]
    # The same of held records restored from a checkpoint of layout 1 (one JSON value per entry).
    old = {"marks": {}, "held_bytes": 0, "floor": -math.inf, "late": 0, "early": 0, "seq": len(recs),
           "heap": [(r[6], 0, 0, r[0], 0, r[0] + 1, "src", r, 120) for r in recs]}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        again = WatermarkBuffer.from_state(old, 1, 10_000, 1 << 30, 0.0)
        per_restored = (tracemalloc.get_traced_memory()[0] - before) / len(recs)
    finally:
        tracemalloc.stop()
    assert again.held == 2_000 and orjson.loads(min(again.queue)[7]) == recs[0]
    assert per_restored < 600, per_restored


def test_the_held_queue_gives_a_heaps_order_with_runs_out_of_order_and_sources_coming_and_going():
    """Entries of a source partition mostly in order (its run), some behind their run's last
    (the spill), sources whose runs empty and start again: first() and pop() must be what one
    heap of all the entries gives, and iterating the queue must give exactly what it holds."""
    spilled = 0
    for trial in range(200):
        rnd = random.Random(trial)
        queue, heap, seq = HeldQueue(), [], 0
        clock = {}
        for _ in range(rnd.randint(1, 400)):
            if rnd.random() < 0.6:
                # One entry (push), or a message's records of one source partition (extend).
                src, p = rnd.choice(("e1:i", "e1:l", "e2:i")), rnd.randint(0, 2)
                batch = []
                for _ in range(rnd.choice((1, 1, 3))):
                    seq += 1
                    ts = clock.get((src, p), 0.0) + rnd.choice((0.0, 1.0, 1.0, -3.0))  # ties, steps, some behind
                    clock[(src, p)] = max(ts, clock.get((src, p), 0.0))
                    batch.append((ts, rnd.randint(0, 1), p, seq, 0, seq, src, b"{}", 10, None, 0.0))
                if len(batch) == 1:
                    queue.push(batch[0])
                else:
                    queue.extend((src, p), batch)
                for entry in batch:
                    heapq.heappush(heap, entry)
            elif heap:
                assert queue.first() == heap[0], trial
                assert queue.pop() == heapq.heappop(heap), trial
            assert len(queue) == len(heap) and sorted(queue) == sorted(heap), trial
            spilled += bool(queue.spill)
        assert [queue.pop() for _ in range(len(queue))] == [heapq.heappop(heap) for _ in range(len(heap))]
        assert queue.first() is None and not queue.runs and not queue.fronts
    assert spilled  # the spill heap was exercised
    # Restored from a checkpoint's entries (any order): every entry in its run, none spilled.
    entries = [(float(k % 7), 0, k % 3, k, 0, k, "e1:i", b"{}", 10, None, 0.0) for k in range(100)]
    random.Random(3).shuffle(entries)
    restored = HeldQueue(entries)
    assert not restored.spill and [restored.pop() for _ in range(100)] == sorted(entries)
