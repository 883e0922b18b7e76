"""Rolling accuracy and rolling regression error over the last N labelled events.

River's `utils.Rolling(metrics.Accuracy, window_size=1000)` gives the same numbers but holds
~187 KB per window (a deque of Python objects plus a confusion matrix); with thousands of
segments the window, not the detectors, would decide a worker's memory. These keep one byte
(accuracy) or two doubles (regression) per slot in a ring buffer: ~1 KB / ~16 KB per window.
`tests/unit/test_accuracy.py` checks they agree with River's.
"""
from __future__ import annotations

import math
from array import array
from driftline.detectors.state import persistent


@persistent("accuracy.rolling")
class RollingAccuracy:
    """Share of correct predictions among the last `window` labelled events.

    >>> acc = RollingAccuracy(window=3)
    >>> for ok in (True, False, True, True):
    ...     acc.update(ok)
    >>> round(acc.get(), 4)
    0.6667
    """

    __slots__ = ("window", "_ring", "_pos", "_n", "_correct")

    def __init__(self, window: int = 1000):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        # Grown by `update` up to the window, a ring from then on: most segments of a
        # high-cardinality model never see a window of labels. (Checkpoints before 18e hold a
        # full-size ring from the start: it is written in place, as before.)
        self._ring = bytearray()
        self._pos = 0
        self._n = 0
        self._correct = 0

    def update(self, correct: bool) -> None:
        bit = 1 if correct else 0
        pos = self._pos
        ring = self._ring
        if self._n == self.window:
            self._correct -= ring[pos]
            ring[pos] = bit
        else:
            self._n += 1
            if pos == len(ring):
                ring.append(bit)
            else:
                ring[pos] = bit
        self._correct += bit
        self._pos = pos + 1 if pos + 1 < self.window else 0

    @property
    def count(self) -> int:
        return self._n

    def get(self) -> float:
        return self._correct / self._n if self._n else 0.0


@persistent("accuracy.rolling_error")
class RollingError:
    """Mean absolute error and root mean squared error over the last `window` labelled events."""

    __slots__ = ("window", "_abs", "_sq", "_pos", "_n", "_sum_abs", "_sum_sq")

    def __init__(self, window: int = 1000):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._abs = array("d", bytes(8 * window))
        self._sq = array("d", bytes(8 * window))
        self._pos = 0
        self._n = 0
        self._sum_abs = 0.0
        self._sum_sq = 0.0

    def update(self, error: float) -> None:
        a = abs(error)
        s = a * a
        pos = self._pos
        if self._n == self.window:
            self._sum_abs -= self._abs[pos]
            self._sum_sq -= self._sq[pos]
        else:
            self._n += 1
        self._abs[pos] = a
        self._sq[pos] = s
        self._sum_abs += a
        self._sum_sq += s
        pos += 1
        if pos == self.window:
            pos = 0
            # Subtracting floats for ever accumulates rounding error: re-sum once per lap.
            self._sum_abs = math.fsum(self._abs)
            self._sum_sq = math.fsum(self._sq)
        self._pos = pos

    @property
    def count(self) -> int:
        return self._n

    def mae(self) -> float:
        return max(self._sum_abs, 0.0) / self._n if self._n else 0.0

    def rmse(self) -> float:
        return math.sqrt(max(self._sum_sq, 0.0) / self._n) if self._n else 0.0
