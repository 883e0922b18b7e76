"""Typed wrappers over River's sequential change detectors.

Each wrapper has one job: feed a float, say whether this value completed a detection, and
expose the statistics an operator needs to judge how close a signal is to alarm. River's
`update()` returned a tuple in old versions and returns None since 0.19; we always read the
`drift_detected` property's field (`_drift_detected`, River 0.19-0.26) after `update()`.

>>> d = ADWINDetector()
>>> hits = [i for i, x in enumerate([0.0] * 500 + [1.0] * 100) if d.update(x)]
>>> hits[0] > 500
True
"""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import Protocol


class _DeferredPackage(types.ModuleType):
    """A package whose __init__ has not run: it runs, once, at the first name it lacks."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name != "__all__":  # what the import system probes
            raise AttributeError(name)
        self.__class__ = types.ModuleType  # a plain module from here on (also while __init__ runs)
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def _defer_package_init(name: str) -> None:
    """Registers package `name` (not imported yet) without running its __init__, so that its
    submodules can be imported alone; the first use of a name the __init__ defines runs it.

    River's drift package __init__ imports every River detector and River's data sets (KSWIN
    pulls in scipy.stats; river.drift.datasets pulls river.stream, and scikit-learn where it is
    installed): 1.3 s of CPU of a `driftline run` start's 1.9 (0.6 without it), for the two
    classes used here."""
    if name in sys.modules:
        return
    package = importlib.util.module_from_spec(importlib.util.find_spec(name))
    package.__class__ = _DeferredPackage
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, package)  # as an import sets it


_defer_package_init("river.drift")
from river.drift.adwin import ADWIN  # noqa: E402
from river.drift.page_hinkley import PageHinkley  # noqa: E402

from driftline.detectors.spec import ADWINParams, PageHinkleyParams  # noqa: E402
from driftline.detectors.state import persistent  # noqa: E402


class Detector(Protocol):
    name: str
    direction: int  # after a detection: +1 the signal's mean went up, -1 down

    def update(self, x: float) -> bool: ...

    def statistics(self) -> dict[str, float]: ...


@persistent("drift.adwin")
class ADWINDetector:
    """ADWIN (adaptive windowing): detects a change in the mean of a bounded stream.

    After a detection, `direction` says which way the mean moved (+1 up, -1 down): ADWIN cuts
    its window into an old and a recent part; the wrapper keeps the count and sum of the values
    since ADWIN last started empty, so the old part's mean is what the recent part leaves.
    """

    name = "adwin"
    __slots__ = ("_adwin", "_n", "_sum", "direction")

    def __init__(self, params: ADWINParams = ADWINParams()):
        self._adwin = ADWIN(
            delta=params.delta,
            clock=params.clock,
            max_buckets=params.max_buckets,
            min_window_length=params.min_window_length,
            grace_period=params.grace_period,
        )
        self._n = 0
        self._sum = 0.0
        self.direction = 0

    def update(self, x: float) -> bool:
        adwin = self._adwin
        adwin.update(x)
        self._n += 1
        self._sum += x
        if not adwin._drift_detected:  # the `drift_detected` property's field: a call less per value
            return False
        width = adwin.width
        recent = adwin.estimation * width
        old_n = self._n - width
        old_mean = (self._sum - recent) / old_n if old_n > 0 else adwin.estimation
        self.direction = 1 if adwin.estimation > old_mean else -1
        # River (0.26) empties the whole window at the next update after a detection: so do we.
        self._n, self._sum = 0, 0.0
        return True

    @property
    def width(self) -> float:
        return float(self._adwin.width)

    @property
    def estimation(self) -> float:
        return float(self._adwin.estimation)

    def statistics(self) -> dict[str, float]:
        return {"width": self.width, "mean": self.estimation}


@persistent("drift.page_hinkley")
class PageHinkleyDetector:
    """Page-Hinkley: detects a sustained shift of the mean away from its running average."""

    name = "page_hinkley"
    __slots__ = ("_ph", "direction")

    def __init__(self, params: PageHinkleyParams = PageHinkleyParams()):
        self._ph = PageHinkley(
            min_instances=params.min_instances,
            delta=params.delta,
            threshold=params.threshold,
            alpha=params.alpha,
            mode=params.mode,
        )
        self.direction = 0  # +1 or -1 after a detection: the side whose deviation passed the threshold

    def update(self, x: float) -> bool:
        ph = self._ph
        ph.update(x)
        if not ph._drift_detected:  # as in ADWINDetector.update
            return False
        up = ph._sum_increase - ph._min_increase
        self.direction = 1 if ph.mode == "up" or (ph.mode == "both" and up > ph.threshold) else -1
        return True

    @property
    def threshold(self) -> float:
        return float(self._ph.threshold)

    @property
    def statistic(self) -> float:
        """The larger of the upward and downward cumulative deviations; alarm when > threshold."""
        ph = self._ph
        up = ph._sum_increase - ph._min_increase if ph._min_increase != float("inf") else 0.0
        down = ph._max_decrease - ph._sum_decrease if ph._max_decrease != -1 else 0.0
        if ph.mode == "up":
            return max(up, 0.0)
        if ph.mode == "down":
            return max(down, 0.0)
        return max(up, down, 0.0)

    def statistics(self) -> dict[str, float]:
        return {"statistic": self.statistic, "threshold": self.threshold}


DETECTOR_NAMES = ("adwin", "page_hinkley")


def build_detector(name: str, adwin: ADWINParams, page_hinkley: PageHinkleyParams) -> Detector:
    if name == "adwin":
        return ADWINDetector(adwin)
    if name == "page_hinkley":
        return PageHinkleyDetector(page_hinkley)
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_NAMES)}")
