"""Partition states by typed key (stream/partitions.py) and their restore (stream/restorer.py),
without a broker: the key's encoding to and from the checkpoint key on the wire, the tables,
and a state's round trip through its snapshot and the restorer."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from driftline.detectors.state import Unreadable
from driftline.stream.partitions import BANK, INTAKE, BankPartition, IntakePartition, PartitionKey, PartitionStates
from driftline.stream.settings import parse_settings
from driftline.stream.worker import Worker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"


@pytest.mark.parametrize("group, key, text", [
    ("driftline", PartitionKey(INTAKE, 3), "driftline/intake/3"),
    ("driftline", PartitionKey(BANK, 12), "driftline/bank/12"),
    ("team/a", PartitionKey(BANK, 0), "team/a/bank/0"),  # a group id may hold slashes
])
def test_a_key_is_named_on_the_wire_as_older_workers_named_it(group, key, text):
    assert key.checkpoint_key(group) == text
    assert PartitionKey.from_checkpoint_key(text) == key
    assert PartitionStates(group, "obs").name(key) == text


@pytest.mark.parametrize("text", ["driftline/joins/3", "driftline/intake/x", "intake"])
def test_a_key_that_names_no_partition_state_is_refused(text):
    with pytest.raises(ValueError):
        PartitionKey.from_checkpoint_key(text)


class Part:
    def __init__(self, positions):
        self.positions = positions


def test_the_tables_by_key():
    states = PartitionStates("g", "t.observations")
    assert states.key_of(TopicPartition("t.inferences", 2)) == states.key_of(TopicPartition("t.labels", 2)) \
        == PartitionKey(INTAKE, 2)
    assert states.key_of(TopicPartition("t.observations", 2)) == PartitionKey(BANK, 2)
    states.intakes[2] = Part({"t.inferences": 10, "t.labels": 4})
    states.banks[5] = Part({"t.observations": 7})
    assert [key for key, _ in states.items()] == [PartitionKey(INTAKE, 2), PartitionKey(BANK, 5)]
    assert states.get(PartitionKey(BANK, 5)) is states.banks[5]
    assert states.get(PartitionKey(INTAKE, 5)) is None
    assert [(tp.topic, tp.partition, tp.offset) for tp in states.positions()] == [
        ("t.inferences", 2, 10), ("t.labels", 2, 4), ("t.observations", 5, 7)]
    assert states.counts() == {"intake": 1, "bank": 1} and len(states) == 2
    states.parked[PartitionKey(BANK, 5)] = states.pop(PartitionKey(BANK, 5))
    assert states.counts() == {"intake": 1, "bank": 0}
    states.clear()
    assert len(states) == 0 and not states.parked


@pytest.fixture()
def worker():
    with socket.socket() as s:  # nothing listens there: the clients are made, never used
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = parse_settings({"kafka": {"bootstrap": f"127.0.0.1:{port}", "partitions": 2, "group_id": "g"},
                               "worker": {"exactly_once": False}}, env={})
    w = Worker(settings, obs_partitions=2)
    yield w
    w.consumer.close()


def test_a_fresh_intake_restores_from_its_snapshot(worker):
    restorer = worker.restorer
    ip = restorer.fresh_partition(INTAKE, 0.0)
    ip.positions.update({"driftline.inferences": 42, "driftline.labels": 40})
    ip.fate_seq = 3
    back = restorer.restore(PartitionKey(INTAKE, 1), ip.snapshot(), 5.0)
    assert type(back) is IntakePartition
    assert (back.epoch, back.positions, back.fate_seq, back.checkpointed_at) == (ip.epoch, ip.positions, 3, 5.0)


def test_a_fresh_bank_restores_from_its_snapshot(worker):
    restorer = worker.restorer
    bp = restorer.fresh_partition(BANK, 0.0)
    bp.positions["driftline.observations"] = 9
    bp.seen["0123456789abi"] = (41, 0)
    back = restorer.restore(PartitionKey(BANK, 1), bp.snapshot(), 5.0)
    assert type(back) is BankPartition
    assert back.positions == {"driftline.observations": 9}
    assert {src: tuple(mark) for src, mark in back.seen.items()} == {"0123456789abi": (41, 0)}


def test_a_state_of_the_other_stage_is_rebuilt_not_resumed(worker):
    restorer = worker.restorer
    blob = restorer.fresh_partition(INTAKE, 0.0).snapshot()
    back = restorer.restore(PartitionKey(BANK, 0), blob, 0.0)
    assert type(back) is Unreadable and back.reason == "fields"


@pytest.mark.parametrize("stage, name", [(INTAKE, "dls1-intake.bin"), (BANK, "dls1-bank.bin")])
def test_format_1_checkpoints_are_rebuilt_from_history(worker, stage, name):
    """What driftline 0.1.0 wrote cannot be read: the restorer says so (the worker then replays
    the partition's retained history, tests/integration/test_checkpoint_upgrade.py)."""
    back = worker.restorer.restore(PartitionKey(stage, 0), (FIXTURES / name).read_bytes(), 0.0)
    assert type(back) is Unreadable
