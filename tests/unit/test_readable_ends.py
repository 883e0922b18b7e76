"""ReadableEnds: where a read_committed consumer's partition ends (stream/clients.py).

The figures are librdkafka's own: the offsets a real read_committed consumer reported on the
real broker (open transaction: cached high watermark 6, last stable offset 4, EOF at 4; after
the commit: high 7, EOF at 7 while the last message is at 5, the marker at 6).
"""
from __future__ import annotations

import orjson

from driftline.stream.clients import ReadableEnds


def stats(topic: str, **ls_by_partition: int) -> str:
    parts = {str(p[1:]): {"partition": int(p[1:]), "ls_offset": ls, "hi_offset": ls + 2}
             for p, ls in ls_by_partition.items()}
    parts["-1"] = {"partition": -1, "ls_offset": -1001}  # librdkafka's internal UA partition
    return orjson.dumps({"topics": {topic: {"partitions": parts}}}).decode()


def test_records_of_an_open_transaction_are_not_lag():
    ends = ReadableEnds()
    ends.on_stats(stats("obs", p0=4))
    # Read everything readable (next offset 3, EOF at 4 past the commit marker); the cached
    # high watermark 6 counts two records of a transaction still open.
    ends.reached_end("obs", 0, 4)
    assert ends.behind("obs", 0, position=3, high=6) == 0


def test_a_commit_marker_after_the_last_message_is_not_lag():
    ends = ReadableEnds()
    ends.on_stats(stats("obs", p0=7))
    assert ends.behind("obs", 0, position=6, high=7) == 1  # no EOF seen yet: one offset unread
    ends.reached_end("obs", 0, 7)
    assert ends.behind("obs", 0, position=6, high=7) == 0


def test_committed_records_not_read_yet_are_lag():
    ends = ReadableEnds()
    ends.reached_end("obs", 0, 7)
    ends.on_stats(stats("obs", p0=107))  # 100 more committed since
    assert ends.behind("obs", 0, position=7, high=110) == 100
    ends.forget("obs", 0)  # a rewind: the old EOF says nothing about the new positions
    assert ends.behind("obs", 0, position=2, high=110) == 105


def test_without_statistics_the_high_watermark_stands_in():
    ends = ReadableEnds()
    assert ends.behind("in", 3, position=10, high=15) == 5
    ends.on_stats("not json")  # ignored
    ends.on_stats(stats("in", p3=12))
    assert ends.behind("in", 3, position=10, high=15) == 2
    assert ("in", -1) not in ends.stable


def test_read_to_end_never_trusts_a_stale_stable_offset():
    ends = ReadableEnds()
    ends.on_stats(stats("in", p0=10))  # a second old: 10 more arrived since (cached high 20)
    assert not ends.read_to_end("in", 0, position=10, high=20)
    ends.reached_end("in", 0, 20)  # the fetch reached the end, past a marker at 19
    assert ends.read_to_end("in", 0, position=19, high=20)
