"""Stage 1 to stage 2: the observations topic, and in memory where one worker owns both ends.

Every observation stage 1 (input partition p) makes belongs to the bank of one observations
partition q (`Worker._route`); so do p's progress heartbeats (stream/ordering.py). Every one of
them is written to the observations topic as before (format 3): the topic stays the partition's
history, which a successor reads after a crash and a rebuild replays (docs/guarantees.md, the
upgrade rule). When this worker owns q too, the `Repartitioner` also hands the message's records
straight to q's ordering buffer (`EventTimeDriver.apply_local`, `note_local`), with the same ids
(source, offset, index), the same de-duplication, ordering key, bytes and timestamps, and q's
bank skips the message when it reads it (`handed_over`): no decode, no de-duplication pass, and
no wait for the transaction's commit to see it.

A bank's de-duplication relies on seeing each source's observations in source-offset order, so a
pair (p, q) goes local only once nothing of p can still reach q first through the topic
(`Handover`, the rule): once this worker owns both ends, p's next heartbeat to q carries a
*marker* (header `driftline-handover`, a token no other marker has); what p sends q after it is
held here as well. Everything any worker wrote to q for p before (p's previous owners before
this worker was assigned p, this worker before the marker) lies before the marker on q's topic
partition, which the bank reads in offset order: when it has applied the marker, what was held
goes into the buffer and the pair is local; from then on the bank skips p's messages on the
topic (they come after the marker: copies of what it got in memory).

Exactly-once only: there a bank's checkpoint and the input offsets commit in one transaction with
the messages, so a record handed over in memory is in the bank's committed state exactly when
its message and the offsets that made it are committed, and an abort rewinds all of them. Any
change of ownership (assign, revoke, lost, rewind: `WorkerStats.ownership`) sends every pair back
to the topic; a bank then reads the copies of what it got in memory that it had not reached,
and skips them as it skips any replay: records by their de-duplication marks (counted in
`driftline_observations_deduplicated_total`), heartbeats by the sender's timestamp of the last
one it got in memory (`SourceMark.local_said`, checkpointed). Without transactions the
checkpoints of p and q are separate writes and the topic path stays (docs/guarantees.md).
"""
from __future__ import annotations

import itertools
import time
import uuid

import orjson

from driftline.stream.ordering import FORMAT_HEADERS

TOPIC, WAITING, LOCAL = "topic", "waiting", "local"
HANDOVER_HEADER = "driftline-handover"  # on a marker heartbeat: its token


class Handover:
    """Where input partition p's outputs for observations partition q go while this worker owns
    both: TOPIC until a marker is sent, WAITING (outputs held too) until q's bank has applied the
    marker from the topic, then LOCAL. Pure: fed the tokens of the messages the bank applies."""

    __slots__ = ("state", "token", "held")

    def __init__(self) -> None:
        self.state = TOPIC
        self.token: bytes | None = None  # the marker awaited
        self.held: list = []  # what p sent q after the marker, in order

    def mark(self, token: bytes) -> None:
        """A marker with `token` is being sent: p's outputs for q from now on are held too."""
        self.state = WAITING
        self.token = token
        self.held = []

    def applied(self, token: bytes | None) -> list | None:
        """q's bank applied a message of p from the topic that carries marker `token` (None: no
        marker): when it is this pair's, the pair goes local and the held outputs are returned,
        in order, for the bank; otherwise None."""
        if self.state != WAITING or token is None or token != self.token:
            return None
        self.state = LOCAL
        out, self.held = self.held, []
        return out

    def skips(self) -> bool:
        """Whether q's bank skips p's next message on the topic: once local, every message it reads
        of p lies after the marker, a copy of what it got in memory."""
        return self.state == LOCAL


class HeldRecords:
    """Records of one source sent in one observations message, held for the bank."""

    __slots__ = ("src", "recs", "nbytes", "sent_at")

    def __init__(self, src: str, recs: list, nbytes: int, sent_at: float):
        self.src, self.recs, self.nbytes, self.sent_at = src, recs, nbytes, sent_at


class HeldHeartbeat:
    """A progress heartbeat held for the bank."""

    __slots__ = ("progress", "idle", "said_at")

    def __init__(self, progress: float | None, idle: bool, said_at: float):
        self.progress, self.idle, self.said_at = progress, idle, said_at


def marker_of(headers: list | None) -> bytes | None:
    """The handover token an observations message carries, if any."""
    if headers:
        for name, value in headers:
            if name == HANDOVER_HEADER:
                return value
    return None


class Repartitioner:
    """Sends stage 1's outputs to stage 2 (module doc): `observations` and `heartbeat` from the
    intake side; `handed_over` and `applied` from the bank side as it reads the topic. `enabled`
    only with exactly-once."""

    def __init__(self, worker, enabled: bool):
        self.worker = worker
        self.enabled = enabled
        self.pairs: dict[tuple[int, int], Handover] = {}
        # q -> message key -> the pair: what the bank side looks a message up by.
        self.by_bank: dict[int, dict[bytes, Handover]] = {}
        self.watching = False  # some pair is not TOPIC: the bank side looks messages up
        self._ownership: int | None = None
        # Marker tokens unique across processes: a marker a previous owner of p wrote (same
        # message keys: a restored intake keeps its epoch) must never count as this worker's.
        self._tokens = (f"{uuid.uuid4().hex[:12]}-{n}".encode() for n in itertools.count())

    # -- the intake side --------------------------------------------------------------------------------
    def _pair(self, p: int, q: int) -> Handover | None:
        """The pair's handover while this worker owns both ends, None otherwise (the topic only)."""
        w = self.worker
        if w.stats.ownership != self._ownership:
            self._reset()
        h = self.pairs.get((p, q))
        if h is None:
            ip = w.intakes.get(p)
            if not self.enabled or q not in w.banks or ip is None:
                return None
            h = self.pairs[(p, q)] = Handover()
            self.by_bank.setdefault(q, {}).update({(ip.epoch + c).encode(): h for c in "ilxh"})
        return h

    def _reset(self) -> None:
        """Ownership changed: every pair starts over from the topic (what was held is on the
        topic too: the bank reads it there, or the state that made it is rewound)."""
        self.pairs.clear()
        self.by_bank.clear()
        self.watching = False
        self._ownership = self.worker.stats.ownership

    def observations(self, src: str, p: int, q: int, recs: list, per_message: int | None) -> None:
        """Wire records of source `src` (of input partition p) for q's bank, in source order, at
        most `per_message` per message (None: one message)."""
        w = self.worker
        h = self._pair(p, q)
        key, topic = src.encode(), w.topics.observations
        step = per_message or len(recs) or 1
        ts_ms = int(time.time() * 1000)  # the message's timestamp: the bank's `sent_at`, both ways
        for i in range(0, len(recs), step):
            chunk = recs[i:i + step]
            value = orjson.dumps(w._obs_message(src, chunk, p))
            w._produce(topic, key, value, q, FORMAT_HEADERS, ts_ms)
            if h is None or h.state == TOPIC:
                continue
            if h.state == LOCAL:
                w.event_time.apply_local(w.banks[q], src, chunk, p, len(value), ts_ms / 1000.0)
            else:
                h.held.append(HeldRecords(src, chunk, len(value), ts_ms / 1000.0))

    def heartbeat(self, p: int, q: int, key: bytes, value: bytes, progress: float | None, idle: bool) -> None:
        """Input partition p's progress heartbeat (`value` its message, `key` its message key) for q."""
        w = self.worker
        h = self._pair(p, q)
        ts_ms = int(time.time() * 1000)
        headers = FORMAT_HEADERS
        if h is not None:
            if h.state == TOPIC:  # both ends ours: this heartbeat is the marker
                token = next(self._tokens)
                h.mark(token)
                self.watching = True
                headers = FORMAT_HEADERS + [(HANDOVER_HEADER, token)]
            elif h.state == LOCAL:
                w.event_time.note_local(w.banks[q], p, progress, idle, ts_ms / 1000.0)
            else:
                h.held.append(HeldHeartbeat(progress, idle, ts_ms / 1000.0))
        w._produce(w.topics.observations, key, value, q, headers, ts_ms)

    # -- the bank side ----------------------------------------------------------------------------------
    def handed_over(self, q: int, msg) -> bool:
        """Whether q's bank got this topic message's content in memory already (it skips it)."""
        if self.worker.stats.ownership != self._ownership:
            self._reset()
            return False
        pairs = self.by_bank.get(q)
        if not pairs:
            return False
        h = pairs.get(msg.key())
        return h is not None and h.skips()

    def applied(self, q: int, msg) -> None:
        """q's bank applied `msg` from the topic: if it is a marker of a pair waiting for it, the
        pair goes local, what it held first."""
        token = marker_of(msg.headers())
        if token is None:
            return
        pairs = self.by_bank.get(q)
        h = pairs.get(msg.key()) if pairs else None
        held = h.applied(token) if h is not None else None
        if held is None:
            return
        w = self.worker
        bp = w.banks[q]
        p = next(pp for (pp, qq), hh in self.pairs.items() if hh is h)
        et = w.event_time
        for item in held:
            if type(item) is HeldHeartbeat:
                et.note_local(bp, p, item.progress, item.idle, item.said_at)
            else:
                et.apply_local(bp, item.src, item.recs, p, item.nbytes, item.sent_at)
