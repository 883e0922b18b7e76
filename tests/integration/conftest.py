"""Fixtures for the integration tests: real Kafka, Prometheus and Alertmanager processes.

Each test session starts its own isolated instances through the same scripts that operators
run (deploy/local/*), on free loopback ports with state in a pytest temp dir, and stops them at
the end, so it never collides with a developer's running stack (or another test session).

To use processes that already run instead, set:
    DRIFTLINE_BOOTSTRAP=127.0.0.1:9092
    DRIFTLINE_PROMETHEUS_URL=http://127.0.0.1:9090
    DRIFTLINE_ALERTMANAGER_URL=http://127.0.0.1:9093
"""
from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "deploy" / "local"

# Generous: the first start on a fresh machine fetches ~46 MB of jars with Maven.
KAFKA_START_TIMEOUT = 300
SERVICE_START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run_script(script: str, action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LOCAL / script), action],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _Service:
    """A deploy/local/* service started for this session; `stop()` is safe to call twice."""

    def __init__(self, script: str, env: dict[str, str]):
        self.script, self.env = script, env

    def start(self, timeout: float) -> None:
        try:
            res = run_script(self.script, "start", self.env, timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            pytest.fail(f"deploy/local/{self.script} start timed out after {timeout} s: {exc.stderr!r}")
        if res.returncode != 0:
            self.stop()
            pytest.fail(f"deploy/local/{self.script} start failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        print(res.stderr.strip())  # shown with -s: the script's timing line

    def stop(self) -> None:
        try:
            run_script(self.script, "stop", self.env, timeout=60)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="session")
def local_state(tmp_path_factory) -> Path:
    """DRIFTLINE_STATE for the services this session starts."""
    return tmp_path_factory.mktemp("driftline-local")


# ---------------------------------------------------------------------------- Kafka
def session_shared(request) -> dict:
    """A dict that lives as long as the test session. tests/e2e/conftest.py defines this file's
    fixtures again (a conftest's fixtures reach only its own directory), so a session-scoped
    fixture is set up once per directory; what it starts is kept here so that the second setup
    reuses the first one's process instead of starting another."""
    shared = getattr(request.session, "_driftline_shared", None)
    if shared is None:
        shared = {}
        request.session._driftline_shared = shared
    return shared


@pytest.fixture(scope="session")
def kafka_bootstrap(request, local_state: Path) -> Iterator[str]:
    """"127.0.0.1:PORT" of a running broker: DRIFTLINE_BOOTSTRAP, or one started for this session
    (one broker per session, whichever test directory asks first)."""
    given = os.environ.get("DRIFTLINE_BOOTSTRAP")
    if given:
        yield given
        return
    shared = session_shared(request)
    if "kafka" in shared:
        yield shared["kafka"]
        return
    port, cport = free_port(), free_port()
    svc = _Service("kafka", {"DRIFTLINE_STATE": str(local_state), "KAFKA_PORT": str(port),
                             "KAFKA_CONTROLLER_PORT": str(cport)})
    svc.start(KAFKA_START_TIMEOUT)
    shared["kafka"] = f"127.0.0.1:{port}"
    try:
        yield shared["kafka"]
    finally:
        shared.pop("kafka", None)
        svc.stop()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str):
    from confluent_kafka.admin import AdminClient

    # log_level 2: failures reach the tests as exceptions; librdkafka's own lines about the
    # broker going away at session teardown are only noise.
    return AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 2})


def unique_name(prefix: str = "it") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def create_topic(kafka_admin) -> Iterator[Callable[..., str]]:
    """create_topic(name=None, partitions=1) -> name; waits until every partition has a leader.
    Topics created here are deleted after the test."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def _create(name: str | None = None, partitions: int = 1) -> str:
        name = name or unique_name("it-topic")
        fut = kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                        request_timeout=30)
        fut[name].result(timeout=30)
        created.append(name)
        deadline = time.monotonic() + 30
        while True:
            md = kafka_admin.list_topics(topic=name, timeout=10).topics.get(name)
            if md is not None and md.error is None and len(md.partitions) == partitions \
                    and all(p.leader >= 0 for p in md.partitions.values()):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no leaders after 30 s: {md}")
            time.sleep(0.1)

    yield _create
    if created:
        try:
            for fut in kafka_admin.delete_topics(created, request_timeout=30).values():
                fut.result(timeout=30)
        except Exception:  # best effort: the session's broker is thrown away anyway
            pass


@pytest.fixture
def unique_topic(create_topic) -> str:
    """A fresh topic with 3 partitions."""
    return create_topic(partitions=3)


# ---------------------------------------------------------------------------- monitoring
class _Recorder(http.server.ThreadingHTTPServer):
    """A tiny HTTP server on a free port: GET serves `body` (a /metrics stub; bytes, or a callable
    returning bytes for a body that changes with every scrape), POST is recorded with the wall
    time it arrived at (an Alertmanager webhook receiver)."""

    daemon_threads = True

    def __init__(self):
        self.body: bytes | Callable[[], bytes] = b""
        self.posts: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = outer.body() if callable(outer.body) else outer.body
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                at = time.time()
                try:
                    outer.posts.append({"path": self.path, "json": json.loads(raw), "at": at})
                except ValueError:
                    outer.posts.append({"path": self.path, "raw": raw, "at": at})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="session")
def metrics_stub() -> Iterator[_Recorder]:
    """A fake driftline worker's /metrics; set `.body` to the exposition text to serve."""
    srv = _Recorder()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def webhook_sink() -> Iterator[_Recorder]:
    """Records the notifications that the session's Alertmanager posts (`.posts`)."""
    srv = _Recorder()
    yield srv
    srv.close()


def render_alertmanager_config(dest: Path, webhook_url: str) -> Path:
    """deploy/alertmanager/alertmanager.yml with every webhook sent to the scheme and host of
    `webhook_url` (each receiver keeps its own path, e.g. /alert/page, so a test can tell the
    routes apart) and a short group_wait on every route, so a test sees a notification within
    seconds. Routing, grouping and inhibition are unchanged."""
    cfg = yaml.safe_load((REPO / "deploy/alertmanager/alertmanager.yml").read_text())
    target = urllib.parse.urlsplit(webhook_url)

    def short_waits(route: dict) -> None:  # child routes inherit the root's unless they set their own
        if "group_wait" in route:
            route["group_wait"] = "1s"
        for child in route.get("routes", []):
            short_waits(child)

    short_waits(cfg["route"])
    for rcv in cfg["receivers"]:
        for hook in rcv.get("webhook_configs", []):
            hook["url"] = urllib.parse.urlsplit(hook["url"])._replace(scheme=target.scheme, netloc=target.netloc).geturl()
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def render_prometheus_config(dest: Path, alertmanager: str, driftline_targets: list[str],
                             interval: str = "1s") -> Path:
    """deploy/prometheus/prometheus.yml with this session's addresses: the same rule files (as
    absolute paths), alerting to `alertmanager`, the driftline job scraping `driftline_targets`."""
    src = REPO / "deploy/prometheus/prometheus.yml"
    cfg = yaml.safe_load(src.read_text())
    cfg["global"]["scrape_interval"] = interval
    cfg["global"]["evaluation_interval"] = interval
    cfg["rule_files"] = [str((src.parent / p).resolve()) for p in cfg["rule_files"]]
    cfg["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    cfg["scrape_configs"] = [job for job in cfg["scrape_configs"] if job["job_name"] == "driftline"]
    cfg["scrape_configs"][0]["static_configs"] = [{"targets": list(driftline_targets)}]
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.fixture(scope="session")
def alertmanager_url(local_state: Path, webhook_sink: _Recorder) -> Iterator[str]:
    given = os.environ.get("DRIFTLINE_ALERTMANAGER_URL")
    if given:
        yield given.rstrip("/")
        return
    port = free_port()
    cfg = render_alertmanager_config(local_state / "alertmanager-test.yml", f"http://{webhook_sink.address}/alert")
    svc = _Service("alertmanager", {"DRIFTLINE_STATE": str(local_state), "ALERTMANAGER_PORT": str(port),
                                    "ALERTMANAGER_CONFIG": str(cfg)})
    svc.start(SERVICE_START_TIMEOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def prometheus_url(local_state: Path, alertmanager_url: str, metrics_stub: _Recorder) -> Iterator[str]:
    given = os.environ.get("DRIFTLINE_PROMETHEUS_URL")
    if given:
        yield given.rstrip("/")
        return
    port = free_port()
    am = alertmanager_url.split("://", 1)[1]
    cfg = render_prometheus_config(local_state / "prometheus-test.yml", am, [metrics_stub.address])
    svc = _Service("prometheus", {"DRIFTLINE_STATE": str(local_state), "PROMETHEUS_PORT": str(port),
                                  "PROMETHEUS_CONFIG": str(cfg)})
    svc.start(SERVICE_START_TIMEOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        svc.stop()


@pytest.fixture
def start_prometheus(tmp_path, alertmanager_url: str) -> Iterator[Callable[[list[str]], str]]:
    """start_prometheus([host:port, ...]) -> the URL of a Prometheus of its own (shipped rules,
    1 s scrapes) scraping those driftline /metrics addresses; stopped after the test."""
    started: list[_Service] = []

    def _start(targets: list[str]) -> str:
        port = free_port()
        state = tmp_path / f"prometheus-{port}"
        state.mkdir()
        cfg = render_prometheus_config(state / "prometheus-test.yml", alertmanager_url.split("://", 1)[1], targets)
        svc = _Service("prometheus", {"DRIFTLINE_STATE": str(state), "PROMETHEUS_PORT": str(port),
                                      "PROMETHEUS_CONFIG": str(cfg)})
        svc.start(SERVICE_START_TIMEOUT)
        started.append(svc)
        return f"http://127.0.0.1:{port}"

    yield _start
    for svc in started:
        svc.stop()


# ---------------------------------------------------------------------------- Grafana dashboards
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"


class DashboardQuery(NamedTuple):
    dashboard: str  # file name
    kind: str       # "panel", "annotation" or "variable"
    where: str      # panel title, annotation name or variable name
    expr: str       # PromQL, with Grafana's $variables; for variables, Grafana's label_values(...)


def _all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_queries(paths: Iterable[Path] | None = None) -> list[DashboardQuery]:
    """Every query of the provisioned dashboards: panel targets, annotations, template variables."""
    out = []
    for path in sorted(paths or DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in _all_panels(dash["panels"]):
            for target in panel.get("targets", []):
                out.append(DashboardQuery(path.name, "panel", f"{panel['title']} [{target['refId']}]", target["expr"]))
        for ann in dash.get("annotations", {}).get("list", []):
            if ann.get("expr"):
                out.append(DashboardQuery(path.name, "annotation", ann["name"], ann["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append(DashboardQuery(path.name, "variable", var["name"], query))
    return out


def grafana_expand(expr: str, values: dict[str, str]) -> str:
    """`expr` with Grafana's variables replaced: `values` maps a template variable's name to what
    to put in its place (a regex for multi-value variables, which the dashboards match with =~);
    $__rate_interval, $__interval and $__range get `values` entries of those names, or defaults
    that suit a 1 s scrape interval."""
    values = {"__rate_interval": "10s", "__interval": "5s", "__range": "1h", **values}
    for name in sorted(values, key=len, reverse=True):  # $model before $m
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unexpanded variable in {expr!r}"
    return expr


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def label_values_query(query: str) -> tuple[str | None, str]:
    """Grafana's `label_values(selector, label)` (or `label_values(label)`) -> (selector, label)."""
    m = LABEL_VALUES.match(query)
    assert m, f"not a label_values() query: {query!r}"
    return m.group("selector"), m.group("label")


class Dashboards:
    """The helpers above, for test modules (which cannot import a conftest): fixture `dashboards`."""

    queries = staticmethod(dashboard_queries)
    expand = staticmethod(grafana_expand)
    label_values = staticmethod(label_values_query)


@pytest.fixture(scope="session")
def dashboards() -> Dashboards:
    return Dashboards()
