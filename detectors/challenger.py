"""Champion vs challenger on shadow traffic: pairs of graded predictions of one request, and an
anytime-valid confidence sequence on the challenger's accuracy minus the champion's.

Two pure objects:

- `ShadowPairs` (in the intake, next to the label join) waits, per request_id, for the graded
  outcomes of a challenger and of its champion, and returns a `Pair` when both are in. Bounds:
  an entry lives for the model's label TTL after its first graded outcome, and at most
  `max_pending` entries are kept (the oldest leave first); an outcome whose partner never came
  is counted as `unpaired`.
- `ChallengerComparison` (in the bank, per challenger segment) turns each pair into
  d = correct(challenger) - correct(champion) in {-1, 0, 1} and keeps a confidence sequence for
  the mean of d: the predictable-plug-in empirical-Bernstein sequence of Waudby-Smith & Ramdas
  ("Estimating means of bounded random variables by betting", JRSS-B 2023, Theorem 2) on
  x = (d + 1) / 2 in [0, 1]. It holds at every pair count at once with probability >= 1 - alpha,
  so watching it continuously (and stopping when it decides) keeps the error rate at alpha.
  Its running intersection is kept, so a decision, once made, stands. Variance-adaptive: when
  the two models mostly agree (d = 0), the interval shrinks much faster than Hoeffding's.

>>> cmp = ChallengerComparison()
>>> for i in range(4000):
...     cmp.update(1 if i % 10 == 0 else 0, 0, alpha=0.05)  # the challenger is right 10% more often
>>> cmp.decision(), round(cmp.delta(), 3), cmp.lower() > 0
(1, 0.1, True)
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Callable, Mapping

from driftline.detectors.state import persistent

# The cap on the betting fraction (the paper suggests 1/2 or 3/4): smaller is more robust to
# early variance estimates.
LAMBDA_CAP = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """A request both a challenger and its champion scored, both graded by its label."""

    challenger: str
    champion: str
    segments: tuple[str, ...]  # the challenger's segments of the request
    challenger_correct: bool
    champion_correct: bool
    timestamp: float


@persistent("challenger.graded")
class _Graded:
    __slots__ = ("correct", "segments", "paired")

    def __init__(self, correct: bool, segments: tuple[str, ...]):
        self.correct, self.segments, self.paired = correct, segments, False


@persistent("challenger.pairs")
class ShadowPairs:
    """Graded outcomes by request_id until their partner's comes (see the module docstring).

    `champion_of(model)` is the model's champion (None for none) and `challengers_of(model)` the
    models that name it champion: configuration, passed again after a restore (`bind`).
    """

    def __init__(self, champion_of: Callable[[str], str | None], challengers_of: Callable[[str], tuple[str, ...]],
                 ttl_for: Callable[[str], float], max_pending: int = 1_000_000):
        self.bind(champion_of, challengers_of, ttl_for)
        self.max_pending = max_pending
        self._requests: dict[str, dict[str, _Graded]] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0
        # (model, outcome) -> count: "uncompared" (a request_id on a model in no comparison),
        # "unpaired" (a graded outcome whose partner's never came). Exported as
        # driftline_shadow_outcomes_total.
        self.counts: dict[tuple[str, str], int] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("champion_of", "challengers_of", "ttl_for")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.champion_of = self.challengers_of = self.ttl_for = None  # set by bind()

    def bind(self, champion_of, challengers_of, ttl_for) -> "ShadowPairs":
        self.champion_of, self.challengers_of, self.ttl_for = champion_of, challengers_of, ttl_for
        return self

    def compared(self, model: str) -> bool:
        return self.champion_of(model) is not None or bool(self.challengers_of(model))

    def count(self, model: str, outcome: str) -> None:
        self.counts[(model, outcome)] = self.counts.get((model, outcome), 0) + 1

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, model: str, request_id: str, correct: bool, segments: tuple[str, ...],
            timestamp: float) -> list[Pair]:
        """One graded outcome of `model` for `request_id`; returns the pairs it completes."""
        entry = self._requests.get(request_id)
        if entry is None:
            entry = self._requests[request_id] = {}
            self._seq += 1
            heapq.heappush(self._deadlines, (timestamp + self.ttl_for(model), self._seq, request_id))
            while len(self._requests) > self.max_pending:
                self._forget(next(iter(self._requests)))
        if model in entry:
            return []  # graded twice (the join lets only one label grade a prediction): keep the first
        me = entry[model] = _Graded(correct, segments)
        pairs = []
        champion = self.champion_of(model)
        if champion is not None:
            theirs = entry.get(champion)
            if theirs is not None:
                pairs.append(Pair(model, champion, segments, correct, theirs.correct, timestamp))
                me.paired = theirs.paired = True
        for challenger in self.challengers_of(model):
            theirs = entry.get(challenger)
            if theirs is not None:
                pairs.append(Pair(challenger, model, theirs.segments, theirs.correct, correct, timestamp))
                me.paired = theirs.paired = True
        return pairs

    def expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, rid = heapq.heappop(heap)
            self._forget(rid)

    def _forget(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry:
            for model, g in entry.items():
                if not g.paired:
                    self.count(model, "unpaired")


@persistent("challenger.comparison")
class ChallengerComparison:
    """Paired accuracy difference of one challenger segment against its champion, with an
    anytime-valid confidence sequence (module docstring). O(1) time and ~100 bytes per segment."""

    __slots__ = ("n", "sum_d", "_sum_x", "_sum_sq", "_mu", "_var", "_sum_lam", "_sum_lam_x", "_sum_penalty",
                 "_lo", "_hi")

    def __init__(self) -> None:
        self.n = 0
        self.sum_d = 0
        self._sum_x = 0.0
        self._sum_sq = 0.0
        self._mu = 0.5  # the predictable estimates before the first pair
        self._var = 0.25
        self._sum_lam = 0.0
        self._sum_lam_x = 0.0
        self._sum_penalty = 0.0
        self._lo = 0.0  # running intersection, on x = (d + 1) / 2
        self._hi = 1.0

    def update(self, challenger_correct: bool | int, champion_correct: bool | int, alpha: float) -> None:
        d = int(bool(challenger_correct)) - int(bool(champion_correct))
        x = (d + 1) * 0.5
        t = self.n + 1
        log_term = math.log(2.0 / alpha)
        lam = min(math.sqrt(2.0 * log_term / (self._var * t * math.log(1.0 + t))), LAMBDA_CAP)
        v = 4.0 * (x - self._mu) ** 2
        self._sum_lam += lam
        self._sum_lam_x += lam * x
        self._sum_penalty += v * (-math.log1p(-lam) - lam) / 4.0
        self.n = t
        self.sum_d += d
        self._sum_x += x
        self._mu = (0.5 + self._sum_x) / (t + 1)
        self._sum_sq += (x - self._mu) ** 2
        self._var = (0.25 + self._sum_sq) / (t + 1)
        center = self._sum_lam_x / self._sum_lam
        radius = (log_term + self._sum_penalty) / self._sum_lam
        if center - radius > self._lo:
            self._lo = center - radius
        if center + radius < self._hi:
            self._hi = center + radius

    def delta(self) -> float:
        """Challenger accuracy minus champion accuracy on the paired requests so far."""
        return self.sum_d / self.n if self.n else 0.0

    def lower(self) -> float:
        return 2.0 * min(self._lo, self._hi) - 1.0

    def upper(self) -> float:
        return 2.0 * max(self._hi, self._lo) - 1.0

    def decision(self) -> int:
        """1: the challenger is better, -1: worse, 0: not decided yet (the interval holds 0)."""
        if self.lower() > 0.0:
            return 1
        if self.upper() < 0.0:
            return -1
        return 0


def comparisons(champions: Mapping[str, str]) -> tuple[Callable[[str], str | None], Callable[[str], tuple[str, ...]]]:
    """(champion_of, challengers_of) lookups from {challenger: champion}."""
    of: dict[str, list[str]] = {}
    for challenger, champion in champions.items():
        of.setdefault(champion, []).append(challenger)
    frozen = {k: tuple(sorted(v)) for k, v in of.items()}
    return champions.get, lambda m: frozen.get(m, ())
