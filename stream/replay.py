"""`driftline replay`: the same core over JSONL files, in event-time order, with no Kafka.

Both files are decoded (bad lines are counted as invalid, with their reason, and skipped),
merged by event time (an inference before a label at the same instant, then file order), and
fed through the same `Intake` and `DetectorBank` as the Kafka worker. An event without a
timestamp takes the previous event's time in its file, as the Kafka timestamp would be.
Decoded events are held in memory for the sort: ~1 KB each. Models compare their traffic
with the profiles of their config's `baseline:` files (never with the baselines topic).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
from collections import Counter
from typing import Callable, Iterator

from driftline.detectors.bank import DetectorBank, DriftRecord, ExplanationRecord
from driftline.detectors.state import no_gc
from driftline.stream.baselines import profile_book
from driftline.stream.collector_policy import worker_thresholds
from driftline.stream.codec import DecodeLimits, decode_inference, decode_label
from driftline.stream.events import Inference, Invalid
from driftline.stream.exporter import DriftlineMetrics
from driftline.stream.pipeline import Intake, feed

TICK_EVERY = 1024  # events between progress reports and on_tick calls


@dataclasses.dataclass
class ReplayResult:
    settings: object
    intake: Intake
    bank: DetectorBank
    detections: list[DriftRecord]
    events: int
    invalid: Counter
    seconds: float
    # Everything written where drift records go, in stream order: the detections and the
    # explanation refreshes (`--drift-out`, as the worker's drift-events topic has them).
    records: list[DriftRecord | ExplanationRecord] = dataclasses.field(default_factory=list)

    def metrics(self) -> DriftlineMetrics:
        # drift_active is judged at the last event time: the state the stream ended in.
        return DriftlineMetrics(self.settings, intakes=lambda: (self.intake,), banks=lambda: (self.bank,),
                                clock=lambda: self.intake.watermark)

    def exposition(self) -> bytes:
        return self.metrics().render()


def read_events(path: str | os.PathLike, kind: str, limits: DecodeLimits) -> Iterator[Inference | object]:
    decode = decode_inference if kind == "inference" else decode_label
    last_ts = 0.0
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            ev = decode(line, last_ts, limits)
            if not isinstance(ev, Invalid):
                last_ts = ev.timestamp
            yield ev


def merge_events(settings, inferences, labels, on_invalid: Callable[[Invalid], object] | None = None,
                 invalid: Counter | None = None) -> list[tuple]:
    """Both files decoded and sorted into (timestamp, order, seq, event) in event-time order (an
    inference before a label at the same instant, then file order); bad lines go to `on_invalid`
    and are counted in `invalid` by (kind, reason)."""
    limits = DecodeLimits(max_bytes=settings.limits.max_event_bytes, max_depth=settings.limits.max_depth,
                          max_future=settings.limits.max_future, clock=time.time)
    merged = []
    seq = 0
    # Decoding only adds what the list keeps (no cyclic garbage): the collector's passes over
    # the growing list cost 45% of this function's CPU (0.37 of 0.83 s for the demo's 88k events).
    with no_gc():
        for kind, path in (("inference", inferences), ("label", labels)):
            order = 0 if kind == "inference" else 1
            for ev in read_events(path, kind, limits):
                if isinstance(ev, Invalid):
                    if on_invalid is not None:
                        on_invalid(ev)
                    if invalid is not None:
                        invalid[(ev.kind, ev.reason)] += 1
                    continue
                seq += 1
                merged.append((ev.timestamp, order, seq, ev))
        # By (timestamp, order, seq): seq is unique, so the tuples' own order (no key per entry).
        merged.sort()
    return merged


def intake_outputs(intake: Intake, merged: list[tuple]) -> Iterator[tuple[int, list[tuple], Invalid | None]]:
    """(index, observations, refused) of each merged event through the intake, as replay feeds them."""
    # After the last event of a file its stream is idle (nothing left unread), as a caught-up
    # topic is to the worker: what waits for that stream may expire on the other one's clock.
    last = {}
    for i, (_, order, _, _) in enumerate(merged):
        last[order] = i
    for i, (_, order, _, ev) in enumerate(merged):
        out, refused = intake.take_inference(ev) if order == 0 else intake.take_label(ev)
        if i == last.get(0):
            out = out + intake.set_idle("inference")
        if i == last.get(1):
            out = out + intake.set_idle("label")
        yield i, out, refused


def replay(
    settings,
    inferences: str | os.PathLike,
    labels: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
    on_tick: Callable[[Intake, DetectorBank], None] | None = None,
) -> ReplayResult:
    """Replay two JSONL files; `on_tick` sees the state every TICK_EVERY events (for plots)."""
    started = time.perf_counter()
    intake = Intake(settings)
    bank = DetectorBank(settings.spec_for, idle_after=settings.limits.segment_idle,
                        profiles=profile_book(settings) if settings.baselines else None,
                        max_models=settings.limits.max_models, configured=settings.models)
    invalid: Counter = Counter()
    # The decoded events, then the state, grow as a backlog worker's state does: the worker's
    # collector thresholds meanwhile (stream/collector_policy.py), the caller's again after.
    with worker_thresholds():
        merged = merge_events(settings, inferences, labels, lambda ev: feed(bank, intake.take_invalid(ev)), invalid)
        # The decoded events stay to the end: no collection need scan them again (the first one
        # after decoding would: ~0.1 s of CPU for the demo's 88k events). Undone at the end.
        gc.freeze()
        try:
            records: list[DriftRecord | ExplanationRecord] = []
            total = len(merged)
            for i, out, refused in intake_outputs(intake, merged):
                if refused is not None:
                    invalid[(refused.kind, refused.reason)] += 1
                if out:
                    refusals: list[Invalid] = []
                    records += feed(bank, out, refusals)
                    for r in refusals:  # models past max_models, refused by the bank (as the worker's)
                        invalid[(r.kind, r.reason)] += 1
                if i % TICK_EVERY == 0:
                    if progress is not None:
                        progress(i, total)
                    if on_tick is not None:
                        on_tick(intake, bank)
        finally:
            gc.unfreeze()
    # What still waits at the end of the files is neither expired nor unmatched: the files end
    # before its TTL does, as a live stream would keep it waiting.
    if progress is not None:
        progress(total, total)
    n_events = total + sum(invalid.values())
    detections = [r for r in records if r.kind == "detection"]
    return ReplayResult(settings, intake, bank, detections, n_events, invalid, time.perf_counter() - started, records)


class TerminalProgress:
    """A one-line progress meter on stderr, only when stderr is a terminal."""

    def __init__(self, stream=sys.stderr, every: float = 0.5):
        self.stream = stream
        self.enabled = stream.isatty()
        self.every = every
        self._last = 0.0
        self._start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last < self.every:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        self.stream.write(f"\rreplay: {done:,}/{total:,} events ({pct:5.1f}%) {rate:,.0f} events/s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
