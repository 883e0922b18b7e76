"""The partition states a worker owns, keyed by a typed key.

Each input partition p has a stage-1 state (`IntakePartition`: the join, what it read of each
topic) and each observations partition q a stage-2 state (`BankPartition`: the detectors, the
de-duplication marks). A `PartitionKey` names one: (stage, partition). On the wire, in the
checkpoint topics, it is the string `GROUP/STAGE/PARTITION` (stream/checkpoint.py): that string
is made and read here only, so checkpoints written by older workers restore unchanged.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Union

from confluent_kafka import TopicPartition

from driftline.detectors.bank import DetectorBank
from driftline.detectors.observations import WIRE_INDEX, WIRE_OFFSET
from driftline.detectors.state import encode_state
from driftline.stream.eventtime import INFERENCES, LABELS
from driftline.stream.pipeline import Intake

INTAKE = "intake"  # stage 1: input partition p of the inference and label topics
BANK = "bank"  # stage 2: observations partition q
# Sources remembered per bank for de-duplication (an entry per intake epoch and topic).
MAX_SOURCES = 256


class PartitionKey(NamedTuple):
    """Which partition state: the `stage` (INTAKE or BANK) and its partition number."""

    stage: str
    partition: int

    def checkpoint_key(self, group: str) -> str:
        """The key of its checkpoint in the checkpoint topics: `GROUP/STAGE/PARTITION`."""
        return f"{group}/{self.stage}/{self.partition}"

    @classmethod
    def from_checkpoint_key(cls, key: str) -> "PartitionKey":
        """The inverse of `checkpoint_key` (a group id may itself hold slashes)."""
        stage, partition = key.rsplit("/", 2)[-2:]
        if stage not in (INTAKE, BANK):
            raise ValueError(f"checkpoint key {key!r} names no stage (intake or bank)")
        return cls(stage, int(partition))


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
            mark = (r[WIRE_OFFSET], r[WIRE_INDEX])
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


PartitionState = Union[IntakePartition, BankPartition]


class PartitionStates:
    """The states this worker owns, one table per stage (`intakes`, `banks`: partition -> state,
    read directly by the hot path), and those `parked` at a revoke in case the same partitions
    come back."""

    def __init__(self, group: str, observations_topic: str):
        self.group = group
        self.observations_topic = observations_topic
        self.intakes: dict[int, IntakePartition] = {}
        self.banks: dict[int, BankPartition] = {}
        self.parked: dict[PartitionKey, PartitionState] = {}

    def key_of(self, tp: TopicPartition) -> PartitionKey:
        """The state that reads `tp`: the bank of an observations partition, else the intake."""
        return PartitionKey(BANK if tp.topic == self.observations_topic else INTAKE, tp.partition)

    def name(self, key: PartitionKey) -> str:
        """`key` as its checkpoint is named (and as logs name it)."""
        return key.checkpoint_key(self.group)

    def table(self, stage: str) -> dict:
        return self.intakes if stage == INTAKE else self.banks

    def get(self, key: PartitionKey) -> PartitionState | None:
        return self.table(key.stage).get(key.partition)

    def pop(self, key: PartitionKey) -> PartitionState | None:
        return self.table(key.stage).pop(key.partition, None)

    def items(self) -> Iterator[tuple[PartitionKey, PartitionState]]:
        """Every owned state with its key: the intakes, then the banks."""
        for p, part in self.intakes.items():
            yield PartitionKey(INTAKE, p), part
        for q, part in self.banks.items():
            yield PartitionKey(BANK, q), part

    def __len__(self) -> int:
        return len(self.intakes) + len(self.banks)

    def counts(self) -> dict[str, int]:
        return {INTAKE: len(self.intakes), BANK: len(self.banks)}

    def clear(self) -> None:
        """Drop every state, parked ones too (a rewind reloads them from their checkpoints)."""
        self.intakes.clear()
        self.banks.clear()
        self.parked.clear()

    def positions(self) -> list[TopicPartition]:
        """The next offset to read of every topic partition an owned state reads."""
        return [TopicPartition(topic, key.partition, off) for key, part in self.items()
                for topic, off in part.positions.items()]
