"""Route an event to its segments, and the guard on their cardinality.

A model's config names segment attributes; each value of an attribute is a segment labelled
`attr=value`, and all of a model's traffic is `__all__`. Stage 1 (`SegmentRouter`) only names
an event's segments. The guard (`SegmentGuard`) sits in the detector bank that owns every value
of a (model, attribute): the worker routes all of an attribute's segments to one observations
partition, so one bank sees all of its values, whichever input partition their events came
from. It admits the first `max_segments` distinct values it sees (in event-time order, the
order `driftline replay` uses); the observations of any other value are counted in
`attr=__other__`, all of them, and each such inference is counted as folded. A value's slot is
freed when its segment is evicted idle.

>>> from driftline.detectors.spec import ModelSpec
>>> spec = ModelSpec(name="churn", segments=("region",), max_segments=1)
>>> SegmentRouter().route(spec, {"region": "us"}, None, 0.0)
('__all__', 'region=us')
>>> guard = SegmentGuard()
>>> guard.admit("churn", "region=eu", 1)
'region=eu'
>>> guard.added("churn", "region=eu")  # the bank made its state
>>> guard.admit("churn", "region=us", 1)
'region=__other__'
"""
from __future__ import annotations

from typing import Mapping

from driftline.detectors.spec import ALL_SEGMENT, OTHER_VALUE, ModelSpec
from driftline.detectors.state import persistent


def format_value(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is float and value.is_integer():
        return str(int(value))
    return str(value)


def attribute_of(segment: str) -> str:
    """The attribute of a segment label (`__all__` for `__all__`): what the worker routes by."""
    return segment.partition("=")[0]


@persistent("segments.router")
class SegmentRouter:
    """Names an event's segments (stateless: the cardinality guard is the bank's `SegmentGuard`)."""

    __slots__ = ()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        pass  # snapshots before the fleet-wide guard held per-partition values: no longer used

    def route(
        self,
        spec: ModelSpec,
        features: Mapping[str, object],
        segment: Mapping[str, str] | None,
        timestamp: float,
    ) -> tuple[str, ...]:
        """The segment keys of one event: `__all__` first, then one per present attribute."""
        if not spec.segments:
            return (ALL_SEGMENT,)
        keys = [ALL_SEGMENT]
        for attr in spec.segments:
            raw = segment.get(attr) if segment is not None and attr in segment else features.get(attr)
            if raw is None:
                continue  # a missing attribute puts the event in __all__ only
            value = raw if type(raw) is str else format_value(raw)
            keys.append(f"{attr}={value}")
        return tuple(keys)


class SegmentGuard:
    """Admitted values per (model, attribute) of one bank: derived from the bank's segments
    (`added` when a segment's state is made, `removed` when it is evicted), so it holds no state
    of its own and a restored bank rebuilds it from its segments."""

    __slots__ = ("_admitted",)

    def __init__(self, segments=()):
        self._admitted: dict[tuple[str, str], int] = {}
        for model, segment in segments:
            self.added(model, segment)

    def admit(self, model: str, segment: str, max_segments: int, known: bool = False) -> str:
        """The segment an observation of `segment` counts in: itself when its value holds a slot
        (`known`: its state exists) or one of the `max_segments` is free, else `attr=__other__`."""
        if known or segment == ALL_SEGMENT:
            return segment
        attr, _, value = segment.partition("=")
        if value == OTHER_VALUE or self._admitted.get((model, attr), 0) < max_segments:
            return segment
        return f"{attr}={OTHER_VALUE}"

    def added(self, model: str, segment: str) -> None:
        if segment != ALL_SEGMENT:
            attr, _, value = segment.partition("=")
            if value != OTHER_VALUE:
                key = (model, attr)
                self._admitted[key] = self._admitted.get(key, 0) + 1

    def removed(self, model: str, segment: str) -> None:
        if segment != ALL_SEGMENT:
            attr, _, value = segment.partition("=")
            key = (model, attr)
            if value != OTHER_VALUE and key in self._admitted:
                n = self._admitted[key] - 1
                if n > 0:
                    self._admitted[key] = n
                else:
                    del self._admitted[key]

    def value_count(self, model: str, attribute: str) -> int:
        return self._admitted.get((model, attribute), 0)


class ModelGuard:
    """The `max_models` guard of one bank: which models it monitors. Configured models always;
    a model not in the config takes one of the `max_models - len(configured)` slots with its
    first observation (while one is free) and holds it while the bank holds state of it. The
    worker routes every observation of an unconfigured model to one bank (the admission bank),
    so that bank's guard decides for the fleet. Like `SegmentGuard`, derived from the bank's
    segments (`added`, `removed`): nothing of its own to checkpoint.

    >>> guard = ModelGuard({"churn"}, max_models=2)
    >>> guard.admit("churn"), guard.admit("m1")
    (True, True)
    >>> guard.added("m1")  # the bank made m1's state
    >>> guard.admit("m2"), guard.admit("m1")
    (False, True)
    """

    __slots__ = ("configured", "slots", "known", "_segments")

    def __init__(self, configured=(), max_models: int | None = None, segments=()):
        self.configured = frozenset(configured)
        # None: no cap (a bank made without one, as in unit tests of the bank).
        self.slots = None if max_models is None else max(0, max_models - len(self.configured))
        self.known: set[str] = set(self.configured)  # configured and admitted: the hot path's test
        self._segments: dict[str, int] = {}  # admitted unconfigured model -> its segments in the bank
        for model, _segment in segments:
            self.added(model)

    def admit(self, model: str) -> bool:
        """Whether the bank monitors an observation of `model` (the caller then makes its state)."""
        return self.slots is None or model in self.known or len(self._segments) < self.slots

    def added(self, model: str) -> None:
        if model not in self.configured:
            n = self._segments.get(model, 0)
            self._segments[model] = n + 1
            if n == 0:
                self.known.add(model)

    def removed(self, model: str) -> None:
        n = self._segments.get(model)
        if n is not None:
            if n > 1:
                self._segments[model] = n - 1
            else:
                del self._segments[model]
                self.known.discard(model)

    def admitted(self) -> int:
        """Unconfigured models holding a slot."""
        return len(self._segments)
