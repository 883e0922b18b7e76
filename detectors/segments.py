"""Route an event to its segments, with a guard on cardinality.

A model's config names segment attributes; each value of an attribute is a segment labelled
`attr=value`, and all of a model's traffic is `__all__`. Past `max_segments` distinct values of
one attribute, new values fold into `attr=__other__` and are counted, so a segment label never
carries an unbounded id. Values idle for longer than the caller's horizon can be forgotten,
freeing their slot.

>>> from driftline.detectors.spec import ModelSpec
>>> spec = ModelSpec(name="churn", segments=("region",), max_segments=1)
>>> router = SegmentRouter()
>>> router.route(spec, {"region": "eu"}, None, 0.0)
('__all__', 'region=eu')
>>> router.route(spec, {"region": "us"}, None, 1.0)
('__all__', 'region=__other__')
>>> router.folded
[('churn', 'region')]
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


@persistent("segments.router")
class SegmentRouter:
    __slots__ = ("_values", "folded")

    def __init__(self):
        # (model, attribute) -> {value: last event time}
        self._values: dict[tuple[str, str], dict[str, float]] = {}
        # (model, attribute) of each fold since the caller last drained it.
        self.folded: list[tuple[str, str]] = []

    def __getstate__(self) -> dict:
        return {"values": self._values}

    def __setstate__(self, state: dict) -> None:
        self._values = state["values"]
        self.folded = []

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
            seen = self._values.get((spec.name, attr))
            if seen is None:
                seen = self._values[(spec.name, attr)] = {}
            if value in seen or len(seen) < spec.max_segments:
                seen[value] = timestamp
            else:
                self.folded.append((spec.name, attr))
                value = OTHER_VALUE
            keys.append(f"{attr}={value}")
        return tuple(keys)

    def evict_idle(self, older_than: float) -> int:
        """Forget values last seen before `older_than`; returns how many slots were freed."""
        freed = 0
        for seen in self._values.values():
            stale = [v for v, t in seen.items() if t < older_than]
            for v in stale:
                del seen[v]
            freed += len(stale)
        return freed

    def forget_model(self, model: str) -> None:
        for key in [k for k in self._values if k[0] == model]:
            del self._values[key]

    def value_count(self, model: str, attribute: str) -> int:
        return len(self._values.get((model, attribute), ()))
