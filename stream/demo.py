"""The demo: real sensor data (NASA Shuttle, shipped with River), a fixed model, one drift.

- Data: River's `datasets.Shuttle` (49,097 rows, 9 sensor readings, 7% anomalies), in its
  shipped order. The first 5,000 rows train a Hoeffding tree once; it is then frozen, as a
  deployed model is. The other 44,097 rows are the production stream, one event per second.
- Segments: `band` from sensor f1 (low < 40 <= mid < 50 <= high), a real attribute.
- Drift: from stream row 25,000 on, sensor f7 in the `band=high` segment reads 20 units high
  (a miscalibrated sensor). The model's accuracy there falls from ~99.5% to ~74%; the other
  segments are untouched.
- Feature drift that does not hurt: from stream row 10,000 on, sensor f5 in `band=mid` reads 2
  units high (half a standard deviation). The tree splits on f7 only, so its accuracy holds there; the baseline comparison
  (PSI, JS, KS against a profile of the 5,000 training rows, `shuttle-baseline.json`) shows
  the move all the same.
- Labels arrive 60 s after their prediction; 3 malformed inference lines show the dead-letter
  path.

Nothing is downloaded: River ships the CSV inside its wheel.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import random
from pathlib import Path
from typing import Any

import orjson

from driftline.detectors.spec import ALL_SEGMENT

MODEL = "shuttle"
TRAIN_ROWS = 5_000
DRIFT_ROW = 25_000  # stream row (after the training rows) where the drift starts
DRIFT_SEGMENT = "band=high"
DRIFT_FEATURE = "f7"
DRIFT_OFFSET = 20
START_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LABEL_DELAY = 60.0
SEED = 42
FEATURE_DRIFT_ROW = 10_000  # stream row where f5 starts reading high in band=mid
FEATURE_DRIFT_SEGMENT = "band=mid"
FEATURE_DRIFT_FEATURE = "f5"
FEATURE_DRIFT_OFFSET = 2  # about half of f5's standard deviation in band=mid
BASELINE_FILE = "shuttle-baseline.json"
TRAINING_FILE = "training.jsonl"

DEMO_CONFIG = f"""\
# driftline demo config: the Shuttle sensor model, segmented by sensor band.
kafka:
  bootstrap: 127.0.0.1:9092
models:
  {MODEL}:
    task: classification
    segments: [band]
    max_segments: 10
    features: {{f1: numeric, f5: numeric, f7: numeric, f9: numeric}}
    accuracy_window: 500
    label_ttl: 1h
    drift_hold: 10m
    accuracy_objective: 0.95
    # Detector thresholds come from the default false-alarm budget (one false detection per
    # 1e7 events of the model, docs/quality.md): no per-signal tuning.
"""


def demo_config(baseline: str | None = None) -> str:
    """The demo config, naming a baseline profile file (relative to the config) if given."""
    return DEMO_CONFIG + (f"    baseline: {baseline}\n" if baseline else "")


def band(x: dict[str, Any]) -> str:
    f1 = x["f1"]
    return "low" if f1 < 40 else ("mid" if f1 < 50 else "high")


@dataclasses.dataclass(frozen=True)
class DemoFiles:
    inferences: Path
    labels: Path
    config: Path
    drift_time: float  # event time of the first drifted event
    events: int  # valid inference events
    feature_drift_time: float = 0.0  # event time of the first event with f5 shifted in band=mid
    baseline: Path | None = None  # the profile of the training rows


@functools.lru_cache(maxsize=1)
def _trained():
    """The Shuttle rows and the tree trained on the first TRAIN_ROWS of them (then frozen)."""
    from river import datasets, tree

    rows = list(datasets.Shuttle())
    model = tree.HoeffdingTreeClassifier(grace_period=50, delta=1e-3)
    for x, y in rows[:TRAIN_ROWS]:
        model.learn_one(x, y)
    return rows, model


def _predict(model, x: dict) -> tuple[Any, float]:
    proba = model.predict_proba_one(x)
    pred = max(proba, key=proba.get) if proba else 0
    return pred, round(float(proba.get(pred, 0.0)), 6)


def training_events() -> list[dict]:
    """The training rows as inference events with their label: what `driftline baseline build`
    profiles for the demo (the frozen model's predictions on its own training data)."""
    rows, model = _trained()
    out = []
    for i, (x, y) in enumerate(rows[:TRAIN_ROWS]):
        pred, score = _predict(model, x)
        out.append({"prediction_id": f"train-{i:05d}", "model": MODEL, "model_version": "ht-1", "features": dict(x),
                    "prediction": pred, "score": score, "label": y, "segment": {"band": band(x)}})
    return out


def demo_events(rows_limit: int | None = None, drift_row: int = DRIFT_ROW,
                feature_drift_row: int | None = None) -> tuple[list[dict], list[dict], float]:
    """The demo's inference and label events, deterministic (fixed data, model and seed).

    `rows_limit` and `drift_row` shorten the stream for tests; `feature_drift_row` (None: none)
    is where f5 starts reading high in band=mid. The demo uses DRIFT_ROW and FEATURE_DRIFT_ROW.
    """
    rows, model = _trained()
    rng = random.Random(SEED)
    inferences, labels = [], []
    drift_time = START_TIME + drift_row
    stream = rows[TRAIN_ROWS:] if rows_limit is None else rows[TRAIN_ROWS:TRAIN_ROWS + rows_limit]
    for i, (x, y) in enumerate(stream):
        ts = START_TIME + i
        seg = band(x)
        x = dict(x)
        if i >= drift_row and seg == "high":
            x[DRIFT_FEATURE] += DRIFT_OFFSET
        if feature_drift_row is not None and i >= feature_drift_row and seg == "mid":
            x[FEATURE_DRIFT_FEATURE] += FEATURE_DRIFT_OFFSET
        pred, score = _predict(model, x)
        pid = f"shuttle-{i:06d}"
        inferences.append({
            "prediction_id": pid, "model": MODEL, "model_version": "ht-1", "timestamp": ts,
            "features": x, "prediction": pred, "score": score,
            "segment": {"band": seg},
        })
        labels.append({"prediction_id": pid, "label": y, "timestamp": ts + LABEL_DELAY + rng.random()})
    return inferences, labels, drift_time


MALFORMED_LINES = (
    b'{"prediction_id": "bad-1", "model": "shuttle", "features": {}, "prediction": 1',  # truncated JSON
    b'{"prediction_id": "bad-2", "model": "shuttle", "features": {}, "prediction": 1, "score": 7}',  # score out of range
    b'{"prediction_id": "bad-3", "model": "shut tle", "features": {}, "prediction": 1}',  # bad model name
)


def write_baseline(out: Path) -> Path:
    """Write the training rows and their profile, as `driftline baseline build` would:

        driftline baseline build --config demo.yml --model shuttle --out shuttle-baseline.json training.jsonl
    """
    from driftline.detectors.spec import ModelSpec
    from driftline.stream.baselines import build_profile, write_profile
    from driftline.stream.settings import parse_settings

    import yaml

    training = out / TRAINING_FILE
    with open(training, "wb") as f:
        for ev in training_events():
            f.write(orjson.dumps(ev) + b"\n")
    spec: ModelSpec = parse_settings(yaml.safe_load(DEMO_CONFIG), env={}).models[MODEL]
    profile, _ = build_profile(spec, training, environment="training", created=START_TIME - 86400)
    write_profile(profile, out / BASELINE_FILE)
    return out / BASELINE_FILE


def write_demo(out_dir: str | os.PathLike) -> DemoFiles:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inferences, labels, drift_time = demo_events(feature_drift_row=FEATURE_DRIFT_ROW)
    baseline = write_baseline(out)
    inf_path, lab_path, cfg_path = out / "inferences.jsonl", out / "labels.jsonl", out / "demo.yml"
    with open(inf_path, "wb") as f:
        for n, ev in enumerate(inferences):
            f.write(orjson.dumps(ev) + b"\n")
            if n in (100, 20_000, 40_000):
                f.write(MALFORMED_LINES[(n // 20_000)] + b"\n")
    with open(lab_path, "wb") as f:
        for ev in labels:
            f.write(orjson.dumps(ev) + b"\n")
    cfg_path.write_text(demo_config(BASELINE_FILE))
    return DemoFiles(inf_path, lab_path, cfg_path, drift_time, len(inferences),
                     START_TIME + FEATURE_DRIFT_ROW, baseline)


@dataclasses.dataclass
class DemoReport:
    lines: list[str]
    first_detection_delay: int | None  # labelled events in the drifted segment after the drift
    false_error_detections: int  # error-signal detections outside the drifted segment or before the drift
    plot: Path | None
    # Events of band=mid after f5 began to read high until its PSI crossed the threshold.
    feature_drift_delay: int | None = None
    psi_before_drift: float | None = None  # the largest PSI of any (segment, signal) before either drift
    # The top slice of each segment's first error-drift explanation: segment -> (feature, bin).
    explained: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


def baseline_psi(bank) -> dict[tuple[str, str], float]:
    """PSI of every (segment, signal) whose window holds enough values (as /metrics has it)."""
    from driftline.detectors.baseline import compare

    out = {}
    compiled = bank.profiles.get(MODEL) if bank.profiles is not None else None
    if compiled is None:
        return out
    for (model, seg), st in bank.items():
        if model != MODEL or st.profile_id != compiled.id:
            continue
        for b in compiled.binners(seg):
            w = st.windows.get(b.name)
            if w is not None:
                c = compare(b, w)
                if c.values >= compiled.checks.min_values:
                    out[(seg, b.name)] = c.psi
    return out


def run_demo(out_dir: str | os.PathLike, plot: bool = True) -> tuple["object", DemoReport]:
    """Write the demo files, replay them, and report what was found, where and when."""
    from driftline.stream.replay import TerminalProgress, replay
    from driftline.stream.settings import load_settings

    files = write_demo(out_dir)
    settings = load_settings(files.config)
    samples: list[tuple[float, dict[str, float]]] = []
    psi_track: list[tuple[float, int, dict]] = []

    def sample(intake, bank) -> None:
        acc = {seg: st.accuracy.get() for (m, seg), st in bank.items() if st.accuracy is not None and st.accuracy.count}
        samples.append((intake.watermark, acc))
        psi_track.append((intake.watermark, bank.tally.inferences[(MODEL, FEATURE_DRIFT_SEGMENT)], baseline_psi(bank)))

    result = replay(settings, files.inferences, files.labels, progress=TerminalProgress(), on_tick=sample)
    out = Path(out_dir)
    (out / "metrics.prom").write_bytes(result.exposition())
    with open(out / "drifts.jsonl", "wb") as f:
        for rec in result.records:
            f.write(orjson.dumps(rec.to_dict()) + b"\n")
    report = _report(result, files)
    _baseline_report(report, result, files, psi_track)
    if plot:
        report.plot = _plot(samples, result, files, out / "demo.png")
    return result, report


def _label_times(files: DemoFiles, segment: str) -> list[float]:
    """Label times of the segment's predictions made after the drift began (independent of driftline)."""
    seg_of: dict[str, str] = {}
    with open(files.inferences, "rb") as f:
        for line in f:
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if ev.get("timestamp", 0) >= files.drift_time and "segment" in ev:
                seg_of[ev["prediction_id"]] = "band=" + ev["segment"]["band"]
    times = []
    with open(files.labels, "rb") as f:
        for line in f:
            ev = orjson.loads(line)
            if seg_of.get(ev["prediction_id"]) == segment:
                times.append(ev["timestamp"])
    return sorted(times)


def _report(result, files: DemoFiles) -> DemoReport:
    lines = [
        f"replayed {result.events:,} events in {result.seconds:.1f} s ({result.events / result.seconds:,.0f} events/s); "
        f"invalid: {sum(result.invalid.values())} ({', '.join(f'{r}={n}' for (_, r), n in sorted(result.invalid.items()))})",
        f"drift injected: {DRIFT_FEATURE} +{DRIFT_OFFSET} in {DRIFT_SEGMENT} from event time {files.drift_time:.0f} "
        f"(stream row {DRIFT_ROW:,})",
        "",
        f"{'segment':<16}{'labelled':>10}{'accuracy':>10}  error-signal detections",
    ]
    error_hits = [r for r in result.detections if r.signal == "error"]
    label_times = _label_times(files, DRIFT_SEGMENT)
    first_delay = None
    false_hits = 0
    for (model, segment), st in sorted(result.bank.items()):
        hits = [r for r in error_hits if r.segment == segment]
        described = []
        for r in hits:
            after = r.timestamp >= files.drift_time
            # __all__ holds the drifted segment's traffic too: a detection there after the drift is true.
            in_drift = segment in (DRIFT_SEGMENT, ALL_SEGMENT) and after
            if in_drift and segment == DRIFT_SEGMENT:
                delay = sum(1 for t in label_times if t <= r.timestamp)
                if first_delay is None or delay < first_delay:
                    first_delay = delay
                described.append(f"{r.detector} at t+{r.timestamp - files.drift_time:.0f}s ({delay} labels after drift)")
            elif in_drift:
                described.append(f"{r.detector} at t+{r.timestamp - files.drift_time:.0f}s")
            else:
                false_hits += 1
                described.append(f"{r.detector} at t{r.timestamp - files.drift_time:+.0f}s (false alarm)")
        acc = f"{st.accuracy.get():.3f}" if st.accuracy is not None and st.accuracy.count else "-"
        lines.append(f"{segment:<16}{result.bank.tally.labeled[(model, segment)]:>10,}{acc:>10}  {'; '.join(described[:4]) or 'none'}"
                     + (f" (+{len(described) - 4} more)" if len(described) > 4 else ""))
    by_signal: dict[str, int] = {}
    for r in result.detections:
        if r.signal != "error":
            by_signal[f"{r.segment}/{r.signal}"] = by_signal.get(f"{r.segment}/{r.signal}", 0) + 1
    lines += ["", "other detections (segment/signal: count): "
              + (", ".join(f"{k}: {v}" for k, v in sorted(by_signal.items())) or "none")]
    lines.append(f"first error drift in {DRIFT_SEGMENT}: "
                 + (f"{first_delay} labelled events after the drift" if first_delay is not None else "NOT DETECTED"))
    lines.append(f"false error-drift detections elsewhere: {false_hits}")
    report = DemoReport(lines, first_delay, false_hits, None)
    _explanation_report(report, result)
    return report


def _explanation_report(report: DemoReport, result) -> None:
    """Why: the top slices of each segment's first error drift (detectors/slices.py)."""
    lines = ["", "why (the slices that account for each segment's first error drift; "
                 "`driftline explain` gives the same over the files):"]
    for rec in result.detections:
        if rec.signal != "error" or rec.explanation is None or rec.segment in report.explained:
            continue
        e = rec.explanation
        if not e["slices"]:
            continue
        top = e["slices"][0]
        report.explained[rec.segment] = (top["feature"], top["bin"])
        lines.append(f"  {rec.segment}: accuracy {e['accuracy_before']:.3f} -> {e['accuracy_after']:.3f} since "
                     f"t+{e['since'] - START_TIME - DRIFT_ROW:.0f}s ({e['labelled_after']} labelled)")
        for sl in e["slices"][:3]:
            acc_b = "-" if sl["accuracy_before"] is None else f"{sl['accuracy_before']:.3f}"
            lines.append(f"    {sl['feature']} {sl['bin']}: accuracy {acc_b} -> {sl['accuracy_after']:.3f}, "
                         f"share {sl['share_before']:.1%} -> {sl['share_after']:.1%}, contribution {sl['contribution']:.3f}")
    report.lines += lines


def _baseline_report(report: DemoReport, result, files: DemoFiles, track) -> None:
    """The baseline comparison: how far each segment moved from the training rows, and when the
    harmless f5 drift showed."""
    from driftline.stream.replay import TICK_EVERY

    compiled = result.bank.profiles.get(MODEL) if result.bank.profiles is not None else None
    if compiled is None:
        return
    profile, checks = compiled.profile, compiled.checks
    final = baseline_psi(result.bank)
    signals = (FEATURE_DRIFT_FEATURE, DRIFT_FEATURE, "prediction", "score")
    lines = ["", f"baseline {files.baseline.name if files.baseline else ''}: {profile.overall.rows:,} training rows "
             f"(model {profile.model_version}, accuracy {profile.overall.accuracy:.3f} on them); PSI of the last "
             f"{checks.window:,} values per segment, threshold {checks.psi:g}",
             f"{'segment':<16}" + "".join(f"{s + ' PSI':>16}" for s in signals) + f"{'accuracy':>10}"]
    for (model, seg), st in sorted(result.bank.items()):
        acc = f"{st.accuracy.get():.3f}" if st.accuracy is not None and st.accuracy.count else "-"
        cells = "".join(f"{final[(seg, s)]:>16.3f}" if (seg, s) in final else f"{'-':>16}" for s in signals)
        lines.append(f"{seg:<16}{cells}{acc:>10}")
    first_drift = min(files.drift_time, files.feature_drift_time)
    before = [v for t, _, psis in track if t < first_drift for v in psis.values()]
    report.psi_before_drift = max(before) if before else None
    at_shift = next((n for t, n, _ in reversed(track) if t < files.feature_drift_time), None)
    crossed = next(((t, n) for t, n, psis in track if t >= files.feature_drift_time
                    and psis.get((FEATURE_DRIFT_SEGMENT, FEATURE_DRIFT_FEATURE), 0.0) > checks.psi), None)
    mid = result.bank.get(MODEL, FEATURE_DRIFT_SEGMENT)
    acc = mid.accuracy.get() if mid is not None and mid.accuracy is not None and mid.accuracy.count else float("nan")
    lines.append(f"feature drift injected: {FEATURE_DRIFT_FEATURE} +{FEATURE_DRIFT_OFFSET} in {FEATURE_DRIFT_SEGMENT} "
                 f"from stream row {FEATURE_DRIFT_ROW:,}; the model splits on {DRIFT_FEATURE} only")
    if crossed is not None and at_shift is not None:
        report.feature_drift_delay = crossed[1] - at_shift
        lines.append(f"  {FEATURE_DRIFT_FEATURE} PSI in {FEATURE_DRIFT_SEGMENT} above {checks.psi:g} within ~"
                     f"{report.feature_drift_delay:,} of its events (t+{crossed[0] - files.feature_drift_time:.0f}s, "
                     f"sampled every {TICK_EVERY:,} replayed events); its accuracy holds at {acc:.3f}")
    else:
        lines.append(f"  {FEATURE_DRIFT_FEATURE} PSI in {FEATURE_DRIFT_SEGMENT}: NOT ABOVE {checks.psi:g}")
    if report.psi_before_drift is not None:
        lines.append(f"  largest PSI of any segment and signal before the first drift: {report.psi_before_drift:.3f}")
    report.lines += lines


def _plot(samples, result, files: DemoFiles, path: Path) -> Path | None:
    hours = lambda t: (t - START_TIME) / 3600  # noqa: E731
    return plot_accuracy(
        path, [(hours(t), acc) for t, acc in samples],
        [(hours(r.timestamp), r.segment, r.detector) for r in result.detections if r.signal == "error"],
        hours(files.drift_time), xlabel="event time (hours from the stream's start)",
        title="driftline demo: rolling accuracy per segment; red = ADWIN, orange = Page-Hinkley (error signal)")


def plot_accuracy(path: Path, samples: list[tuple[float, dict[str, float]]],
                  detections: list[tuple[float, str, str]], drift_at: float, xlabel: str, title: str) -> Path | None:
    """One panel per segment: its rolling accuracy over x, a line at each error-signal detection
    (x, segment, detector), the injected drift dashed (a note instead when nothing was counted).
    Shared by the replay and live demos; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    segments = sorted({s for _, acc in samples for s in acc})
    if not segments:
        # A worker far behind (a busy machine) may have counted nothing yet: the plot says so,
        # rather than the run leaving no plot at all.
        fig, ax = plt.subplots(figsize=(10, 2.2))
        ax.text(0.5, 0.5, "no rolling accuracy counted yet", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    fig, axes = plt.subplots(len(segments), 1, figsize=(10, 2.2 * len(segments)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, seg in zip(axes, segments):
        pts = [(x, acc[seg]) for x, acc in samples if seg in acc]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label="rolling accuracy")
        ax.axvline(drift_at, color="grey", ls="--", lw=1, label="drift injected")
        for x, s, detector in detections:
            if s == seg:
                ax.axvline(x, color="red" if detector == "adwin" else "orange", lw=1)
        ax.set_ylabel(seg, rotation=0, ha="right")
        ax.set_ylim(0.5, 1.02)
    axes[0].set_title(title, fontsize=10)
    axes[-1].set_xlabel(xlabel)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
