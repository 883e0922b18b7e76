"""Turn a categorical stream into a number that the mean-change detectors can watch.

Signal choice (documented in docs/detectors.md): the *surprisal* of each value,
-log p_ref(value), where p_ref are the category frequencies learnt from the segment's first
`reference_size` values (Laplace-smoothed so unseen categories get a finite, large surprisal).
The mean surprisal of a window is the cross-entropy of the live distribution against the
reference: it moves when categories change share, and jumps when new categories appear. One
scalar per value keeps the cost at one detector update per feature, whatever the number of
categories.

>>> s = CategorySurprisal(reference_size=4)
>>> [s.transform(v) for v in "aabb"]
[None, None, None, None]
>>> round(s.transform("a"), 3), round(s.transform("zzz"), 3)
(0.847, 1.946)
"""
from __future__ import annotations

import math
from driftline.detectors.state import persistent

# Past this many distinct categories in the reference, the rest share one bucket: a
# categorical feature with unbounded values (an id) must not grow memory without bound.
MAX_REFERENCE_CATEGORIES = 1000


@persistent("categorical.surprisal")
class CategorySurprisal:
    __slots__ = ("reference_size", "_counts", "_seen", "_surprisal", "_unseen")

    def __init__(self, reference_size: int = 500):
        if reference_size < 1:
            raise ValueError("reference_size must be >= 1")
        self.reference_size = reference_size
        self._counts: dict[str, int] = {}
        self._seen = 0
        self._surprisal: dict[str, float] | None = None
        self._unseen = 0.0

    @property
    def learning(self) -> bool:
        return self._surprisal is None

    def transform(self, value: object) -> float | None:
        """The value's surprisal, or None while the reference is still being learnt."""
        key = value if type(value) is str else str(value)
        table = self._surprisal
        if table is not None:
            return table.get(key, self._unseen)
        counts = self._counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_REFERENCE_CATEGORIES:
            counts[key] = 1
        self._seen += 1
        if self._seen >= self.reference_size:
            self._freeze()
        return None

    def _freeze(self) -> None:
        # Laplace smoothing with one extra pseudo-category for everything unseen.
        total = self._seen + len(self._counts) + 1
        self._surprisal = {k: -math.log((c + 1) / total) for k, c in self._counts.items()}
        self._unseen = -math.log(1 / total)
        self._counts = {}
