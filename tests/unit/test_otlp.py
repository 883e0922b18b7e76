"""OTLP spans made by the real OpenTelemetry SDK, encoded by OpenTelemetry's own OTLP encoder,
decoded into LLM call events; other spans ignored; bad spans and payloads refused with a reason."""
import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as GA
from opentelemetry.trace import Status, StatusCode

from driftline.stream.codec import REASONS, decode_inference
from driftline.stream.events import Inference, Invalid
from driftline.stream.otlp import decode_spans
from driftline.stream.settings import OTLPSettings, parse_settings, ConfigError

OTLP = OTLPSettings(enabled=True, segments={"route": "app.route", "region": "cloud.region"})
T = 1_767_225_600_000_000_000  # ns


def make_spans(build):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "assistant", "cloud.region": "eu"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("app"))
    provider.shutdown()
    return exporter.get_finished_spans()


def chat(tracer, i=0, **attrs):
    base = {GA.GEN_AI_OPERATION_NAME: "chat", GA.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
            GA.GEN_AI_PROVIDER_NAME: "openai", GA.GEN_AI_USAGE_INPUT_TOKENS: 120,
            GA.GEN_AI_USAGE_OUTPUT_TOKENS: 48, GA.GEN_AI_RESPONSE_FINISH_REASONS: ["length"],
            GA.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: 0.25, "app.route": "faq",
            "driftline.embedding": [0.5, -1.0, 0.25]}
    base.update(attrs)
    span = tracer.start_span("chat gpt-4o-mini", start_time=T + i * 10**9, attributes={k: v for k, v in base.items()
                                                                                       if v is not None})
    span.add_event("gen_ai.evaluation.result", {GA.GEN_AI_EVALUATION_NAME: "relevance",
                                                GA.GEN_AI_EVALUATION_SCORE_VALUE: 0.8})
    return span


def proto(spans) -> bytes:
    return encode_spans(spans).SerializeToString()


def otlp_json(spans) -> bytes:
    """OTLP/JSON as the Collector writes it: the protobuf JSON mapping with hex trace/span ids."""
    doc = MessageToDict(encode_spans(spans))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                import base64
                s["traceId"] = base64.b64decode(s["traceId"]).hex()
                s["spanId"] = base64.b64decode(s["spanId"]).hex()
    return orjson.dumps(doc)


def build_mixed(tracer):
    s = chat(tracer)
    s.end(end_time=T + 1_500_000_000)  # 1.5 s
    with tracer.start_as_current_span("GET /faq", attributes={"http.route": "/faq"}):
        pass
    emb = tracer.start_span("embeddings", attributes={GA.GEN_AI_OPERATION_NAME: "embeddings",
                                                      GA.GEN_AI_USAGE_INPUT_TOKENS: 8})
    emb.end()
    failed = chat(tracer, 2, **{GA.GEN_AI_RESPONSE_FINISH_REASONS: None, "app.route": "search"})
    failed.set_status(Status(StatusCode.ERROR))
    failed.end(end_time=T + 2 * 10**9 + 300_000_000)


@pytest.mark.parametrize("encoding,encode", [("otlp_proto", proto), ("otlp_json", otlp_json)])
def test_genai_spans_become_llm_calls_and_others_are_ignored(encoding, encode):
    spans = make_spans(build_mixed)
    events, invalid, skipped = decode_spans(encode(spans), encoding, OTLP)
    assert not invalid and skipped == 1  # the embeddings span; the HTTP span is not even looked at
    assert len(events) == 2
    first, failed = events
    span = spans[0]
    assert first["prediction_id"] == f"{span.context.trace_id:032x}-{span.context.span_id:016x}"
    assert first["model"] == "assistant"
    assert first["segment"] == {"route": "faq", "region": "eu"}
    assert first["timestamp"] == pytest.approx((T + 1_500_000_000) / 1e9)
    llm = first["llm"]
    assert llm["input_tokens"] == 120 and llm["output_tokens"] == 48
    assert llm["duration"] == pytest.approx(1.5)
    assert llm["time_to_first_token"] == 0.25 and llm["finish_reason"] == "length"
    assert llm["request_model"] == "gpt-4o-mini" and llm["provider"] == "openai"
    assert llm["evaluations"] == {"relevance": 0.8}
    assert llm["embedding"] == [0.5, -1.0, 0.25]
    assert failed["llm"]["finish_reason"] == "error" and failed["segment"]["route"] == "search"
    # What the bridge publishes is a valid event of the contract.
    ev = decode_inference(orjson.dumps(first), 0.0)
    assert isinstance(ev, Inference) and ev.llm.input_tokens == 120


def test_messages_without_genai_spans_are_skipped_unparsed():
    spans = make_spans(lambda t: [t.start_span("GET /", attributes={"http.route": "/"}).end() for _ in range(5)])
    assert decode_spans(proto(spans), "otlp_proto", OTLP) == ([], [], 0)


BAD_SPANS = [
    ({GA.GEN_AI_USAGE_INPUT_TOKENS: -5}, "out_of_range"),
    ({GA.GEN_AI_USAGE_OUTPUT_TOKENS: 2.5}, "wrong_type"),
    ({GA.GEN_AI_USAGE_OUTPUT_TOKENS: None}, "missing_field"),
    ({"driftline.embedding": [0.1, "x"]}, "bad_embedding"),
]
NAN_SPANS = [  # only the protobuf encoding can carry NaN
    ({GA.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: float("nan")}, "not_finite"),
    ({"driftline.embedding": [0.1, float("nan")]}, "bad_embedding"),
]


@pytest.mark.parametrize("attrs,reason,encoding,encode",
                         [(a, r, "otlp_proto", proto) for a, r in BAD_SPANS + NAN_SPANS]
                         + [(a, r, "otlp_json", otlp_json) for a, r in BAD_SPANS])
def test_bad_spans_are_refused_with_a_reason_and_the_rest_goes_on(attrs, reason, encoding, encode):
    def build(tracer):
        chat(tracer, 0).end(end_time=T + 10**9)
        chat(tracer, 1, **attrs).end(end_time=T + 2 * 10**9)
        chat(tracer, 2).end(end_time=T + 3 * 10**9)

    events, invalid, _ = decode_spans(encode(make_spans(build)), encoding, OTLP)
    assert len(events) == 2
    assert [i.reason for i in invalid] == [reason], [i.detail for i in invalid]
    assert invalid[0].model == "assistant" and invalid[0].raw


def test_negative_duration_span_is_refused():
    def build(tracer):
        chat(tracer, 5).end(end_time=T)  # ends before it starts
    events, invalid, _ = decode_spans(proto(make_spans(build)), "otlp_proto", OTLP)
    assert not events and invalid[0].reason == "out_of_range" and "duration" in invalid[0].detail


@pytest.mark.parametrize("raw,encoding", [
    (b"\x0a\xff\xff\xff\xff\x0f gen_ai.usage", "otlp_proto"),
    (b'{"resourceSpans": 3, "x": "gen_ai."}', "otlp_json"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"key": "gen_ai.x"', "otlp_json"),
    (b"", "otlp_proto"),
])
def test_undecodable_payloads_are_malformed_otlp(raw, encoding):
    events, invalid, _ = decode_spans(raw, encoding, OTLP)
    assert not events and [i.reason for i in invalid] == ["malformed_otlp"] and "malformed_otlp" in REASONS
    assert isinstance(invalid[0], Invalid)


def test_otlp_config_is_checked():
    s = parse_settings({"otlp": {"encoding": "otlp_json", "segments": {"route": "app.route"}}}, env={})
    assert s.otlp.enabled and s.otlp.encoding == "otlp_json" and dict(s.otlp.segments) == {"route": "app.route"}
    with pytest.raises(ConfigError, match="config otlp.encoding:"):
        parse_settings({"otlp": {"encoding": "protobuf"}}, env={})
    with pytest.raises(ConfigError, match="config otlp.topc:"):
        parse_settings({"otlp": {"topc": "x"}}, env={})
