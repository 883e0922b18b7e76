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

Exactly-once (`worker.exactly_once`, the default): every checkpoint is one Kafka transaction
holding the outputs written since the last one, the snapshots of the changed partition states,
and the input offsets they cover (stream/transactions.py). A crash or an abort loses the open
transaction as a whole; the partitions rewind to their last committed checkpoint, whose offsets
are the group's committed offsets, and replay from there: nothing is counted twice.

Without it, processed positions are committed every `worker.commit_interval` (lag, and the
count of events a successor replays); on restore a partition starts from its checkpoint's
offsets, and the banks skip replayed observations they already applied.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import zlib
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, TopicPartition

from driftline.detectors.bank import DetectorBank
from driftline.detectors.observations import OUTCOME, to_wire
from driftline.detectors.segments import attribute_of
from driftline.stream.baselines import BaselineTopic, profile_book
from driftline.stream.checkpoint import CheckpointCadence, CheckpointStore
from driftline.stream.checkpointer import Checkpointer
from driftline.stream.clients import ConsumerLag, ReadableEnds, WorkerClients
from driftline.stream.codec import DecodeLimits, dead_letter_record, decode_inference, decode_label
from driftline.stream.collector_policy import tune_for_worker
from driftline.stream.events import Invalid
from driftline.stream.looplock import LoopLock
from driftline.stream.eventtime import INFERENCES, LABELS, HeldObservation
from driftline.stream.ordering import EventTimeDriver, UnknownFormat
from driftline.stream.outage import OutageHold
from driftline.stream.partitions import BankPartition, IntakePartition, PartitionStates
from driftline.stream.pipeline import Intake, observe
from driftline.stream.repartition import Repartitioner
from driftline.stream.restorer import Restorer
from driftline.stream.stats import WorkerStats
from driftline.stream.transactions import BrokerWatch, Transactions, fenced

log = logging.getLogger("driftline.worker")

# Observations per message on the observations topic: bounds a message to ~100-300 KB.
OBS_PER_MESSAGE = 500
ENV_HTTP_UNBOUNDED = "DRIFTLINE_BENCH_UNBOUNDED_HTTP"
BASELINES_EVERY = 5.0  # seconds between polls of the baselines topic (profiles change rarely)


class Worker:
    def __init__(self, settings, obs_partitions: int, clock=time.time, source_partitions: int | None = None):
        self.settings = settings
        self.obs_partitions = obs_partitions
        # Input partitions: each one feeds every bank, whose watermark waits for all of them.
        self.source_partitions = source_partitions or settings.kafka.partitions
        self._routes: dict[tuple[str, str], int] = {}
        # The bank of this observations partition owns every model not in the config (max_models).
        self.admission_partition = zlib.crc32(b"\x1f__unconfigured__") % obs_partitions
        self.clock = clock
        self.topics = settings.kafka.topics
        self.limits = DecodeLimits(max_bytes=settings.limits.max_event_bytes, max_depth=settings.limits.max_depth,
                                   max_future=settings.limits.max_future, clock=time.time)
        self.lock = LoopLock()  # handed to a /metrics render between records (stream/looplock.py)
        # The partition states this worker owns, keyed by (stage, partition), and those parked
        # at a revoke (stream/partitions.py); the stages read their tables directly.
        self.states = PartitionStates(settings.kafka.group_id, self.topics.observations)
        self.intakes, self.banks = self.states.intakes, self.states.banks
        self.stats = WorkerStats((self.topics.observations, self.topics.dead_letters, self.topics.drift_events))
        self._refused: list[Invalid] = []  # apply_observation's scratch list (observe() appends to it)
        self.assigned_once = False
        self.rebalancing = False
        self.stopping = threading.Event()
        self.fatal: str | None = None
        # Reference profiles: the config's files, then what the baselines topic publishes
        # (stream/baselines.py); one book for every bank of this process.
        self.profiles = profile_book(settings)
        self.baseline_topic = BaselineTopic(settings, self.profiles)
        self._next_baselines = 0.0
        kafka = settings.kafka
        # Where each partition's readable data ends (past transaction markers, before records of
        # open transactions): consumer lag and the event-time driver's "caught up" read it.
        self.ends = ReadableEnds()
        # Whether every broker is away (librdkafka's error_cb): transactional calls wait for one.
        self.broker = BrokerWatch()
        # The clients, from the settings that `driftline run` checked at start (stream/clients.py).
        clients = WorkerClients(settings, on_error=self.broker.on_error, on_stats=self.ends.on_stats)
        self.consumer = clients.consumer()
        eos = settings.worker.exactly_once
        self.exactly_once = eos
        self.producer = clients.producer()
        # With exactly-once, checkpoints travel in the worker's transaction (its producer).
        txn = Transactions(self.producer, self.consumer, settings.worker.transaction_timeout,
                           new_producer=clients.producer, down=lambda: self.broker.down) if eos else None
        self.event_time = EventTimeDriver(self, self.source_partitions)
        # Stage 1 -> stage 2: the observations topic, or in memory where this worker owns both
        # ends (exactly-once only: stream/repartition.py says why).
        self.repartition = Repartitioner(self, eos)
        # With exactly-once a round may be stretched to a third of the transaction timeout at most.
        cadence = CheckpointCadence(settings.worker.checkpoint_interval,
                                    settings.worker.transaction_timeout / 3 if eos else math.inf)
        store = CheckpointStore(kafka.bootstrap, dict(kafka.client_config), self.topics.checkpoints,
                                self.topics.checkpoint_data, producer=self.producer if eos else None)
        # The checkpoint rounds, the offset commits and the rewinds (stream/checkpointer.py).
        self.checkpointer = Checkpointer(self, cadence, store, txn, settings.worker.commit_interval)
        # The states of newly assigned partitions: parked, restored, rebuilt or fresh (stream/restorer.py).
        self.restorer = Restorer(settings, self.states, self.consumer, store, self.stats, self.ends, self.event_time,
                                 self.profiles, self._route, eos, clock, fail=lambda why: setattr(self, "fatal", why))
        # Input held while every broker is away (exactly-once), and the consumer lag in /metrics.
        self.outage = OutageHold(eos, self.broker, self.consumer, self.checkpointer, self.lock, lambda: self.fatal)
        self.lag = ConsumerLag(self.consumer, self.states, self.ends, self.stats, clock)

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
        checkpointer = self.checkpointer
        checkpointer.start()
        self._next_baselines = time.monotonic() + BASELINES_EVERY
        self.consumer.subscribe([t.inferences, t.labels, t.observations], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        batch = self.settings.worker.batch
        try:
            while not self.stopping.is_set() and self.fatal is None:
                # A short timeout: consume() waits for a full batch until it expires, which at low
                # rates is pure latency; an idle loop wakes 50 times a second, which costs nothing.
                waiting = time.monotonic()
                msgs = self.consumer.consume(batch, 0.0 if self.event_time.releasing else 0.02)
                checkpointer.cadence.wait(time.monotonic() - waiting)
                if msgs:
                    with self.lock:
                        if self.event_time.unaligned:
                            # The assignment ran inside this consume(): one event-time step
                            # before its first batch (EventTimeDriver.assigned says why).
                            self.event_time.tick()
                        self._process(msgs)
                try:
                    self.producer.poll(0)
                except (KafkaException, SystemError) as exc:  # librdkafka's fatal error (fenced), from poll
                    if not checkpointer.producer_failed(exc, "producer poll"):
                        raise
                now = time.monotonic()
                outage = self.outage.active
                if outage:
                    self.outage.ride_out(now)
                elif checkpointer.doomed is not None:
                    checkpointer.rewind(checkpointer.doomed)
                checkpointer.commit_if_due(now)
                self.lag.refresh_if_due(now)
                if now >= self._next_baselines:
                    self.baseline_topic.poll(self.lock)
                    self._next_baselines = now + BASELINES_EVERY
                if not outage and checkpointer.due(now):
                    checkpointer.round()
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
            self.checkpointer.final()
        try:
            self.consumer.close()  # leaves the group: the others rebalance at once
        except KafkaException as exc:
            log.warning("consumer close: %s", exc)
        try:
            left = self.producer.flush(10)
        except Exception as exc:  # noqa: BLE001 - a producer in a fatal state: nothing left to deliver
            log.warning("producer flush at shutdown: %s", exc)
            left = 0
        if left:
            log.warning("%d records not delivered at shutdown", left)
        self.checkpointer.close()
        self.baseline_topic.close()

    # -- stage 1 and stage 2 ---------------------------------------------------------------------
    def _process(self, msgs: list) -> None:
        t = self.topics
        obs_topic, inf_topic = t.observations, t.inferences
        batches: dict[tuple, list] = {}
        # (source, model, segment) -> its batch: routes each observation with one lookup (a
        # batch's own cache, so it is bounded by the batch whatever segment values events carry).
        bucket_of: dict[tuple, list] = {}
        intakes, limits = self.intakes, self.limits
        wall = None
        n_source = n_other = 0
        yield_to_readers = self.lock.yield_to_readers
        for n, msg in enumerate(msgs, 1):
            if not n & 255:
                yield_to_readers()
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # The end of what is committed: past the last transaction marker, which no
                    # message position ever reaches (so lag is measured to here).
                    self.ends.reached_end(msg.topic(), msg.partition(), msg.offset())
                    n_other += 1
                    continue
                self._consumer_error(err)
                continue
            topic = msg.topic()
            if topic == obs_topic:
                self._apply(msg)
                continue
            p = msg.partition()
            ip = intakes.get(p)
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
            ev = decode(raw, default_ts, limits)
            offset = msg.offset()
            if type(ev) is not Invalid:
                key = msg.key()
                # The join key: request_id when the event has one (a request's predictions and
                # its label meet on one partition), else prediction_id.
                join_key = ev.request_id or ev.prediction_id
                if join_key is not None and (key is None or key != join_key.encode()):
                    ev = self._miskeyed(topic, code, ev, raw, key, join_key)
                if ev is None:  # re-published keyed by prediction_id: counted where it lands
                    ip.positions[topic] = offset + 1
                    ip.last_ts[topic] = ts_ms
                    ip.dirty = True
                    n_source += 1
                    continue
            if type(ev) is not Invalid:
                obs, refused = take(ev, raw)
                kind = INFERENCES if code == "i" else LABELS
                last = ip.read_time[kind]
                if last is None or ev.timestamp > last:
                    ip.read_time[kind] = ev.timestamp
            else:
                obs, refused = intake.take_invalid(ev), ev
            if ip.quiet and self._quiet(ip, topic, offset):
                obs, refused = (), None  # rebuilding: this record's outputs exist already
            if refused is not None:
                self._produce(t.dead_letters, msg.key(),
                              dead_letter_record(refused, topic=topic, partition=p, offset=offset))
            src = ip.epoch + code
            for k, o in enumerate(obs):
                model, segment = o.model, o.segment
                bucket = bucket_of.get((src, model, segment))
                if bucket is None:
                    dest = self._route(model, segment)
                    bucket = batches.get((src, dest))
                    if bucket is None:
                        bucket = batches[(src, dest)] = []
                    bucket_of[(src, model, segment)] = bucket
                # to_wire(offset, k, o), inlined for outcomes (an inference may drop its raw field)
                bucket.append([offset, k, OUTCOME, *o] if o.KIND == OUTCOME else to_wire(offset, k, o))
            ip.positions[topic] = offset + 1
            ip.last_ts[topic] = ts_ms
            ip.dirty = True
            n_source += 1
        self.stats.messages["intake"] += n_source
        self.stats.messages["bank"] += len(msgs) - n_source - n_other
        # One message per (source, destination partition), in source order: a bank sees each
        # source's observations in offset order, which its de-duplication relies on (sent through
        # the topic, or handed to a bank of this worker: stream/repartition.py).
        src_part = {ip.epoch + c: p for p, ip in self.intakes.items() for c in "il"}
        send = self.repartition.observations
        for (src, dest), recs in batches.items():
            send(src, src_part[src], dest, recs, OBS_PER_MESSAGE)
            yield_to_readers()

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

    def _miskeyed(self, topic: str, code: str, ev, raw: bytes, key: bytes | None, join_key: str):
        """An event whose message key is not its prediction_id sits on a partition its pair may
        never reach. Re-publish it keyed by prediction_id (None: done here), or refuse it."""
        kind = "inference" if code == "i" else "label"
        if self.settings.worker.miskeyed == "dead_letter":
            shown = "null" if key is None else repr(key[:64])
            return Invalid(kind, "wrong_key", f"message key {shown} is not the prediction_id {join_key[:64]!r}: "
                                              "key events by prediction_id (request_id when they carry one), "
                                              "or set worker.miskeyed: rekey", raw, ev.model)
        self.stats.rekeyed[kind] += 1
        # The producer's partitioner places it with its pair (kafka.config.partitioner must match
        # the serving producers': librdkafka's consistent_random by default, as the driftline SDK).
        self._produce(topic, join_key.encode(), raw)
        return None

    def _route(self, model: str, segment: str) -> int:
        """The observations partition that owns (model, segment): stable across processes. Every
        value of a (model, attribute) goes to one partition, whose bank holds the attribute's
        cardinality guard (detectors/segments.py); cached per attribute, not per value. Every
        observation of a model not in the config goes to the admission partition, whose bank
        admits `max_models` for the fleet (not cached: model names come from event content)."""
        if model not in self.settings.models:
            return self.admission_partition
        attr = attribute_of(segment)
        dest = self._routes.get((model, attr))
        if dest is None:
            dest = self._routes[(model, attr)] = zlib.crc32(f"{model}\x1f{attr}".encode()) % self.obs_partitions
        return dest

    @staticmethod
    def _obs_message(src: str, recs: list, partition: int) -> list:
        """The value of one observations message (format 3, see stream/ordering.py)."""
        return [src, recs, partition, None, None]

    def emit_fates(self, p: int, ip: IntakePartition, fates: list) -> None:
        """Fates made outside any message (expiry when a topic goes idle), under their own source."""
        ip.fate_seq += 1
        src = ip.epoch + "x"
        by_dest: dict[int, list] = {}
        for k, o in enumerate(fates):
            dest = self._routes.get((o.model, o.segment))
            if dest is None:
                dest = self._route(o.model, o.segment)
            by_dest.setdefault(dest, []).append(to_wire(ip.fate_seq, k, o))
        for dest, recs in by_dest.items():
            self.repartition.observations(src, p, dest, recs, None)
        ip.dirty = True

    def _apply(self, msg) -> None:
        q = msg.partition()
        bp = self.banks.get(q)
        if bp is None:
            return
        topic = msg.topic()
        if bp.quiet or bp.muted:
            bp.muted = self._quiet(bp, topic, msg.offset())
        ts_type, ts_ms = msg.timestamp()
        rp = self.repartition
        if rp.watching and rp.handed_over(q, msg):
            pass  # its records reached this bank in memory when they were sent (stream/repartition.py)
        else:
            sent_at = ts_ms / 1000.0 if ts_type != TIMESTAMP_NOT_AVAILABLE else None  # the sender's clock
            try:
                self.event_time.apply(bp, msg.value(), msg.headers(), sent_at)
            except UnknownFormat as exc:
                self._unknown_format(bp, msg, exc)
            if rp.watching:
                rp.applied(q, msg)  # a handover's marker: the pair goes in memory from here
        bp.positions[topic] = msg.offset() + 1
        bp.last_ts[topic] = ts_ms
        bp.dirty = True

    def _unknown_format(self, bp: BankPartition, msg, exc: UnknownFormat) -> None:
        """A message of a format this worker cannot read (a newer worker's, during an upgrade):
        skipped, counted, and dead-lettered with where it is, so that nothing stops and the skip
        is visible where refused input goes (docs/events.md)."""
        self.stats.unreadable_observations += 1
        if bp.muted:
            return  # rebuilding: dead-lettered when it was first read
        log.warning("observations partition %d offset %d skipped: %s", msg.partition(), msg.offset(), exc)
        self._produce(self.topics.dead_letters, msg.key(),
                      dead_letter_record(Invalid("observations", "unknown_format", str(exc), msg.value() or b""),
                                         topic=msg.topic(), partition=msg.partition(), offset=msg.offset()))

    def apply_observation(self, bp: BankPartition, held: HeldObservation) -> None:
        """Apply one observation to its bank; publish the detections it causes and dead-letter
        the inference it refuses (max_models)."""
        refused = self._refused
        hits = observe(bp.bank, held.observation, refused)
        if refused:
            if not bp.muted:  # muted: rebuilding, dead-lettered before
                pid = held.observation.prediction_id
                for inv in refused:
                    self._produce(self.topics.dead_letters, pid.encode() if type(pid) is str else None,
                                  dead_letter_record(inv, topic=self.topics.inferences, partition=held.partition,
                                                     offset=held.offset))
            refused.clear()
        if hits and not bp.muted:  # muted: rebuilding, these drift events were published before
            for rec in hits:
                d = rec.to_dict()
                d["source"] = f"{held.src}:{held.offset}:{held.index}"  # the same detection replayed carries the same id
                self._produce(self.topics.drift_events, f"{rec.model}\x1f{rec.segment}".encode(), orjson.dumps(d))
        bp.dirty = True

    def _produce(self, topic: str, key: bytes | None, value: bytes, partition: int = -1,
                 headers: list | None = None, timestamp: int = 0) -> None:
        """`timestamp`: the message's, in ms (0: the producer's clock now)."""
        if self.checkpointer.doomed is not None:
            return  # the open transaction will abort: its records would be discarded anyway
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, partition=partition, on_delivery=self._delivered,
                                      headers=headers, timestamp=timestamp)
                return
            except BufferError:  # the local queue is full (broker slow or away): wait, never drop
                try:
                    self.producer.poll(0.1)
                except (KafkaException, SystemError) as exc:
                    if not self.checkpointer.producer_failed(exc, f"producing to {topic}"):
                        raise
                    return
                if (self.stopping.is_set() and self.fatal is not None) or self.checkpointer.doomed is not None:
                    return
            except KafkaException as exc:
                if not self.checkpointer.producer_failed(exc, f"producing to {topic}"):
                    raise
                return

    def _delivered(self, err, msg) -> None:
        if err is None:
            return
        topic = msg.topic()
        self.stats.produce_failed(topic)
        if self.exactly_once:
            # The transaction holding this record cannot commit: abort it and rewind the state to
            # the last commit (the loop does it), so the record's effect is replayed, not lost.
            # (Also for a fatal error: after an outage the coordinator may have bumped the
            # producer's epoch; a truly fenced worker stops at its next commit or abort.)
            self.checkpointer.doom(f"delivery to {topic} failed: {err}")
            if err.fatal() or fenced(err):
                self.checkpointer.txn.expired()  # the producer itself is unusable: replaced at the rewind
            return
        # With infinite retries only a fatal or permanent error lands here. The state already
        # holds this record's effect, so checkpointing it would lose the record for good: stop,
        # and let the successor replay from the last checkpoint (crash-only).
        self.fatal = f"delivery to {topic} failed: {err}"

    def _consumer_error(self, err: KafkaError) -> None:
        self.broker.on_error(err)
        if err.fatal():
            self.fatal = f"consumer: {err}"
        else:  # transient (broker restart, ...): librdkafka reconnects by itself
            log.warning("consumer: %s", err)

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
            fresh = self.restorer.load(partitions)
            if fresh is None:
                return
            consumer.assign(partitions)
            self.event_time.assigned(partitions)
            if fresh:
                # Checkpoint new states at once: a successor must never find a partition without
                # one, or it would start empty at the committed offset and lose what the join held.
                self.checkpointer.round(force=True, only=fresh, rewind=False)
            self.stats.partitions = self.states.counts()
            self.stats.ownership += 1
            self.assigned_once = True
            self.rebalancing = False
            self.stats.restore_seconds = time.monotonic() - started
            log.info("assigned %d partitions (%d intake, %d bank) in %.2f s; %d events to replay",
                     len(partitions), len(self.intakes), len(self.banks), self.stats.restore_seconds,
                     self.stats.replayed)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self.lock:
            self.rebalancing = True
            states = self.states
            keys = {states.key_of(tp) for tp in partitions}
            if self.fatal is None:
                self.checkpointer.handover(keys)
            for key in keys:
                part = states.pop(key)
                if part is not None and not part.dirty:
                    states.parked[key] = part  # in case the same partitions come back
            self.stats.partitions = self.states.counts()
            self.stats.ownership += 1

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: drop our state, keep nothing parked.
        with self.lock:
            self.rebalancing = True
            for tp in partitions:
                self.states.pop(self.states.key_of(tp))
            self.states.parked.clear()
            self.stats.ownership += 1
            self.checkpointer.lost()
            log.warning("lost %d partitions (session timeout?); their state is dropped here", len(partitions))

def run_worker(settings, listen: str) -> int:
    """Provision topics, serve /metrics, run the loop until SIGTERM/SIGINT; returns the exit code."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.process_collector import ProcessCollector

    from driftline.stream.admin import ensure_topics
    from driftline.stream.exporter import DriftlineMetrics, EventTimeMetrics, WorkerMetrics, render
    from driftline.stream.http import StatusServer

    log.info("%s", settings.describe())
    tune_for_worker()  # a backlog's growth no longer sets off a full collection per quarter grown
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

    if os.environ.get(ENV_HTTP_UNBOUNDED) == "1":
        # bench/scrape_load.py's "before" figures only: a render per scrape, no connection cap,
        # no socket timeout (what /metrics did before it was bounded).
        server = StatusServer(listen, metrics, worker.readiness, max_connections=1_000_000, timeout=None,
                              cache_age=None).start()
    else:
        server = StatusServer(listen, metrics, worker.readiness, version=lambda: worker.stats.ownership).start()
    log.info("serving /metrics, /healthz, /readyz on http://%s", listen)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        return worker.run()
    finally:
        if bridge is not None:
            bridge.stop()
        server.stop()
