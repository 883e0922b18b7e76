"""OpenTelemetry ingest: GenAI spans from the OTLP topic become LLM call events.

The OpenTelemetry Collector's Kafka exporter writes each batch of traces as one message of
topic `otlp_spans` (encoding `otlp_proto`: an ExportTraceServiceRequest; `otlp_json`: its
OTLP/JSON form, ids in hex). `decode_spans()` turns the spans of one message that describe an
LLM inference (`gen_ai.operation.name` chat, text_completion or generate_content, or GenAI token
usage) into inference events of contract v1 with an `llm` field; every other span is skipped,
and a message without the bytes `gen_ai.` is skipped without being parsed at all.

Mapping (docs/events.md holds the table): prediction_id = `<trace id>-<span id>` (hex), the
model and the segment attributes from the configured span or resource attributes (span first),
event time = the span's end, duration = end - start, tokens from `gen_ai.usage.*`, TTFT from
`gen_ai.response.time_to_first_chunk`, finish reason = the first of
`gen_ai.response.finish_reasons` ("error" for a span with status ERROR and none),
`gen_ai.request.model`, `gen_ai.provider.name` (or the older `gen_ai.system`), evaluations
from the span's `gen_ai.evaluation.result` events, the embedding from a configured attribute.

`OTLPBridge` runs beside the worker's loop (a thread of `driftline run`, own consumer group):
it publishes those events to the inferences topic keyed by prediction_id, so they meet their
feedback labels in the same partition as any SDK event, and dead-letters what does not decode
(reason `malformed_otlp`) or breaks the contract (the codec's reasons). Offsets are committed
after the events are delivered: at least once; a span read twice is the same prediction_id,
counted once by the join as a duplicate.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Iterator

import orjson

from driftline.stream.codec import MODEL_NAME, dead_letter_record
from driftline.stream.events import Invalid
from driftline.stream.llm_event import LLMError, decode_llm

log = logging.getLogger("driftline.otlp")

LLM_OPERATIONS = frozenset(("chat", "text_completion", "generate_content"))
EVALUATION_EVENT = "gen_ai.evaluation.result"
STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
MARKER = b"gen_ai."


class Span:
    """One span as plain values, whichever the encoding."""

    __slots__ = ("trace_id", "span_id", "start_ns", "end_ns", "attributes", "resource", "events", "status")

    def __init__(self, trace_id: str, span_id: str, start_ns: int, end_ns: int, attributes: dict,
                 resource: dict, events: list[tuple[str, dict]], status: int):
        self.trace_id, self.span_id = trace_id, span_id
        self.start_ns, self.end_ns = start_ns, end_ns
        self.attributes, self.resource, self.events, self.status = attributes, resource, events, status

    def attr(self, name: str) -> Any:
        v = self.attributes.get(name)
        return self.resource.get(name) if v is None else v


# -- otlp_proto -----------------------------------------------------------------------------------
def _any_proto(v) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_proto(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_proto(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def _attrs_proto(kvs) -> dict:
    return {kv.key: _any_proto(kv.value) for kv in kvs}


def _spans_proto(raw: bytes) -> Iterator[Span]:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        req = ExportTraceServiceRequest.FromString(raw)
    except (DecodeError, ValueError) as exc:
        raise OTLPDecodeError(f"not an OTLP ExportTraceServiceRequest (otlp_proto): {exc}") from exc
    for rs in req.resource_spans:
        resource = None
        for ss in rs.scope_spans:
            for span in ss.spans:
                # Cheap skip: only spans that name a GenAI operation or usage are converted.
                keys = [kv.key for kv in span.attributes]
                if not any(k.startswith("gen_ai.") for k in keys):
                    continue
                if resource is None:
                    resource = _attrs_proto(rs.resource.attributes)
                events = [(e.name, _attrs_proto(e.attributes)) for e in span.events if e.name == EVALUATION_EVENT]
                yield Span(span.trace_id.hex(), span.span_id.hex(), span.start_time_unix_nano, span.end_time_unix_nano,
                           _attrs_proto(span.attributes), resource, events, span.status.code)


# -- otlp_json --------------------------------------------------------------------------------------
def _any_json(v: dict) -> Any:
    if type(v) is not dict or not v:
        return None
    ((kind, x),) = list(v.items())[:1]
    if kind == "intValue":
        return int(x)  # int64 is a string in OTLP/JSON
    if kind == "doubleValue":
        return float(x)  # "NaN", "Infinity" are strings there
    if kind == "arrayValue":
        return [_any_json(e) for e in (x or {}).get("values", ())]
    if kind == "kvlistValue":
        return {kv["key"]: _any_json(kv.get("value")) for kv in (x or {}).get("values", ())}
    return x  # stringValue, boolValue, bytesValue


def _attrs_json(kvs: Any) -> dict:
    return {kv["key"]: _any_json(kv.get("value")) for kv in kvs or ()}


def _spans_json(raw: bytes) -> Iterator[Span]:
    try:
        doc = orjson.loads(raw)
        resource_spans = doc["resourceSpans"] if type(doc) is dict else None
        if type(resource_spans) is not list:
            raise TypeError("no resourceSpans array")
        out = []
        for rs in resource_spans:
            resource = _attrs_json((rs.get("resource") or {}).get("attributes"))
            for ss in rs.get("scopeSpans") or ():
                for span in ss.get("spans") or ():
                    kvs = span.get("attributes") or ()
                    if not any(kv["key"].startswith("gen_ai.") for kv in kvs):
                        continue
                    events = [(e.get("name"), _attrs_json(e.get("attributes"))) for e in span.get("events") or ()
                              if e.get("name") == EVALUATION_EVENT]
                    out.append(Span(_hex_id(span.get("traceId", "")), _hex_id(span.get("spanId", "")),
                                    int(span.get("startTimeUnixNano", 0)), int(span.get("endTimeUnixNano", 0)),
                                    _attrs_json(kvs), resource, events, _status((span.get("status") or {}).get("code", 0))))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OTLPDecodeError(f"not OTLP/JSON traces (otlp_json): {exc}"[:300]) from exc
    return iter(out)


class OTLPDecodeError(ValueError):
    pass


def _status(code: Any) -> int:
    """OTLP/JSON writes enums as integers; protobuf's generic JSON mapping as names."""
    if type(code) is str and not code.isdigit():
        return {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(code, 0)
    return int(code)


def _hex_id(v: Any) -> str:
    """OTLP/JSON ids are hex (the spec); protobuf's generic JSON mapping writes base64: take both."""
    s = str(v)
    if len(s) in (24, 12) and s.endswith("="):
        import base64

        return base64.b64decode(s).hex()
    return s.lower()


# -- spans -> events ----------------------------------------------------------------------------------
def _first(span: Span, *names: str) -> Any:
    for n in names:
        v = span.attributes.get(n)
        if v is not None:
            return v
    return None


def span_event(span: Span, otlp) -> dict | Invalid | None:
    """The inference event of one GenAI span, an Invalid, or None (not an LLM inference)."""
    op = span.attributes.get("gen_ai.operation.name")
    in_tok = _first(span, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    out_tok = _first(span, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    if op not in LLM_OPERATIONS and (op is not None or (in_tok is None and out_tok is None)):
        return None
    pid = f"{span.trace_id}-{span.span_id}"
    model = otlp.model or span.attr(otlp.model_attribute)
    summary = {"prediction_id": pid, "attributes": span.attributes}
    if type(model) is not str or not MODEL_NAME.fullmatch(model):
        return Invalid("inference", "bad_model_name", f"the span's model ({otlp.model_attribute}) must match "
                                                      f"[A-Za-z0-9_.-]{{1,64}} (got {str(model)[:80]!r})", _raw(summary))
    reasons = span.attributes.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list):
        reasons = reasons[0] if reasons else None
    if reasons is None and span.status == STATUS_ERROR:
        reasons = "error"
    llm = {
        "input_tokens": in_tok,
        "output_tokens": out_tok,
        "duration": (span.end_ns - span.start_ns) / 1e9,
        "time_to_first_token": span.attributes.get("gen_ai.response.time_to_first_chunk"),
        "finish_reason": reasons,
        "request_model": span.attributes.get("gen_ai.request.model") or span.attributes.get("gen_ai.response.model"),
        "provider": _first(span, "gen_ai.provider.name", "gen_ai.system"),
    }
    evaluations = {}
    for _, attrs in span.events:
        name, score = attrs.get("gen_ai.evaluation.name"), attrs.get("gen_ai.evaluation.score.value")
        if name is not None and score is not None:
            evaluations[name] = score
    if evaluations:
        llm["evaluations"] = evaluations
    emb = span.attributes.get(otlp.embedding_attribute)
    if emb is not None:
        llm["embedding"] = emb
    llm = {k: v for k, v in llm.items() if v is not None}
    checked = decode_llm(llm)
    if type(checked) is LLMError:
        return Invalid("inference", checked.reason, f"span {pid}: {checked.detail}", _raw(summary), model)
    event = {"prediction_id": pid, "model": model, "timestamp": span.end_ns / 1e9, "features": {}, "llm": llm}
    segment = {}
    for name, attribute in otlp.segments.items():
        v = span.attr(attribute)
        if v is not None:
            segment[name] = v if type(v) is str else str(v)
    if segment:
        event["segment"] = segment
    return event


def _raw(summary: dict) -> bytes:
    return orjson.dumps(summary, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_spans(raw: bytes | None, encoding: str, otlp) -> tuple[list[dict], list[Invalid], int]:
    """(events, invalid spans, spans skipped) of one OTLP message; an undecodable message is
    one Invalid with reason `malformed_otlp`."""
    if not raw:
        return [], [Invalid("inference", "malformed_otlp", "the OTLP message is empty", b"")], 0
    if MARKER not in raw:
        return [], [], 0  # no GenAI attribute anywhere: not even parsed
    try:
        spans = list(_spans_proto(raw) if encoding == "otlp_proto" else _spans_json(raw))
    except OTLPDecodeError as exc:
        return [], [Invalid("inference", "malformed_otlp", str(exc), raw)], 0
    events, invalid, skipped = [], [], 0
    for span in spans:
        ev = span_event(span, otlp)
        if ev is None:
            skipped += 1
        elif type(ev) is Invalid:
            invalid.append(ev)
        else:
            events.append(ev)
    return events, invalid, skipped


# -- the bridge ---------------------------------------------------------------------------------------
class OTLPBridge:
    """Consumes the OTLP topic and publishes LLM call events to the inferences topic."""

    def __init__(self, settings, batch: int = 500):
        from confluent_kafka import Consumer, Producer

        self.settings = settings
        self.otlp = settings.otlp
        from driftline.stream.clients import client_config

        kafka = settings.kafka
        self.consumer = Consumer(client_config(settings, {"session.timeout.ms": 10_000, "fetch.wait.max.ms": 100}, {
            "group.id": self.otlp.group_id or f"{kafka.group_id}.otlp",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        }))
        self.producer = Producer(client_config(settings, {"linger.ms": 20, "compression.type": "lz4"},
                                               {"enable.idempotence": True, "acks": "all"}))
        self.batch = batch
        self.stopping = threading.Event()
        self.spans: Counter = Counter()  # outcome -> spans (converted, invalid, skipped) and messages malformed
        self.failed: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "OTLPBridge":
        self._ensure_topic()
        self.consumer.subscribe([self.otlp.topic])
        self._thread = threading.Thread(target=self._run, name="driftline-otlp", daemon=True)
        self._thread.start()
        return self

    def _ensure_topic(self) -> None:
        """Create the OTLP topic if the Collector has not yet: a consumer subscribed to a missing
        topic would notice it only at its next metadata refresh (minutes)."""
        from confluent_kafka.admin import AdminClient, NewTopic

        kafka = self.settings.kafka
        admin = AdminClient({**dict(kafka.client_config), "bootstrap.servers": kafka.bootstrap})
        if self.otlp.topic in admin.list_topics(timeout=30).topics:
            return
        fut = admin.create_topics([NewTopic(self.otlp.topic, kafka.partitions, 1)])[self.otlp.topic]
        try:
            fut.result(30)
        except Exception as exc:  # created meanwhile by someone else: fine
            log.info("creating %s: %s", self.otlp.topic, exc)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        topics = self.settings.kafka.topics
        try:
            while not self.stopping.is_set():
                msgs = self.consumer.consume(self.batch, 0.1)
                if not msgs:
                    continue
                last = {}
                for msg in msgs:
                    if msg.error() is not None:
                        log.warning("otlp consumer: %s", msg.error())
                        continue
                    self.take(msg.value(), topics, source={"topic": msg.topic(), "partition": msg.partition(),
                                                           "offset": msg.offset()})
                    last[(msg.topic(), msg.partition())] = msg.offset() + 1
                # Offsets after the events are durable: at least once.
                left = self.producer.flush(30)
                if left:
                    log.warning("%d LLM call events not delivered; the spans will be read again", left)
                    continue
                if not last:
                    continue
                from confluent_kafka import TopicPartition
                self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in last.items()],
                                     asynchronous=False)
        except Exception as exc:  # the worker's loop goes on; /metrics and the log say why
            log.exception("otlp bridge stopped")
            self.failed = repr(exc)
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def take(self, raw: bytes | None, topics, source: dict) -> None:
        started = time.perf_counter()
        events, invalid, skipped = decode_spans(raw, self.otlp.encoding, self.otlp)
        self.spans["skipped"] += skipped
        for ev in events:
            self.producer.produce(topics.inferences, key=ev["prediction_id"].encode(), value=orjson.dumps(ev))
        self.spans["converted"] += len(events)
        for bad in invalid:
            self.spans["malformed" if bad.reason == "malformed_otlp" else "invalid"] += 1
            self.producer.produce(topics.dead_letters, key=None, value=dead_letter_record(bad, **source))
        self.spans["decode_seconds"] += time.perf_counter() - started
        self.producer.poll(0)

    def families(self) -> list:
        from driftline.stream.exporter import Family

        spans = Family("driftline_otlp_spans", "counter",
                       "OTLP spans read from the OTLP topic, by outcome (converted to LLM calls, invalid, skipped: "
                       "not an LLM inference; malformed: messages that did not decode).", ("outcome",))
        for outcome in ("converted", "invalid", "skipped", "malformed"):
            spans.add((outcome,), self.spans.get(outcome, 0))
        return [spans]
