"""Fixtures for the end-to-end tests: real Kafka, driftline workers, Prometheus and Alertmanager.

The broker and the helpers come from tests/integration/conftest.py (loaded by path: a conftest's
fixtures reach only its own directory, and with --import-mode=importlib a conftest is not an
importable module). The session's broker is shared with tests/integration (see
`session_shared` there); workers, Prometheus, Alertmanager and the webhook receiver are this
module's own, so nothing here sees the stubs that tests/integration scrapes.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest


def _load_integration_conftest():
    name = "driftline_integration_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "integration" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


it = _load_integration_conftest()
REPO = it.REPO

# The integration fixtures, visible to tests/e2e too.
local_state = it.local_state
kafka_bootstrap = it.kafka_bootstrap
dashboards = it.dashboards


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class WorkerProcess:
    """`driftline run` as a subprocess, serving /metrics on a free port."""

    def __init__(self, name: str, config: Path, logdir: Path):
        self.name = name
        self.port = it.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.stream.cli", "run", "--config", str(config), "--listen", self.address],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def get(self, path: str) -> tuple[int, bytes]:
        return it.http_get(f"http://{self.address}{path}", timeout=5)

    def ready(self) -> bool:
        self.check_alive()
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def start_worker(e2e_dir: Path) -> Iterator[Callable[[str, Path], WorkerProcess]]:
    """start_worker(name, config) -> WorkerProcess; every worker is stopped (SIGTERM) at the end."""
    workers: list[WorkerProcess] = []

    def _start(name: str, config: Path) -> WorkerProcess:
        w = WorkerProcess(name, config, e2e_dir)
        workers.append(w)
        return w

    yield _start
    for w in workers:
        w.stop()


@pytest.fixture(scope="module")
def webhook() -> Iterator:
    """This module's Alertmanager webhook receiver (`.posts`, each with the wall time `at`)."""
    srv = it._Recorder()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def alertmanager(e2e_dir: Path, webhook) -> Iterator[str]:
    """The shipped Alertmanager config, its webhooks pointed at `webhook`: its URL."""
    state = e2e_dir / "alertmanager-state"
    port = it.free_port()
    cfg = it.render_alertmanager_config(e2e_dir / "alertmanager.yml", f"http://{webhook.address}/")
    svc = it._Service("alertmanager", {"DRIFTLINE_STATE": str(state), "ALERTMANAGER_PORT": str(port),
                                       "ALERTMANAGER_CONFIG": str(cfg)})
    svc.start(it.SERVICE_START_TIMEOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def start_prometheus(e2e_dir: Path) -> Iterator[Callable[[str, list[str]], str]]:
    """start_prometheus(alertmanager_url, worker_addresses) -> URL of a Prometheus running the
    shipped config and rules (1 s scrape and evaluation), stopped at the end."""
    services = []

    def _start(alertmanager_url: str, targets: list[str]) -> str:
        state = e2e_dir / f"prometheus-state-{len(services)}"
        port = it.free_port()
        cfg = it.render_prometheus_config(e2e_dir / f"prometheus-{len(services)}.yml",
                                          alertmanager_url.split("://", 1)[1], targets)
        svc = it._Service("prometheus", {"DRIFTLINE_STATE": str(state), "PROMETHEUS_PORT": str(port),
                                         "PROMETHEUS_CONFIG": str(cfg)})
        services.append(svc)
        svc.start(it.SERVICE_START_TIMEOUT)
        return f"http://127.0.0.1:{port}"

    yield _start
    for svc in services:
        svc.stop()


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 0.2,
               workers: list[WorkerProcess] = ()):
    """Polls `check` until it returns something truthy (which is returned); fails with `what`."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for w in workers:
            w.check_alive()
        try:
            last = check()
            if last:
                return last
        except OSError as exc:  # connection refused or reset while a process settles (URLError too)
            last = exc
        time.sleep(interval)
    logs = "".join(f"\n--- {w.name}:\n{_tail(w.log_path, 2000)}" for w in workers)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last: {last!r}{logs}")


@pytest.fixture(scope="module")
def wait() -> Callable:
    return wait_until
