"""The checkpoint round's order and its failure paths (stream/checkpointer.py), without a broker.

The clients are small recording stand-ins: these tests pin down in which order the round calls
them and what it does when one fails. That the calls do what they claim against a real broker is
what tests/integration/test_checkpoint.py and test_fault_tolerance.py check.
"""
from __future__ import annotations

import threading
import types

import pytest
from confluent_kafka import KafkaError, KafkaException

from driftline.stream.checkpoint import CheckpointCadence, CheckpointError
from driftline.stream.checkpointer import Checkpointer
from driftline.stream.partitions import INTAKE, PartitionKey, PartitionStates
from driftline.stream.stats import WorkerStats
from driftline.stream.transactions import TransactionAborted, Transactions


class Part:
    """A partition state as the round sees it: positions, a snapshot, the dirty mark."""

    def __init__(self, positions: dict[str, int], dirty: bool = True):
        self.positions = positions
        self.dirty = dirty
        self.checkpointed_at = 0.0

    def snapshot(self) -> bytes:
        return repr(sorted(self.positions.items())).encode()


class Producer:
    def __init__(self, calls: list, left: int = 0):
        self.calls, self.left = calls, left

    def flush(self, timeout):
        self.calls.append("producer.flush")
        return self.left


class Store:
    def __init__(self, calls: list, fail: Exception | None = None, on_write=None):
        self.calls, self.fail, self.on_write = calls, fail, on_write
        self.written: list = []

    def write(self, items, timeout=30.0):
        self.calls.append("store.write")
        if self.on_write is not None:
            self.on_write()
        if self.fail is not None:
            raise self.fail
        self.written.append(list(items))


class Consumer:
    def __init__(self, calls: list):
        self.calls = calls
        self.committed: list = []

    def commit(self, offsets, asynchronous):
        self.calls.append("consumer.commit")
        self.committed.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))


class Txn:
    timeout = 60.0

    def __init__(self, calls: list):
        self.calls = calls
        self.open = True
        self.started = 1e18  # the open transaction is young
        self.stuck = False
        self.offsets: list = []

    def commit(self, offsets, stopping, timeout):
        self.calls.append("txn.commit")
        self.offsets.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))
        self.open = False

    def begin(self):
        self.calls.append("txn.begin")
        self.open = True

    def abort(self, stopping):
        self.calls.append("txn.abort")
        self.open = False


def checkpointer(exactly_once: bool, calls: list, left: int = 0, store: Store | None = None):
    states = PartitionStates("g", "observations")
    states.intakes[0] = Part({"inferences": 5, "labels": 3})
    states.banks[2] = Part({"observations": 7}, dirty=False)
    worker = types.SimpleNamespace(
        states=states, intakes=states.intakes, banks=states.banks, clock=lambda: 1000.0, stats=WorkerStats(),
        producer=Producer(calls, left), consumer=Consumer(calls), fatal=None, stopping=threading.Event(),
        lock=threading.RLock())
    store = store or Store(calls)
    txn = Txn(calls) if exactly_once else None
    return Checkpointer(worker, CheckpointCadence(1.0), store, txn, commit_interval=5.0), worker


def test_at_least_once_flushes_outputs_then_writes_snapshots_then_commits_offsets():
    calls: list = []
    ck, w = checkpointer(False, calls)
    assert ck.round() is True
    assert calls == ["producer.flush", "store.write", "consumer.commit"]
    assert [key for key, _ in ck.store.written[0]] == ["g/intake/0"]  # the clean bank is not written
    assert w.consumer.committed == [[("inferences", 0, 5), ("labels", 0, 3), ("observations", 2, 7)]]
    assert not w.intakes[0].dirty and w.intakes[0].checkpointed_at == 1000.0
    assert w.stats.checkpoints == {"ok": 1, "failed": 0}


def test_at_least_once_undelivered_outputs_write_no_checkpoint():
    calls: list = []
    ck, w = checkpointer(False, calls, left=3)
    assert ck.round() is False
    assert calls == ["producer.flush"]  # neither snapshots nor offsets past undelivered outputs
    assert w.intakes[0].dirty
    assert w.stats.checkpoints == {"ok": 0, "failed": 1}


def test_at_least_once_after_a_failed_delivery_writes_no_checkpoint():
    calls: list = []
    ck, w = checkpointer(False, calls)
    w.fatal = "delivery to drift-events failed"
    ck.round()
    assert calls == ["producer.flush"]
    assert w.stats.checkpoints["failed"] == 1


def test_at_least_once_a_failed_write_commits_no_offsets():
    calls: list = []
    ck, w = checkpointer(False, calls, store=Store(calls, fail=CheckpointError("not delivered")))
    assert ck.round() is False
    assert calls == ["producer.flush", "store.write"]
    assert w.intakes[0].dirty


def test_exactly_once_writes_snapshots_then_commits_them_with_the_offsets_then_begins_the_next():
    calls: list = []
    ck, w = checkpointer(True, calls)
    assert ck.round() is True
    # The outputs are flushed by the store's flush of the same transactional producer.
    assert calls == ["store.write", "txn.commit", "txn.begin"]
    assert ck.txn.offsets == [[("inferences", 0, 5), ("labels", 0, 3), ("observations", 2, 7)]]
    assert w.consumer.committed == []  # offsets move only inside the transaction
    assert not w.intakes[0].dirty


def test_exactly_once_a_delivery_failing_during_the_write_keeps_the_transaction_from_committing():
    calls: list = []
    ck, w = checkpointer(True, calls)
    ck.store.on_write = lambda: ck.doom("delivery to observations failed")
    assert ck.round(rewind=False) is False
    assert "txn.commit" not in calls
    assert calls == ["store.write", "txn.abort", "txn.begin"]
    assert ck.doomed is None  # aborted: the next transaction may commit
    assert w.intakes[0].dirty and w.banks[2].dirty  # ahead of the commit: none may be parked
    assert w.stats.checkpoints["failed"] == 1


def test_exactly_once_a_doomed_transaction_writes_nothing():
    calls: list = []
    ck, _ = checkpointer(True, calls)
    ck.doom("partitions lost")
    ck.doom("a later reason")
    assert ck.doomed == "partitions lost"  # the first reason is kept
    ck.round(rewind=False)
    assert "store.write" not in calls and "txn.commit" not in calls


@pytest.mark.parametrize("exactly_once, written", [(False, ["g/intake/0"]), (True, ["g/intake/0", "g/bank/2"])])
def test_a_forced_round_of_some_keys(exactly_once, written):
    """`only` limits a forced round; with a transaction every changed state joins it anyway
    (the transaction holds the outputs of all of them)."""
    calls: list = []
    ck, w = checkpointer(exactly_once, calls)
    w.intakes[0].dirty = False
    w.banks[2].dirty = True
    ck.round(force=True, only={PartitionKey(INTAKE, 0)})
    assert sorted(key for key, _ in ck.store.written[0]) == sorted(written)


def test_nothing_changed_writes_nothing_and_counts_a_round():
    calls: list = []
    ck, w = checkpointer(True, calls)
    w.intakes[0].dirty = False
    assert ck.round() is True
    assert calls == []
    assert not ck.due(ck.cadence.last + 0.5)  # the next round waits for the interval


def test_at_least_once_offsets_are_committed_every_commit_interval():
    calls: list = []
    ck, w = checkpointer(False, calls)
    ck.commit_if_due(100.0)
    ck.commit_if_due(104.0)
    ck.commit_if_due(105.0)
    assert calls == ["consumer.commit", "consumer.commit"]
    calls.clear()
    ck, w = checkpointer(True, calls)
    ck.commit_if_due(100.0)
    assert calls == []


@pytest.mark.parametrize("exactly_once", [False, True])
def test_the_revoke_of_the_consumers_close_after_the_last_round_writes_nothing(exactly_once):
    """Shutdown: the last round commits every partition, then the consumer's close revokes them
    all. Another forced round there wrote snapshots with no transaction open (librdkafka:
    "Erroneous state", logged at every stop) or, at-least-once, wrote everything twice."""
    calls: list = []
    ck, w = checkpointer(exactly_once, calls)
    ck.final()
    assert "store.write" in calls
    calls.clear()
    ck.handover({"g/intake/0", "g/bank/2"})
    assert calls == []


def test_a_producer_fenced_or_in_an_abortable_state_dooms_the_transaction_instead_of_stopping():
    """What librdkafka raises from produce/poll after the broker expired the transaction (a
    process paused past `transaction_timeout`): a fatal error (fenced) means a new producer, an
    abortable one (_STATE) an abort on the same producer; both rewind. Other errors, and any
    error without transactions, are the caller's to raise."""
    from confluent_kafka import KafkaError

    def real_txn(ck):  # Transactions' own bookkeeping (no call reaches a producer here)
        ck.txn = Transactions(None, None, 4.0)
        ck.txn.open = True
        return ck

    calls: list = []
    ck = real_txn(checkpointer(True, calls)[0])
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    assert ck.producer_unusable(fenced, "producer poll") is True
    assert ck.doomed.startswith("producer poll: ") and ck.txn.stuck  # replaced at the rewind's begin
    assert not ck.txn.open

    ck = real_txn(checkpointer(True, calls)[0])
    assert ck.producer_unusable(KafkaError(KafkaError._STATE, "Erroneous state"), "producing to obs") is True
    assert ck.doomed == "producing to obs: Erroneous state" and not ck.txn.stuck  # the abort clears it

    ck, _ = checkpointer(True, calls)
    assert ck.producer_unusable(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"), "producing") is False
    assert ck.doomed is None
    ck, _ = checkpointer(False, calls)
    assert ck.producer_unusable(fenced, "producer poll") is False


def test_a_producer_call_failing_inside_the_round_rewinds_with_transactions_and_stops_without():
    """confluent-kafka raises a SystemError from flush() when librdkafka reports a fatal error
    (fenced) during it; with exactly-once the round fails and the loop rewinds with a new
    producer; without, the error is raised as before (crash-only)."""
    calls: list = []
    mangled = SystemError("_PyErr_SetObject: exception <class 'str'> is not a BaseException subclass")
    ck, w = checkpointer(True, calls, store=Store(calls, fail=mangled))
    ck.txn = Transactions(None, None, 4.0)
    ck.txn.open = True
    assert ck.round() is False
    assert ck.doomed.startswith("checkpoint: ") and ck.txn.stuck
    assert w.intakes[0].dirty and w.stats.checkpoints["failed"] == 1

    ck, _ = checkpointer(True, calls, store=Store(calls, fail=KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))))
    with pytest.raises(KafkaException):
        ck.round()  # not a state of the producer: raised, as before

    ck, _ = checkpointer(False, calls, store=Store(calls, fail=mangled))
    with pytest.raises(SystemError):
        ck.round()
