"""Stage 1 -> stage 2 in memory when one worker owns both ends (stream/repartition.py): every
message still goes to the topic; a pair goes local only once its bank has applied the pair's
marker from the topic, what was sent after the marker reaches the bank then, in order, and the
bank skips the topic's copies of it; any change of ownership sends every pair back to the topic,
and the copies the bank then reads are not applied twice.

The worker is a real `Worker` whose clients point at a port nothing listens on; what it would
produce is captured and read back as its consumer would hand it over."""
from __future__ import annotations

import orjson
import pytest

from driftline.detectors.observations import InferenceObservation, to_wire
from driftline.detectors.state import restore as restore_state
from driftline.detectors.state import snapshot as snapshot_state
from driftline.stream.eventtime import WatermarkBuffer
from driftline.stream.repartition import HANDOVER_HEADER, LOCAL, TOPIC, WAITING, Handover, marker_of
from driftline.stream.settings import parse_settings
from driftline.stream.worker import Worker
from tests.integration.harness import free_port
from tests.kafka_message import Message


# -- the rule ---------------------------------------------------------------------------------------
def test_a_pair_goes_local_only_when_its_bank_applies_its_own_marker():
    h = Handover()
    assert h.state == TOPIC and not h.skips() and h.applied(b"t1") is None
    h.mark(b"t1")
    h.held.extend(["a", "b"])
    assert h.state == WAITING and not h.skips()  # what lies before the marker is applied from the topic
    assert h.applied(None) is None  # a message of the pair without a marker
    assert h.applied(b"another worker's") is None  # a previous owner's marker (same message keys)
    assert h.state == WAITING
    assert h.applied(b"t1") == ["a", "b"] and h.state == LOCAL and h.held == []
    assert h.skips()  # from here every message of the pair on the topic is a copy
    assert h.applied(b"t1") is None  # local is final (until ownership changes)


def test_a_new_marker_replaces_the_old_one():
    h = Handover()
    h.mark(b"old")
    h.held.append("x")
    h.mark(b"new")
    assert h.held == [] and h.applied(b"old") is None and h.applied(b"new") == []


def test_a_heartbeat_copy_is_not_applied_after_its_original_was_handed_over():
    buf = WatermarkBuffer(2, 1000, 10**9, now=0.0)
    buf.note(0, 100.0, False, 1.0, said_at=50.0, local=True)
    buf.note(0, 100.0, True, 1.1, said_at=50.0)  # a copy (or anything older) of source 0: skipped
    assert not buf.marks[0].idle
    buf.note(0, 120.0, True, 1.2, said_at=50.05)  # later: applied
    assert buf.marks[0].idle and buf.marks[0].progress == 120.0
    restored = WatermarkBuffer.from_state(restore_state(snapshot_state(buf.to_state())), 2, 1000, 10**9, now=5.0)
    restored.note(0, 130.0, False, 5.1, said_at=50.0)
    assert restored.marks[0].idle  # the rule survives a checkpoint (a rewind reads the copies again)


# -- the repartitioner on a worker ------------------------------------------------------------------
@pytest.fixture
def worker():
    data = {"models": {"m": {"task": "classification", "features": {"x": "numeric"}}},
            "kafka": {"bootstrap": f"127.0.0.1:{free_port()}", "partitions": 1, "group_id": "repartition-test"}}
    w = Worker(parse_settings(data, env={}), obs_partitions=2, source_partitions=1)
    assert w.repartition.enabled  # exactly-once, the default
    w.topic = {0: [], 1: []}  # what was written to each observations partition, as messages
    obs = w.topics.observations

    def produce(topic, key, value, partition=-1, headers=None, timestamp=0):
        if topic == obs:
            log = w.topic[partition]
            log.append(Message(topic, partition, len(log), key, value, timestamp, headers))
    w._produce = produce
    now = w.clock()
    w.intakes[0] = w.restorer.fresh_partition("intake", now)
    for q in (0, 1):
        w.banks[q] = w.restorer.fresh_partition("bank", now)
        w.banks[q].positions[obs] = 0
    yield w
    w.consumer.close()


def rec(offset: int) -> list:
    return to_wire(offset, 0, InferenceObservation("m", "__all__", f"p{offset}", 1000.0 + offset, 1, None,
                                                   {"x": 1.0}))


def read(w, q: int) -> None:
    """The bank of q reads what is on its partition past its position."""
    bp = w.banks[q]
    pos = bp.positions[w.topics.observations]
    for msg in w.topic[q][pos:]:
        w._apply(msg)


def heartbeat(w) -> None:
    w.event_time._heartbeat(w.event_time.clock())


def written(w, q: int) -> list[int]:
    return [r[0] for m in w.topic[q] for r in orjson.loads(m.value())[1]]


def test_after_the_marker_the_bank_gets_observations_in_memory_and_skips_their_copies(worker):
    w, rp = worker, worker.repartition
    src = w.intakes[0].epoch + "i"
    bank = w.banks[0]
    rp.observations(src, 0, 0, [rec(1)], 500)
    heartbeat(w)  # both ends ours: this heartbeat to each bank is the pair's marker
    assert [marker_of(m.headers()) is not None for m in w.topic[0]] == [False, True]
    rp.observations(src, 0, 0, [rec(2)], 500)
    assert src not in bank.seen  # held: the bank has not reached record 1 on the topic yet
    read(w, 0)  # record 1, the marker (the pair goes local: record 2 into the buffer), record 2's copy
    assert rp.pairs[(0, 0)].state == LOCAL
    assert bank.seen[src] == (2, 0) and bank.buffer.held == 2 and w.stats.deduplicated == 0
    rp.observations(src, 0, 0, [rec(3)], 500)
    assert bank.seen[src] == (3, 0) and bank.buffer.held == 3  # at once, in memory
    read(w, 0)  # its copy: skipped, not decoded
    assert bank.buffer.held == 3 and w.stats.deduplicated == 0
    assert written(w, 0) == [1, 2, 3]  # the topic holds everything, as before: the partition's history
    assert bank.positions[w.topics.observations] == len(w.topic[0])


def test_without_its_marker_applied_a_pair_stays_on_the_topic(worker):
    w, rp = worker, worker.repartition
    src = w.intakes[0].epoch + "i"
    heartbeat(w)
    marker = w.topic[0][-1]
    # Another worker's marker for the same source (a restored intake keeps its epoch): not ours.
    w.topic[0][-1] = Message(marker.topic(), 0, marker.offset(), marker.key(), marker.value(), marker.timestamp()[1],
                             [h for h in marker.headers() if h[0] != HANDOVER_HEADER]
                             + [(HANDOVER_HEADER, b"someone-else-0")])
    read(w, 0)
    rp.observations(src, 0, 0, [rec(1)], 500)
    assert rp.pairs[(0, 0)].state == WAITING and src not in w.banks[0].seen
    read(w, 0)
    assert w.banks[0].seen[src] == (1, 0)  # applied from the topic
    rp.observations(src, 0, 1, [rec(2)], 500)  # the other bank: its marker was never read
    assert src not in w.banks[1].seen


def test_after_a_change_of_ownership_the_copies_are_read_but_not_applied_twice(worker):
    w, rp = worker, worker.repartition
    src = w.intakes[0].epoch + "i"
    bank = w.banks[0]
    heartbeat(w)
    read(w, 0)  # the marker: local
    rp.observations(src, 0, 0, [rec(1), rec(2)], 1)
    heartbeat(w)
    assert bank.buffer.held == 2
    w.stats.ownership += 1  # a rebalance or a rewind, before the bank reached the copies
    read(w, 0)
    assert bank.buffer.held == 2 and w.stats.deduplicated == 2  # the records' copies: skipped as replays
    rp.observations(src, 0, 0, [rec(3)], 500)
    assert rp.pairs[(0, 0)].state == TOPIC and bank.seen[src] == (2, 0)  # the topic again
    read(w, 0)
    assert bank.seen[src] == (3, 0)


def test_without_exactly_once_everything_goes_through_the_topic(worker):
    w, rp = worker, worker.repartition
    rp.enabled = False  # what Worker gives a worker with worker.exactly_once: false
    src = w.intakes[0].epoch + "i"
    heartbeat(w)
    rp.observations(src, 0, 0, [rec(1)], 500)
    assert not rp.pairs and not rp.watching and all(marker_of(m.headers()) is None for m in w.topic[0])
    read(w, 0)
    assert w.banks[0].seen[src] == (1, 0)
