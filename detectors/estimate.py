"""Label-free accuracy: an estimate from the model's calibrated confidence, and a check that the
labels, when they come, still agree with it.

Per (model, segment), fed the confidence in the predicted class of every prediction and, later,
of every labelled one:

1. Calibration: the first `reference` labelled outcomes with a score (the model's
   `accuracy_window`) fill `BINS` equal-width bins of confidence with (count, correct); their
   per-bin accuracies made monotone by pool-adjacent-violators (isotonic regression over the
   bins) map a confidence to P(correct). Until then the map is the identity (the raw
   confidence is taken as calibrated), so an estimate exists from the first prediction.
2. Estimate: the mean calibrated confidence of the last `window` predictions, labelled or not:
   `estimated()`. O(BINS) at scrape time from a ring of bin indices.
3. Check: over the last `window` labelled outcomes, the realized accuracy against the mean
   calibrated confidence they had (their expected accuracy). `bound()` is 3 standard errors:
   sampling (sum of p(1 - p)) plus the calibration's own (each bin's accuracy from its
   reference count, weighted by the recent predictions' mix of bins). `departure()` is
   (realized - expected) in bound units: beyond +-1 the model's scores no longer mean what
   they meant on the reference (concept drift).

The baseline profile is not used for calibration: it keeps the score's distribution but not
its joint distribution with correctness, which calibration needs.

No clock, no I/O; state ~3 KB per segment at a window of 1000.
"""
from __future__ import annotations

from array import array

from driftline.detectors.state import persistent

BINS = 20
Z = 3.0  # standard errors in the bound: ~0.3% of windows beyond it by chance on a stable model


def bin_of(confidence: float) -> int:
    i = int(confidence * BINS)
    return BINS - 1 if i >= BINS else (0 if i < 0 else i)


def isotonic(counts: list[int], correct: list[int]) -> list[float]:
    """Pool-adjacent-violators on bin accuracies weighted by counts; empty bins take their
    neighbours' values (the bin's centre before any value, as the identity map would)."""
    blocks: list[list[float]] = []  # [weight, weighted sum, first bin, last bin]
    for i in range(BINS):
        if counts[i]:
            blocks.append([counts[i], correct[i], i, i])
            while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] > blocks[-1][1] / blocks[-1][0]:
                w, s, _, last = blocks.pop()
                blocks[-1][0] += w
                blocks[-1][1] += s
                blocks[-1][3] = last
    if not blocks:
        return [(i + 0.5) / BINS for i in range(BINS)]
    out = [0.0] * BINS
    for w, s, first, last in blocks:
        for i in range(first, last + 1):
            out[i] = s / w
    # Empty bins between and beyond: carry the last fitted value forward (first: backward).
    filled = [i for i in range(BINS) if counts[i]]
    for i in range(BINS):
        if not counts[i]:
            below = [j for j in filled if j < i]
            out[i] = out[below[-1]] if below else out[filled[0]]
    return out


@persistent("estimate.accuracy")
class AccuracyEstimate:
    """See the module docstring. `window` and `reference` are the model's accuracy_window."""

    __slots__ = ("ref_counts", "ref_correct", "ref_n", "calib", "pred_ring", "pred_pos", "pred_n", "pred_counts",
                 "lab_p", "lab_ok", "lab_pos", "lab_n", "sum_p", "sum_var", "sum_ok")

    def __init__(self, window: int = 1000):
        self.ref_counts = [0] * BINS
        self.ref_correct = [0] * BINS
        self.ref_n = 0
        self.calib: list[float] | None = None  # P(correct) per bin once the reference is full
        self.pred_ring = bytearray()  # grown by `predicted` up to the window (before 18e: full-size)
        self.pred_pos = 0
        self.pred_n = 0
        self.pred_counts = [0] * BINS
        # The check's window, allocated by `labelled` once calibrated (most segments of a
        # high-cardinality model never are: 4.5 KiB each saved at window 500).
        self.lab_p = array("d")
        self.lab_ok = bytearray()
        self.lab_pos = 0
        self.lab_n = 0
        self.sum_p = 0.0
        self.sum_var = 0.0
        self.sum_ok = 0

    def p_correct(self, confidence: float) -> float:
        return self.calib[bin_of(confidence)] if self.calib is not None else confidence

    @property
    def calibrated(self) -> bool:
        return self.calib is not None

    # -- feeding ---------------------------------------------------------------------------------
    def predicted(self, confidence: float, window: int) -> None:
        """A prediction's confidence in its class (labelled or not)."""
        ring = self.pred_ring
        size = len(ring)
        if size != window and not (size < window and self.pred_pos == size):  # growing, or full: a ring
            ring, self.pred_pos, self.pred_n, self.pred_counts = bytearray(), 0, 0, [0] * BINS
            self.pred_ring = ring
        b = bin_of(confidence)
        pos = self.pred_pos
        if self.pred_n == window:
            self.pred_counts[ring[pos]] -= 1
        else:
            self.pred_n += 1
        if pos == len(ring):
            ring.append(b)
        else:
            ring[pos] = b
        self.pred_counts[b] += 1
        self.pred_pos = 0 if pos + 1 == window else pos + 1

    def labelled(self, confidence: float, correct: bool, window: int) -> None:
        """A labelled prediction: calibration data first, then the check's window."""
        if self.calib is None:
            b = bin_of(confidence)
            self.ref_counts[b] += 1
            self.ref_correct[b] += 1 if correct else 0
            self.ref_n += 1
            if self.ref_n >= window:
                self.calib = isotonic(self.ref_counts, self.ref_correct)
            return
        if len(self.lab_p) != window:
            self.lab_p, self.lab_ok, self.lab_pos, self.lab_n = array("d", bytes(8 * window)), bytearray(window), 0, 0
            self.sum_p = self.sum_var = 0.0
            self.sum_ok = 0
        p = self.calib[bin_of(confidence)]  # p_correct, calibrated (checked above)
        pos = self.lab_pos
        if self.lab_n == window:
            old = self.lab_p[pos]
            self.sum_p -= old
            self.sum_var -= old * (1.0 - old)
            self.sum_ok -= self.lab_ok[pos]
        else:
            self.lab_n += 1
        self.lab_p[pos] = p
        self.lab_ok[pos] = 1 if correct else 0
        self.sum_p += p
        self.sum_var += p * (1.0 - p)
        self.sum_ok += 1 if correct else 0
        pos += 1
        if pos == window:
            pos = 0
            self.sum_p = sum(self.lab_p)  # re-sum once per lap: no drift of float rounding
            self.sum_var = sum(q * (1.0 - q) for q in self.lab_p)
        self.lab_pos = pos

    # -- reading ---------------------------------------------------------------------------------
    def estimated(self) -> float | None:
        """Expected accuracy of the last `window` predictions, from their calibrated confidence."""
        if not self.pred_n:
            return None
        if self.calib is None:
            return sum((i + 0.5) / BINS * c for i, c in enumerate(self.pred_counts)) / self.pred_n
        return sum(p * c for p, c in zip(self.calib, self.pred_counts)) / self.pred_n

    def realized(self) -> float | None:
        return self.sum_ok / self.lab_n if self.lab_n else None

    def expected(self) -> float | None:
        return self.sum_p / self.lab_n if self.lab_n else None

    def bound(self) -> float | None:
        """Z standard errors of (realized - expected) over the labelled window."""
        n = self.lab_n
        if not n or self.calib is None:
            return None
        sampling = max(self.sum_var, 0.0) / (n * n)
        # The calibration's error: each bin's accuracy is a mean of its reference outcomes.
        calib = 0.0
        for b in range(BINS):
            c = self.ref_counts[b]
            if c and self.pred_counts[b]:
                p = self.calib[b]
                calib += (self.pred_counts[b] / max(self.pred_n, 1)) ** 2 * p * (1.0 - p) / c
        return Z * (sampling + calib) ** 0.5

    def departure(self) -> float | None:
        """(realized - expected) / bound over the labelled window: beyond +-1, concept drift."""
        b = self.bound()
        if b is None or b == 0.0:
            return None
        return (self.realized() - self.expected()) / b
