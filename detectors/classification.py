"""Classification quality of one (model, segment): confusion counts, outcome costs, and rolling
precision, recall, F1, ROC AUC, log loss and calibration error for the model's positive class.

Fed one labelled outcome at a time (`ClassQuality.update`), read at scrape time. Bounds, and why:

- Classes are bounded per (model, segment): the model's configured `classes`, or else the first
  `max_classes` distinct classes seen; any other class is counted as `__other__` (and counted
  in `folded`), because class names become label values of `driftline_confusion_total` and a
  model that predicts free text must not make a series per word.
- The rolling metrics keep, per segment, one byte per labelled outcome and one double per
  scored outcome over the model's `accuracy_window` (~9 KB at the default 1000): the window
  decides memory, as for rolling accuracy (detectors/accuracy.py).

The configuration (`QualitySpec`) is passed to every call and never stored: a snapshot holds
state only, and a restored segment follows the config it is restored under.

>>> spec = QualitySpec(positive_class="1")
>>> q = ClassQuality(spec, window=1000)
>>> for p, y, s in ((1, 1, 0.9), (1, 0, 0.8), (0, 1, 0.3), (0, 0, 0.1)):
...     q.update(spec, 1000, p, y, s)
>>> q.confusion[("1", "0", False)], round(q.precision(), 3), round(q.recall(), 3), round(q.roc_auc(), 3)
(1, 0.5, 0.5, 0.75)
"""
from __future__ import annotations

from array import array

import numpy as np

from driftline.detectors.segments import format_value
from driftline.detectors.spec import OutcomeCosts, QualitySpec  # noqa: F401 (re-exported)
from driftline.detectors.state import persistent

OTHER_CLASS = "__other__"
MAX_CLASS_CHARS = 64  # a longer class name is not a label value anyone can read: `__other__`
ECE_BINS = 10  # equal-width bins of the positive-class probability
# Probabilities are clipped to [EPS, 1 - EPS] in the log loss, as scikit-learn does for float64.
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)

# Bits of one labelled outcome in the window ring.
PRED_POS, ACTUAL_POS = 1, 2


# A class as a label value: the segment formatting (1.0 -> "1", True -> "true"); the same
# function, not a wrapper of it (a call less per class name on the hot path).
class_name = format_value


@persistent("classification.quality")
class ClassQuality:
    """Confusion counts, cost totals and the rolling positive-class window of one segment."""

    __slots__ = ("classes", "confusion", "folded", "cost", "value", "codes", "pos", "n",
                 "tp", "fp", "fn", "probs", "ys", "ppos", "pn", "scored")

    def __init__(self, spec: QualitySpec, window: int = 1000):
        self.classes: dict[str, None] = dict.fromkeys(spec.classes)  # admitted, in order
        self.confusion: dict[tuple[str, str, bool], int] = {}  # (predicted, actual, correct)
        self.folded = 0  # class names (predicted or actual) counted as __other__
        self.cost = 0.0
        self.value = 0.0
        w = window
        # Positive-class window: one code per labelled outcome (PRED_POS | ACTUAL_POS bits),
        # grown by `_window` up to the window (checkpoints before 18e: full-size from the start).
        self.codes = bytearray()
        self.pos = 0
        self.n = 0
        self.tp = self.fp = self.fn = 0
        # Scored outcomes: P(positive) and whether the actual class was positive.
        # Grown by `_scored` up to the window (a ring from then on): a segment with few scored
        # outcomes does not hold a full window of 8-byte floats.
        self.probs = array("d")
        self.ys = bytearray()
        self.ppos = 0
        self.pn = 0
        self.scored = 0  # scored outcomes ever (a version for scrape-time caches)

    # -- feeding ---------------------------------------------------------------------------------
    def update(self, spec: QualitySpec, window: int, prediction: object, label: object, score: float | None) -> None:
        """One labelled outcome; `window` is the model's accuracy_window."""
        pred, actual = class_name(prediction), class_name(label)
        costs = spec.costs
        if costs is not None:
            c = costs.of(pred, actual)  # by the true class names: a cost table may name any class
            if c >= 0.0:
                self.cost += c
            else:
                self.value -= c
        # `correct` as driftline_correct_total judges it (1 == 1.0 == True), so the confusion's
        # diagonal is selectable in PromQL, which cannot compare two labels of one series.
        classes = self.classes  # admitted names are themselves: `_admit` only for the others
        key = (pred if pred in classes else self._admit(spec, pred), actual if actual in classes else self._admit(spec, actual),
               prediction == label)
        self.confusion[key] = self.confusion.get(key, 0) + 1
        positive = spec.positive_class
        if positive is None:
            return
        pp, ap = pred == positive, actual == positive
        self._window(window, pp, ap)
        if score is not None:
            # A predicted-class confidence is turned into P(positive) for binary models only
            # (the config requires two `classes` for it).
            p = score if spec.score_of == "positive_class" or pp else 1.0 - score
            self._scored(window, p, ap)

    def _admit(self, spec: QualitySpec, name: str) -> str:
        classes = self.classes
        if name in classes:
            return name
        if not spec.classes and len(classes) < spec.max_classes and len(name) <= MAX_CLASS_CHARS:
            classes[name] = None
            return name
        self.folded += 1
        return OTHER_CLASS

    def _window(self, window: int, pp: bool, ap: bool) -> None:
        codes = self.codes
        size = len(codes)
        if size != window and not (size < window and self.pos == size):  # growing, or full: a ring
            # restored under a config with another window: start again
            codes, self.pos, self.n, self.tp, self.fp, self.fn = bytearray(), 0, 0, 0, 0, 0
            self.codes = codes
        code = (PRED_POS if pp else 0) | (ACTUAL_POS if ap else 0)
        pos = self.pos
        if self.n == window:
            self._count(codes[pos], -1)
        else:
            self.n += 1
        if pos == len(codes):  # growing: see __init__
            codes.append(code)
        else:
            codes[pos] = code
        self._count(code, 1)
        self.pos = 0 if pos + 1 == window else pos + 1

    def _count(self, code: int, d: int) -> None:
        if code == PRED_POS | ACTUAL_POS:
            self.tp += d
        elif code == PRED_POS:
            self.fp += d
        elif code == ACTUAL_POS:
            self.fn += d

    def _scored(self, window: int, p: float, ap: bool) -> None:
        pos = self.ppos
        size = len(self.probs)
        if size < window and pos == size:  # still growing: append
            self.probs.append(p)
            self.ys.append(1 if ap else 0)
            self.pn += 1
            self.ppos = 0 if pos + 1 == window else pos + 1
            self.scored += 1
            return
        if size != window:  # restored under a config with another window: start again
            self.probs, self.ys, self.ppos, self.pn = array("d", bytes(8 * window)), bytearray(window), 0, 0
            pos = 0
        self.probs[pos] = p
        self.ys[pos] = 1 if ap else 0
        if self.pn < window:
            self.pn += 1
        self.ppos = 0 if pos + 1 == window else pos + 1
        self.scored += 1

    # -- reading (scrape time); None where a metric is undefined on the window -------------------
    def precision(self) -> float | None:
        d = self.tp + self.fp
        return self.tp / d if d else None

    def recall(self) -> float | None:
        d = self.tp + self.fn
        return self.tp / d if d else None

    def f1(self) -> float | None:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else None

    def _scored_window(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.pn
        return (np.frombuffer(self.probs, dtype=np.float64, count=n),
                np.frombuffer(self.ys, dtype=np.uint8, count=n).astype(bool))

    def roc_auc(self) -> float | None:
        """Exact ROC AUC of the window (Mann-Whitney U with tied scores sharing their rank)."""
        p, y = self._scored_window()
        n1 = int(y.sum())
        n0 = len(y) - n1
        if n1 == 0 or n0 == 0:
            return None
        _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        ranks = (ends - (counts - 1) / 2.0)[inverse]
        return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))

    def log_loss(self) -> float | None:
        p, y = self._scored_window()
        if not len(p):
            return None
        p = np.clip(p, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
        return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))

    def calibration_error(self) -> float | None:
        """Expected calibration error of P(positive): over ECE_BINS equal-width bins (a value on
        an edge goes to the lower bin), the share-weighted gap between the bin's mean
        probability and its share of positives."""
        p, y = self._scored_window()
        n = len(p)
        if not n:
            return None
        bins = np.searchsorted(np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1], p, side="left")
        count = np.bincount(bins, minlength=ECE_BINS)
        gap = np.abs(np.bincount(bins, weights=y.astype(np.float64), minlength=ECE_BINS)
                     - np.bincount(bins, weights=p, minlength=ECE_BINS))
        return float(gap.sum() / n) if count.any() else None

    @property
    def window_count(self) -> int:
        return self.n

    @property
    def scored_count(self) -> int:
        return self.pn


def confidence_is_score(spec: QualitySpec) -> bool:
    """Whether an event's score is itself the confidence in its predicted class (see `confidence`)."""
    return spec.positive_class is None or spec.score_of == "predicted_class"


def confidence(spec: QualitySpec, prediction: object, score: float) -> float:
    """The model's confidence in the class it predicted, from an event's score."""
    if confidence_is_score(spec):
        return score
    return score if class_name(prediction) == spec.positive_class else 1.0 - score  # P(positive) of a binary model
