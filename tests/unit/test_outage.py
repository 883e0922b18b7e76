"""The worker's broker-outage hold (stream/outage.py) and its consumer-lag refresh
(stream/clients.py ConsumerLag), without a broker.

The clients and the checkpointer are small recording stand-ins: these tests pin down what the
loop's collaborators call, in which order. That the calls do what they claim against a real
broker is what tests/integration/test_fault_tolerance.py checks (the 20 s outage, the broker
stop and start mid-stream).
"""
from __future__ import annotations

import threading

from confluent_kafka import TopicPartition

from driftline.stream.clients import ConsumerLag, ReadableEnds
from driftline.stream.outage import OutageHold
from driftline.stream.partitions import PartitionStates
from driftline.stream.stats import WorkerStats

ASSIGNED = [TopicPartition("inferences", 0), TopicPartition("observations", 0)]


class Broker:
    def __init__(self, down: bool = True, answers: bool = False):
        self.down, self.answers = down, answers

    def probe(self, consumer) -> bool:
        return self.answers


class Consumer:
    def __init__(self, calls: list):
        self.calls = calls

    def assignment(self):
        return list(ASSIGNED)

    def pause(self, partitions):
        self.calls.append(("pause", len(partitions)))

    def resume(self, partitions):
        self.calls.append(("resume", len(partitions)))


class Checkpointer:
    def __init__(self, calls: list, lock, rewind_clears: bool = True):
        self.calls, self.lock, self.rewind_clears = calls, lock, rewind_clears
        self.doomed: str | None = None

    def doom(self, why: str) -> None:
        self.doomed = self.doomed or why

    def skip_round(self, now: float) -> None:
        self.calls.append("skip_round")

    def rewind_locked(self, why: str, new_producer: bool = False) -> None:
        assert self.lock._is_owned()  # under the worker's lock
        self.calls.append(("rewind", why, new_producer))
        if self.rewind_clears:
            self.doomed = None


def hold(broker: Broker, enabled: bool = True, rewind_clears: bool = True, fatal=None):
    calls: list = []
    lock = threading.RLock()
    ck = Checkpointer(calls, lock, rewind_clears)
    return OutageHold(enabled, broker, Consumer(calls), ck, lock, lambda: fatal), calls


def test_an_outage_holds_the_input_and_fails_each_due_round_until_a_broker_answers():
    broker = Broker(down=True, answers=False)
    outage, calls = hold(broker)
    assert outage.active
    outage.ride_out(1.0)
    outage.ride_out(2.0)
    # Paused once, the open transaction doomed, no rewind while nobody answers.
    assert calls == [("pause", 2), "skip_round", "skip_round"]
    assert outage.holding and outage.checkpointer.doomed == "broker outage"

    broker.answers, broker.down = True, False
    assert outage.active  # still holding: the rewind comes first
    outage.ride_out(3.0)
    assert calls[3:] == ["skip_round", ("rewind", "broker outage", True), ("resume", 2)]
    assert not outage.holding and not outage.active


def test_the_input_stays_held_while_the_rewind_has_not_happened():
    outage, calls = hold(Broker(down=True, answers=True), rewind_clears=False)
    outage.ride_out(1.0)
    assert calls[-1] == ("rewind", "broker outage", True) and ("resume", 2) not in calls
    assert outage.holding and outage.active


def test_a_worker_stopping_on_a_fatal_error_is_not_resumed():
    outage, calls = hold(Broker(down=True, answers=True), fatal="fenced")
    outage.ride_out(1.0)
    assert ("resume", 2) not in calls and outage.holding


def test_without_transactions_there_is_no_hold():
    outage, calls = hold(Broker(down=True), enabled=False)
    assert not outage.active and calls == []


class Part:
    def __init__(self, positions: dict[str, int], last_ts: dict[str, int]):
        self.positions, self.last_ts = positions, last_ts


class Watermarks:
    """get_watermark_offsets(cached=True) of a consumer: (low, high) per partition."""

    def __init__(self, high: dict[tuple[str, int], int]):
        self.high = high
        self.asked = 0

    def get_watermark_offsets(self, tp, cached=False):
        assert cached  # never a request to the broker
        self.asked += 1
        return 0, self.high.get((tp.topic, tp.partition), -1)


def test_consumer_lag_is_what_is_left_to_read_and_how_old_the_last_read_is_while_more_waits():
    states = PartitionStates("g", "observations")
    states.intakes[0] = Part({"inferences": 90, "labels": 40}, {"inferences": 1_000_000, "labels": 1_004_000})
    states.banks[1] = Part({"observations": 7}, {"observations": 1_009_000})
    consumer = Watermarks({("inferences", 0): 100, ("labels", 0): 40})  # observations 1: high unknown
    stats = WorkerStats()
    lag = ConsumerLag(consumer, states, ReadableEnds(), stats, clock=lambda: 1_010.0, every=2.0)
    lag.refresh_if_due(5.0)
    assert stats.lag == {("inferences", 0): 10, ("labels", 0): 0}
    # 10 s since the last inference read, 10 waiting; labels caught up: 0.
    assert stats.lag_seconds == {("inferences", 0): 10.0, ("labels", 0): 0.0}
    asked = consumer.asked
    lag.refresh_if_due(6.9)  # not due before `every`
    assert consumer.asked == asked
    lag.refresh_if_due(7.0)
    assert consumer.asked == 2 * asked
