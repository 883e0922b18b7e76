"""The worker's garbage-collector settings: young collections far rarer, cycles still collected."""
import gc

import pytest

from driftline.stream.collector_policy import WORKER_YOUNG_THRESHOLD, tune_for_worker


@pytest.fixture
def tuned():
    before = tune_for_worker()
    yield before
    gc.set_threshold(*before)


class _Node:
    __slots__ = ("peer", "__weakref__")


def test_only_the_young_threshold_is_raised(tuned):
    young, older, oldest = gc.get_threshold()
    assert young == WORKER_YOUNG_THRESHOLD > tuned[0]
    assert (older, oldest) == tuned[1:]


def test_cycles_are_still_collected_without_an_explicit_collect(tuned):
    """What the worker would leak if the policy turned the collector off: cyclic garbage
    (River's PageHinkley after a detection is one). Pairs that point at each other, 4x the threshold
    of objects (at least 3 young collections whatever else the process allocates: with 3x, a CI run
    got 2, freeing 99,996 and 99,998), none collected by hand: the collector must have freed most
    of them on its own."""
    gc.collect()
    collected = []
    gc.callbacks.append(lambda phase, info: collected.append(info["collected"]) if phase == "stop" else None)
    try:
        for _ in range(2 * WORKER_YOUNG_THRESHOLD):
            a, b = _Node(), _Node()
            a.peer, b.peer = b, a
    finally:
        gc.callbacks.pop()
    assert len(collected) >= 3  # collections ran, at the young threshold's pace
    assert sum(collected) >= 2 * WORKER_YOUNG_THRESHOLD  # and freed the pairs
    # nearly a threshold's worth each (a few young objects are the test's own, alive)
    assert sum(collected) >= 0.95 * len(collected) * WORKER_YOUNG_THRESHOLD
