"""End to end, on real processes: Kafka, two driftline workers in one consumer group, Prometheus
scraping them with the shipped config and rules, Alertmanager with the shipped config, its
webhooks pointed at a receiver in this test.

The stream is the demo's real Shuttle data, its timestamps moved to the wall clock (drift_active
is judged against wall time). A warm-up of undrifted events is published first, as fast as the
broker takes it, with a few dirty events (dead letters, a bad feature value, a folded segment value);
then the stream goes on live, at RATE events a second with each label LABEL_DELAY after its
prediction, and from the first event of the live part on, sensor f7 in segment band=high reads 20
units high. The test asserts that the drift page reaches the receiver with the right model and
segment, on the pager route; that no drift or accuracy alert fires for the untouched segments
(nor for anything before the drift); and that every query of every shipped dashboard parses and
returns data from this Prometheus.
"""
from __future__ import annotations

import collections
import datetime
import json
import math
import time
import urllib.parse
import urllib.request

import orjson
import pytest
from confluent_kafka import Producer

from driftline.stream.demo import demo_events

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROWS = 4_000          # stream rows available: warm-up, then live
DRIFT_ROW = 2_000     # the live part starts here, and so does the drift (band=high only)
OPENING = 60          # rows published first, so Prometheus sees every counter born small
RATE = 100.0          # live rows per second
LABEL_DELAY = 0.5     # seconds from a prediction to its label, live
MIN_LIVE_ROWS = 800   # live rows published at least (detections on outputs come after the page)
AFTER_PAGE = 3.0      # seconds of live traffic after the page, for alerts that should not come
PAGE_TIMEOUT = 60.0   # seconds the test waits for the page
# The bound docs/alerting.md claims, first drifted event to webhook (measured 3.2-5.1 s: ~1.8 s
# of labelled band=high events, then up to 1 s each for scrape, evaluation and group_wait), with
# a margin for a busy machine; a broken path exceeds it: the shipped group_wait (10 s), a `for:`
# on the rule, a 5 s scrape or evaluation, a detection that needs more than a few labels.
PAGE_BOUND = 10.0
PAGING_ALERTS = ("DriftlineErrorDrift", "DriftlineAccuracyBelowObjective")
DRIFTED = {"band=high", "__all__"}  # __all__ holds band=high's traffic

CONFIG = """\
kafka:
  bootstrap: {bootstrap}
  group_id: {prefix}-group
  partitions: 4
  topics:
    inferences: {prefix}.inferences
    labels: {prefix}.labels
    observations: {prefix}.observations
    dead_letters: {prefix}.dead-letters
    drift_events: {prefix}.drift-events
    checkpoints: {prefix}.checkpoints
    checkpoint_data: {prefix}.checkpoint-data
models:
  shuttle:
    task: classification
    segments: [band]
    max_segments: 3            # low, mid, high: a fourth value folds into band=__other__
    features: {{f1: numeric, f5: numeric, f7: numeric, f9: numeric}}
    accuracy_window: 500
    label_ttl: 1h
    drift_hold: 10m
    accuracy_objective: 0.95
    # Classification quality and costs (docs/quality-metrics.md), so that the model dashboard's
    # quality panels have data; the demo's score is the predicted class's confidence, read as
    # P(class 1) here.
    positive_class: 1
    outcome_costs:
      default_error: 3
      pairs: [{{predicted: 1, actual: 1, cost: -0.2}}]
      budget: {{amount: 1000000, per: 1h}}
"""

# Events that break the contract: dead letters (one names the model, one names none).
BAD_EVENTS = [
    b'{"prediction_id": "bad-1", "model": "shuttle", "features": {}, "prediction": 1, "score": 7}',
    b'{"prediction_id": "bad-2", "model": "shuttle", "features": {}, "prediction": 1, "score": -1}',
    b'{"prediction_id": "bad-3", "model": "shuttle", "features": {}',
]


def query(prom: str, expr: str, **params) -> list[dict]:
    path = "query_range" if "start" in params else "query"
    url = f"{prom}/api/v1/{path}?" + urllib.parse.urlencode({"query": expr, **params})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def provision_topics(config) -> None:
    from confluent_kafka.admin import AdminClient

    from driftline.stream.admin import ensure_topics
    from driftline.stream.settings import load_settings

    settings = load_settings(config)
    ensure_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "log_level": 2})
    t = settings.kafka.topics
    names = [t.inferences, t.labels, t.observations, t.dead_letters, t.drift_events, t.checkpoints, t.checkpoint_data]
    deadline = time.monotonic() + 30
    while True:
        md = admin.list_topics(timeout=10).topics
        if all(n in md and md[n].error is None and md[n].partitions
               and all(p.leader >= 0 for p in md[n].partitions.values()) for n in names):
            return
        assert time.monotonic() < deadline, "topics without leaders after 30 s"
        time.sleep(0.1)


def samples(worker, name: str, **labels) -> list[float]:
    """Values of the samples `name{labels...}` on a worker's /metrics (not through Prometheus)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = worker.get("/metrics")
    assert status == 200
    return [s.value for family in text_string_to_metric_families(body.decode()) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def scrape_sum(workers, name: str, **labels) -> float:
    return sum(v for w in workers for v in samples(w, name, **labels))


def exported(worker, name: str, **labels) -> bool:
    return bool(samples(worker, name, **labels))


def page_alerts(posts, alertname: str, segment: str):
    """(post, alert) of each firing notification of `alertname` for `segment`."""
    for post in posts:
        for alert in post.get("json", {}).get("alerts", []):
            if (alert["labels"].get("alertname"), alert["labels"].get("segment"), alert["status"]) \
                    == (alertname, segment, "firing"):
                yield post, alert


@pytest.fixture(scope="module")
def run(kafka_bootstrap, e2e_dir, start_worker, alertmanager, start_prometheus, webhook, wait):
    prefix = f"e2e{time.time_ns() % 10**10:010d}"
    config = e2e_dir / "driftline.yml"
    config.write_text(CONFIG.format(bootstrap=kafka_bootstrap, prefix=prefix))
    inferences, labels, _ = demo_events(rows_limit=ROWS, drift_row=DRIFT_ROW)
    band = [ev["segment"]["band"] for ev in inferences]
    first_drifted = next(i for i in range(DRIFT_ROW, ROWS) if band[i] == "high")
    assert {band[i] for i in range(OPENING)} == {"low", "mid", "high"}
    t_start = time.time()

    # ---- the stack: two workers, then Prometheus scraping both (Alertmanager is up already).
    # Topics are provisioned first, as an operator would (`ensure_topics` is what a worker runs at
    # start), and have leaders before the workers subscribe: two workers racing to create them
    # is not what this test is about.
    provision_topics(config)
    workers = [start_worker("worker-1", config), start_worker("worker-2", config)]

    def group_settled():
        if not all(w.ready() for w in workers):
            return False
        parts = [scrape_sum([w], "driftline_worker_partitions", stage="intake") for w in workers]
        return sum(parts) == 4 and all(parts) and parts
    wait("both workers to own partitions", group_settled, timeout=120, interval=0.5, workers=workers)
    prom = start_prometheus(alertmanager, [w.address for w in workers])
    wait("Prometheus to scrape both workers",
         lambda: len([s for s in query(prom, 'up{job="driftline"} == 1')]) == 2, timeout=30, workers=workers)
    wait("Prometheus to find Alertmanager", lambda: json.load(urllib.request.urlopen(
        f"{prom}/api/v1/alertmanagers", timeout=5))["data"]["activeAlertmanagers"], timeout=30)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "log_level": 2})

    def publish(topic: str, key: str | bytes, value: bytes) -> None:
        producer.produce(f"{prefix}.{topic}", key=key, value=value)
        producer.poll(0)

    def publish_row(i: int, ts: float, label_ts: float | None, **changes) -> None:
        ev = {**inferences[i], "timestamp": ts, **changes}
        publish("inferences", ev["prediction_id"], orjson.dumps(ev))
        if label_ts is not None:
            publish("labels", ev["prediction_id"], orjson.dumps({**labels[i], "timestamp": label_ts,
                                                                 "prediction_id": ev["prediction_id"]}))

    # ---- warm-up: undrifted events with recent timestamps (the last at "now"), as fast as it goes.
    t0 = time.time()
    warm_ts = [t0 - (DRIFT_ROW - i) * 0.01 for i in range(DRIFT_ROW)]
    for i in range(OPENING):
        publish_row(i, warm_ts[i], warm_ts[i] + LABEL_DELAY)
    producer.flush(30)
    wait("Prometheus to see every segment's counters",
         lambda: len(query(prom, 'driftline_segment_inferences_total{model="shuttle"}')) == 4, timeout=60, workers=workers)
    for i in range(OPENING, DRIFT_ROW):
        publish_row(i, warm_ts[i], warm_ts[i] + LABEL_DELAY)
    # Dirty events: dead letters, a feature value of the wrong type, a fourth band value (folded).
    for n, raw in enumerate(BAD_EVENTS):
        publish("inferences", f"bad-{n}", raw)
    publish("inferences", "bad-x", b"\xff not json")
    for n, i in enumerate(range(100, 105)):
        publish_row(i, t0, t0 + LABEL_DELAY, prediction_id=f"dirty-f5-{n}",
                    features={**inferences[i]["features"], "f5": "n/a"})
        publish_row(i, t0, t0 + LABEL_DELAY, prediction_id=f"dirty-band-{n}", segment={"band": "calibration"})
    producer.flush(30)
    accounted = DRIFT_ROW + 10
    wait("the workers to join every warm-up label",
         lambda: scrape_sum(workers, "driftline_labeled_total", segment="__all__") >= accounted, timeout=120,
         workers=workers)
    wait("the workers to be caught up", lambda: scrape_sum(workers, "driftline_consumer_lag") == 0, timeout=30,
         workers=workers)
    pages_before = [p for p in webhook.posts]

    # ---- live: one row every 1/RATE s, its label LABEL_DELAY later, the drift from DRIFT_ROW on
    t_live = time.time()
    t_first_drifted = paged_at = None
    pending = collections.deque()
    i = DRIFT_ROW
    while True:
        now = time.time()
        due = min(ROWS, DRIFT_ROW + int((now - t_live) * RATE) + 1)
        while i < due:
            publish_row(i, now, None)
            pending.append((now + LABEL_DELAY, i))
            if i == first_drifted:
                t_first_drifted = now
            i += 1
        while pending and pending[0][0] <= now:
            _, j = pending.popleft()
            publish("labels", labels[j]["prediction_id"], orjson.dumps({**labels[j], "timestamp": now}))
        if paged_at is None and any(page_alerts(webhook.posts, "DriftlineErrorDrift", "band=high")):
            paged_at = now
        if t_first_drifted is not None:
            if paged_at is not None and now - paged_at >= AFTER_PAGE and i - DRIFT_ROW >= MIN_LIVE_ROWS:
                break
            if paged_at is None and now - t_first_drifted > PAGE_TIMEOUT:
                break
        for w in workers:
            w.check_alive()
        time.sleep(0.005)
    producer.flush(30)
    time.sleep(3)  # a scrape, an evaluation and a group_wait: alerts still on their way arrive
    t_end = time.time()
    return dict(prom=prom, workers=workers, webhook=webhook, t_start=t_start, t_live=t_live, t_end=t_end,
                t_first_drifted=t_first_drifted, pages_before=pages_before, live_rows=i - DRIFT_ROW,
                posts=list(webhook.posts))


def test_drift_pages_with_model_and_segment(run, record_property):
    hits = sorted(page_alerts(run["posts"], "DriftlineErrorDrift", "band=high"), key=lambda h: h[0]["at"])
    assert hits, f"no DriftlineErrorDrift page for band=high within {PAGE_TIMEOUT} s; notifications: {run['posts']}"
    post, alert = hits[0]
    assert post["path"] == "/alert/page"  # the pager receiver: severity=page, a model alert
    assert post["json"]["groupLabels"] == {"model": "shuttle", "segment": "band=high"}
    labels = alert["labels"]
    assert labels["model"] == "shuttle" and labels["segment"] == "band=high" and labels["severity"] == "page"
    # `instance` is the worker that owns band=high's detectors (Alertmanager's worker-down
    # inhibition matches on it).
    owners = [w.address for w in run["workers"]
              if exported(w, "driftline_drift_active", segment="band=high", signal="error")]
    assert labels["job"] == "driftline" and [labels["instance"]] == owners
    assert alert["annotations"]["runbook"] == "docs/alerting.md#driftlineerrordrift"

    latency = post["at"] - run["t_first_drifted"]
    starts = datetime.datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()
    record_property("first_drifted_event_to_webhook_seconds", round(latency, 2))
    print(f"\nfirst drifted event -> webhook: {latency:.2f} s (alert active in Prometheus after "
          f"{starts - run['t_first_drifted']:.2f} s; {run['live_rows']} live rows published at {RATE:.0f}/s)")
    assert 0 < latency < PAGE_BOUND, f"the page came {latency:.2f} s after the first drifted event"


def test_no_page_for_untouched_segments(run):
    # The untouched segments had traffic enough to be judged: silence below is not the volume floor's.
    prom = run["prom"]
    volume = {s["metric"]["segment"]: float(s["value"][1])
              for s in query(prom, 'driftline:segment_inferences:increase1h{model="shuttle"}')}
    assert volume["band=low"] >= 100 and volume["band=mid"] >= 100, volume

    notified = {(a["labels"]["alertname"], a["labels"].get("segment"))
                for p in run["posts"] for a in p.get("json", {}).get("alerts", [])}
    wrong = {(name, seg) for name, seg in notified if name in PAGING_ALERTS and seg not in DRIFTED}
    assert not wrong, f"paged for untouched segments: {wrong}"
    # The inhibition: while band=high pages for error drift, the model-wide (__all__) error drift
    # page is muted (tests/integration/test_monitoring_stack.py checks it fires and is held).
    assert not list(page_alerts(run["posts"], "DriftlineErrorDrift", "__all__")), notified
    assert run["pages_before"] == [], "notifications before the drift began"

    # Not even pending, at any evaluation during the run.
    span = dict(start=f"{run['t_start']:.3f}", end=f"{run['t_end']:.3f}", step="1s")
    segments = "|".join(sorted(DRIFTED))
    stray = query(prom, f'ALERTS{{alertname=~"{"|".join(PAGING_ALERTS)}", segment!~"{segments}"}}', **span)
    assert stray == [], [s["metric"] for s in stray]
    before = query(prom, f'ALERTS{{alertname=~"{"|".join(PAGING_ALERTS)}"}}', start=f"{run['t_start']:.3f}",
                   end=f"{run['t_first_drifted']:.3f}", step="1s")
    assert before == [], [s["metric"] for s in before]


def test_every_dashboard_query_returns_data(run, dashboards):
    """What Grafana would run over the test's time range: every panel, annotation and variable
    query of every shipped dashboard parses and returns data."""
    prom = run["prom"]
    values = {"model": "shuttle", "segment": ".*", "instance": ".*"}
    start, end = f"{run['t_start']:.3f}", f"{time.time():.3f}"
    empty = []
    # llm.json needs LLM traffic: tests/integration/test_otlp.py runs its queries on a worker fed with it.
    queries = [q for q in dashboards.queries() if q.dashboard != "llm.json"]
    assert len({q.dashboard for q in queries}) == 3
    for q in queries:
        if q.kind == "variable":
            selector, label = dashboards.label_values(q.expr)
            url = f"{prom}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
                {"match[]": dashboards.expand(selector, values), "start": start, "end": end})
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
            assert body["status"] == "success", (q, body)
            if not body["data"]:
                empty.append(q)
            continue
        result = query(prom, dashboards.expand(q.expr, values), start=start, end=end, step="1s")
        if not any(not math.isnan(float(v)) for s in result for _, v in s["values"]):
            empty.append(q)
    assert not empty, "queries without data:\n" + "\n".join(f"  {q.dashboard} {q.kind} {q.where}: {q.expr}" for q in empty)
