"""Helpers for tests that run `driftline run` processes against a real broker."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import orjson
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from driftline.stream.settings import prefixed_topics

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, bootstrap: str, prefix: str, models_yaml: str, partitions: int = 3,
                 extra: str = "") -> Path:
    topics = ", ".join(f"{k}: {v}" for k, v in prefixed_topics(prefix).items())
    path.write_text(f"kafka:\n  bootstrap: {bootstrap}\n  group_id: {prefix}\n  partitions: {partitions}\n"
                    f"  topics: {{{topics}}}\n{extra}models:\n{models_yaml}")
    return path


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= set(lv))


def series(samples: dict, name: str) -> set[tuple]:
    return {lv for (n, lv) in samples if n == name}


CLI = ("driftline.stream.cli",)  # what `python -m` runs as a worker (tests may run a wrapper)


class WorkerProcess:
    """One `driftline run` process with its own log and listen port."""

    def __init__(self, config: Path, log_dir: Path, name: str, env: dict | None = None,
                 entry: tuple[str, ...] = CLI):
        self.config, self.name = config, name
        self.entry = entry  # `python -m` module and its leading arguments
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.entry, "run", "--config", str(self.config), "--listen", f"127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self) -> dict:
        return parse(self.get("/metrics")[1].decode())

    def ready(self) -> bool:
        try:
            return self.get("/readyz", 2)[0] == 200
        except OSError:
            return False

    def terminate(self, timeout: float = 60) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def wait_for(what: str, check: Callable[[], object], timeout: float, workers: Iterable[WorkerProcess] = (),
             interval: float = 0.3):
    deadline, last = time.monotonic() + timeout, None
    workers = list(workers)
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None and not getattr(w, "expected_dead", False):
                raise AssertionError(f"worker {w.name} exited with {w.proc.returncode} while waiting for {what}:\n"
                                     f"{w.log_tail()}")
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(interval)
    tails = "\n".join(f"--- {w.name}\n{w.log_tail(1500)}" for w in workers)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}\n{tails}")


def fleet_metrics(workers: Iterable[WorkerProcess]) -> list[dict]:
    """Each live worker's samples (for what is checked per worker: partitions, owners, rebalances)."""
    return [w.metrics() for w in workers if w.alive]


def summed(per_worker: Iterable[dict]) -> dict[tuple[str, tuple], float]:
    """Several workers' samples as one fleet's: each series' values added up. A counter is state
    that moves with its partition (one owner at a time), so the fleet's count is the sum."""
    out: dict[tuple[str, tuple], float] = {}
    for samples in per_worker:
        for key, value in samples.items():
            out[key] = out.get(key, 0.0) + value
    return out


def fleet_counts(workers: Iterable[WorkerProcess]) -> dict[tuple[str, tuple], float]:
    """The live workers' /metrics as one fleet's (read with total() and series())."""
    return summed(fleet_metrics(workers))


def fleet_total(workers: Iterable[WorkerProcess], name: str, **labels) -> float:
    return total(fleet_counts(workers), name, **labels)


class StreamCounts(NamedTuple):
    """What a test that published a known stream checks first: events accepted, labels joined."""

    inferences: float  # accepted
    labels: float  # accepted
    labeled: float  # joined to their prediction (segment __all__)
    correct: float  # of those, label == prediction

    @classmethod
    def of(cls, samples: dict) -> "StreamCounts":
        return cls(total(samples, "driftline_events_total", kind="inference", outcome="accepted"),
                   total(samples, "driftline_events_total", kind="label", outcome="accepted"),
                   total(samples, "driftline_labeled_total", segment="__all__"),
                   total(samples, "driftline_correct_total", segment="__all__"))


def producer(bootstrap: str, **extra) -> Producer:
    # log_level 2: a broker the test stops on purpose would fill the output with refused connections.
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "enable.idempotence": True, "log_level": 2, **extra})


def publish(p: Producer, topic: str, events: Iterable[dict | bytes], key_of=lambda ev: ev["prediction_id"]) -> int:
    n = 0
    for ev in events:
        if isinstance(ev, (bytes, bytearray)):
            p.produce(topic, key=f"raw-{n}".encode(), value=bytes(ev))
        else:
            p.produce(topic, key=key_of(ev), value=orjson.dumps(ev))
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    return n


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, linger: float = 2.0,
                **extra) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra})
    c.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        for msg in c.consume(1000, 0.5):
            if not msg.error():
                got.append(msg)
    end = time.monotonic() + linger  # more than expected would be a defect too
    while time.monotonic() < end:
        for msg in c.consume(1000, 0.2):
            if not msg.error():
                got.append(msg)
    c.close()
    return got


def unique_prefix() -> str:
    return f"ft{uuid.uuid4().hex[:8]}"


# The fleet's event-time figures: what a failed "agrees with replay" test prints, so that the
# next failure says whether the order broke (late, released early) or a count was still in flight.
EVENT_TIME_FIGURES = ("driftline_observations_late_total", "driftline_observations_released_early_total",
                      "driftline_observations_held", "driftline_observations_deduplicated_total",
                      "driftline_rebalances_total")


def event_time_report(samples: Iterable[dict]) -> str:
    """One line per figure: the fleet's sum, then each worker's per-partition values."""
    samples = list(samples)
    lines = []
    for name in EVENT_TIME_FIGURES:
        per_worker = [{dict(lv).get("partition", ""): v for (n, lv), v in m.items() if n == name} for m in samples]
        fleet = sum(sum(w.values()) for w in per_worker)
        shown = "; ".join(",".join(f"{p}={v:g}" if p else f"{v:g}" for p, v in sorted(w.items())) or "-"
                          for w in per_worker)
        lines.append(f"{name}: {fleet:g} (per worker: {shown})")
    return "\n".join(lines)
