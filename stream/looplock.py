"""The lock between the worker's loop and the threads that read its state (/metrics, /readyz).

The loop holds it for a whole step: a batch of up to `worker.batch` messages, then up to
RELEASE_PER_STEP held observations released (stream/ordering.py), a second or more in a backlog.
A render takes it once per slice of segments (stream/exporter.py's `PacedBanks`) and per family,
dozens of times. A reader that only gets in between steps waits a step per slice: under a
one-worker backlog a render took tens of seconds (scrapes 10 s apart, one timed out at 5 s), past
Prometheus' default scrape timeout, so a worker catching up looked down exactly when it mattered.

So a reader says that it waits, and the loop, at `yield_to_readers()` points between records,
hands the lock over and takes it back once the reader is through its slice: a reader waits at
most one record's work plus the others' slices. With no reader waiting, a yield point costs one
attribute read.
"""
from __future__ import annotations

import threading
import time

HANDOVER_WAIT = 0.05  # seconds the loop waits for a waiting reader to take the lock (then goes on)


class LoopLock:
    """A re-entrant lock (`with lock:`) whose owner can hand it to waiting threads mid-step."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._count = threading.Lock()  # guards `_waiting` (a lost update would make every yield wait)
        self._waiting = 0  # threads blocked in __enter__

    def __enter__(self) -> "LoopLock":
        if self._lock.acquire(blocking=False):
            return self
        with self._count:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self._waiting -= 1
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    @property
    def waiting(self) -> int:
        return self._waiting

    def yield_to_readers(self) -> bool:
        """Called by the owner between records: if a thread waits, let it in (the lock is released
        fully, whatever the owner's nesting, and taken back at the same depth). Returns whether
        it handed over. Only where the state is consistent for a reader: between two records."""
        waiting = self._waiting
        if not waiting:
            return False
        saved = self._lock._release_save()  # as threading.Condition.wait does with an RLock
        try:
            deadline = time.monotonic() + HANDOVER_WAIT
            # Until one of them holds it (it stops counting as waiting), without the GIL.
            while self._waiting >= waiting and time.monotonic() < deadline:
                time.sleep(0.0001)
        finally:
            self._lock._acquire_restore(saved)
        return True
