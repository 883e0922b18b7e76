"""LLM calls from OpenTelemetry through the real broker, monitored by a real `driftline run`.

Spans are made by the real opentelemetry-sdk (explicit start and end times, GenAI attributes
of the semantic conventions), encoded by OpenTelemetry's own OTLP encoder (encode_spans, the
otlp_proto bytes the Collector's Kafka exporter writes), published to the OTLP topic; user
feedback goes to the labels topic keyed by `<trace id>-<span id>`; a few more calls come through
`Publisher.log_llm_call`. The worker must account for every call, find the latency regression in
route=faq and the feedback drop in route=search and nowhere else, and dead-letter the bad ones.
A real Prometheus scrapes the worker meanwhile, and every query of the LLM dashboard
(deploy/grafana/dashboards/llm.json) must return data from it.
"""
from __future__ import annotations

import json
import math
import random
import time
import urllib.parse
import urllib.request

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as GA

from driftline import Publisher
from tests.integration.harness import (
    WorkerProcess, consume_all, fleet_total, producer, publish, total, unique_prefix, wait_for, write_config,
)

pytestmark = pytest.mark.integration

PER_ROUTE = 1600
ROUTES = ("faq", "search", "chat")
SDK_CALLS = 40

MODELS = """\
  assistant:
    task: llm
    segments: [route]
    llm:
      prices: {"gpt-4o-mini": {input: 0.15, output: 0.6}}
      cost_budget_per_hour: 5
"""


def make_spans():
    """(spans, feedback labels, token sums per route); faq slows down, search gets bad feedback."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "assistant"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("chat-app")
    rng = random.Random(5)
    t0 = int((time.time() - 3 * 3600) * 1e9)
    labels, tokens = [], {r: 0 for r in ROUTES}
    for i in range(PER_ROUTE):
        for k, route in enumerate(ROUTES):
            late = i >= PER_ROUTE // 2
            start = t0 + (i * 3 + k) * 1_000_000_000
            seconds = rng.lognormvariate(0.0, 0.2) * (3.0 if route == "faq" and late else 1.0)
            in_tok, out_tok = rng.randint(100, 500), rng.randint(20, 200)
            span = tracer.start_span("chat gpt-4o-mini", start_time=start, attributes={
                GA.GEN_AI_OPERATION_NAME: "chat", GA.GEN_AI_PROVIDER_NAME: "openai",
                GA.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", GA.GEN_AI_USAGE_INPUT_TOKENS: in_tok,
                GA.GEN_AI_USAGE_OUTPUT_TOKENS: out_tok,
                GA.GEN_AI_RESPONSE_FINISH_REASONS: ["length" if rng.random() < 0.05 else "stop"],
                GA.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: seconds * 0.2, "app.route": route,
                "driftline.embedding": [rng.gauss(0, 1) for _ in range(8)]})
            span.add_event("gen_ai.evaluation.result", {GA.GEN_AI_EVALUATION_NAME: "relevance",
                                                        GA.GEN_AI_EVALUATION_SCORE_VALUE: rng.uniform(0.6, 1.0)})
            span.end(end_time=start + int(seconds * 1e9))
            tokens[route] += in_tok
            ctx = span.get_span_context()
            good = rng.random() < (0.55 if route == "search" and late else 0.93)
            labels.append({"prediction_id": f"{ctx.trace_id:032x}-{ctx.span_id:016x}", "label": good,
                           "timestamp": (start + int(seconds * 1e9)) / 1e9 + 2})
        # Spans of other kinds in the same batches: an HTTP server span, ignored.
        tracer.start_span("GET /chat", start_time=t0 + i * 3_000_000_000, attributes={"http.route": "/chat"}).end(
            end_time=t0 + i * 3_000_000_000 + 1000)
    bad = tracer.start_span("chat broken", attributes={GA.GEN_AI_OPERATION_NAME: "chat",
                                                       GA.GEN_AI_USAGE_INPUT_TOKENS: -4,
                                                       GA.GEN_AI_USAGE_OUTPUT_TOKENS: 3, "app.route": "faq"})
    bad.end()
    provider.shutdown()
    return exporter.get_finished_spans(), labels, tokens


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict]:
    url = f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1s"})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_otlp_spans_through_the_broker_are_monitored(tmp_path, kafka_bootstrap, start_prometheus, dashboards):
    prefix = unique_prefix()
    otlp_topic = f"{prefix}.otlp_spans"
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, MODELS, partitions=3,
                          extra=f"otlp:\n  topic: {otlp_topic}\n  encoding: otlp_proto\n"
                                f"  segments: {{route: app.route}}\n")
    spans, labels, tokens = make_spans()
    worker = WorkerProcess(config, tmp_path, "w0").start()
    try:
        wait_for("worker ready", worker.ready, 120, [worker])
        prom = start_prometheus([f"127.0.0.1:{worker.port}"])
        t_start = time.time()
        p = producer(kafka_bootstrap)
        # Batches of 100 spans per message, as a Collector's exporter batches them; the calls
        # before the changes first, then (once Prometheus has seen them) the rest.
        half = len(spans) // 2
        for part, (lo, hi) in enumerate(((0, half), (half, len(spans)))):
            for i in range(lo, hi, 100):
                p.produce(otlp_topic, value=encode_spans(spans[i:min(i + 100, hi)]).SerializeToString())
            publish(p, f"{prefix}.labels", labels[lo * len(labels) // len(spans):hi * len(labels) // len(spans)])
            p.flush(30)
            if part == 0:
                wait_for("the first half counted", lambda: fleet_total(
                    [worker], "driftline_labeled_total", segment="__all__") >= len(labels) // 2 - 10, 120, [worker])
                time.sleep(3)  # a few scrapes of the state before the changes
        p.produce(otlp_topic, value=b"\x0a\xff\xff\xff\xff\x0f not protobuf but says gen_ai.usage")
        p.flush(30)
        # And calls from the SDK, in a route of their own.
        sdk_tokens = 0
        with Publisher(kafka_bootstrap, inferences_topic=f"{prefix}.inferences",
                       labels_topic=f"{prefix}.labels") as pub:
            for i in range(SDK_CALLS):
                pid = pub.log_llm_call(model="assistant", input_tokens=10 + i, output_tokens=5, duration=0.4,
                                       finish_reason="length" if i % 4 == 0 else "stop",
                                       request_model="gpt-4o-mini", segment={"route": "sdk"},
                                       embedding=[0.1 * i, 1.0, -0.5, 0.0, 0.2, 0.3, -0.1, 0.4])
                sdk_tokens += 10 + i
                pub.log_label(pid, i % 2 == 0)
            assert pub.flush(30) == 0

        expected_in = sum(tokens.values()) + sdk_tokens
        counted = {}

        def all_tokens():
            m = worker.metrics()
            counted.update({seg: total(m, "driftline_llm_tokens_total", segment=seg, type="input")
                            for seg in ("__all__", "route=faq", "route=search", "route=chat", "route=sdk")},
                           converted=total(m, "driftline_otlp_spans_total", outcome="converted"))
            return counted["__all__"] == expected_in

        try:
            wait_for("every call's tokens counted", all_tokens, 180, [worker])
        except AssertionError:
            raise AssertionError(f"counted {counted}, expected {tokens} + sdk {sdk_tokens}")
        wait_for("every feedback joined",
                 lambda: fleet_total([worker], "driftline_labeled_total", segment="__all__")
                 == len(labels) + SDK_CALLS, 120, [worker])
        m = worker.metrics()

        def t(name, **lv):
            return total(m, name, **lv)

        for route in ROUTES:
            assert t("driftline_llm_tokens_total", segment=f"route={route}", type="input") == tokens[route]
        assert t("driftline_llm_tokens_total", segment="route=sdk", type="input") == sdk_tokens
        assert t("driftline_llm_finish_reasons_total", segment="route=sdk", reason="length") == SDK_CALLS / 4
        assert t("driftline_llm_cost_total", segment="__all__") == pytest.approx(
            sum(tokens.values()) * 0.15e-6 + sdk_tokens * 0.15e-6
            + t("driftline_llm_tokens_total", segment="__all__", type="output") * 0.6e-6)
        assert t("driftline_otlp_spans_total", outcome="converted") == PER_ROUTE * len(ROUTES)
        assert t("driftline_otlp_spans_total", outcome="invalid") == 1
        assert t("driftline_otlp_spans_total", outcome="malformed") == 1
        # The two changes, where they are, and nowhere else among the routes.
        assert t("driftline_drift_detected_total", segment="route=faq", signal="duration") >= 1
        assert t("driftline_drift_detected_total", segment="route=search", signal="error") >= 1
        for route in ("search", "chat"):
            assert t("driftline_drift_detected_total", segment=f"route={route}", signal="duration") == 0, route
        for route in ("faq", "chat"):
            assert t("driftline_drift_detected_total", segment=f"route={route}", signal="error") == 0, route
        # Bad input dead-lettered with its reason.
        dead = consume_all(kafka_bootstrap, f"{prefix}.dead-letters", 2, timeout=30)
        reasons = sorted(orjson.loads(d.value())["reason"] for d in dead)
        assert reasons == ["malformed_otlp", "out_of_range"], reasons
        # Every query of the LLM dashboard returns data from the Prometheus that scraped it all.
        time.sleep(12)  # the rate windows ($__rate_interval 10s) reach past the end of the stream
        end = time.time()
        values = {"model": "assistant", "segment": ".*", "__range": f"{int(end - t_start) + 1}s"}
        queries = [q for q in dashboards.queries() if q.dashboard == "llm.json"]
        assert len(queries) >= 12
        empty = []
        for q in queries:
            if q.kind == "variable":
                selector, label = dashboards.label_values(q.expr)
                url = f"{prom}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
                    {"match[]": dashboards.expand(selector, values), "start": f"{t_start:.3f}", "end": f"{end:.3f}"})
                with urllib.request.urlopen(url, timeout=10) as r:
                    if not json.load(r)["data"]:
                        empty.append(q)
                continue
            result = query_range(prom, dashboards.expand(q.expr, values), t_start, end)
            if not any(not math.isnan(float(v)) for series in result for _, v in series["values"]):
                empty.append(q)
        assert not empty, "LLM dashboard queries without data:\n" + "\n".join(f"  {q.where}: {q.expr}" for q in empty)
    finally:
        worker.terminate()
