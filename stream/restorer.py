"""The states of newly assigned partitions, and where each is read from.

At an assignment (and at a rewind, stream/checkpointer.py) every partition gets its state: one
parked at a revoke when nobody committed past it since, else the one its checkpoint holds; a
checkpoint this driftline cannot read (an older format, another River) is rebuilt by replaying
the partition's retained history, and a partition without a checkpoint starts fresh where the
group left off. See docs/guarantees.md for what each gives the numbers.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from driftline.detectors.bank import DetectorBank
from driftline.detectors.state import Unreadable, decode_state
from driftline.stream.checkpoint import CheckpointError, CheckpointStore
from driftline.stream.partitions import INTAKE, BankPartition, IntakePartition, PartitionKey, PartitionStates
from driftline.stream.pipeline import Intake

log = logging.getLogger("driftline.worker")

Committed = dict[tuple[str, int], int]  # (topic, partition) -> the group's committed offset (-1: none)


class Restorer:
    def __init__(self, settings, states: PartitionStates, consumer: Consumer, store: CheckpointStore, stats,
                 ends, event_time, profiles, route: Callable[[str, str], int], exactly_once: bool,
                 clock: Callable[[], float], fail: Callable[[str], None]):
        self.settings = settings
        self.topics = settings.kafka.topics
        self.states = states
        self.consumer = consumer
        self.store = store
        self.stats = stats  # WorkerStats: restores, replayed
        self.ends = ends  # ReadableEnds: forgotten for reassigned partitions
        self.event_time = event_time  # EventTimeDriver: each state's alignment and watermark buffer
        self.profiles = profiles
        self.route = route  # (model, segment) -> the observations partition owning it
        self.exactly_once = exactly_once
        self.clock = clock
        self.fail = fail  # stops the worker: a history it cannot restore must not be lost silently

    def load(self, partitions: list[TopicPartition]) -> set[PartitionKey] | None:
        """The state of each of `partitions` (parked, restored or fresh) into the tables, and the
        offset to read each from into `tp.offset`; returns the keys of fresh states (None: fatal)."""
        states = self.states
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in self.consumer.committed(partitions, timeout=30)}
        for tp in partitions:
            self.ends.forget(tp.topic, tp.partition)
        wanted = {states.key_of(tp) for tp in partitions}
        # Parked states come back only if nobody committed past them since they were parked.
        reuse = {}
        for key, part in states.parked.items():
            if key in wanted and all(committed.get((topic, key.partition), -1) == off
                                     for topic, off in part.positions.items()):
                reuse[key] = part
        states.parked.clear()
        restored = self._read_states(wanted - set(reuse), committed)
        if restored is None:
            return None
        now = self.clock()
        fresh: set[PartitionKey] = set()
        unreadable: dict[PartitionKey, Unreadable] = {}
        for key in sorted(wanted, key=states.name):
            table = states.table(key.stage)
            if key.partition in table:
                continue
            if key in reuse:
                table[key.partition] = reuse[key]
                continue
            if key in restored:
                part = restored[key]
                if type(part) is not Unreadable:
                    table[key.partition] = part
                    self.stats.restores["restored"] += 1
                    log.info("restored %s from its checkpoint at offsets %s", states.name(key), part.positions)
                    continue
                unreadable[key] = part
            table[key.partition] = self.fresh_partition(key.stage, now)
            fresh.add(key)
        for tp in partitions:
            key = states.key_of(tp)
            part = states.get(key)
            start = part.positions.get(tp.topic)
            done = committed.get((tp.topic, tp.partition), -1)
            if start is not None:
                tp.offset = start
                if done > start:
                    self.stats.replayed += done - start
            elif key in unreadable:
                # The upgrade rule: a checkpoint this driftline cannot read is rebuilt by
                # replaying the partition's retained history, quietly up to the committed
                # offset (the outputs of that part were produced by the state it replaces).
                low = self.low_watermark(tp)
                tp.offset = part.positions[tp.topic] = low
                if done > low:
                    part.quiet[tp.topic] = done
                    self.stats.replayed += done - low
            else:
                # A fresh state starts where the group left off (or at the beginning), and
                # says so in its positions: its first checkpoint must name an offset.
                tp.offset = done if done >= 0 else self.low_watermark(tp)
                part.positions[tp.topic] = tp.offset
        if unreadable:
            self._note_rebuilds(unreadable)
        return fresh

    def _read_states(self, keys: set[PartitionKey], committed: Committed) -> dict[PartitionKey, Any] | None:
        """Restored states of `keys` that have a checkpoint. With exactly-once, a checkpoint and
        the group's committed offsets come from one transaction, so they must agree: one that is
        behind them means a newer manifest waits behind another writer's open transaction (read
        committed stops there), which resolves within the transaction timeout: read again."""
        deadline = time.monotonic() + 2 * self.settings.worker.transaction_timeout + 10
        while True:
            blobs = self._read_checkpoints(keys)
            if blobs is None:
                return None
            now = self.clock()
            states = {key: self.restore(key, blob, now) for key, blob in blobs.items()}
            stale = self._stale(keys, states, committed) if self.exactly_once else []
            if not stale:
                return states
            names = ", ".join(sorted(self.states.name(key) for key in stale))
            if time.monotonic() > deadline:
                # Offsets committed outside a transaction (a run without exactly_once, a tool):
                # the replay from the checkpoint is at-least-once for these, and counted.
                log.warning("checkpoints of %s stay behind the committed offsets; replaying from the checkpoints",
                            names)
                return states
            log.info("checkpoints of %s are behind the committed offsets (an open transaction ahead?): "
                     "reading again", names)
            time.sleep(1.0)

    def _stale(self, keys: set[PartitionKey], states: dict[PartitionKey, Any], committed: Committed) -> list[PartitionKey]:
        t = self.topics
        out = []
        for key in keys:
            topics = (t.inferences, t.labels) if key.stage == INTAKE else (t.observations,)
            part = states.get(key)
            if type(part) is Unreadable:
                continue  # rebuilt from the retained history, not resumed
            for topic in topics:
                done = committed.get((topic, key.partition), -1)
                if done >= 0 and (part is None or part.positions.get(topic, -1) != done):
                    out.append(key)
                    break
        return out

    def low_watermark(self, tp: TopicPartition, attempts: int = 10) -> int:
        """The first offset still stored in `tp`, retrying while a new topic's leader settles."""
        for attempt in range(attempts):
            try:
                return self.consumer.get_watermark_offsets(tp, timeout=10)[0]
            except KafkaException as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("watermarks of %s[%d] (attempt %d): %s", tp.topic, tp.partition, attempt + 1, exc)
                time.sleep(min(0.2 * 2 ** attempt, 3.0))
        raise AssertionError("unreachable")

    def _read_checkpoints(self, keys: set[PartitionKey], attempts: int = 10) -> dict[PartitionKey, bytes] | None:
        """Checkpoints of `keys`, retrying what a broker restart or a new topic can cause."""
        names = {self.states.name(key) for key in keys}
        for attempt in range(attempts):
            try:
                return {PartitionKey.from_checkpoint_key(name): blob for name, blob in self.store.read(names).items()}
            except (CheckpointError, KafkaException) as exc:
                # Leaders move and new topics settle for a moment after creation; a broker
                # restart looks the same: retry with back-off before giving up.
                last = exc
                log.warning("reading checkpoints (attempt %d of %d): %s", attempt + 1, attempts, exc)
                time.sleep(min(0.5 * 2 ** attempt, 5.0))
        # Starting these partitions empty would silently lose their history: stop instead.
        why = f"cannot restore checkpoints: {last}"
        self.fail(why)
        log.error("%s", why)
        return None

    def restore(self, key: PartitionKey, blob: bytes, now: float) -> IntakePartition | BankPartition | Unreadable:
        """The state a checkpoint holds, bound to this worker's settings (Unreadable: rebuild)."""
        settings = self.settings
        state = decode_state(blob)
        if type(state) is Unreadable:
            return state
        try:
            if key.stage == INTAKE:
                intake = Intake.from_resume_state(state["intake"], settings)
                return IntakePartition(intake, state["epoch"], state["positions"], now, self.event_time.new_alignment(),
                                       state.get("read_time"), state.get("fate_seq", 0), state.get("quiet"))
            bank = state["bank"]
            if not isinstance(bank, DetectorBank):
                raise TypeError(f"a {type(bank).__name__}, not a DetectorBank")
            bank.bind(settings.spec_for, self.profiles, settings.limits.max_models, settings.models)
            bank.idle_after = settings.limits.segment_idle
            # Checkpoints from before every value of an attribute was routed to one partition
            # hold segments now owned elsewhere: their series would be exported twice.
            q = key.partition
            bank.drop_segments(lambda model, segment: self.route(model, segment) != q)
            return BankPartition(bank, state["seen"], state["positions"], now,
                                 self.event_time.new_buffer(state.get("held")), state.get("quiet"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # readable, but another shape: rebuild too
            return Unreadable("fields", f"{key.stage} checkpoint does not hold a partition state: {exc!r}")

    def fresh_partition(self, stage: str, now: float) -> IntakePartition | BankPartition:
        settings = self.settings
        if stage == INTAKE:
            # A fresh intake gets a fresh epoch (see IntakePartition).
            return IntakePartition(Intake(settings), uuid.uuid4().hex[:12], {}, now, self.event_time.new_alignment())
        bank = DetectorBank(settings.spec_for, settings.limits.segment_idle, self.profiles,
                            settings.limits.max_models, settings.models)
        return BankPartition(bank, {}, {}, now, self.event_time.new_buffer())

    def _note_rebuilds(self, unreadable: dict[PartitionKey, Unreadable]) -> None:
        """Count each unreadable checkpoint's fate, and log them in one line per assignment."""
        states = self.states
        done = []
        for key in sorted(unreadable, key=states.name):
            part = states.get(key)
            outcome = "rebuilt" if part.quiet else "fresh"
            self.stats.restores[outcome] += 1
            done.append(f"{states.name(key)} {outcome}" + (f" from offsets {part.positions}" if part.quiet else ""))
        reasons = sorted({f"{u.reason}: {u.detail}" for u in unreadable.values()})
        log.warning("%d checkpoints could not be restored (%s); rebuilt from the retained history where there is "
                    "one, else started fresh: %s", len(unreadable), "; ".join(reasons), ", ".join(done))
