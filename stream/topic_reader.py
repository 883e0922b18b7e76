"""Reading a topic from its start to its readable end: one routine for every such read.

The worker reads the checkpoint manifests (compacted) at each restore and the baselines topic
(compacted) at start; the live demo reads the run's drift events to print the explanation. All
three must stop at the *readable* end, which for a read_committed consumer is not the high
watermark: records of a transaction still open sit above the last stable offset, unreadable
yet, and a committed transaction leaves a marker at an offset no message has. So a partition is
done at its end-of-partition event (librdkafka's, `enable.partition.eof`), or when the last
offset before the high watermark has been read (a topic written without transactions).
"""
from __future__ import annotations

import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition


class TopicUnreadable(RuntimeError):
    """The topic does not exist (yet) or its metadata carries an error."""


def partitions_of(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    """The topic's partitions, from the broker's metadata; TopicUnreadable when it has none."""
    md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise TopicUnreadable(f"topic {topic!r}: {md.error if md is not None and md.error else 'missing'}")
    return sorted(md.partitions)


def _bounds(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int] | None:
    # On a busy machine a single watermark request can time out: retried until the deadline.
    while True:
        left = deadline - time.monotonic()
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(min(left, 5.0), 0.5))
        except KafkaException:
            if left <= 0:
                return None
            time.sleep(0.2)


def read_to_end(consumer: Consumer, topic: str, partitions: list[int], on_message: Callable[[object], None],
                timeout: float) -> bool:
    """Assign `partitions` of `topic` from their first offset and give every message to
    `on_message` until each partition's readable end; True if every end was reached within
    `timeout` seconds. Messages carrying an error other than end-of-partition are given to
    `on_message` too: the caller decides whether an error is fatal. The consumer stays assigned
    where it stopped, so a caller may go on polling it for what is published later."""
    deadline = time.monotonic() + timeout
    ends: dict[int, int] = {}
    start: list[TopicPartition] = []
    for p in partitions:
        bounds = _bounds(consumer, TopicPartition(topic, p), deadline)
        if bounds is None:
            return False
        low, high = bounds
        start.append(TopicPartition(topic, p, low))
        if high > low:
            ends[p] = high
    consumer.assign(start)
    done = {p for p in partitions if p not in ends}
    while len(done) < len(partitions):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for msg in consumer.consume(1000, min(0.5, left)):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                else:
                    on_message(msg)
                continue
            on_message(msg)
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                done.add(msg.partition())
    return True
