"""`driftline run`: the core on Kafka, one member of a consumer group.

    driftline.inferences + driftline.labels   (co-partitioned by prediction_id)
        -> stage 1 (per input partition p): decode, dead-letter the invalid, route, join
        -> driftline.observations              (key = model + segment; batched per key)
        -> stage 2 (per observations partition q): detectors, rolling metrics, counters
        -> driftline.drift-events

Both stages run in every worker's single loop; Kafka's range assignor gives partition p of
the inference and label topics to the same member (equal partition counts), which the join
needs. Each partition's state (the `Intake` of stage 1, the `DetectorBank` of stage 2) is
checkpointed with the offsets it covers (stream/checkpoint.py) and restored by whichever worker
is assigned the partition next; see docs/guarantees.md for what that gives each number.

Offsets: processed positions are committed every `worker.commit_interval` (lag, and the count
of events a successor replays); on restore a partition starts from its checkpoint's offsets.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
import zlib
from typing import Any

import orjson
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from driftline.detectors.bank import DetectorBank
from driftline.detectors.state import Unreadable, decode_state, encode_state
from driftline.stream.baselines import BaselineTopic, profile_book
from driftline.stream.checkpoint import MAX_CHECKPOINT_AGE, CheckpointError, CheckpointStore
from driftline.stream.codec import DecodeLimits, dead_letter_record, decode_inference, decode_label
from driftline.stream.events import Invalid
from driftline.stream.eventtime import INFERENCES, LABELS
from driftline.stream.ordering import EventTimeDriver
from driftline.stream.pipeline import Intake, observe

log = logging.getLogger("driftline.worker")

# Observations per message on the observations topic: bounds a message to ~100-300 KB.
OBS_PER_MESSAGE = 500
# Sources remembered per bank for de-duplication (an entry per intake epoch and topic).
MAX_SOURCES = 256
LAG_EVERY = 2.0  # seconds between consumer-lag refreshes
BASELINES_EVERY = 5.0  # seconds between polls of the baselines topic (profiles change rarely)


class IntakePartition:
    """Stage-1 state of input partition p: the intake, and what it has read of each topic."""

    __slots__ = ("intake", "epoch", "positions", "quiet", "dirty", "checkpointed_at", "last_ts", "read_time",
                 "fate_seq", "alignment")

    def __init__(self, intake: Intake, epoch: str, positions: dict[str, int], now: float, alignment=None,
                 read_time: dict | None = None, fate_seq: int = 0, quiet: dict[str, int] | None = None):
        self.intake = intake
        # A fresh intake gets a fresh epoch: observations carry it, so a bank never confuses
        # offsets of a restarted history with those of an older one.
        self.epoch = epoch
        self.positions = positions  # topic -> next offset to read
        # topic -> offset: while rebuilding from history (an unreadable checkpoint), what is read
        # below it only rebuilds the state; its outputs were produced before (see Worker._assign).
        self.quiet = quiet if quiet is not None else {}
        self.dirty = False
        self.checkpointed_at = now
        self.last_ts: dict[str, float] = {}  # topic -> Kafka timestamp (ms) of the last message read
        # Largest event time read on each topic (the partition's progress, see eventtime.py).
        self.read_time: dict[str, float | None] = read_time or {INFERENCES: None, LABELS: None}
        self.fate_seq = fate_seq  # numbers the fates emitted outside any message (idle expiry)
        self.alignment = alignment  # eventtime.SourceAlignment: configuration + live decisions

    def snapshot(self) -> bytes:
        return encode_state({"intake": self.intake.resume_state(), "epoch": self.epoch, "positions": self.positions,
                             "read_time": self.read_time, "fate_seq": self.fate_seq, "quiet": self.quiet})


class BankPartition:
    """Stage-2 state of observations partition q: the bank, de-duplication marks, position."""

    __slots__ = ("bank", "seen", "positions", "quiet", "muted", "dirty", "checkpointed_at", "last_ts", "buffer")

    def __init__(self, bank: DetectorBank, seen: dict, positions: dict[str, int], now: float, buffer=None,
                 quiet: dict[str, int] | None = None):
        self.bank = bank
        # (epoch + topic code) -> (offset, index) of the last observation applied from that
        # source: observations an intake replays after a crash are recognised and skipped.
        self.seen = seen
        self.positions = positions
        # As IntakePartition.quiet; `muted` while the message being read is below it: the
        # records it releases publish no drift events (they were published before).
        self.quiet = quiet if quiet is not None else {}
        self.muted = False
        self.dirty = False
        self.checkpointed_at = now
        self.last_ts: dict[str, float] = {}
        # eventtime.WatermarkBuffer: observations held until every source has passed them.
        self.buffer = buffer

    def fresh(self, src: str, recs: list) -> list:
        """The records of `src` not applied before (a replay after a crash re-sends some)."""
        seen = self.seen
        last = seen.get(src)
        out = []
        for r in recs:
            mark = (r[0], r[1])
            if last is not None and mark <= last:
                continue
            last = mark
            out.append(r)
        if last is not None:
            if src not in seen and len(seen) >= MAX_SOURCES:
                del seen[next(iter(seen))]  # the oldest source: an epoch long gone
            seen[src] = last
        return out

    def snapshot(self) -> bytes:
        return encode_state({"bank": self.bank, "seen": self.seen, "positions": self.positions,
                             "held": self.buffer.to_state(), "quiet": self.quiet})


class WorkerStats:
    """Per-process operating figures, rendered by exporter.WorkerMetrics."""

    def __init__(self) -> None:
        self.replayed = 0  # events read again after taking over a partition (checkpoint -> committed)
        self.deduplicated = 0  # observations skipped as already applied
        self.rebalances = 0
        self.checkpoints = {"ok": 0, "failed": 0}
        self.checkpoint_seconds = 0.0  # duration of the last checkpoint
        self.checkpoint_bytes = 0  # size of the last checkpoint
        self.restore_seconds = 0.0  # duration of the last restore
        # Checkpoints found at assignment: restored, or unreadable (an older format, another
        # River) and rebuilt from the retained history, or started fresh when none is left.
        self.restores = {"restored": 0, "rebuilt": 0, "fresh": 0}
        self.produce_errors: dict[str, int] = {}  # by topic, every written topic from 0
        self.messages = {"intake": 0, "bank": 0}  # messages this process read, by stage
        self.lag_seconds: dict[tuple[str, int], float] = {}
        self.lag: dict[tuple[str, int], int] = {}
        self.partitions = {"intake": 0, "bank": 0}
        self.checkpoint_age = 0.0


class Worker:
    def __init__(self, settings, obs_partitions: int, clock=time.time, source_partitions: int | None = None):
        self.settings = settings
        self.obs_partitions = obs_partitions
        # Input partitions: each one feeds every bank, whose watermark waits for all of them.
        self.source_partitions = source_partitions or settings.kafka.partitions
        self._routes: dict[tuple[str, str], int] = {}
        self.clock = clock
        self.topics = settings.kafka.topics
        self.limits = DecodeLimits(max_bytes=settings.limits.max_event_bytes, max_depth=settings.limits.max_depth,
                                   max_future=settings.limits.max_future, clock=time.time)
        self.lock = threading.RLock()
        self.intakes: dict[int, IntakePartition] = {}
        self.banks: dict[int, BankPartition] = {}
        # States checkpointed at a revoke, kept in case the same partitions come back.
        self._parked: dict[str, Any] = {}
        self.stats = WorkerStats()
        for topic in (self.topics.observations, self.topics.dead_letters, self.topics.drift_events):
            self.stats.produce_errors[topic] = 0
        self.assigned_once = False
        self.rebalancing = False
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self._next_checkpoint = 0.0
        self._next_commit = 0.0
        self._next_lag = 0.0
        # Reference profiles: the config's files, then what the baselines topic publishes
        # (stream/baselines.py); one book for every bank of this process.
        self.profiles = profile_book(settings)
        self.baseline_topic = BaselineTopic(settings, self.profiles)
        self._next_baselines = 0.0
        group = settings.kafka.group_id
        self._key_prefix = f"{group}/"
        kafka = settings.kafka
        user = dict(kafka.client_config)
        # Tunables first (the user's kafka.config overrides them), then what correctness needs.
        self.consumer = Consumer({
            "session.timeout.ms": 10_000,  # a dead worker's partitions move after 10 s, not 45
            "heartbeat.interval.ms": 2_000,
            "fetch.wait.max.ms": 100,
            **user,
            "bootstrap.servers": kafka.bootstrap,
            "group.id": group,
            "client.id": f"driftline-{uuid.uuid4().hex[:6]}",
            # range: partition p of every subscribed topic goes to the same member when the
            # topics have equal partition counts: the join needs inferences-p with labels-p.
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        })
        self.producer = Producer({
            "linger.ms": 20,
            "compression.type": "lz4",
            **user,
            "bootstrap.servers": kafka.bootstrap,
            "enable.idempotence": True,  # ordered, no duplicates from retries
            "acks": "all",
            # Never give up on a record: while the broker is away the local queue fills and
            # produce() blocks the loop (back pressure), and nothing is dropped.
            "message.timeout.ms": 0,
        })
        self.event_time = EventTimeDriver(self, self.source_partitions)
        self.store = CheckpointStore(kafka.bootstrap, dict(kafka.client_config), self.topics.checkpoints,
                                     self.topics.checkpoint_data)

    # -- state lookup, for the collector -----------------------------------------------------------
    def bank_objects(self) -> list[DetectorBank]:
        return [bp.bank for bp in self.banks.values()]

    def intake_objects(self) -> list[Intake]:
        return [ip.intake for ip in self.intakes.values()]

    def readiness(self) -> tuple[bool, dict]:
        ready = self.assigned_once and not self.rebalancing and self.fatal is None and not self.stopping.is_set()
        return ready, {"assigned": self.assigned_once, "rebalancing": self.rebalancing,
                       "partitions": dict(self.stats.partitions), "fatal": self.fatal}

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        t = self.topics
        self.baseline_topic.start()  # before any bank exists: the first events meet their profiles
        self._next_baselines = time.monotonic() + BASELINES_EVERY
        self.consumer.subscribe([t.inferences, t.labels, t.observations], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        batch = self.settings.worker.batch
        try:
            while not self.stopping.is_set() and self.fatal is None:
                # A short timeout: consume() waits for a full batch until it expires, which at low
                # rates is pure latency; an idle loop wakes 50 times a second, which costs nothing.
                msgs = self.consumer.consume(batch, 0.02)
                if msgs:
                    with self.lock:
                        self._process(msgs)
                self.producer.poll(0)
                now = time.monotonic()
                if now >= self._next_commit:
                    self._commit(asynchronous=True)
                    self._next_commit = now + self.settings.worker.commit_interval
                if now >= self._next_lag:
                    self._refresh_lag()
                    self._next_lag = now + LAG_EVERY
                if now >= self._next_baselines:
                    self.baseline_topic.poll(self.lock)
                    self._next_baselines = now + BASELINES_EVERY
                if now >= self._next_checkpoint:
                    self._checkpoint()
                with self.lock:
                    self.event_time.tick()
        finally:
            self._shutdown()
        if self.fatal is not None:
            log.error("stopped on a fatal error: %s", self.fatal)
            return 1
        return 0

    def stop(self, *_: Any) -> None:
        self.stopping.set()

    def _shutdown(self) -> None:
        log.info("shutting down: checkpointing %d intake and %d bank partitions", len(self.intakes), len(self.banks))
        with self.lock:
            if self.fatal is None:
                try:
                    # Bounded: with the broker away, a stop must not hang (the successor replays
                    # from the previous checkpoint instead).
                    self._checkpoint(force=True, timeout=10.0)
                except Exception as exc:
                    log.warning("final checkpoint failed: %s", exc)
            self._commit(asynchronous=False)
        try:
            self.consumer.close()  # leaves the group: the others rebalance at once
        except KafkaException as exc:
            log.warning("consumer close: %s", exc)
        left = self.producer.flush(10)
        if left:
            log.warning("%d records not delivered at shutdown", left)
        self.store.close()
        self.baseline_topic.close()

    # -- stage 1 and stage 2 ---------------------------------------------------------------------
    def _process(self, msgs: list) -> None:
        t = self.topics
        obs_topic, inf_topic = t.observations, t.inferences
        batches: dict[tuple, list] = {}
        route = self._routes
        wall = None
        n_source = 0
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._consumer_error(err)
                continue
            topic = msg.topic()
            if topic == obs_topic:
                self._apply(msg)
                continue
            p = msg.partition()
            ip = self.intakes.get(p)
            if ip is None:  # not ours (any more): the assignment and state disagree only mid-rebalance
                continue
            ts_type, ts_ms = msg.timestamp()
            if ts_type != TIMESTAMP_NOT_AVAILABLE:
                default_ts = ts_ms / 1000.0
            else:
                default_ts = wall = wall or self.clock()
            raw = msg.value()
            intake = ip.intake
            if topic == inf_topic:
                code, decode, take = "i", decode_inference, intake.take_inference
            else:
                code, decode, take = "l", decode_label, intake.take_label
            ev = decode(raw, default_ts, self.limits)
            if type(ev) is not Invalid:
                obs, refused = take(ev, raw)
                kind = INFERENCES if code == "i" else LABELS
                last = ip.read_time[kind]
                if last is None or ev.timestamp > last:
                    ip.read_time[kind] = ev.timestamp
            else:
                obs, refused = intake.take_invalid(ev), ev
            offset = msg.offset()
            if ip.quiet and self._quiet(ip, topic, offset):
                obs, refused = (), None  # rebuilding: this record's outputs exist already
            if refused is not None:
                self._produce(t.dead_letters, msg.key(),
                              dead_letter_record(refused, topic=topic, partition=p, offset=offset))
            src = ip.epoch + code
            for k, o in enumerate(obs):
                dest = route.get((o[1], o[2]))
                if dest is None:
                    dest = self._route(o[1], o[2])
                rec = [offset, k]
                rec.extend(o)
                bucket = batches.get((src, dest))
                if bucket is None:
                    batches[(src, dest)] = [rec]
                else:
                    bucket.append(rec)
            ip.positions[topic] = offset + 1
            ip.last_ts[topic] = ts_ms
            ip.dirty = True
            n_source += 1
        self.stats.messages["intake"] += n_source
        self.stats.messages["bank"] += len(msgs) - n_source
        # One message per (source, destination partition), in source order: a bank sees each
        # source's observations in offset order, which its de-duplication relies on.
        src_part = {ip.epoch + c: p for p, ip in self.intakes.items() for c in "il"}
        for (src, dest), recs in batches.items():
            key = src.encode()
            for i in range(0, len(recs), OBS_PER_MESSAGE):
                self._produce(obs_topic, key, orjson.dumps(self._obs_message(src, recs[i:i + OBS_PER_MESSAGE], src_part[src])), dest)

    @staticmethod
    def _quiet(part, topic: str, offset: int) -> bool:
        """True while a rebuilding partition reads below the offset its outputs reached before."""
        until = part.quiet.get(topic)
        if until is None:
            return False
        if offset < until:
            return True
        del part.quiet[topic]
        return False

    def _route(self, model: str, segment: str) -> int:
        """The observations partition that owns (model, segment): stable across processes."""
        dest = self._routes[(model, segment)] = zlib.crc32(f"{model}\x1f{segment}".encode()) % self.obs_partitions
        return dest

    @staticmethod
    def _obs_message(src: str, recs: list, partition: int) -> list:
        """One observations message (format 2, see stream/ordering.py)."""
        return [src, recs, partition, None, None]

    def emit_fates(self, p: int, ip: IntakePartition, fates: list) -> None:
        """Fates made outside any message (expiry when a topic goes idle), under their own source."""
        ip.fate_seq += 1
        src = ip.epoch + "x"
        by_dest: dict[int, list] = {}
        for k, o in enumerate(fates):
            dest = self._routes.get((o[1], o[2]))
            if dest is None:
                dest = self._route(o[1], o[2])
            by_dest.setdefault(dest, []).append([ip.fate_seq, k, *o])
        for dest, recs in by_dest.items():
            self._produce(self.topics.observations, src.encode(), orjson.dumps(self._obs_message(src, recs, p)), dest)
        ip.dirty = True

    def _apply(self, msg) -> None:
        bp = self.banks.get(msg.partition())
        if bp is None:
            return
        topic = msg.topic()
        if bp.quiet or bp.muted:
            bp.muted = self._quiet(bp, topic, msg.offset())
        self.event_time.apply(bp, msg.value(), lambda src, r: self.apply_record(bp, src, r))
        bp.positions[topic] = msg.offset() + 1
        bp.last_ts[topic] = msg.timestamp()[1]
        bp.dirty = True

    def apply_record(self, bp: BankPartition, src: str, r: list) -> None:
        """Apply one observation record to its bank; publish the detections it causes."""
        hits = observe(bp.bank, r[2:])
        if bp.muted:
            hits = ()  # rebuilding: these drift events were published before
        for rec in hits:
            d = rec.to_dict()
            d["source"] = f"{src}:{r[0]}:{r[1]}"  # the same detection replayed carries the same id
            self._produce(self.topics.drift_events, f"{rec.model}\x1f{rec.segment}".encode(), orjson.dumps(d))
        bp.dirty = True

    def _produce(self, topic: str, key: bytes | None, value: bytes, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, partition=partition, on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full (broker slow or away): wait, never drop
                self.producer.poll(0.1)
                if self.stopping.is_set() and self.fatal is not None:
                    return

    def _delivered(self, err, msg) -> None:
        if err is None:
            return
        topic = msg.topic()
        self.stats.produce_errors[topic] = self.stats.produce_errors.get(topic, 0) + 1
        # With infinite retries only a fatal or permanent error lands here. The state already
        # holds this record's effect, so checkpointing it would lose the record for good: stop,
        # and let the successor replay from the last checkpoint (crash-only).
        self.fatal = f"delivery to {topic} failed: {err}"

    def _consumer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = f"consumer: {err}"
        else:  # transient (broker restart, ...): librdkafka reconnects by itself
            log.warning("consumer: %s", err)

    # -- checkpoints and commits -----------------------------------------------------------------
    def _key(self, stage: str, partition: int) -> str:
        return f"{self._key_prefix}{stage}/{partition}"

    def _stage_of(self, tp: TopicPartition) -> tuple[str, dict]:
        """Which stage reads `tp` ("intake" or "bank"), and the table of that stage's states."""
        if tp.topic == self.topics.observations:
            return "bank", self.banks
        return "intake", self.intakes

    def _checkpoint(self, force: bool = False, only: set[str] | None = None, timeout: float = 30.0) -> None:
        started = time.monotonic()
        now = self.clock()
        items, owners = [], []
        for stage, table in (("intake", self.intakes), ("bank", self.banks)):
            for p, part in table.items():
                key = self._key(stage, p)
                if only is not None and key not in only:
                    continue
                if force or part.dirty or now - part.checkpointed_at > MAX_CHECKPOINT_AGE:
                    items.append((key, part.snapshot()))
                    owners.append(part)
        self._update_checkpoint_age(now)
        if items:
            try:
                # Outputs of everything a checkpoint covers must be durable before it is.
                left = self.producer.flush(timeout)
                if left:
                    raise CheckpointError(f"{left} records not delivered within {timeout:.0f} s")
                if self.fatal is not None:
                    raise CheckpointError(self.fatal)
                self.store.write(items, timeout=timeout)
            except (CheckpointError, KafkaException) as exc:
                self.stats.checkpoints["failed"] += 1
                log.warning("checkpoint of %d partitions failed (will retry): %s", len(items), exc)
                self._next_checkpoint = time.monotonic() + self.settings.worker.checkpoint_interval
                return
            for part in owners:
                part.dirty = False
                part.checkpointed_at = now
            self.stats.checkpoints["ok"] += 1
            self.stats.checkpoint_bytes = sum(len(b) for _, b in items)
            self._commit(asynchronous=True)
        took = time.monotonic() - started
        if items:
            self.stats.checkpoint_seconds = took
        self._update_checkpoint_age(now)
        self._next_checkpoint = time.monotonic() + max(self.settings.worker.checkpoint_interval, 10 * took)

    def _update_checkpoint_age(self, now: float) -> None:
        parts = list(self.intakes.values()) + list(self.banks.values())
        self.stats.checkpoint_age = max((now - p.checkpointed_at for p in parts if p.dirty), default=0.0)

    def _positions(self) -> list[TopicPartition]:
        out = []
        for table in (self.intakes, self.banks):
            for p, part in table.items():
                out.extend(TopicPartition(topic, p, off) for topic, off in part.positions.items())
        return out

    def _commit(self, asynchronous: bool) -> None:
        offsets = self._positions()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed: %s", exc)

    def _refresh_lag(self) -> None:
        lag, behind = {}, {}
        now_ms = self.clock() * 1000.0
        for table in (self.intakes, self.banks):
            for p, part in table.items():
                for topic, off in part.positions.items():
                    try:
                        _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                    except KafkaException:
                        continue
                    if high < 0:
                        continue
                    lag[(topic, p)] = n = max(high - off, 0)
                    # Seconds behind: how old the last message read is, while more are waiting.
                    ts = part.last_ts.get(topic)
                    behind[(topic, p)] = max((now_ms - ts) / 1000.0, 0.0) if n and ts and ts > 0 else 0.0
        self.stats.lag = lag
        self.stats.lag_seconds = behind

    # -- rebalances -------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._assign(consumer, partitions)
        except Exception as exc:  # an exception here would escape consume(): stop cleanly instead
            log.exception("partition assignment failed")
            self.fatal = f"partition assignment failed: {exc!r}"

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        with self.lock:
            self.stats.rebalances += 1
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in consumer.committed(partitions, timeout=30)}
            wanted = {self._key(self._stage_of(tp)[0], tp.partition) for tp in partitions}
            # Parked states come back only if nobody committed past them since they were parked.
            reuse = {}
            for key, part in self._parked.items():
                if key in wanted and all(committed.get((topic, int(key.rsplit("/", 1)[1])), -1) == off
                                         for topic, off in part.positions.items()):
                    reuse[key] = part
            self._parked.clear()
            blobs = self._read_checkpoints(wanted - set(reuse))
            if blobs is None:
                return
            now = self.clock()
            fresh: set[str] = set()
            unreadable: dict[str, Unreadable] = {}
            for key in sorted(wanted):
                stage, p = key.rsplit("/", 2)[-2], int(key.rsplit("/", 1)[1])
                table = self.intakes if stage == "intake" else self.banks
                if p in table:
                    continue
                if key in reuse:
                    table[p] = reuse[key]
                    continue
                if key in blobs:
                    part = self._restore(stage, blobs[key], now)
                    if type(part) is not Unreadable:
                        table[p] = part
                        self.stats.restores["restored"] += 1
                        log.info("restored %s from its checkpoint (%d bytes)", key, len(blobs[key]))
                        continue
                    unreadable[key] = part
                table[p] = self._fresh_partition(stage, now)
                fresh.add(key)
            for tp in partitions:
                stage, table = self._stage_of(tp)
                part = table[tp.partition]
                start = part.positions.get(tp.topic)
                done = committed.get((tp.topic, tp.partition), -1)
                if start is not None:
                    tp.offset = start
                    if done > start:
                        self.stats.replayed += done - start
                elif self._key(stage, tp.partition) in unreadable:
                    # The upgrade rule: a checkpoint this driftline cannot read is rebuilt by
                    # replaying the partition's retained history, quietly up to the committed
                    # offset (the outputs of that part were produced by the state it replaces).
                    low = self._low_watermark(tp)
                    tp.offset = part.positions[tp.topic] = low
                    if done > low:
                        part.quiet[tp.topic] = done
                        self.stats.replayed += done - low
                else:
                    # A fresh state starts where the group left off (or at the beginning), and
                    # says so in its positions: its first checkpoint must name an offset.
                    tp.offset = done if done >= 0 else self._low_watermark(tp)
                    part.positions[tp.topic] = tp.offset
            if unreadable:
                self._note_rebuilds(unreadable)
            consumer.assign(partitions)
            self.event_time.assigned(partitions)
            if fresh:
                # Checkpoint new states at once: a successor must never find a partition without
                # one, or it would start empty at the committed offset and lose what the join held.
                self._checkpoint(force=True, only=fresh)
            self.stats.partitions = {"intake": len(self.intakes), "bank": len(self.banks)}
            self.assigned_once = True
            self.rebalancing = False
            self.stats.restore_seconds = time.monotonic() - started
            log.info("assigned %d partitions (%d intake, %d bank) in %.2f s; %d events to replay",
                     len(partitions), len(self.intakes), len(self.banks), self.stats.restore_seconds,
                     self.stats.replayed)

    def _low_watermark(self, tp: TopicPartition, attempts: int = 10) -> int:
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

    def _read_checkpoints(self, keys: set[str], attempts: int = 10) -> dict[str, bytes] | None:
        """Checkpoints of `keys`, retrying what a broker restart or a new topic can cause."""
        for attempt in range(attempts):
            try:
                return self.store.read(keys)
            except (CheckpointError, KafkaException) as exc:
                # Leaders move and new topics settle for a moment after creation; a broker
                # restart looks the same: retry with back-off before giving up.
                last = exc
                log.warning("reading checkpoints (attempt %d of %d): %s", attempt + 1, attempts, exc)
                time.sleep(min(0.5 * 2 ** attempt, 5.0))
        # Starting these partitions empty would silently lose their history: stop instead.
        self.fatal = f"cannot restore checkpoints: {last}"
        log.error("%s", self.fatal)
        return None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self.lock:
            self.rebalancing = True
            keys = {self._key(self._stage_of(tp)[0], tp.partition) for tp in partitions}
            if self.fatal is None:
                self._checkpoint(force=True, only=keys)
                self._commit(asynchronous=False)
            for tp in partitions:
                stage, table = self._stage_of(tp)
                part = table.pop(tp.partition, None)
                if part is not None and not part.dirty:
                    self._parked[self._key(stage, tp.partition)] = part
            self.stats.partitions = {"intake": len(self.intakes), "bank": len(self.banks)}

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: drop our state, keep nothing parked.
        with self.lock:
            self.rebalancing = True
            for tp in partitions:
                self._stage_of(tp)[1].pop(tp.partition, None)
            self._parked.clear()
            log.warning("lost %d partitions (session timeout?); their state is dropped here", len(partitions))

    def _restore(self, stage: str, blob: bytes, now: float) -> "IntakePartition | BankPartition | Unreadable":
        state = decode_state(blob)
        if type(state) is Unreadable:
            return state
        try:
            if stage == "intake":
                intake = Intake.from_resume_state(state["intake"], self.settings)
                return IntakePartition(intake, state["epoch"], state["positions"], now, self.event_time.new_alignment(),
                                       state.get("read_time"), state.get("fate_seq", 0), state.get("quiet"))
            bank = state["bank"]
            if not isinstance(bank, DetectorBank):
                raise TypeError(f"a {type(bank).__name__}, not a DetectorBank")
            bank.bind(self.settings.spec_for, self.profiles)
            bank.idle_after = self.settings.limits.segment_idle
            return BankPartition(bank, state["seen"], state["positions"], now,
                                 self.event_time.new_buffer(state.get("held")), state.get("quiet"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # readable, but another shape: rebuild too
            return Unreadable("fields", f"{stage} checkpoint does not hold a partition state: {exc!r}")

    def _fresh_partition(self, stage: str, now: float) -> "IntakePartition | BankPartition":
        if stage == "intake":
            # A fresh intake gets a fresh epoch (see IntakePartition).
            return IntakePartition(Intake(self.settings), uuid.uuid4().hex[:12], {}, now,
                                   self.event_time.new_alignment())
        bank = DetectorBank(self.settings.spec_for, self.settings.limits.segment_idle, self.profiles)
        return BankPartition(bank, {}, {}, now, self.event_time.new_buffer())

    def _note_rebuilds(self, unreadable: dict[str, "Unreadable"]) -> None:
        """Count each unreadable checkpoint's fate, and log them in one line per assignment."""
        done = []
        for key in sorted(unreadable):
            stage, p = key.rsplit("/", 2)[-2], int(key.rsplit("/", 1)[1])
            part = (self.intakes if stage == "intake" else self.banks)[p]
            outcome = "rebuilt" if part.quiet else "fresh"
            self.stats.restores[outcome] += 1
            done.append(f"{key} {outcome}" + (f" from offsets {part.positions}" if part.quiet else ""))
        reasons = sorted({f"{u.reason}: {u.detail}" for u in unreadable.values()})
        log.warning("%d checkpoints could not be restored (%s); rebuilt from the retained history where there is "
                    "one, else started fresh: %s", len(unreadable), "; ".join(reasons), ", ".join(done))


def run_worker(settings, listen: str) -> int:
    """Provision topics, serve /metrics, run the loop until SIGTERM/SIGINT; returns the exit code."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.process_collector import ProcessCollector

    from driftline.stream.admin import ensure_topics
    from driftline.stream.exporter import DriftlineMetrics, EventTimeMetrics, WorkerMetrics, render
    from driftline.stream.http import StatusServer

    log.info("%s", settings.describe())
    created, partitions = ensure_topics(settings)
    log.info("topics: %s", ", ".join(f"{k} ({v})" for k, v in created.items()))
    worker = Worker(settings, partitions[settings.kafka.topics.observations],
                    source_partitions=partitions[settings.kafka.topics.inferences])
    contract = DriftlineMetrics(settings, intakes=worker.intake_objects, banks=worker.bank_objects,
                                clock=time.time, lock=worker.lock)
    figures = WorkerMetrics(worker.stats, lock=worker.lock)
    event_time = EventTimeMetrics(worker.event_time.stats, lock=worker.lock)
    process = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=process)

    bridge = None
    if settings.otlp.enabled:  # LLM calls from OpenTelemetry spans (stream/otlp.py)
        from driftline.stream.otlp import OTLPBridge

        bridge = OTLPBridge(settings).start()
        log.info("reading OTLP spans from %s (%s)", settings.otlp.topic, settings.otlp.encoding)

    def metrics() -> bytes:
        otlp = bridge.families() if bridge is not None else []
        return render(contract.families() + figures.families() + event_time.families() + otlp) + generate_latest(process)

    server = StatusServer(listen, metrics, worker.readiness).start()
    log.info("serving /metrics, /healthz, /readyz on http://%s", listen)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        return worker.run()
    finally:
        if bridge is not None:
            bridge.stop()
        server.stop()
