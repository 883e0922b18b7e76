"""The worker's lock hands itself to a waiting reader (a /metrics render) between records."""
from __future__ import annotations

import threading
import time

import pytest

from driftline.stream.looplock import LoopLock

STEP = 20_000  # records in one loop step (RELEASE_PER_STEP in a backlog)


def _wait_until(cond, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _loop_step(lock: LoopLock, seen: list, yield_every: int | None, held: threading.Event) -> None:
    """One step of the loop: STEP records under the lock, a yield point every `yield_every`."""
    with lock:
        held.set()
        # The reader is blocked before the step's work begins.
        _wait_until(lambda: lock.waiting == 1)
        for n in range(1, STEP + 1):
            seen.append(n)
            if yield_every and not n % yield_every:
                lock.yield_to_readers()


@pytest.mark.parametrize("yield_every", [256, None])
def test_a_reader_gets_in_mid_step_only_at_yield_points(yield_every):
    lock = LoopLock()
    seen: list[int] = []
    got_in_at: list[int] = []
    held = threading.Event()

    def reader() -> None:
        with lock:  # what a slice of a /metrics render does
            got_in_at.append(len(seen))

    loop = threading.Thread(target=_loop_step, args=(lock, seen, yield_every, held))
    t = threading.Thread(target=reader)
    loop.start()
    held.wait(10)
    t.start()
    loop.join(30)
    t.join(30)
    assert len(seen) == STEP
    if yield_every is None:
        # Without yield points the reader waits for the whole step: what a render did, per slice.
        assert got_in_at == [STEP]
    else:
        # In at a yield point, while the step still had most of its work to do (the first one
        # unless the machine did not run the reader within the hand-over wait).
        assert got_in_at[0] % yield_every == 0 and got_in_at[0] < STEP // 2, got_in_at


def test_yield_keeps_the_owners_nesting_and_costs_nothing_without_readers():
    lock = LoopLock()
    with lock:
        with lock:  # the loop's own nested holds (an RLock)
            assert lock.yield_to_readers() is False  # nobody waits: no hand-over
            inside: list[str] = []

            def reader() -> None:
                with lock:
                    inside.append("reader")

            t = threading.Thread(target=reader)
            t.start()
            _wait_until(lambda: lock.waiting == 1)
            assert lock.yield_to_readers() is True
            t.join(10)
            assert inside == ["reader"]
            assert lock.waiting == 0
        # Still held once more by this thread: another thread cannot take it.
        other = threading.Thread(target=lambda: inside.append(lock._lock.acquire(blocking=False)))
        other.start()
        other.join(10)
        assert inside[-1] is False
    assert lock._lock.acquire(blocking=False)  # fully released at the end
    lock._lock.release()
