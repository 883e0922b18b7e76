"""The worker's event-time collaborator: pauses, heartbeats and ordered release (Kafka side).

The decisions are `stream/eventtime.py`'s pure objects; this module feeds them what the consumer
knows (positions, cached high watermarks), applies their answers (`Consumer.pause`/`resume`),
publishes each input partition's progress on the observations topic, and measures what the
metrics report. One instance per worker; it reads the worker's partition tables and never owns
state that a checkpoint must carry (the buffers live in the bank partitions, the read times in
the intake partitions).

Wire format of an observations message: the value is a JSON array, and from format 3 on the
message carries its format in the Kafka header `driftline-format` (`OBS_FORMAT`, ASCII digits):

    [src, recs]                                   format 1 (no header): observations, applied on arrival
    [src, recs, partition, progress, idle]        format 2 (no header): observations of input `partition`
                                                  (progress and idle null), or a heartbeat
                                                  (src "", recs []) with its progress and idleness
    header driftline-format: 3, value as format 2  format 3: the records' kinds and fields are
                                                  detectors/observations.py's record types

`recs` are wire records `[offset, index, kind, *fields]` (detectors/observations.py). The version
is a header, not a field of the value, so that a format-2 worker, which ignores headers, still
reads format-3 messages during a rolling upgrade; a format-3 worker reads untagged messages as
format 1 or 2 (records already on the topic), and refuses a message tagged with any other
format (a newer worker's): it is dead-lettered (`UnknownFormat`, docs/events.md) and skipped.
"""
from __future__ import annotations

import logging
import math
import time

import orjson
from confluent_kafka import TopicPartition

from driftline.stream.eventtime import INFERENCES, LABELS, SourceAlignment, WatermarkBuffer, held_observation

OBS_FORMAT = 3
FORMAT_HEADER = "driftline-format"
FORMAT_HEADERS = [(FORMAT_HEADER, str(OBS_FORMAT).encode())]  # what every observations message carries
HEARTBEAT_EVERY = 0.05  # seconds between progress heartbeats: the release latency they add
ALIGN_EVERY = 0.05  # seconds between pause/resume decisions
PAUSE_REASONS = ("align", "skew")  # what SourceAlignment.decide gives as a pause's reason
# Held observations released (applied) per loop step at most, over all banks: bounds how long
# one step keeps the loop from polling, heartbeats and its commit. A backlog's bank whose
# watermark jumped released 120k at once (20+ s in one call on a loaded machine): the open
# transaction outlived worker.transaction_timeout, the broker aborted it, the worker died fenced.
# Well above what one step's input batch makes (~2 per event), so stage 2 catches up (5,000
# starved it: held grew until stage 1 had read everything).
RELEASE_PER_STEP = 20_000

log = logging.getLogger("driftline.ordering")


class UnknownFormat(ValueError):
    """An observations message tagged with a format this worker does not read."""

    def __init__(self, declared: bytes | None):
        self.declared = declared
        shown = declared.decode("ascii", "replace")[:16] if isinstance(declared, bytes) else repr(declared)
        super().__init__(f"observations message in format {shown} (header {FORMAT_HEADER}); this worker reads "
                         f"formats 1 to {OBS_FORMAT}: a newer driftline wrote it, upgrade this worker")


def message_format(headers: list | None) -> int | None:
    """The format an observations message declares in its headers; None when untagged (formats 1
    and 2, told apart by the value). Raises UnknownFormat for any format but OBS_FORMAT."""
    if headers:
        for name, value in headers:
            if name == FORMAT_HEADER:
                if value != FORMAT_HEADERS[0][1]:
                    raise UnknownFormat(value)
                return OBS_FORMAT
    return None


class EventTimeStats:
    """What /metrics reports of event-time alignment (read at scrape time, under the lock)."""

    def __init__(self) -> None:
        self.paused_seconds: dict[tuple[str, int, str], float] = {}  # (topic, partition, reason)
        self.intake_progress: dict[int, float] = {}  # input partition -> progress (event time)
        self.bank_watermark: dict[int, float] = {}  # observations partition -> watermark
        self.held: dict[int, tuple[int, int]] = {}  # observations partition -> (count, bytes)
        self.late: dict[int, int] = {}
        self.early: dict[int, int] = {}


class EventTimeDriver:
    def __init__(self, worker, sources: int, clock=time.monotonic):
        self.worker = worker
        self.sources = sources  # input partitions: every one may feed every bank
        ws = worker.settings.worker
        self.ws = ws
        self.clock = clock
        self.topic_of = {INFERENCES: worker.topics.inferences, LABELS: worker.topics.labels}
        self.stats = EventTimeStats()
        self._next_align = 0.0
        self._next_heartbeat = 0.0
        self._paused_at: dict[tuple[str, int], tuple[float, str]] = {}  # (topic, p) -> (since, reason)
        self.unaligned = False  # assigned since the last tick: no batch before the next one
        self._allowance = RELEASE_PER_STEP  # releases left in this loop step
        self._more = False  # a release stopped at the allowance: the next step continues it
        # Which bank is served first this step: the allowance is shared, and the first bank served
        # could take all of it step after step while the others applied nothing (a backlog's
        # `__all__` bank counted everything while a segment bank had applied none: 7e2938e).
        self._turn = 0

    # -- state objects ------------------------------------------------------------------------------
    def new_alignment(self) -> SourceAlignment:
        return SourceAlignment(self.ws.align_window, self.ws.max_skew, self.ws.idle_timeout)

    def new_buffer(self, state: dict | None = None) -> WatermarkBuffer:
        now = self.clock()
        # A source's idleness said this long after a wake is fresh (WatermarkBuffer's doc).
        confirm = self.ws.idle_timeout
        if state is None:
            return WatermarkBuffer(self.sources, self.ws.max_held, self.ws.max_held_bytes, now, confirm)
        return WatermarkBuffer.from_state(state, self.sources, self.ws.max_held, self.ws.max_held_bytes, now, confirm)

    def assigned(self, partitions: list) -> None:
        """After an assignment: every input partition starts unpaused (resumed explicitly, as
        the pause state of a partition assigned again is the client's business otherwise), and
        with nothing known of its topics (a parked partition taken back would keep what it knew
        before the rebalance). Its first batch is processed only after one `tick` (Worker.run):
        the alignment has then seen the topics not caught up, so the intake's clocks do not treat
        a topic idle at the stop as idle (its backlog unread), and every bank has heard that the
        partition is not idle before its first observations, which the bank would otherwise
        release at once, as an idle source's, moving its watermark past what the backlog holds."""
        now = self.clock()
        for (topic, p), (since, reason) in self._paused_at.items():
            self._add_paused(topic, p, reason, now - since)
        self._paused_at.clear()
        for ip in self.worker.intakes.values():
            ip.alignment = self.new_alignment()
        self.unaligned = True  # the next batch waits for an alignment step and a heartbeat
        inputs = set(self.topic_of.values())
        mine = [tp for tp in partitions if tp.topic in inputs]
        if mine:
            self.worker.consumer.resume(mine)

    # -- stage 2: one observations message -----------------------------------------------------
    def apply(self, bp, value: bytes, headers: list | None, sent_at: float | None = None) -> None:
        """Decode one observations message for bank partition `bp` and apply, with
        `Worker.apply_observation`, what it and the watermark let go (records arrive there
        de-duplicated); `sent_at` is the message's Kafka timestamp in seconds (the sender's clock).
        Raises UnknownFormat, before applying anything, for a message of a format it does not read."""
        tagged = message_format(headers)
        msg = orjson.loads(value)
        apply = self.worker.apply_observation
        buffer = bp.buffer
        if tagged is None and len(msg) == 2:  # format 1: no progress on the wire, apply in arrival order
            src, recs = msg
            for held in buffer.add_records(None, src, self._fresh(bp, src, recs), 0):
                apply(bp, held)
            return
        src, recs, p, progress, idle = msg
        self._take(bp, src, recs, p, progress, idle, len(value), sent_at, False)

    def apply_local(self, bp, src: str, recs: list, p: int, nbytes: int, sent_at: float) -> None:
        """What `apply` does with an observations message, handed over in memory by its sender
        (stream/repartition.py: this worker owns both ends): its records (the sender's own lists,
        not decoded from the topic: those applied at once are decoded from a copy, as the topic
        would have given one), its size on the wire `nbytes`, its Kafka timestamp `sent_at`."""
        self._take(bp, src, recs, p, None, None, nbytes, sent_at, True)
        bp.dirty = True

    def note_local(self, bp, p: int, progress: float | None, idle: bool, said_at: float) -> None:
        """What `apply` does with a progress heartbeat of input partition p handed over in memory;
        its copy on the topic (and any older heartbeat of p) is then not applied again."""
        self._take(bp, "", (), p, progress, idle, 0, said_at, False, local=True)
        bp.dirty = True

    def _take(self, bp, src: str, recs, p: int, progress, idle, nbytes: int, sent_at: float | None,
              copy: bool, local: bool = False) -> None:
        apply = self.worker.apply_observation
        buffer = bp.buffer
        now = self.clock()
        if recs:
            size = nbytes // len(recs) + 1
            late = buffer.late
            # Counters, and late records (counted by the buffer), apply now; the rest wait.
            for held in buffer.add_records(p, src, self._fresh(bp, src, recs), size, sent_at, now, copy):
                apply(bp, held)
            if buffer.late != late:
                self._warn_late(bp, p, buffer.late - late, now)
        buffer.note(p, progress, idle, now, sent_at, local)
        self._apply_released(bp, now)

    def _warn_late(self, bp, p: int, n: int, now: float) -> None:
        """Say why the order broke: late observations are the number that differs from replay,
        and what each source had told the bank is what explains them (rate-limited, stream/logs.py)."""
        q = next((q for q, b in self.worker.banks.items() if b is bp), -1)
        log.warning("observations partition %d: %d observations from input partition %d arrived behind its "
                    "watermark %.3f and were applied out of event-time order (driftline_observations_late_total); "
                    "what the sources had said: %s", q, n, p, bp.buffer.floor, bp.buffer.describe(now))

    @property
    def releasing(self) -> bool:
        """Observations the watermark passed wait for the next loop step (which should not wait)."""
        return self._more

    def _apply_released(self, bp, now: float) -> None:
        """Apply what `bp`'s buffer releases now (within the step's allowance), in order, letting a
        waiting /metrics render in every 256 (a long release holds the worker's lock)."""
        apply = self.worker.apply_observation
        yield_to_readers = self.worker.lock.yield_to_readers
        for n, entry in enumerate(self._released(bp.buffer, now), 1):
            apply(bp, held_observation(entry))
            if not n & 255:
                yield_to_readers()

    def _released(self, buffer, now: float) -> list:
        """What `buffer` releases now, within this loop step's allowance (RELEASE_PER_STEP)."""
        out = buffer.release(now, self._allowance)
        self._allowance -= len(out)
        if self._allowance <= 0:
            self._more = True
        return out

    def _in_turn(self, items: list) -> list:
        """`items` (one per bank partition, in partition order) starting with this step's first."""
        k = self._turn % len(items) if items else 0
        return items[k:] + items[:k]

    def _fresh(self, bp, src: str, recs: list) -> list:
        """Records not applied before from `src`: a replay re-sends what a bank has (de-dup)."""
        out = bp.fresh(src, recs)
        self.worker.stats.deduplicated += len(recs) - len(out)
        return out

    # -- the loop's periodic work ----------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        if now >= self._next_align or self.unaligned:
            self._next_align = now + ALIGN_EVERY
            self._align(now)
        if now >= self._next_heartbeat or self.unaligned:
            self._next_heartbeat = now + HEARTBEAT_EVERY
            self._heartbeat(now)
            self._release(now)
            self._refresh_stats(now)
        elif self._more:
            self._release(now)
        self.unaligned = False
        self._allowance = RELEASE_PER_STEP  # the next loop step's
        self._turn += 1

    def _caught_up(self, ip, p: int) -> dict[str, bool]:
        out = {}
        consumer = self.worker.consumer
        for kind, topic in self.topic_of.items():
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except Exception:  # noqa: BLE001 - unknown: not caught up (never idle by mistake)
                high = -1
            pos = ip.positions.get(topic)
            # Read to the end, past transaction markers (stream/clients.py, ReadableEnds).
            out[kind] = high >= 0 and pos is not None and self.worker.ends.read_to_end(topic, p, pos, high)
        return out

    def fleet_min(self, now: float) -> float | None:
        """The slowest input partition's progress, as this worker's banks hear it, the partitions
        it owns at their live progress (WatermarkBuffer.lowest_progress says why; None: no bank)."""
        local = {p: ip.alignment.progress(ip.read_time, now) for p, ip in self.worker.intakes.items()}
        lows = [bp.buffer.lowest_progress(now, local) for bp in self.worker.banks.values()]
        lows = [x for x in lows if x is not None]
        return min(lows) if lows else None

    def _align(self, now: float) -> None:
        worker = self.worker
        fleet = self.fleet_min(now)
        pause, resume = [], []
        for p, ip in worker.intakes.items():
            al = ip.alignment
            al.observe(now, self._caught_up(ip, p), {k: ip.positions.get(t) for k, t in self.topic_of.items()})
            for kind in (INFERENCES, LABELS):
                # The join's clock of an idle stream follows the other's (Intake.set_idle).
                idle = al.idle(kind, now)
                if idle != (kind in ip.intake.idle):
                    fates = ip.intake.set_idle(kind, idle)
                    if fates:
                        worker.emit_fates(p, ip, fates)
            before = dict(al.pausing)
            after = al.decide(ip.read_time, now, fleet)
            for kind in (INFERENCES, LABELS):
                topic = self.topic_of[kind]
                if kind in after and kind not in before:
                    pause.append(TopicPartition(topic, p))
                    self._paused_at[(topic, p)] = (now, after[kind])
                elif kind not in after and kind in before:
                    resume.append(TopicPartition(topic, p))
                    since, reason = self._paused_at.pop((topic, p), (now, before[kind]))
                    self._add_paused(topic, p, reason, now - since)
        if pause:
            worker.consumer.pause(pause)
        if resume:
            worker.consumer.resume(resume)

    def _add_paused(self, topic: str, p: int, reason: str, seconds: float) -> None:
        key = (topic, p, reason)
        self.stats.paused_seconds[key] = self.stats.paused_seconds.get(key, 0.0) + seconds

    def _heartbeat(self, now: float) -> None:
        worker = self.worker
        send = worker.repartition.heartbeat
        # A heartbeat a bank of this worker gets in memory releases there at once: its own banks
        # in turn, then the others' (through the topic).
        owned = sorted(worker.banks)
        order = self._in_turn(owned) + [q for q in range(worker.obs_partitions) if q not in worker.banks]
        for p, ip in worker.intakes.items():
            progress, idle = ip.alignment.progress(ip.read_time, now)
            value = orjson.dumps(["", [], p, progress, idle])
            key = (ip.epoch + "h").encode()  # the sender, for a bank that got it in memory too
            for q in order:
                send(p, q, key, value, progress, idle)  # stream/repartition.py

    def _release(self, now: float) -> None:
        self._more = False
        for _, bp in self._in_turn(sorted(self.worker.banks.items())):
            self._apply_released(bp, now)

    def _refresh_stats(self, now: float) -> None:
        st = self.stats
        st.intake_progress = {}
        for p, ip in self.worker.intakes.items():
            # Every owned partition's pause counters exist from the start (at 0), so that a rate
            # over them reads 0, not "no data", until a first pause.
            for topic in self.topic_of.values():
                for reason in PAUSE_REASONS:
                    st.paused_seconds.setdefault((topic, p, reason), 0.0)
            progress, _ = ip.alignment.progress(ip.read_time, now)
            if progress is not None:
                st.intake_progress[p] = progress
        st.bank_watermark, st.held, st.late, st.early = {}, {}, {}, {}
        for q, bp in self.worker.banks.items():
            buf = bp.buffer
            if math.isfinite(buf.floor):
                st.bank_watermark[q] = buf.floor
            st.held[q] = (buf.held, buf.held_bytes)
            st.late[q] = buf.late
            st.early[q] = buf.early
        for (topic, p), (since, reason) in self._paused_at.items():
            self._add_paused(topic, p, reason, now - since)
            self._paused_at[(topic, p)] = (now, reason)
