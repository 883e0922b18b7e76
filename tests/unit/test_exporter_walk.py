"""/metrics never holds the worker's lock for the whole walk (stream/exporter.py, PacedBanks).

The "loop" here is what the worker's loop does between two holds of the scrape: it mutates the
banks (new segments, evictions, a partition given up). It runs inside the lock's release, so the
test sees every hold of the scrape and what was read during it, deterministically.
"""
from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from driftline.detectors.bank import DetectorBank
from driftline.detectors.spec import ModelSpec
from driftline.stream.exporter import ENV_WHOLE_WALK, WALK_SLICE, DriftlineMetrics
from driftline.stream.settings import parse_settings

SPEC = ModelSpec(name="m", segments=("user",), max_segments=100_000, features={"x": "numeric"})


def filled_bank(n: int, start: int = 0) -> DetectorBank:
    bank = DetectorBank(lambda m: SPEC)
    for i in range(start, start + n):
        bank.observe_inference("m", f"user=u{i}", {"x": float(i % 5)}, 1, None, float(i), f"p{i}")
        bank.observe_outcome("m", f"user=u{i}", 1, 1, float(i), f"p{i}")
    return bank


class CountingLock:
    """The worker's RLock, counting the segment reads of each outermost hold by the scraper, and
    running `between()` (the loop's turn) whenever the scraper lets the lock go."""

    def __init__(self, between=lambda: None):
        self._lock = threading.RLock()
        self.depth = 0
        self.holds: list[int] = []
        self.between = between

    def __enter__(self):
        self._lock.acquire()
        self.depth += 1
        if self.depth == 1:
            self.holds.append(0)
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        self._lock.release()
        if self.depth == 0:
            self.between()
        return False

    def read(self) -> None:
        assert self.depth > 0, "a segment read without the lock"
        self.holds[-1] += 1


def counting(bank: DetectorBank, lock: CountingLock) -> DetectorBank:
    get = bank.get

    def counted_get(model, segment):
        lock.read()
        return get(model, segment)

    bank.get = counted_get
    return bank


def samples(body: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_a_scrape_holds_the_lock_for_one_slice_at_a_time_and_sees_every_segment():
    lock = CountingLock()
    bank = counting(filled_bank(1200), lock)
    body = DriftlineMetrics(parse_settings({}, env={}), banks=lambda: (bank,), lock=lock).render()
    # Every read under the lock, never more than one slice's worth per hold.
    assert max(lock.holds) <= WALK_SLICE and len(lock.holds) >= 1200 // WALK_SLICE
    got = samples(body)
    assert sum(v for (n, lv), v in got.items() if n == "driftline_labeled_total") == 1200
    assert len([1 for (n, lv) in got if n == "driftline_accuracy"]) == 1200
    assert got[("driftline_segments", ())] == 1200


def test_the_whole_walk_variant_holds_it_once(monkeypatch):
    # The bench's "before" (ENV_WHOLE_WALK): the check above must fail on it, or it checks nothing.
    monkeypatch.setenv(ENV_WHOLE_WALK, "1")
    lock = CountingLock()
    bank = counting(filled_bank(1000), lock)
    DriftlineMetrics(parse_settings({}, env={}), banks=lambda: (bank,), lock=lock).render()
    assert len(lock.holds) == 1  # one hold for the whole render


def test_the_loop_may_evict_add_and_give_up_partitions_between_slices():
    banks = [filled_bank(700), filled_bank(700, start=10_000)]
    owned = list(banks)
    turns, read_second = {"n": 0}, {"n": 0}
    get = banks[1].get

    def get_second(model, segment):
        read_second["n"] += 1
        return get(model, segment)

    banks[1].get = get_second

    def loop_turn():  # what the worker's loop does while the scraper waits
        turns["n"] += 1
        if turns["n"] == 3:
            late = {f"user=u{i}" for i in range(500, 700)}  # not read yet: gone mid-walk
            banks[0].drop_segments(lambda model, segment: segment in late)
            banks[0].observe_inference("m", "user=new", {"x": 1.0}, 1, None, 2000.0, "pn")
        if read_second["n"] and banks[1] in owned:
            owned.remove(banks[1])  # the second partition moves to another worker mid-walk

    lock = CountingLock(loop_turn)
    body = DriftlineMetrics(parse_settings({}, env={}), banks=lambda: tuple(owned), lock=lock).render()
    got = samples(body)
    users = {dict(lv)["segment"] for (n, lv) in got if n == "driftline_accuracy"}
    # No evicted segment is read; the given-up bank's segments after the move are not exported.
    assert not any(u in users for u in (f"user=u{i}" for i in range(500, 700)))
    assert users >= {f"user=u{i}" for i in range(500)}
    moved = {f"user=u{i}" for i in range(10_000, 10_700)}
    assert 0 < len(users & moved) < 700  # read until the move, not after
