"""`driftline demo --kafka BOOTSTRAP`: the demo stream, live through Kafka and a real worker.

The same Shuttle events as the replay demo (stream/demo.py), published as a serving system
would: event time is the wall clock at publishing, compressed (`--rate` events per second
instead of one), each label published `label_lag` seconds after its prediction, and the three
malformed lines among them. A `driftline run` worker is started as a separate process; a
sampler thread scrapes its `/metrics` while the demo publishes, and the demo reports per segment
what the worker found, how long after the first drifted event the drift showed on `/metrics`,
and plots accuracy and detections per segment over the run (`demo-live.png`).

With `keep_worker` the worker goes on running after the story (its pid in `pidfile`, which
`deploy/local/stack stop` reads), so that Prometheus and Alertmanager page on the drift; given
their URLs, the demo waits (bounded) until the page is firing in Prometheus and active in
Alertmanager, and says how long that took.

Nothing here depends on an idle machine: pacing reads the monotonic clock once per decision
and never sleeps a negative time, every wait has a bound, the producer is flushed and what it
could not deliver is reported, and a worker that is still catching up when the bound passes
gets its story told from what it has counted so far.

Topics and the consumer group are named per run (`driftline-demo-<time>.*`), so runs never
share state. The worker listens where the shipped Prometheus config scrapes (127.0.0.1:8000),
so with `deploy/local/stack` running, Prometheus and Alertmanager see the drift too.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path

import orjson

from driftline.stream.demo import (
    BASELINE_FILE,
    DRIFT_FEATURE,
    DRIFT_ROW,
    DRIFT_SEGMENT,
    FEATURE_DRIFT_FEATURE,
    FEATURE_DRIFT_ROW,
    FEATURE_DRIFT_SEGMENT,
    MALFORMED_LINES,
    MODEL,
    demo_config,
    demo_events,
    plot_accuracy,
    write_baseline,
)
from driftline.stream.settings import prefixed_topics

PAGE_ALERT = "DriftlineErrorDrift"
# The live demo holds a drift active this long after its last detection (the replay demo: 10m of
# event time), so the page it leaves stays up while a newcomer looks at it.
LIVE_DRIFT_HOLD = "30m"
BAD_AT = {100: MALFORMED_LINES[0], 20_000: MALFORMED_LINES[1], 40_000: MALFORMED_LINES[2]}


class DemoError(RuntimeError):
    """The live demo cannot go on (the worker died or never became ready, Kafka took nothing)."""


@dataclasses.dataclass(frozen=True)
class DemoTimeouts:
    """Every wait of the live demo has a bound (seconds)."""
    worker_ready: float = 120.0
    accounted: float = 300.0  # after publishing: until the worker has counted every label
    flush: float = 60.0  # the producer's queue at the end
    drift_events: float = 30.0  # reading the run's drift-events topic for the explanation
    page: float = 90.0  # after the story: until the page is active in Alertmanager
    scrape: float = 2.0  # one /metrics or API request


@dataclasses.dataclass
class PageReport:
    """When the page showed after the story ended (seconds; None: not within the bound)."""
    firing_in_prometheus: float | None
    active_in_alertmanager: float | None
    story_after_drift: float = 0.0  # seconds from the first drifted event's publication to the story's end
    during_story: float | None = None  # seconds from the first drifted event to the page in Alertmanager,
    #                                    when it came before the story ended


@dataclasses.dataclass
class LiveReport:
    lines: list[str]
    detection_seconds: float | None  # first drifted event published -> drift on /metrics
    events_per_second: float  # events the worker accounted for / wall time from first publish
    complete: bool = True  # the worker counted every label within the bound
    plot: Path | None = None
    page: PageReport | None = None
    worker_pid: int | None = None  # set when the worker was left running
    explanation: dict | None = None  # the drifted segment's latest error-drift explanation (drift-events topic)


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= set(lv))


def live_config(bootstrap: str, prefix: str) -> str:
    topics = ", ".join(f"{k}: {v}" for k, v in prefixed_topics(prefix).items())
    body = demo_config(BASELINE_FILE).split("models:", 1)[1]
    held = body.replace("drift_hold: 10m", f"drift_hold: {LIVE_DRIFT_HOLD}")
    assert held != body, "the demo config no longer sets drift_hold: 10m"
    return (f"# driftline live demo config (written by `driftline demo --kafka`)\n"
            f"kafka:\n  bootstrap: {bootstrap}\n  group_id: {prefix}\n  partitions: 4\n  topics: {{{topics}}}\n"
            f"models:{held}")


# ------------------------------------------------------------------------------ clock and pacing
def sleep_until(deadline: float) -> None:
    """Sleep until time.monotonic() reaches `deadline`; the clock is read once, so a clock that
    moves between reading and sleeping cannot make the sleep negative."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


@dataclasses.dataclass
class _Sample:
    at: float  # seconds since the first event was published
    accuracy: dict[str, float]  # segment -> driftline_accuracy
    error_detections: dict[tuple[str, str], float]  # (segment, detector) -> driftline_drift_detected_total


class MetricsSampler(threading.Thread):
    """Scrapes the worker's /metrics every `interval` seconds in its own thread, so the publishing
    pace does not depend on how fast the worker answers: accuracy and error detections per
    segment (for the plot), and when the drifted segment's error drift first showed."""

    def __init__(self, url: str, started: float, interval: float = 0.25, timeout: float = 2.0,
                 page_check=None, page_every: float = 1.0):
        super().__init__(name="demo-metrics-sampler", daemon=True)
        self.url, self.started, self.interval, self.timeout = url, started, interval, timeout
        self.samples: list[_Sample] = []
        self.drift_seen_at: float | None = None  # monotonic time of the first scrape showing it
        # page_check() -> bool, polled every page_every s until true: when the page came (monotonic).
        self.page_check, self.page_every, self.page_seen_at, self._page_next = page_check, page_every, None, 0.0
        self.last: dict | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            tick = time.monotonic()
            self.sample()
            if self.page_check is not None and self.page_seen_at is None and tick >= self._page_next:
                self._page_next = tick + self.page_every
                if self.page_check():
                    self.page_seen_at = time.monotonic()
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def sample(self) -> dict | None:
        try:
            s = scrape(self.url, timeout=self.timeout)
        except (OSError, ValueError):  # not up yet, restarting, or a torn response: next time
            return None
        now = time.monotonic()
        self.last = s
        acc = {dict(lv)["segment"]: v for (n, lv), v in s.items() if n == "driftline_accuracy" and dict(lv).get("model") == MODEL}
        det: dict[tuple[str, str], float] = {}
        for (n, lv), v in s.items():
            d = dict(lv)
            if n == "driftline_drift_detected_total" and d.get("model") == MODEL and d.get("signal") == "error":
                det[(d["segment"], d["detector"])] = det.get((d["segment"], d["detector"]), 0.0) + v
        self.samples.append(_Sample(now - self.started, acc, det))
        if self.drift_seen_at is None and sum(v for (seg, _), v in det.items() if seg == DRIFT_SEGMENT) > 0:
            self.drift_seen_at = now
        return s

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.timeout + 1)

    def detections(self) -> list[tuple[float, str, str]]:
        """(seconds, segment, detector) of each rise of an error-detection counter between samples."""
        out, prev = [], {}
        for smp in self.samples:
            for key, v in smp.error_detections.items():
                if v > prev.get(key, 0.0):
                    out.append((smp.at, key[0], key[1]))
                prev[key] = v
        return out


# ------------------------------------------------------------------------------ the run
class _Publisher:
    """The demo's producer: a full local queue waits (bounded) instead of raising, delivery
    failures are counted, and close() flushes with a bound and says what was left."""

    def __init__(self, bootstrap: str, timeout: float):
        from confluent_kafka import Producer

        self.timeout = timeout
        self.failed = 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "compression.type": "lz4",
                                   "log_level": 3})

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1

    def produce(self, topic: str, key, value: bytes) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: the broker is slow; let it drain
                if time.monotonic() >= deadline:
                    raise DemoError(f"Kafka took nothing for {self.timeout:.0f} s (producer queue full)") from None
                self._producer.poll(0.05)
        self._producer.poll(0)

    def close(self) -> int:
        """Flush; returns the number of messages not delivered (still queued or failed)."""
        return self._producer.flush(self.timeout) + self.failed


def run_live_demo(bootstrap: str, listen: str, out_dir: str | os.PathLike, rate: float = 4000.0,
                  label_lag: float = 2.0, keep_worker: bool = False, pidfile: str | os.PathLike | None = None,
                  prometheus: str | None = None, alertmanager: str | None = None,
                  timeouts: DemoTimeouts = DemoTimeouts(), plot: bool = True) -> LiveReport:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = time.strftime("driftline-demo-%Y%m%d-%H%M%S")
    config = out / "demo-kafka.yml"
    config.write_text(live_config(bootstrap, prefix))
    write_baseline(out)  # the profile of the training rows, beside the config that names it
    inferences, labels, _ = demo_events(feature_drift_row=FEATURE_DRIFT_ROW)
    n = len(inferences)
    base = f"http://{listen}"
    log_path = out / "worker.log"
    say = lambda msg: print(f"demo: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    with open(log_path, "wb") as log:  # the worker holds its own copy of the descriptor
        worker = subprocess.Popen([sys.executable, "-m", "driftline.stream.cli", "run", "--config", str(config),
                                   "--listen", listen], stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    if pidfile is not None:
        Path(pidfile).parent.mkdir(parents=True, exist_ok=True)
        Path(pidfile).write_text(f"{worker.pid}\n")
    keep = False
    try:
        say(f"worker pid {worker.pid} on {base} (log {log_path}); topics {prefix}.*")
        _wait(lambda: _ok(f"{base}/readyz"), timeouts.worker_ready, worker, log_path, "the worker to be ready")
        say(f"publishing {n:,} inference and {n:,} label events at {rate:,.0f} events/s "
            f"(labels {label_lag:g} s after their prediction); drift from event {DRIFT_ROW:,} in {DRIFT_SEGMENT}")
        started = time.monotonic()
        page_check = (lambda: bool(active_pages(alertmanager, timeout=timeouts.scrape))) \
            if keep_worker and alertmanager else None
        sampler = MetricsSampler(f"{base}/metrics", started, timeout=timeouts.scrape, page_check=page_check)
        sampler.start()
        try:
            drift_published, undelivered = _publish(bootstrap, prefix, inferences, labels, rate, label_lag,
                                                    started, timeouts.flush)
            complete = _wait_accounted(sampler, n, timeouts.accounted, worker, log_path, say)
            finished = time.monotonic()
        finally:
            sampler.stop()
        samples = sampler.sample() or sampler.last or {}
        try:
            (out / "metrics-live.prom").write_bytes(urllib.request.urlopen(f"{base}/metrics", timeout=5).read())
        except OSError:
            pass
        keep = keep_worker and worker.poll() is None
    finally:
        if not keep:
            _stop(worker)
            if pidfile is not None:
                Path(pidfile).unlink(missing_ok=True)
    accounted = total(samples, "driftline_events_total")
    seconds = None if sampler.drift_seen_at is None else sampler.drift_seen_at - drift_published
    report = _report(samples, seconds, accounted / max(finished - started, 1e-9), prefix)
    report.complete = complete
    if not complete:
        labelled = total(samples, "driftline_labeled_total", model=MODEL, segment="__all__")
        report.lines.insert(0, f"the worker is still catching up: {labelled:,.0f} of {n:,} labels counted after "
                               f"{timeouts.accounted:.0f} s; the figures below are what it had counted by then")
    if undelivered:
        report.lines.append(f"WARNING: {undelivered:,} messages were not delivered to Kafka within {timeouts.flush:.0f} s")
    report.explanation = latest_explanation(read_drift_records(bootstrap, prefixed_topics(prefix)["drift_events"],
                                                               timeouts.drift_events))
    report.lines += _why_lines(report.explanation)
    if plot:
        report.plot = plot_accuracy(
            out / "demo-live.png", [(s.at, s.accuracy) for s in sampler.samples], sampler.detections(),
            drift_published - started, xlabel=f"seconds since the first event (published at {rate:,.0f} events/s)",
            title="driftline live demo (worker's /metrics): rolling accuracy per segment; "
                  "red = ADWIN, orange = Page-Hinkley (error signal)")
        if report.plot is not None:
            report.lines.append(f"plot: {report.plot}")
    if keep:
        report.worker_pid = worker.pid
        report.lines.append(f"the worker keeps running (pid {worker.pid}, log {log_path}): {base}/metrics")
    else:
        report.lines.append(f"worker stopped with exit code {worker.returncode} (SIGTERM: checkpoint, commit, leave the group)")
    if keep and alertmanager:
        story_after_drift = time.monotonic() - drift_published
        report.page = wait_for_page(prometheus, alertmanager, timeouts.page, timeouts.scrape)
        report.page.story_after_drift = story_after_drift
        if sampler.page_seen_at is not None:
            report.page.during_story = sampler.page_seen_at - drift_published
        report.lines += _page_lines(report.page, prometheus, alertmanager, timeouts.page)
    return report


def _publish(bootstrap: str, prefix: str, inferences: list[dict], labels: list[dict], rate: float,
             label_lag: float, started: float, flush_timeout: float) -> tuple[float, int]:
    """Publish the stream paced at `rate` from `started` (monotonic); event time is the wall clock
    at the planned moment. Returns (monotonic time the first drifted event was published,
    messages not delivered)."""
    pub = _Publisher(bootstrap, flush_timeout)
    wall0 = time.time() - (time.monotonic() - started)  # wall time at `started`
    waiting: deque[tuple[float, dict]] = deque()  # (planned monotonic time, label), in time order
    drift_published = started + DRIFT_ROW / rate
    try:
        for i, ev in enumerate(inferences):
            due = started + i / rate
            sleep_until(due)
            pub.produce(f"{prefix}.inferences", ev["prediction_id"],
                        orjson.dumps({**ev, "timestamp": wall0 + (due - started)}))
            if i in BAD_AT:
                pub.produce(f"{prefix}.inferences", b"bad-%d" % i, BAD_AT[i])
            if i == DRIFT_ROW:
                drift_published = time.monotonic()
            waiting.append((due + label_lag, labels[i]))
            while waiting and waiting[0][0] <= due:
                _publish_label(pub, prefix, waiting.popleft(), wall0, started)
        while waiting:
            sleep_until(waiting[0][0])
            _publish_label(pub, prefix, waiting.popleft(), wall0, started)
    finally:
        undelivered = pub.close()
    return drift_published, undelivered


def _publish_label(pub: _Publisher, prefix: str, item: tuple[float, dict], wall0: float, started: float) -> None:
    due, lab = item
    pub.produce(f"{prefix}.labels", lab["prediction_id"], orjson.dumps({**lab, "timestamp": wall0 + (due - started)}))


def _wait_accounted(sampler: MetricsSampler, n: int, timeout: float, worker, log_path: Path, say) -> bool:
    """Until the worker has counted all `n` labels (True), or `timeout` passed (False)."""
    deadline = time.monotonic() + timeout
    told = time.monotonic()
    while True:
        if worker.poll() is not None:
            raise DemoError(f"the worker exited with {worker.returncode} while counting the stream; "
                            f"log tail:\n{_tail(log_path)}")
        s = sampler.last or {}
        labelled = total(s, "driftline_labeled_total", model=MODEL, segment="__all__")
        if labelled >= n:
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - told >= 15:
            told = now
            say(f"the worker has counted {labelled:,.0f} of {n:,} labels; waiting (at most {deadline - now:.0f} s more)")
        sleep_until(min(deadline, now + 0.25))


def wait_for_page(prometheus: str | None, alertmanager: str, timeout: float, request_timeout: float = 2.0,
                  segment: str = DRIFT_SEGMENT) -> PageReport:
    """Poll until `DriftlineErrorDrift` for `segment` is firing in Prometheus (if given) and active
    in Alertmanager, at most `timeout` seconds; the seconds each took (None: not within it)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    firing = active = None
    while True:
        if firing is None and prometheus and _firing_in_prometheus(prometheus, segment, request_timeout):
            firing = time.monotonic() - t0
        if active is None and active_pages(alertmanager, segment, request_timeout):
            active = time.monotonic() - t0
        if active is not None and (firing is not None or not prometheus):
            break
        now = time.monotonic()
        if now >= deadline:
            break
        sleep_until(min(deadline, now + 0.5))
    return PageReport(firing, active)


def _get_json(url: str, timeout: float):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def _firing_in_prometheus(prometheus: str, segment: str, timeout: float) -> bool:
    body = _get_json(f"{prometheus}/api/v1/alerts", timeout)
    alerts = (body or {}).get("data", {}).get("alerts", [])
    return any(a["labels"].get("alertname") == PAGE_ALERT and a["labels"].get("model") == MODEL
               and a["labels"].get("segment") == segment and a.get("state") == "firing" for a in alerts)


def active_pages(alertmanager: str, segment: str = DRIFT_SEGMENT, timeout: float = 2.0) -> list[dict]:
    """The active (not silenced, not inhibited) DriftlineErrorDrift alerts for the demo model's
    `segment` in Alertmanager (its v2 API)."""
    query = urllib.parse.urlencode([("filter", f'alertname="{PAGE_ALERT}"'), ("filter", f'model="{MODEL}"'),
                                    ("filter", f'segment="{segment}"'), ("active", "true"),
                                    ("silenced", "false"), ("inhibited", "false")])
    body = _get_json(f"{alertmanager}/api/v2/alerts?{query}", timeout)
    return [a for a in body or [] if a.get("status", {}).get("state") == "active"]


def _page_lines(page: PageReport, prometheus: str | None, alertmanager: str, timeout: float) -> list[str]:
    def when(s: float | None) -> str:
        if s is None:
            return f"NOT within {timeout:.0f} s of the story's end"
        return f"{s:.1f} s after the story ended"
    lines = ["", f"the page: {PAGE_ALERT}{{model={MODEL}, segment={DRIFT_SEGMENT}}}"]
    if prometheus:
        lines.append(f"  firing in Prometheus:    {when(page.firing_in_prometheus)}: {prometheus}/alerts")
    lines.append(f"  active in Alertmanager:  {when(page.active_in_alertmanager)}: {alertmanager}/#/alerts")
    if page.during_story is not None:
        lines.append(f"  (in Alertmanager {page.during_story:.1f} s after the first drifted event was published, "
                     f"{page.story_after_drift - page.during_story:.1f} s before the story ended)")
    lines.append(f"  list it:  amtool alert query --alertmanager.url={alertmanager} alertname={PAGE_ALERT}")
    return lines


# ------------------------------------------------------------------------------ why: the explanation
def read_drift_records(bootstrap: str, topic: str, timeout: float) -> list[dict]:
    """Every committed record on the run's drift-events topic (one partition), read to its end,
    at most `timeout` seconds; [] when Kafka does not answer in time.

    The worker writes this topic inside its transactions, so the readable end is the last stable
    offset, not the high watermark (an open transaction's records and the commit markers sit
    past it); stream/topic_reader.py reads to that end, retrying the watermark requests a busy
    machine can time out.
    """
    from confluent_kafka import Consumer, KafkaException

    from driftline.stream.topic_reader import read_to_end

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-demo-reader",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "log_level": 3})
    records: list[dict] = []

    def take(msg) -> None:
        if msg.error() is None:
            try:
                records.append(orjson.loads(msg.value()))
            except orjson.JSONDecodeError:
                pass

    try:
        read_to_end(consumer, topic, [0], take, timeout)  # what was read in time, if not all
    except KafkaException:
        pass
    finally:
        consumer.close()
    return records


def latest_explanation(records: list[dict], segment: str = DRIFT_SEGMENT) -> dict | None:
    """The latest explanation of `segment`'s error drift: from the detection (direction up) or a
    later `"kind": "explanation"` refresh (docs/explanations.md)."""
    found = None
    for rec in records:
        if rec.get("model") == MODEL and rec.get("segment") == segment and rec.get("signal") == "error" \
                and isinstance(rec.get("explanation"), dict):
            found = rec["explanation"]
    return found


def _why_lines(e: dict | None) -> list[str]:
    if e is None:
        return []
    lines = ["", f"why ({DRIFT_SEGMENT}, from the run's drift-events topic; docs/explanations.md): accuracy "
                 f"{e['accuracy_before']:.3f} -> {e['accuracy_after']:.3f} over {e['labelled_after']:,} labelled events "
                 f"since the change point"]
    if not e.get("slices"):
        return lines + ["  no slice lost accuracy beyond the rest of the traffic (yet)"]
    for sl in e["slices"][:3]:
        acc_b = "-" if sl["accuracy_before"] is None else f"{sl['accuracy_before']:.3f}"
        lines.append(f"  {sl['feature']} {sl['bin']}: accuracy {acc_b} -> {sl['accuracy_after']:.3f}, "
                     f"share {sl['share_before']:.1%} -> {sl['share_after']:.1%}, contribution {sl['contribution']:.3f}")
    return lines


# ------------------------------------------------------------------------------ the story
def _report(samples, seconds, rate, prefix) -> LiveReport:
    lines = [f"worker accounted for {total(samples, 'driftline_events_total'):,.0f} events at {rate:,.0f} events/s "
             f"(inferences + labels, publishing paced)", "",
             f"{'segment':<12}{'labelled':>10}{'accuracy':>10}{'error drifts':>14}{'drift active':>14}"]
    segments = sorted({dict(lv)["segment"] for (name, lv) in samples if name == "driftline_labeled_total"})
    drifted_elsewhere = []
    for seg in segments:
        labelled = total(samples, "driftline_labeled_total", model=MODEL, segment=seg)
        acc = total(samples, "driftline_accuracy", model=MODEL, segment=seg)
        drifts = total(samples, "driftline_drift_detected_total", model=MODEL, segment=seg, signal="error")
        active = max((v for (name, lv), v in samples.items() if name == "driftline_drift_active"
                      and dict(lv)["segment"] == seg and dict(lv)["signal"] == "error"), default=0.0)
        if drifts and seg not in (DRIFT_SEGMENT, "__all__"):
            drifted_elsewhere.append(seg)
        lines.append(f"{seg:<12}{labelled:>10,.0f}{acc:>10.3f}{drifts:>14,.0f}{'yes' if active else 'no':>14}")
    invalid = total(samples, "driftline_events_total", outcome="invalid")
    lines += ["", f"dead-lettered: {invalid:.0f} (topic {prefix}.dead-letters, with reasons)"]
    lines.append(f"first drifted event -> error drift in {DRIFT_SEGMENT} on /metrics: "
                 + (f"{seconds:.1f} s" if seconds is not None else "NOT DETECTED"))
    if seconds is not None:
        lines.append(f"the story: {DRIFT_FEATURE} reads high in {DRIFT_SEGMENT}, and the worker found the error drift "
                     f"there; " + (f"error drift also in {', '.join(drifted_elsewhere)}" if drifted_elsewhere
                                   else "the other segments stayed quiet"))
    signals = (FEATURE_DRIFT_FEATURE, DRIFT_FEATURE, "prediction", "score")
    threshold = total(samples, "driftline_feature_psi_threshold", model=MODEL)
    lines += ["", f"PSI against the training baseline ({BASELINE_FILE}, threshold {threshold:g}); "
                  f"{FEATURE_DRIFT_FEATURE} drifts in {FEATURE_DRIFT_SEGMENT} from event {FEATURE_DRIFT_ROW:,} "
                  f"(the model ignores it)",
              f"{'segment':<12}" + "".join(f"{s + ' PSI':>16}" for s in signals) + f"{'accuracy':>10}"]
    for seg in segments:
        cells = []
        for sig in signals:
            found = [v for (name, lv), v in samples.items() if name == "driftline_feature_psi"
                     and dict(lv).get("segment") == seg and dict(lv).get("feature") == sig]
            cells.append(f"{found[0]:>16.3f}" if found else f"{'-':>16}")
        acc = total(samples, "driftline_accuracy", model=MODEL, segment=seg)
        lines.append(f"{seg:<12}{''.join(cells)}{acc:>10.3f}")
    return LiveReport(lines, seconds, rate)


# ------------------------------------------------------------------------------ process helpers
def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait(check, timeout: float, proc, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DemoError(f"the worker exited with {proc.returncode} while waiting for {what}; "
                            f"log tail:\n{_tail(log_path)}")
        if check():
            return
        now = time.monotonic()
        if now >= deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; log: {log_path}")
        sleep_until(min(deadline, now + 0.25))


def _stop(worker: subprocess.Popen, grace: float = 60.0) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(grace)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
