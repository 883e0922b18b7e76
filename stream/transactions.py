"""One Kafka transaction at a time for the worker's read-process-write loop (exactly-once).

Everything the worker writes between two checkpoints (observations, dead letters, drift events,
and the checkpoint chunks and manifests) goes into one transaction, together with the input
offsets it covers (`send_offsets_to_transaction` with the consumer's group metadata). Either
all of it becomes visible to read_committed readers, or none of it does.

Zombies are fenced by the group generation (KIP-447): a worker that lost its partitions sends
offsets with a generation the group coordinator no longer accepts, so its transaction cannot
commit, and its checkpoints with it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

log = logging.getLogger("driftline.transactions")


class TransactionAborted(RuntimeError):
    """The open transaction cannot commit: it was aborted; state must rewind to the last commit."""


class TransactionFatal(RuntimeError):
    """The producer is fenced or broken for good: the process must stop (crash-only)."""


class TransactionStuck(TransactionAborted):
    """A transactional call did not return long after its timeout (librdkafka issues #5456 and
    #5511: send_offsets_to_transaction can block for good after the group coordinator went away,
    e.g. a broker restart). The producer is abandoned (its open transaction expires at the
    broker); the caller builds a new one and rewinds."""


class BrokerAway(TransactionAborted):
    """The cluster is known to be unreachable: no transactional call is made (librdkafka can block
    in one for good when the coordinator goes away mid-call). The open transaction stays open
    until the broker is back; then the worker aborts it and rewinds (worker.py)."""


class TransactionExpired(TransactionAborted):
    """The coordinator ended the transaction and bumped the producer's epoch (librdkafka: fenced
    by a newer instance). Every worker process has a transactional id of its own
    (clients.transactional_id), so no other instance can fence it: the transaction outlived
    `transaction.timeout.ms` (a paused or starved process) and the broker aborted it. The
    producer cannot be used again; the caller builds a new one and rewinds to the last commit,
    as for any abort. A worker that lost its partitions is still fenced by the group
    generation (KIP-447), which this does not touch."""


# librdkafka's codes for a producer whose epoch the coordinator bumped
FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


def fenced(err: KafkaError) -> bool:
    return err.code() in FENCED_CODES


STUCK_GRACE = 15.0  # seconds past a call's own timeout before it counts as stuck
STEP = 10.0  # seconds one transactional call may take before it is retried (or counted stuck)


class BrokerWatch:
    """Whether the cluster is known to be away, from librdkafka's own verdict: `error_cb` of the
    worker's clients reports _ALL_BROKERS_DOWN when no broker connection is up. It is back when
    a metadata request answers (`probe`, at most once per `every` seconds, bounded)."""

    def __init__(self, every: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self.down_since: float | None = None
        self.outages = 0  # outages seen by this process
        self.longest = 0.0  # seconds, the longest outage that ended
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's `error_cb` (called from poll/consume in the loop's thread)."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self.down_since is None:
            self.down_since = self.clock()
            self.outages += 1
            self._next_probe = self.down_since + self.every
            log.warning("every broker is unreachable: transactions wait, input is held until one is back")

    def probe(self, client) -> bool:
        """While down: True once a broker answers a metadata request (the outage is over)."""
        now = self.clock()
        if self.down_since is None:
            return True
        if now < self._next_probe:
            return False
        self._next_probe = now + self.every
        try:
            client.list_topics(timeout=1.0)
        except KafkaException:
            return False
        took = self.clock() - self.down_since
        self.longest = max(self.longest, took)
        log.warning("a broker answers again after %.1f s", took)
        self.down_since = None
        return True


class Transactions:
    def __init__(self, producer: Producer, consumer: Consumer, timeout: float,
                 new_producer: Callable[[], Producer] | None = None, down: Callable[[], bool] = lambda: False):
        self.producer = producer
        self.down = down  # the cluster is known to be away: make no call (BrokerAway)
        self.new_producer = new_producer  # builds a replacement for a stuck producer
        self.consumer = consumer
        self.timeout = timeout  # the transaction timeout: the longest a commit may keep retrying
        self.open = False
        self.started = 0.0  # monotonic time the open transaction began
        self.commits = 0
        self.aborts = 0
        self.stuck = False  # a call never returned: the producer must be replaced

    def init(self, stopping: Callable[[], bool]) -> None:
        """Register the transactional id (aborting what a predecessor with the same id left open)."""
        self._retry("init", lambda t: self.producer.init_transactions(t), stopping, deadline=None)

    def begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True
            self.started = time.monotonic()

    def commit(self, offsets: list[TopicPartition], stopping: Callable[[], bool], timeout: float) -> None:
        """Add the offsets and commit. Retriable failures (broker away) are retried until the
        transaction timeout; an abortable one aborts (TransactionAborted); fencing is fatal."""
        deadline = self.started + self.timeout
        if offsets:
            meta = self.consumer.consumer_group_metadata()
            self._retry("send offsets", lambda t: self.producer.send_offsets_to_transaction(offsets, meta, t),
                        stopping, deadline, step=min(timeout, STEP))
        self._retry("commit", lambda t: self.producer.commit_transaction(t), stopping, deadline,
                    step=min(timeout, STEP))
        self.open = False
        self.commits += 1

    def abort(self, stopping: Callable[[], bool]) -> None:
        if not self.open or self.stuck:
            return
        # Past the transaction timeout the broker aborts the transaction itself. An abort that
        # cannot get through by then gives up (TransactionFatal: the caller replaces the
        # producer): after a broker restart librdkafka's request to the coordinator stayed in its
        # queue for minutes ("TxnCoordinator: 1 out-queue"), holding the loop (the outage test).
        deadline = max(self.started + self.timeout, time.monotonic() + STEP)
        try:
            self._retry("abort", lambda t: self.producer.abort_transaction(t), stopping, deadline=deadline)
        except BrokerAway:
            raise  # still open: aborted when the broker is back
        except BaseException:
            if self.open:
                self.open = False
                self.aborts += 1
            raise
        if self.open:  # (not counted twice when the broker had aborted it: expired())
            self.open = False
            self.aborts += 1

    def expired(self) -> None:
        """The broker aborted the open transaction (TransactionExpired): nothing is left to abort,
        and the producer must be replaced before the next begins."""
        if self.open:
            self.open = False
            self.aborts += 1
        self.stuck = True

    def replace_producer(self, stopping: Callable[[], bool]) -> Producer:
        """A new producer (new transactional id) for a stuck one; returns it, transactions inited.

        The old one is let go, not closed: its last references are this object's, the worker's
        and the checkpoint store's (all replaced with this one), and freeing a Producer ends its
        librdkafka threads at once, queued records dropped (measured: 1 ms, 3 records queued, no
        broker). `close()` would flush with no timeout and serve those records' delivery reports,
        each of which would doom the new producer's transaction; a stuck call still running in a
        helper thread (`_bounded`) holds it until that call returns."""
        if self.new_producer is None:
            raise TransactionFatal("the transactional producer is stuck and cannot be replaced")
        if self.down():
            raise BrokerAway("replacing the producer: every broker is unreachable")
        self.producer = self.new_producer()
        self.open = False
        self.init(stopping)  # BrokerAway, TransactionStuck: still stuck, replaced again later
        self.stuck = False
        return self.producer

    def _retry(self, what: str, call: Callable[[float], None], stopping: Callable[[], bool],
               deadline: float | None, step: float = STEP) -> None:
        attempt = 0
        while True:
            if self.down():
                raise BrokerAway(f"transaction {what}: every broker is unreachable")
            try:
                self._bounded(what, call, step)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() and fenced(err) and what != "init":
                    self.expired()
                    if what == "abort":
                        return  # the broker aborted it already; the producer is replaced next
                    raise TransactionExpired(f"transaction {what}: {err.str()}") from exc
                if err.fatal():
                    raise TransactionFatal(f"transaction {what}: {err.str()}") from exc
                if err.txn_requires_abort():
                    if what == "abort":
                        raise TransactionFatal(f"transaction abort: {err.str()}") from exc
                    self._abort_quietly(stopping)
                    raise TransactionAborted(f"transaction {what}: {err.str()}") from exc
                if not err.retriable():
                    raise TransactionFatal(f"transaction {what}: {err.str()}") from exc
                attempt += 1
                self.producer.poll(0)  # serves error_cb: a broker outage shows as `down` next round
                if stopping() or (deadline is not None and time.monotonic() > deadline):
                    if what == "abort":
                        self.stuck = True  # this producer is given up: a new one carries on
                    if what in ("abort", "init"):
                        raise TransactionFatal(f"transaction {what} gave up: {err.str()}") from exc
                    self._abort_quietly(stopping)
                    raise TransactionAborted(f"transaction {what} did not finish in time: {err.str()}") from exc
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("transaction %s (attempt %d, retrying): %s", what, attempt, err.str())

    def _bounded(self, what: str, call: Callable[[float], None], step: float) -> None:
        """`call(step)` in a helper thread, waited for step + STUCK_GRACE at most."""
        result: list[BaseException | None] = []

        def run() -> None:
            try:
                call(step)
                result.append(None)
            except BaseException as exc:  # handed to the caller's thread
                result.append(exc)

        t = threading.Thread(target=run, name=f"driftline-txn-{what.replace(' ', '-')}", daemon=True)
        t.start()
        t.join(step + STUCK_GRACE)
        if not result:
            self.open = False  # this producer's transaction is left to expire at the broker
            self.stuck = True
            raise TransactionStuck(f"transaction {what} did not return within {step + STUCK_GRACE:.0f} s")
        if result[0] is not None:
            raise result[0]

    def _abort_quietly(self, stopping: Callable[[], bool]) -> None:
        try:
            self.abort(stopping)
        except BrokerAway:
            pass  # aborted when the broker is back
        except TransactionStuck as exc:
            log.warning("%s", exc)  # the caller sees `stuck` and replaces the producer
        except TransactionFatal as exc:
            log.warning("%s", exc)
