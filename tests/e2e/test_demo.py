"""`./demo` as a newcomer runs it, on ports of its own: it starts the local stack (Kafka,
Prometheus, Alertmanager), tells its story live through a worker, and leaves the stack and the
worker running, so that the drift's page is active in Alertmanager within a minute of the end.
`deploy/local/stack stop` then stops everything, the worker too.

The demo accepts other ports through the environment (KAFKA_PORT, PROMETHEUS_PORT,
ALERTMANAGER_PORT, DRIFTLINE_WORKER_PORT, DRIFTLINE_STATE), which is how this test runs a second
stack beside whatever else runs here; everything else is the demo as shipped.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PAGE_WITHIN = 60.0  # seconds from the demo's end to the page active in Alertmanager, at most


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    ports = {name: _free_port() for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "PROMETHEUS_PORT",
                                               "ALERTMANAGER_PORT", "DRIFTLINE_WORKER_PORT")}
    env = {k: v for k, v in os.environ.items() if k != "DRIFTLINE_BOOTSTRAP"}
    env.update({k: str(v) for k, v in ports.items()})
    env["DRIFTLINE_STATE"] = str(tmp / "state")
    out = tmp / "out"
    t0 = time.monotonic()
    try:
        res = subprocess.run([str(REPO / "demo"), "--out", str(out)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=900)
        ended = time.monotonic()
        yield {"res": res, "ended": ended, "wall": ended - t0, "ports": ports, "env": env, "out": out}
    finally:
        subprocess.run([str(REPO / "deploy/local/stack"), "stop"], env=env, capture_output=True, timeout=180)


def test_demo_ends_with_the_page_active_in_alertmanager(demo_run):
    res, ports = demo_run["res"], demo_run["ports"]
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-6000:]
    prom = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}"
    am = f"http://127.0.0.1:{ports['ALERTMANAGER_PORT']}"
    worker = f"http://127.0.0.1:{ports['DRIFTLINE_WORKER_PORT']}"
    print(f"./demo wall time: {demo_run['wall']:.1f} s")

    # The story, live (not the replay fallback): the drift found in band=high only.
    assert "the story: f7 reads high in band=high, and the worker found the error drift there; " \
           "the other segments stayed quiet" in output, output[-6000:]
    # ... and why, from the run's drift-events topic: the drifted sensor's slice on top.
    why = re.search(r"^why \(band=high.*\n  (\S+) ", output, re.M)
    assert why and why.group(1) == "f7", output[-6000:]

    # Alertmanager, through its API: the page for the drifted segment is active (not inhibited,
    # not silenced) within a minute of the demo's end, on the pager route.
    def page():
        alerts = _get_json(f"{am}/api/v2/alerts?active=true&silenced=false&inhibited=false")
        return [a for a in alerts if a["labels"].get("alertname") == "DriftlineErrorDrift"
                and a["labels"].get("segment") == "band=high" and a["labels"].get("model") == "shuttle"
                and a["status"]["state"] == "active"]
    deadline = demo_run["ended"] + PAGE_WITHIN
    found = []
    while not found and time.monotonic() < deadline:
        found = page()
        if not found:
            time.sleep(0.5)
    assert found, f"no active DriftlineErrorDrift for band=high in Alertmanager {PAGE_WITHIN:.0f} s after the demo"
    print(f"page active in Alertmanager {time.monotonic() - demo_run['ended']:.1f} s after ./demo ended")
    assert [r["name"] for r in found[0]["receivers"]] == ["pager"]
    assert found[0]["labels"]["severity"] == "page"
    # ... and no error drift page for the segments that did not drift.
    others = [a["labels"]["segment"] for a in _get_json(f"{am}/api/v2/alerts?active=true")
              if a["labels"].get("alertname") == "DriftlineErrorDrift"
              and a["labels"].get("segment") not in ("band=high", "__all__")]
    assert others == []

    # Prometheus: the same alert firing; the worker still scraped (it is left running).
    firing = [a for a in _get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
              if a["labels"]["alertname"] == "DriftlineErrorDrift" and a["labels"].get("segment") == "band=high"]
    assert [a["state"] for a in firing] == ["firing"]
    up = _get_json(f"{prom}/api/v1/query?query=" + urllib.request.quote('up{job="driftline"}'))["data"]["result"]
    assert [(r["metric"]["instance"], r["value"][1]) for r in up] == [(f"127.0.0.1:{ports['DRIFTLINE_WORKER_PORT']}", "1")]

    # The demo printed where to look, and the amtool command, which lists the page as printed.
    for url in (f"{prom}/alerts", am, f"{worker}/metrics"):
        assert url in output, url
    cmd = re.search(r"^\s*list it:\s+(amtool .+)$", output, re.M)
    assert cmd, output[-3000:]
    listed = subprocess.run(shlex.split(cmd.group(1)), capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "DriftlineErrorDrift" in listed.stdout and "segment band=high" in listed.stdout, listed.stdout

    # The live plot was written.
    png = demo_run["out"] / "demo-live.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stack_stop_stops_the_demo_worker_too(demo_run):
    env, ports = demo_run["env"], demo_run["ports"]
    worker = f"http://127.0.0.1:{ports['DRIFTLINE_WORKER_PORT']}/metrics"
    assert demo_run["res"].returncode == 0
    assert _alive(worker), "the demo's worker should still be running after the demo"
    stop = subprocess.run([str(REPO / "deploy/local/stack"), "stop"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert stop.returncode == 0, stop.stderr
    assert "worker: stopped" in stop.stderr
    assert not _alive(worker)
    assert [name for name, port in ports.items() if _listening(port)] == []
    status = subprocess.run([str(REPO / "deploy/local/stack"), "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 1 and "worker: not running" in status.stderr, status.stderr
