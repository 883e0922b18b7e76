"""LLM calls from OpenTelemetry through the real broker, monitored by a real `driftline run`.

Spans are made by the real opentelemetry-sdk (explicit start and end times, GenAI attributes
of the semantic conventions), encoded by OpenTelemetry's own OTLP encoder (encode_spans, the
otlp_proto bytes the Collector's Kafka exporter writes), published to the OTLP topic; user
feedback goes to the labels topic keyed by `<trace id>-<span id>`; a few more calls come through
`Publisher.log_llm_call`. The worker must account for every call, find the latency regression in
route=faq and the feedback drop in route=search and nowhere else, and dead-letter the bad ones.
"""
from __future__ import annotations

import random
import time

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
                GA.GEN_AI_USAGE_OUTPUT_TOKENS: out_tok, GA.GEN_AI_RESPONSE_FINISH_REASONS: ["stop"],
                "app.route": route})
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


def test_otlp_spans_through_the_broker_are_monitored(tmp_path, kafka_bootstrap):
    prefix = unique_prefix()
    otlp_topic = f"{prefix}.otlp_spans"
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, MODELS, partitions=3,
                          extra=f"otlp:\n  topic: {otlp_topic}\n  encoding: otlp_proto\n"
                                f"  segments: {{route: app.route}}\n")
    spans, labels, tokens = make_spans()
    worker = WorkerProcess(config, tmp_path, "w0").start()
    try:
        wait_for("worker ready", worker.ready, 120, [worker])
        p = producer(kafka_bootstrap)
        # Batches of 100 spans per message, as a Collector's exporter batches them.
        for i in range(0, len(spans), 100):
            p.produce(otlp_topic, value=encode_spans(spans[i:i + 100]).SerializeToString())
        p.produce(otlp_topic, value=b"\x0a\xff\xff\xff\xff\x0f not protobuf but says gen_ai.usage")
        publish(p, f"{prefix}.labels", labels)
        p.flush(30)
        # And calls from the SDK, in a route of their own.
        sdk_tokens = 0
        with Publisher(kafka_bootstrap, inferences_topic=f"{prefix}.inferences",
                       labels_topic=f"{prefix}.labels") as pub:
            for i in range(SDK_CALLS):
                pid = pub.log_llm_call(model="assistant", input_tokens=10 + i, output_tokens=5, duration=0.4,
                                       finish_reason="length" if i % 4 == 0 else "stop",
                                       request_model="gpt-4o-mini", segment={"route": "sdk"},
                                       embedding=[0.1 * i, 1.0, -0.5])
                sdk_tokens += 10 + i
                pub.log_label(pid, i % 2 == 0)
            assert pub.flush(30) == 0

        expected_in = sum(tokens.values()) + sdk_tokens
        wait_for("every call's tokens counted",
                 lambda: fleet_total([worker], "driftline_llm_tokens_total", segment="__all__", type="input")
                 == expected_in, 180, [worker])
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
    finally:
        worker.terminate()
