"""The worker's settings for Python's cyclic garbage collector (and `driftline replay`'s, while it runs).

A backlog grows the worker's state by about three containers per event (held observations,
waiting predictions, segments): with Python's default thresholds (700, 10, 10) that growth sets
off a young collection every 700 containers and a full one, which walks everything the process
holds, each time the long-lived objects grew by a quarter. Measured on the demo backlog (one
worker, 100k pairs, gc.callbacks): 1.5 s of a 17 s run in the collector, 1.1 s of it in 13 full
collections.

The worker creates almost no cyclic garbage (the whole of such a run: ~1,100 objects, most of
them import-time classes and argparse; then ~30 River PageHinkley detectors replaced after a
detection), so it can collect far less often without holding garbage for long. It keeps the
collector on and the older generations' ratios: only the young generation's threshold is raised,
so cycles are still collected, 100,000 new containers at a time (a few MiB at most). Under it
the same kind of run spent 0.56 s of ~9 s in the collector: 111 young collections (0.34 s), 10
of the middle generation (0.08 s), 1 full one (0.13 s).
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

# A young collection per 100k net new containers. 1 worker on one demo backlog (bench/perf.py's
# worker_throughput), thresholds set at start, 4 rotated rounds each, medians: 700 (Python's
# default) 15,476 events/s, 20k 15,948, 100k 16,733, the collector off 17,280. The worker with
# this module against the one without, 8 alternating pairs: median ratio 1.17 (0.93 to 1.27).
WORKER_YOUNG_THRESHOLD = 100_000


def tune_for_worker() -> tuple[int, int, int]:
    """Sets the worker's thresholds; returns the ones it replaced (a test puts them back)."""
    before = gc.get_threshold()
    _, older, oldest = before
    gc.set_threshold(WORKER_YOUNG_THRESHOLD, older, oldest)
    return before


@contextlib.contextmanager
def worker_thresholds() -> Iterator[None]:
    """The worker's thresholds for the duration of a block, then the ones before: `driftline
    replay` (a library call too, so it puts them back) grows its state as a backlog worker does."""
    before = tune_for_worker()
    try:
        yield
    finally:
        gc.set_threshold(*before)
