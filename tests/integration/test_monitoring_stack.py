"""deploy/prometheus and deploy/alertmanager: the configs pass Prometheus' own checks and rule
tests, and the processes that deploy/local/* starts load them and work together:
metrics -> Prometheus rule -> Alertmanager -> webhook."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
AM_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTS = {"DriftlineErrorDrift", "DriftlineWorkerDown"}
RECORDS = {"driftline:accuracy:ratio_rate5m"}


def run(*cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_for(what: str, check, timeout: float = 30.0, interval: float = 0.5):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:  # connection refused / reset while a process settles
            last = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def loaded_rules(prometheus_url: str) -> tuple[set[str], set[str]]:
    groups = get_json(f"{prometheus_url}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    return ({r["name"] for r in rules if r["type"] == "alerting"},
            {r["name"] for r in rules if r["type"] == "recording"})


# ---------------------------------------------------------------- static checks (no processes)
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.docker.yml"])
def test_promtool_check_config(config):
    res = run("promtool", "check", "config", str(PROM / config))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules():
    files = sorted(str(p) for p in (PROM / "rules").glob("*.yml"))
    assert files
    res = run("promtool", "check", "rules", *files)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_rule_unit_tests():
    files = sorted(str(p) for p in (PROM / "tests").glob("*.yml"))
    assert files
    res = run("promtool", "test", "rules", *files)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_amtool_check_config():
    res = run("amtool", "check-config", str(AM_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- running processes
def test_shipped_prometheus_config_starts_with_its_rules(tmp_path):
    """deploy/local/prometheus with its default config (relative rule paths and all)."""
    env = {"DRIFTLINE_STATE": str(tmp_path), "PROMETHEUS_PORT": str(free_port())}
    res = run(str(REPO / "deploy/local/prometheus"), "start", env=env)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        url = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}"
        alerts, records = wait_for("rules", lambda: loaded_rules(url) if loaded_rules(url)[0] else None)
        assert ALERTS <= alerts and RECORDS <= records
        # The shipped config sends to the local Alertmanager's default address (discovered
        # asynchronously, whether or not one runs there).
        wait_for("the Alertmanager at 127.0.0.1:9093", lambda: [
            a for a in get_json(f"{url}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
            if "127.0.0.1:9093" in a["url"]
        ])
        assert run(str(REPO / "deploy/local/prometheus"), "status", env=env).returncode == 0
    finally:
        run(str(REPO / "deploy/local/prometheus"), "stop", env=env)
    assert run(str(REPO / "deploy/local/prometheus"), "status", env=env).returncode == 1


def test_prometheus_and_alertmanager_are_ready_and_connected(prometheus_url, alertmanager_url):
    for url in (prometheus_url, alertmanager_url):
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as r:
            assert r.status == 200
    alerts, records = wait_for("rules loaded", lambda: loaded_rules(prometheus_url) if loaded_rules(prometheus_url)[0] else None)
    assert ALERTS <= alerts, alerts
    assert RECORDS <= records, records
    wait_for("Prometheus to discover Alertmanager", lambda: [
        a for a in get_json(f"{prometheus_url}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        if a["url"].startswith(alertmanager_url)
    ])


def test_grafana_dashboard_queries_are_valid_promql(prometheus_url):
    dash = json.loads((REPO / "deploy/grafana/dashboards/fleet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        q = expr.replace("$model", ".*")
        body = get_json(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        assert body["status"] == "success", (expr, body)


def test_error_drift_metric_pages_through_alertmanager(prometheus_url, alertmanager_url, metrics_stub, webhook_sink):
    """A worker reporting driftline_drift_active{signal="error"} == 1 is paged within seconds."""
    metrics_stub.body = (
        b"# HELP driftline_drift_active 1 from a detection until the drift hold passes.\n"
        b"# TYPE driftline_drift_active gauge\n"
        b'driftline_drift_active{model="shuttle",segment="region=eu",signal="error",detector="adwin"} 1\n'
        b'driftline_drift_active{model="shuttle",segment="__all__",signal="f1",detector="adwin"} 1\n'
    )

    def paged():
        for post in webhook_sink.posts:
            for alert in post.get("json", {}).get("alerts", []):
                if alert["labels"].get("alertname") == "DriftlineErrorDrift" and alert["status"] == "firing":
                    return alert
        return None

    alert = wait_for("the DriftlineErrorDrift notification at the webhook", paged, timeout=60)
    assert alert["labels"] == {"alertname": "DriftlineErrorDrift", "model": "shuttle",
                               "segment": "region=eu", "severity": "page"}
    # Feature drift alone pages nobody.
    active = get_json(f"{alertmanager_url}/api/v2/alerts")
    assert {a["labels"]["segment"] for a in active if a["labels"].get("alertname") == "DriftlineErrorDrift"} == {"region=eu"}
