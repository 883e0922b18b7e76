"""The worker's checkpoint rounds: when one is due, what it writes, and the order in which a
round makes outputs, partition snapshots and input offsets durable (`Checkpointer._write`, the
one place that order is decided, as quix-streams' `Checkpoint.commit()`); and what a failed round
does: with exactly-once an aborted transaction rewinds every owned partition to its last
committed checkpoint.

The pieces it drives live elsewhere: the cadence and the store in stream/checkpoint.py, the
transaction calls in stream/transactions.py, the restore of a partition state in the worker.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException

from driftline.stream.checkpoint import MAX_CHECKPOINT_AGE, CheckpointCadence, CheckpointError, CheckpointStore
from driftline.stream.partitions import PartitionKey
from driftline.stream.transactions import (
    BrokerAway,
    TransactionAborted,
    TransactionFatal,
    TransactionStuck,
    Transactions,
)

log = logging.getLogger("driftline.worker")


class Checkpointer:
    """The checkpoint round of one worker, with exactly-once (`txn`) or without (at-least-once:
    checkpoints, then the consumer's offset commit every `commit_interval`).

    It owns the cadence, the store, the transactions and `doomed` (why the open transaction
    cannot commit); it reads the worker's partition tables, clients and flags through `worker`
    (as EventTimeDriver does), and sets `worker.fatal` for what must stop the process and
    `worker.producer` when a stuck transactional producer is replaced."""

    def __init__(self, worker, cadence: CheckpointCadence, store: CheckpointStore, txn: Transactions | None,
                 commit_interval: float):
        self.w = worker
        self.states = worker.states  # stream/partitions.py
        self.cadence = cadence
        self.store = store
        self.txn = txn
        self.commit_interval = commit_interval
        self.doomed: str | None = None  # why the open transaction cannot commit (a failed delivery, ...)
        self._next_commit = 0.0
        self.finished = False  # the shutdown's last round is done: nothing is checkpointed after it

    # -- the loop's calls -------------------------------------------------------------------------
    def start(self) -> None:
        """Before the first poll: register the transactional id and open the first transaction."""
        if self.txn is None:
            return
        try:
            self.txn.init(self.w.stopping.is_set)
            self.txn.begin()
        except TransactionFatal as exc:
            self.w.fatal = str(exc)

    def due(self, now: float) -> bool:
        return self.cadence.due(now)

    def commit_if_due(self, now: float) -> None:
        """At-least-once: processed positions are committed every `commit_interval` (lag, and
        what a successor replays); with exactly-once offsets move only inside transactions."""
        if self.txn is None and now >= self._next_commit:
            self.commit_offsets(asynchronous=True)
            self._next_commit = now + self.commit_interval

    def doom(self, why: str) -> None:
        """The open transaction cannot commit (the first reason is kept): the loop rewinds."""
        self.doomed = self.doomed or why

    def skip_round(self, now: float) -> None:
        """Every broker is away: a round that is due counts as failed, and none is attempted."""
        if self.cadence.due(now):
            w = self.w
            w.stats.checkpoints["failed"] += 1
            log.warning("checkpoint round skipped: every broker is unreachable (%d partitions hold their state)",
                        len(self.states))
            self.cadence.done(now, 0.0)

    # -- the round --------------------------------------------------------------------------------
    def round(self, force: bool = False, only: set[PartitionKey] | None = None, timeout: float = 30.0,
              rewind: bool = True) -> bool:
        """One checkpoint round: the snapshots of every changed state (`force`: of every state,
        or of those in `only`), then `_write`. A failed round is retried by the next; with
        exactly-once an aborted transaction rewinds the owned partitions to their last commit
        (rewind=False: a rebalance callback, whose caller drops the states concerned). Returns
        whether everything owned is now committed."""
        w = self.w
        started = time.monotonic()
        now = w.clock()
        if self.doomed is not None:  # only with exactly-once
            self._failed(self.doomed, rewind)
            return False
        items, owners = self._snapshots(force, only, now)
        if not items:  # nothing read since the last round, so nothing written either
            self._checkpointed(started, False)
            return True
        try:
            self._write(items, timeout)
        except TransactionAborted as exc:
            w.stats.checkpoints["failed"] += 1
            self._failed(str(exc), rewind)
            return False
        except TransactionFatal as exc:
            w.stats.checkpoints["failed"] += 1
            w.fatal = str(exc)
            return False
        except (CheckpointError, KafkaException, SystemError) as exc:
            if self.txn is not None and not isinstance(exc, CheckpointError):
                # A client error inside a transaction is not a retriable write: the producer's
                # fatal or abortable state (rewound from the loop), or it stops the worker.
                if not self.producer_failed(exc, "checkpoint"):
                    raise
                w.stats.checkpoints["failed"] += 1
                self.cadence.done(time.monotonic(), 0.0)
                return False
            if isinstance(exc, SystemError):
                raise
            w.stats.checkpoints["failed"] += 1
            log.warning("checkpoint of %d partitions failed (will retry): %s", len(items), exc)
            # With exactly-once the records were not delivered in time (broker away): the
            # transaction stays open and the next round writes newer snapshots into it; it
            # aborts if it outlives the transaction timeout.
            if self.txn is not None and (not rewind or time.monotonic() - self.txn.started > self.txn.timeout):
                self._failed(f"transaction open longer than {self.txn.timeout:.0f} s: {exc}"
                             if rewind else str(exc), rewind)
            self.cadence.done(time.monotonic(), 0.0)
            return False
        for part in owners:
            part.dirty = False
            part.checkpointed_at = now
        w.stats.checkpoints["ok"] += 1
        w.stats.checkpoint_bytes = sum(len(b) for _, b in items)
        if self.txn is not None:
            self._begin()
        self._checkpointed(started, True)
        return True

    def _write(self, items: list[tuple[str, bytes]], timeout: float) -> None:
        """The steps of a round, in the only order that keeps a checkpoint true to what it claims:

        1. The outputs. Every record produced from the input a checkpoint covers must be
           durable before the checkpoint is, or a successor resuming from it would never
           produce them again. Without a transaction: a flush of the worker's producer (a
           failed delivery has set `fatal`: the state holds that record's effect, so it must not
           be checkpointed). With one, the outputs travel in the same transaction as the
           snapshots, so they become visible together or never; the store's flush of that same
           producer delivers them (a failed delivery dooms the transaction: step 3 refuses).
        2. The snapshots: chunks, then the manifests naming them (CheckpointStore.write).
        3. The input offsets, last: a committed offset ahead of a checkpoint would make a
           successor skip input whose effect the restored state does not hold. With
           exactly-once they join the transaction, whose commit makes outputs, snapshots and
           offsets visible at once; without, an asynchronous consumer commit (one that is lost
           only means more to replay, which the banks' de-duplication recognises)."""
        w = self.w
        if self.txn is None:
            left = w.producer.flush(timeout)
            if left:
                raise CheckpointError(f"{left} records not delivered within {timeout:.0f} s")
            if w.fatal is not None:
                raise CheckpointError(w.fatal)
        self.store.write(items, timeout=timeout)
        if self.txn is None:
            self.commit_offsets(asynchronous=True)
            return
        if self.doomed is not None:
            raise TransactionAborted(self.doomed)
        self.txn.commit(self.states.positions(), w.stopping.is_set, timeout)

    def _snapshots(self, force: bool, only: set[PartitionKey] | None, now: float) -> tuple[list, list]:
        """(key, snapshot) of each state the round writes, and those states: every changed one,
        every one unwritten for MAX_CHECKPOINT_AGE (chunk retention must never outlive a
        manifest), and with `force` every one of `only` (all if None). With exactly-once a
        changed state outside `only` joins too: the transaction holds the outputs of all."""
        states = self.states
        items, owners = [], []
        for key, part in states.items():
            chosen = only is None or key in only
            if not chosen and self.txn is None:
                continue
            if (force and chosen) or part.dirty or now - part.checkpointed_at > MAX_CHECKPOINT_AGE:
                items.append((states.name(key), part.snapshot()))  # named as on the wire
                owners.append(part)
        return items, owners

    def _checkpointed(self, started: float, wrote: bool) -> None:
        """A successful round (or one with nothing to write): the age restarts, the next is due."""
        stats = self.w.stats
        now = time.monotonic()
        took = now - started
        if wrote:
            stats.checkpoint_seconds = took
        stats.checkpoint_ok_at = now
        self.cadence.done(now, took)

    # -- rebalances and shutdown ------------------------------------------------------------------
    def handover(self, keys: set[PartitionKey]) -> None:
        """The round at a revoke, before the states of `keys` go: still the old generation, so
        this commit is accepted (a later one would be fenced). Not after the shutdown's last
        round (`final`): the consumer's close revokes every partition, and that round has already
        committed them (with exactly-once no transaction is open any more: writing would fail)."""
        if self.finished:
            return
        self.round(force=True, only=keys, timeout=30.0, rewind=False)
        self.commit_offsets(asynchronous=False)

    def lost(self) -> None:
        """Partitions were lost: the open transaction's offsets would be refused (an old
        generation): abort it, and rewind any state that stays ours, since it holds effects of
        the aborted records."""
        if self.txn is None:
            return
        self.abort_open(bounded=False)
        self._begin()
        if len(self.states) or self.txn.open:
            self.doomed = "partitions lost"

    def final(self) -> None:
        """At shutdown: a last round, bounded (with the broker away a stop must not hang: the
        successor replays from the previous checkpoint instead); then the offsets, or an abort
        of whatever that round did not commit."""
        if self.w.fatal is None:
            try:
                self.round(force=True, timeout=10.0)
            except Exception as exc:
                log.warning("final checkpoint failed: %s", exc)
        if self.txn is None:
            self.commit_offsets(asynchronous=False)
        else:
            self.abort_open()
        self.finished = True

    def close(self) -> None:
        self.store.close()

    # -- offsets ----------------------------------------------------------------------------------
    def commit_offsets(self, asynchronous: bool) -> None:
        """At-least-once: commit the processed positions (with exactly-once offsets move only
        inside transactions, with the checkpoints they belong to)."""
        if self.txn is not None:
            return
        offsets = self.states.positions()
        if not offsets:
            return
        try:
            self.w.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed: %s", exc)

    # -- failure: abort and rewind (exactly-once) -------------------------------------------------
    def producer_failed(self, exc: Exception, what: str) -> bool:
        """`producer_unusable` for an exception a call on the transactional producer raised.
        confluent-kafka turns a fatal error raised in its error callback during flush() into a
        SystemError ("exception <class 'str'> is not a BaseException subclass": seen on the
        fenced producer's first flush after a pause); the producer is then as unusable as
        the KafkaException meant to say. Replacing it and rewinding is safe whatever the cause:
        nothing of the open transaction commits."""
        if self.txn is None:
            return False
        if isinstance(exc, SystemError):
            if self.doomed is None:
                log.warning("%s: the transactional producer raised %r (a fatal error, confluent-kafka's way): "
                            "rewinding with a new one", what, exc)
            self.txn.expired()
            self.doom(f"{what}: {exc}")
            return True
        return isinstance(exc, KafkaException) and self.producer_unusable(exc.args[0], what)

    def producer_unusable(self, err: KafkaError, what: str) -> bool:
        """A call on the transactional producer raised `err`. In librdkafka's fatal state (the
        broker aborted a transaction that outlived `transaction_timeout`: fenced, see
        TransactionExpired) it refuses every call: its transaction is gone, the state rewinds to
        the last commit and a new producer carries on (`rewind` -> `_begin`). In an abortable
        state (_STATE: e.g. records timed out while the process was paused, "requires epoch
        bump") it refuses to produce until the transaction is aborted: the rewind aborts it on
        the same producer. False: not such an error, or no transactions (the caller raises)."""
        if self.txn is None:
            return False
        unusable = err.fatal() or err.code() == KafkaError._FATAL
        if not unusable and err.code() != KafkaError._STATE:
            return False
        if self.doomed is None:
            log.warning("%s: the transactional producer %s (%s): rewinding%s", what,
                        "is unusable" if unusable else "must abort its transaction", err.str(),
                        " with a new one" if unusable else "")
        if unusable:
            self.txn.expired()
        self.doom(f"{what}: {err.str()}")
        return True

    def _failed(self, why: str, rewind: bool) -> None:
        if rewind:
            self.rewind(why)
            return
        # A revoke: the caller drops the revoked states; any others rewind from the loop.
        log.warning("transaction failed at a revoke (%s): the revoked partitions restart from their last checkpoint",
                    why)
        self.abort_open(bounded=False)
        # An abort still pending (broker away) must happen before anything commits again.
        self.doomed = why if self.txn.open else None
        self._begin()
        for _, part in self.states.items():
            part.dirty = True  # none of them may be parked: their state is ahead of the commit

    def _begin(self) -> None:
        w = self.w
        try:
            if self.txn.stuck:
                # librdkafka will never finish a call it started (or refused the abort): carry
                # on with a new producer (the old one's transaction expires at the broker;
                # nothing of it is ever read).
                log.warning("the transactional producer is stuck: replacing it")
                w.producer = self.txn.replace_producer(w.stopping.is_set)
                self.store.use_producer(w.producer)
            self.txn.begin()
        except TransactionAborted as exc:  # broker away again, or the new producer's init stuck
            log.warning("no transaction begun yet (%s): retried when a broker answers", exc)
            self.doomed = self.doomed or str(exc)
        except (KafkaException, TransactionFatal) as exc:
            w.fatal = f"begin transaction: {exc}"

    def abort_open(self, bounded: bool = True) -> None:
        try:
            # bounded: one attempt (at shutdown; the coordinator aborts it after its timeout)
            self.txn.abort((lambda: True) if bounded else self.w.stopping.is_set)
        except BrokerAway:
            pass  # still open: the loop aborts it when a broker answers (self.doomed)
        except (TransactionFatal, TransactionAborted) as exc:
            log.warning("%s", exc)

    def rewind(self, why: str) -> None:
        """Abort the open transaction and reload every owned partition from its last committed
        checkpoint, reading again from the checkpoint's offsets (the partitions stay ours)."""
        with self.w.lock:
            self.rewind_locked(why)

    def rewind_locked(self, why: str, new_producer: bool = False) -> None:
        w = self.w
        self.doomed = why  # until the rewind is done, nothing more is produced
        if w.broker.down:
            return  # the loop rewinds when a broker answers (OutageHold.ride_out, stream/outage.py)
        try:
            self.txn.abort(w.stopping.is_set)
            if new_producer:
                # After a broker restart librdkafka's next send_offsets_to_transaction on the
                # same producer blocked for good in the outage test (librdkafka issues 5456 and
                # 5511); a new producer (new transactional id) finds the coordinator afresh.
                self.txn.stuck = True
        except BrokerAway:
            return
        except TransactionStuck as exc:
            log.warning("%s: the producer is replaced", exc)
        except TransactionFatal as exc:
            # After an outage the coordinator may have aborted the transaction itself (its
            # timeout passed) and bumped the producer's epoch: a new producer carries on.
            log.warning("abort refused (%s): the producer is replaced", exc)
            self.txn.stuck = True
            self.txn.open = False
        log.warning("transaction aborted (%s): rewinding %d partitions to their last checkpoint",
                    why, len(self.states))
        w.stats.rewinds += 1
        w.stats.ownership += 1
        consumer = w.consumer
        assigned = [tp for tp in consumer.assignment()]
        before = {(tp.topic, tp.partition): off for tp in self.states.positions() for off in [tp.offset]}
        self.states.clear()
        for tp in assigned:
            w.ends.forget(tp.topic, tp.partition)
        try:
            if w.restorer.load(assigned) is None:
                return
        except KafkaException as exc:  # committed offsets not answered (the coordinator loading)
            log.warning("rewind: %s; retried", exc)
            return
        for tp in assigned:
            try:
                consumer.seek(tp)
            except KafkaException:  # not fetching yet: an assignment sets the positions instead
                consumer.assign(assigned)
            done = before.get((tp.topic, tp.partition), tp.offset)
            if done > tp.offset:
                w.stats.replayed += done - tp.offset
        self.doomed = None
        w.event_time.assigned(assigned)
        self._begin()
