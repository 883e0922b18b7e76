"""`driftline explain`: the slices that explain a segment's accuracy drop, over JSONL files.

The same core as `driftline replay` (decode, event-time merge, join, routing) feeds one slice
accountant (detectors/slices.py) with the segment's labelled outcomes. The reference is the
labelled events before the change point, as the stream keeps them (a decaying history of up to
HISTORY events and the last blocks); the "after" window runs from the change point to the end
of the files. Without
`since`, the change point is the `since` of the segment's last error-drift detection ("up")
in a replay of the same files.
"""
from __future__ import annotations

import dataclasses
import os

from driftline.detectors.bank import is_correct, slice_accountant
from driftline.detectors.baseline import format_time
from driftline.detectors.slices import WARMUP, Explanation
from driftline.detectors.observations import OutcomeObservation
from driftline.stream.baselines import profile_book
from driftline.stream.pipeline import Intake
from driftline.stream.replay import intake_outputs, merge_events, replay


class ExplainError(ValueError):
    """Nothing to explain (no drift found, no labels after the change point, ...): says why."""


@dataclasses.dataclass(frozen=True)
class ExplainResult:
    model: str
    segment: str
    since: float
    explanation: Explanation
    detection: dict | None  # the drift record whose change point was used (no --since)

    def to_dict(self) -> dict:
        e = self.explanation.to_dict()
        return {"model": self.model, "segment": self.segment, "since": self.since, "slices": e["slices"],
                "labelled_before": e["labelled_before"], "accuracy_before": e["accuracy_before"],
                "labelled_after": e["labelled_after"], "accuracy_after": e["accuracy_after"], "drop": e["drop"],
                "features": e["features"]}


def last_error_drift(settings, inferences, labels, model: str, segment: str) -> dict | None:
    """The segment's last error-drift detection with direction "up" in a replay, as a dict."""
    found = None
    for rec in replay(settings, inferences, labels).detections:
        if rec.model == model and rec.segment == segment and rec.signal == "error" and rec.direction == "up":
            found = rec
    return found.to_dict() if found is not None else None


def explain_files(settings, inferences: str | os.PathLike, labels: str | os.PathLike, model: str, segment: str,
                  since: float | None = None, top: int = 10) -> ExplainResult:
    spec = settings.spec_for(model)
    if spec.task != "classification":
        raise ExplainError(f"model {model!r} is a {spec.task} model: slices explain accuracy drops of classifiers")
    detection = None
    if since is None:
        detection = last_error_drift(settings, inferences, labels, model, segment)
        if detection is None:
            raise ExplainError(f"no error drift (direction up) detected in segment {segment!r} of model {model!r} "
                               f"in these files: pass --since TIME to explain a window of your choice")
        since = detection["explanation"]["since"] if detection.get("explanation") else detection["timestamp"]
    intake = Intake(settings)
    acc = slice_accountant(spec, segment, profile_book(settings) if settings.baselines else None)
    started = False
    seen = 0
    for _, out, _ in intake_outputs(intake, merge_events(settings, inferences, labels)):
        for o in out:
            if type(o) is not OutcomeObservation or o.model != model or o.segment != segment:
                continue
            seen += 1
            if not started and o.timestamp >= since:
                if acc.layout is None:
                    raise ExplainError(f"segment {segment!r} of model {model!r} has {seen - 1} labelled events before "
                                       f"{format_time(since)}: its bins need {WARMUP} (or a baseline profile)")
                acc.start(since)
                started = True
            acc.observe(o.values, o.segments, is_correct(o.prediction, o.label), o.timestamp)
    if not seen:
        raise ExplainError(f"no labelled events of model {model!r} in segment {segment!r} in these files")
    if not started or acc.after is None or not acc.after.n:
        raise ExplainError(f"no labelled events of segment {segment!r} at or after {format_time(since)}")
    return ExplainResult(model, segment, since, acc.explain(top), detection)


def render_table(result: ExplainResult) -> str:
    e = result.explanation
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    acc = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"{result.model} {result.segment}: accuracy {acc(e.accuracy_before)} -> {acc(e.accuracy_after)} "
             f"since {format_time(result.since)} ({e.labelled_before:,} labelled before, {e.labelled_after:,} after)"]
    if result.detection is not None:
        d = result.detection
        lines.append(f"change point of the last error drift: {d['detector']} at {format_time(d['timestamp'])}")
    lines.append("")
    header = (f"{'rank':<5}{'feature':<14}{'bin':<24}{'before':>8}{'acc':>8}{'share':>8}"
              f"{'after':>8}{'acc':>8}{'share':>8}{'contribution':>14}")
    lines.append(header)
    for i, s in enumerate(e.slices, 1):
        lines.append(f"{i:<5}{s.feature[:13]:<14}{s.bin[:23]:<24}{s.labelled_before:>8,}{acc(s.accuracy_before):>8}"
                     f"{pct(s.share_before):>8}{s.labelled_after:>8,}{acc(s.accuracy_after):>8}{pct(s.share_after):>8}"
                     f"{s.contribution:>14.4f}")
    if not e.slices:
        lines.append("(no slice lost accuracy beyond the rest of the traffic: a drop everywhere, or too few labels)")
    lines += ["", "features: PSI of the labelled traffic after vs before (moved > 0.25); contribution of the top "
                  "slice; mix = drop from traffic moving between its bins",
              f"{'feature':<14}{'kind':<13}{'PSI':>8}{'contribution':>14}{'mix':>9}"]
    for f in e.features:
        lines.append(f"{f.feature[:13]:<14}{f.kind:<13}{f.psi:>8.3f}{f.contribution:>14.4f}{f.mix:>9.4f}")
    return "\n".join(lines)
