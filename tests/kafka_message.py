"""A stand-in for confluent-kafka's `Message`, for feeding a real `Worker` without a broker.

What the worker's loop reads of a consumed message (Worker._process and _apply): its topic,
partition, offset, key, value, headers, a create-time timestamp, and no error. Used by
tests/unit/test_repartition.py (what the worker would produce, read back as its consumer would
hand it over) and bench/profile_hot_path.py (a recorded stream through the worker's path).
"""
from __future__ import annotations

from confluent_kafka import TIMESTAMP_CREATE_TIME


class Message:
    """One consumed message; `ts_ms` its timestamp in milliseconds (TIMESTAMP_CREATE_TIME)."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_ts", "_headers")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, ts_ms: int,
                 headers: list | None = None):
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._ts, self._headers = key, value, ts_ms, headers

    def error(self):
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._ts)

    def headers(self) -> list | None:
        return self._headers
