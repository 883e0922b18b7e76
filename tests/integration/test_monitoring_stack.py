"""deploy/prometheus, deploy/alertmanager and the dashboards' queries: the configs pass Prometheus'
and Alertmanager's own checks, rule unit tests and routing tests; every alert is unit-tested firing
and not firing and has a runbook section; and the processes that deploy/local/* starts load them and
work together: metrics (a stub) -> Prometheus rule -> Alertmanager -> webhook. tests/e2e does the
same with real workers."""
from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
AM_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = REPO / "docs" / "alerting.md"
RULES = [r for p in sorted((PROM / "rules").glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]
         for r in g["rules"]]
ALERTS = {r["alert"] for r in RULES if "alert" in r}
RECORDS = {r["record"] for r in RULES if "record" in r}
SEVERITIES = {"page", "ticket"}


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


def test_the_shipped_alerts_and_recording_rules():
    assert ALERTS == {
        "DriftlineErrorDrift", "DriftlineAccuracyBelowObjective", "DriftlineFeatureDrift", "DriftlinePredictionDrift",
        "DriftlineDeadLettersHigh", "DriftlineModelSilent", "DriftlineLabelsStopped",
        "DriftlineWorkerDown", "DriftlineNoWorkers", "DriftlineWorkerLagging", "DriftlineCheckpointStale",
        "DriftlineBaselineDrift", "DriftlineFeatureInvalid", "DriftlineFeatureMissing",
        "DriftlineOutcomeCostOverBudget", "DriftlineConceptDrift", "DriftlineWatermarkStuck",
        "DriftlineLLMLatencyRegression", "DriftlineLLMCostBurn", "DriftlineLLMFeedbackDrop",
        "DriftlineLLMEmbeddingDrift", "DriftlineLLMTruncation",
    }
    assert {"driftline:accuracy:ratio_rate5m", "driftline:accuracy:ratio_rate30m", "driftline:events:rate5m",
            "driftline:dead_letters:ratio_rate5m", "driftline:label_coverage:ratio_rate30m"} <= RECORDS


@pytest.mark.parametrize("rule", [r for r in RULES if "alert" in r], ids=lambda r: r["alert"])
def test_every_alert_has_a_severity_and_a_runbook(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    ann = rule["annotations"]
    assert ann["summary"] and ann["description"]
    page, anchor = ann["runbook"].split("#")
    assert (REPO / page) == RUNBOOK and anchor == rule["alert"].lower()
    # The runbook has a section of that name (GitHub's anchor: the heading, lowercased).
    assert re.search(rf"^#+ {rule['alert']}$", RUNBOOK.read_text(), re.M), f"no section {rule['alert']} in {RUNBOOK}"


def test_every_alert_is_unit_tested_firing_and_not_firing():
    fired, quiet = set(), set()
    for path in sorted((PROM / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert ALERTS - fired == set(), "alerts never tested firing"
    assert ALERTS - quiet == set(), "alerts never tested not firing"


def test_alertmanager_config_names_only_shipped_alerts():
    """Each alternative of every alertname matcher (routes, inhibitions) matches a shipped alert:
    a renamed alert must not silently fall out of its route or inhibition."""
    cfg = yaml.safe_load(AM_CONFIG.read_text())

    def route_matchers(route):
        yield from route.get("matchers", [])
        for child in route.get("routes", []):
            yield from route_matchers(child)

    matchers = list(route_matchers(cfg["route"]))
    for rule in cfg["inhibit_rules"]:
        matchers += rule["source_matchers"] + rule["target_matchers"]
    checked = 0
    for matcher in matchers:
        m = re.fullmatch(r'alertname\s*(=~|=)\s*"?([^"]*)"?', matcher.strip())
        if m is None:
            continue
        op, value = m.groups()
        for alt in value.split("|") if op == "=~" else [value]:
            assert any(re.fullmatch(alt, name) for name in ALERTS), f"{matcher!r}: {alt!r} matches no shipped alert"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("labels, receiver", [
    ("alertname=DriftlineErrorDrift severity=page model=churn segment=plan=pro instance=w1:8000", "pager"),
    ("alertname=DriftlineAccuracyBelowObjective severity=page model=churn segment=__all__", "pager"),
    ("alertname=DriftlineFeatureDrift severity=ticket model=churn segment=plan=pro signal=tenure", "tickets"),
    ("alertname=DriftlineDeadLettersHigh severity=ticket model=churn", "tickets"),
    ("alertname=DriftlineDeadLettersHigh severity=ticket model=__unknown__", "platform"),
    ("alertname=DriftlineWorkerDown severity=ticket job=driftline instance=w1:8000", "platform"),
    ("alertname=DriftlineCheckpointStale severity=ticket job=driftline instance=w1:8000", "platform"),
    ("alertname=DriftlineNoWorkers severity=page job=driftline", "platform-pager"),
])
def test_alertmanager_routes_by_severity_and_model(labels, receiver):
    res = run("amtool", "config", "routes", "test", f"--config.file={AM_CONFIG}", f"--verify.receivers={receiver}",
              *labels.split())
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


def test_grafana_dashboard_queries_are_valid_promql(prometheus_url, dashboards):
    """Every panel, annotation and variable query parses (tests/e2e runs them on real data)."""
    queries = dashboards.queries()
    assert {q.dashboard for q in queries} == {"fleet.json", "model.json", "workers.json", "llm.json"}
    values = {"model": "shuttle", "segment": ".*", "instance": ".*"}
    for q in queries:
        if q.kind == "variable":
            selector, _ = dashboards.label_values(q.expr)
            url = f"{prometheus_url}/api/v1/series?" + urllib.parse.urlencode({"match[]": dashboards.expand(selector, values)})
        else:
            url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": dashboards.expand(q.expr, values)})
        body = get_json(url)
        assert body["status"] == "success", (q, body)


def test_error_drift_metric_pages_through_alertmanager(prometheus_url, alertmanager_url, metrics_stub, webhook_sink):
    """A worker reporting driftline_drift_active{signal="error"} == 1 (error rate up) for a segment
    with enough traffic is paged within seconds, on the pager route; a segment with too little traffic to
    judge, and feature drift, page nobody."""
    scrapes = itertools.count()

    def exposition() -> bytes:
        n = next(scrapes) * 50  # 50 inference events between scrapes in region=eu
        return (
            "# HELP driftline_drift_active 1 from a detection until the drift hold passes.\n"
            "# TYPE driftline_drift_active gauge\n"
            'driftline_drift_active{model="shuttle",segment="region=eu",signal="error",detector="adwin"} 1\n'
            'driftline_drift_active{model="shuttle",segment="region=tiny",signal="error",detector="adwin"} 1\n'
            'driftline_drift_active{model="shuttle",segment="__all__",signal="f1",detector="adwin"} 1\n'
            "# HELP driftline_drift_direction Which way the signal moved at the last detection.\n"
            "# TYPE driftline_drift_direction gauge\n"
            'driftline_drift_direction{model="shuttle",segment="region=eu",signal="error",detector="adwin"} 1\n'
            'driftline_drift_direction{model="shuttle",segment="region=tiny",signal="error",detector="adwin"} 1\n'
            'driftline_drift_direction{model="shuttle",segment="__all__",signal="f1",detector="adwin"} 1\n'
            "# HELP driftline_segment_inferences_total Inference events per segment.\n"
            "# TYPE driftline_segment_inferences_total counter\n"
            f'driftline_segment_inferences_total{{model="shuttle",segment="region=eu"}} {n}\n'
            'driftline_segment_inferences_total{model="shuttle",segment="region=tiny"} 3\n'
            f'driftline_segment_inferences_total{{model="shuttle",segment="__all__"}} {n + 3}\n'
            "# HELP driftline_slice_contribution Accuracy points of an active error drift that a slice accounts for.\n"
            "# TYPE driftline_slice_contribution gauge\n"
            'driftline_slice_contribution{model="shuttle",segment="region=eu",feature="tenure",bin="[48, +inf)",rank="1"} 0.042\n'
            'driftline_slice_contribution{model="shuttle",segment="region=eu",feature="plan",bin="pro",rank="2"} 0.008\n'
        ).encode()

    metrics_stub.body = exposition

    def paged():
        for post in webhook_sink.posts:
            for alert in post.get("json", {}).get("alerts", []):
                if alert["labels"].get("alertname") == "DriftlineErrorDrift" and alert["status"] == "firing":
                    return post, alert
        return None

    post, alert = wait_for("the DriftlineErrorDrift notification at the webhook", paged, timeout=60)
    assert alert["labels"] == {"alertname": "DriftlineErrorDrift", "model": "shuttle", "segment": "region=eu",
                               "severity": "page", "job": "driftline", "instance": metrics_stub.address}
    assert post["path"] == "/alert/page"  # the pager receiver
    assert alert["annotations"]["runbook"] == "docs/alerting.md#driftlineerrordrift"
    # The page says where to look: the explanation's top slice, queried by Prometheus at evaluation.
    assert alert["annotations"]["top_slice"] == "tenure in [48, +inf) accounts for 0.042 of the accuracy drop"
    # region=tiny (3 events) is too small to judge; feature drift alone pages nobody.
    active = get_json(f"{alertmanager_url}/api/v2/alerts")
    assert {a["labels"]["segment"] for a in active if a["labels"].get("alertname") == "DriftlineErrorDrift"} == {"region=eu"}
    rules = get_json(f"{prometheus_url}/api/v1/alerts")["data"]["alerts"]
    assert [a["labels"]["segment"] for a in rules if a["labels"]["alertname"] == "DriftlineErrorDrift"] == ["region=eu"]


def test_a_segment_error_drift_page_mutes_the_models_all_page(prometheus_url, alertmanager_url, metrics_stub,
                                                              webhook_sink):
    """The shipped inhibition, on the real Prometheus and Alertmanager: while a segment of a model
    pages for error drift, the same model's `__all__` error drift is firing in Prometheus but muted
    in Alertmanager (suppressed, never sent); when the segment's alert ends, the `__all__` page goes
    out (so it was the inhibition that held it, not a rule that never fired)."""
    scrapes = itertools.count()
    segment_drifting = {"on": True}

    def exposition() -> bytes:
        n = next(scrapes) * 50
        segments = ["__all__"] + (["band=high"] if segment_drifting["on"] else [])
        lines = ["# TYPE driftline_drift_active gauge"]
        lines += [f'driftline_drift_active{{model="inhib",segment="{s}",signal="error",detector="adwin"}} 1'
                  for s in segments]
        lines += ["# TYPE driftline_drift_direction gauge"]
        lines += [f'driftline_drift_direction{{model="inhib",segment="{s}",signal="error",detector="adwin"}} 1'
                  for s in segments]
        lines += ["# TYPE driftline_segment_inferences_total counter"]
        lines += [f'driftline_segment_inferences_total{{model="inhib",segment="{s}"}} {n}' for s in ("__all__", "band=high")]
        return ("\n".join(lines) + "\n").encode()

    def notified(segment: str):
        return [a for p in webhook_sink.posts for a in p.get("json", {}).get("alerts", [])
                if a["labels"].get("alertname") == "DriftlineErrorDrift" and a["labels"].get("model") == "inhib"
                and a["labels"].get("segment") == segment and a["status"] == "firing"]

    def in_alertmanager(segment: str):
        return [a for a in get_json(f"{alertmanager_url}/api/v2/alerts")
                if a["labels"].get("alertname") == "DriftlineErrorDrift" and a["labels"].get("model") == "inhib"
                and a["labels"].get("segment") == segment]

    metrics_stub.body = exposition
    wait_for("the band=high page at the webhook", lambda: notified("band=high"), timeout=60)
    # __all__ fires in Prometheus and reaches Alertmanager, which holds it back.
    [held] = wait_for("__all__ in Alertmanager", lambda: in_alertmanager("__all__"), timeout=30)
    assert held["status"]["state"] == "suppressed" and held["status"]["inhibitedBy"], held["status"]
    firing = get_json(f"{prometheus_url}/api/v1/alerts")["data"]["alerts"]
    assert {"band=high", "__all__"} <= {a["labels"]["segment"] for a in firing
                                        if a["labels"].get("model") == "inhib" and a["state"] == "firing"}
    time.sleep(3)  # group_wait (1 s here) and more: a notification that was going to be sent, was
    assert notified("__all__") == []

    segment_drifting["on"] = False  # the segment's drift ends: nothing mutes __all__ any more
    wait_for("the __all__ page once the segment's page resolved", lambda: notified("__all__"), timeout=60)
