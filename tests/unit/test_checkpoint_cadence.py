"""When the worker's checkpoint rounds (with exactly-once: its commits) are due: the pure rule."""
from __future__ import annotations

from driftline.stream.checkpoint import CheckpointCadence


def test_the_first_round_is_due_at_once_and_a_cheap_one_every_interval():
    c = CheckpointCadence(interval=1.0, longest=10.0)
    assert c.due(0.0)
    c.done(0.0, took=0.05)
    assert not c.due(0.99) and c.due(1.0)


def test_a_slow_round_while_busy_is_spaced_ten_times_its_duration():
    c = CheckpointCadence(interval=1.0, longest=100.0)
    c.done(0.0, took=0.5)
    c.wait(0.1)  # a backlog: the consumer always had input ready
    assert not c.due(4.9) and c.due(5.0)


def test_once_the_input_is_drained_a_slow_round_is_due_sooner():
    """A backlog read to its end: what the worker produced waits for the commit (its own stage 2
    included), and the round now costs waiting time, not processing."""
    c = CheckpointCadence(interval=1.0, longest=100.0)
    c.done(0.0, took=2.0)
    c.wait(1.0)
    assert not c.due(19.0)  # waited less than a round takes: still busy
    c.wait(1.5)
    assert c.due(4.0) and not c.due(3.9)  # twice the round's duration
    c.done(4.0, took=0.2)
    c.wait(0.5)
    assert c.due(5.0)  # a cheap round: every interval


def test_a_transaction_never_waits_past_the_longest_gap():
    """With exactly-once the gap is bounded by a third of the transaction timeout: a 2.4 s round
    spaced 24 s apart outlived the broker's 30 s timeout and the worker was fenced."""
    c = CheckpointCadence(interval=1.0, longest=10.0)
    c.done(0.0, took=2.4)
    assert not c.due(9.9) and c.due(10.0)
    assert CheckpointCadence(interval=20.0, longest=10.0).longest == 20.0  # never below interval


def test_a_failed_round_is_retried_after_the_interval():
    c = CheckpointCadence(interval=1.0, longest=10.0)
    c.done(0.0, took=3.0)
    c.done(5.0, took=0.0)  # failed (broker away): retried after one interval
    assert c.due(6.0)
