"""The publishing SDK: one call per prediction from a serving system, never slower than a few
microseconds, never an exception in the request path.

>>> pub = Publisher(bootstrap="localhost:9092")                        # doctest: +SKIP
>>> pid = pub.log_prediction(model="churn", features={"tenure": 3}, prediction=1, score=0.83)  # doctest: +SKIP
>>> pub.log_label(pid, 0)                                              # doctest: +SKIP
>>> pub.close()                                                        # doctest: +SKIP

The events are built here, checked against event contract v1 (DESIGN.md) and handed to
librdkafka's local queue; librdkafka batches, compresses and sends them from its own threads, and
a small daemon thread of ours serves its failure reports. What can go wrong is counted in
`Publisher.stats`, never raised:

- invalid: the call breaks the contract (bad model name, score outside [0, 1], a non-finite
  number, ...); nothing is sent. The first call of each reason is logged as a warning.
- dropped: the local queue is full (the broker is down or slower than the traffic) or the
  publisher is closed; the event never left the process.
- failed: the broker did not take the event within `message.timeout.ms`, or refused it.

`encode_inference` and `encode_label` are the pure event builders (bytes or an `Invalid` value);
a batch scorer can use them to write the JSONL files that `driftline replay` reads.

See docs/sdk.md for the bounds and the measured cost per call.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from typing import Any, Callable, Mapping

import orjson
from confluent_kafka import KafkaError, Producer

from driftline.stream.codec import MAX_ID_CHARS, MODEL_NAME
from driftline.stream.events import Invalid
from driftline.stream.llm_event import LLMError, decode_llm

__all__ = ["Publisher", "PublishStats", "EventCalls", "encode_inference", "encode_label"]

log = logging.getLogger("driftline.publish")

# The worker's default limits.max_event_bytes: a larger event would only become a dead letter.
MAX_EVENT_BYTES = 256 * 1024

# Defaults for librdkafka; any of them can be overridden through Publisher(**kafka_config).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "client.id": "driftline-publisher",
    # Batching: monitoring events are not latency-critical, 20 ms of linger fills batches at
    # modest request rates; lz4 shrinks these repetitive JSON batches ~3-5x for little CPU.
    "linger.ms": 20,
    "compression.type": "lz4",
    # The bound on memory and on how much an outage can hold: 100k events or 64 MB, whichever
    # comes first (~300 B per event: ~30 MB). Beyond it events are dropped and counted.
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 64 * 1024,
    # How long an event waits for a broker that is down before it fails (counted as failed):
    # 5 minutes covers a broker restart or a rolling upgrade; longer outages lose events
    # rather than grow memory. At R events/s, the queue bound cuts in first when R > 333/s.
    "message.timeout.ms": 300_000,
    # librdkafka logs every failed reconnect (~1/s per broker during an outage); the error
    # callback already reports an outage once, so only its critical lines are passed on, to the
    # `driftline.publish.kafka` logger. log_level=7 brings everything back for debugging.
    "log_level": 2,
    "log.connection.close": False,
}

_SCALAR = (str, int, float, bool)
_PLAIN = frozenset((str, int, bool, type(None)))  # feature values that need no check
_FINITE = math.isfinite


def _plain(v: Any) -> Any:
    """numpy scalars (what scikit-learn's predict returns) as Python values; others unchanged."""
    if isinstance(v, str):  # numpy.str_ and other subclasses
        return str(v)
    item = getattr(v, "item", None)
    if item is not None and not isinstance(v, bytes):
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


def _scalar(name: str, v: Any, kind: str, model: str | None) -> Any:
    """A number, string or bool with finite numbers, as a plain Python value; else Invalid."""
    t = type(v)
    if t is not str and t is not int and t is not float and t is not bool:
        v = _plain(v)
        t = type(v)
        if t not in _SCALAR:
            return Invalid(kind, "wrong_type", f"{name} must be a number, string or bool (got {t.__name__})", b"", model)
    if t is float and not _FINITE(v):
        return Invalid(kind, "not_finite", f"{name} must be finite (got {v!r})", b"", model)
    return v


def _features(features: Any, model: str) -> Mapping[str, Any] | Invalid:
    if type(features) is not dict:
        if not isinstance(features, Mapping):
            return Invalid("inference", "wrong_type", f"features must be a dict (got {type(features).__name__})", b"", model)
        features = dict(features)
    for v in features.values():  # the fast path: plain, finite values, checked without a copy
        t = type(v)
        if t in _PLAIN or (t is float and _FINITE(v)):
            continue
        break
    else:
        return features
    fixed = dict(features)
    for name, v in features.items():
        t = type(v)
        if t in _PLAIN or (t is float and _FINITE(v)):
            continue
        if t is not float:
            v = _plain(v)
            t = type(v)
            if t not in _PLAIN and t is not float:
                return Invalid("inference", "wrong_type", f"features.{str(name)[:64]} must be a number, string, "
                                                          f"bool or None (got {t.__name__})", b"", model)
        if t is float and not _FINITE(v):
            if v == v:
                return Invalid("inference", "not_finite", f"features.{str(name)[:64]} must be finite (got {v!r})", b"", model)
            v = None  # NaN is how pandas and scikit-learn spell "missing": sent as null
        fixed[name] = v
    return fixed


def _prediction_id(pid: Any, kind: str, model: str | None, field: str = "prediction_id") -> Invalid | None:
    if type(pid) is not str or not 0 < len(pid) <= MAX_ID_CHARS:
        return Invalid(kind, "wrong_type" if type(pid) is not str else "out_of_range",
                       f"{field} must be a string of 1-{MAX_ID_CHARS} characters (got {str(pid)[:64]!r})", b"", model)
    return None


def encode_inference(*, prediction_id: str, model: str, features: Mapping[str, Any], prediction: Any,
                     timestamp: float, score: float | None = None, segment: Mapping[str, str] | None = None,
                     model_version: str | None = None, max_bytes: int = MAX_EVENT_BYTES,
                     request_id: str | None = None) -> bytes | Invalid:
    """An inference event (contract v1) as bytes, or an `Invalid` naming what breaks the contract.

    >>> encode_inference(prediction_id="p1", model="churn", features={"tenure": 3}, prediction=1,
    ...                  timestamp=1767225600.0, score=0.8)
    b'{"prediction_id":"p1","model":"churn","timestamp":1767225600.0,"features":{"tenure":3},"prediction":1,"score":0.8}'
    >>> encode_inference(prediction_id="p1", model="churn", features={}, prediction=1, timestamp=0.0, score=7).detail
    'score must be a number in [0, 1] (got 7)'
    """
    features = _inference_head(model, prediction_id, features)
    if type(features) is Invalid:
        return features
    prediction = _scalar("prediction", prediction, "inference", model)
    if type(prediction) is Invalid:
        return prediction
    event = {"prediction_id": prediction_id, "model": model, "timestamp": timestamp,
             "features": features, "prediction": prediction}
    if request_id is not None:
        bad = _prediction_id(request_id, "inference", model, "request_id")
        if bad is not None:
            return bad
        event["request_id"] = request_id
    if score is not None:
        if type(score) is not float and type(score) is not int:
            score = _plain(score)
        if type(score) not in (float, int) or not 0.0 <= score <= 1.0:  # NaN fails the range too
            return Invalid("inference", "out_of_range", f"score must be a number in [0, 1] (got {score!r})"[:200], b"", model)
        event["score"] = score
    bad = _segment_and_version(event, segment, model_version, model)
    return bad if bad is not None else _dump(event, "inference", model, max_bytes)


def encode_llm_call(*, prediction_id: str, model: str, timestamp: float, call: Mapping[str, Any],
                    segment: Mapping[str, str] | None = None, model_version: str | None = None,
                    features: Mapping[str, Any] | None = None, max_bytes: int = MAX_EVENT_BYTES) -> bytes | Invalid:
    """An LLM call event (contract v1, `llm` field) as bytes, or an `Invalid` with the codec's reason.

    >>> encode_llm_call(prediction_id="c1", model="chat", timestamp=1767225600.0,
    ...                 call={"input_tokens": 12, "output_tokens": 30, "duration": 0.9, "finish_reason": "stop"})
    b'{"prediction_id":"c1","model":"chat","timestamp":1767225600.0,"features":{},"llm":{"input_tokens":12,"output_tokens":30,"duration":0.9,"finish_reason":"stop"}}'
    >>> encode_llm_call(prediction_id="c1", model="chat", timestamp=0.0,
    ...                 call={"input_tokens": -2, "output_tokens": 30, "duration": 0.9}).reason
    'out_of_range'
    """
    features = _inference_head(model, prediction_id, features if features is not None else {})
    if type(features) is Invalid:
        return features
    llm = {}
    for k, v in call.items():
        if v is None:
            continue
        if k == "embedding" and type(v) is not list:
            tolist = getattr(v, "tolist", None)  # a numpy array
            v = tolist() if tolist is not None else list(v)
        elif k == "evaluations":
            v = {str(n): _plain(x) for n, x in dict(v).items()}
        elif type(v) not in _SCALAR:
            v = _plain(v)
        llm[k] = v
    checked = decode_llm(llm)
    if type(checked) is LLMError:
        return Invalid("inference", checked.reason, checked.detail, b"", model)
    event = {"prediction_id": prediction_id, "model": model, "timestamp": timestamp, "features": features, "llm": llm}
    bad = _segment_and_version(event, segment, model_version, model)
    return bad if bad is not None else _dump(event, "inference", model, max_bytes)


def encode_label(*, prediction_id: str | None, label: Any, timestamp: float, model: str | None = None,
                 max_bytes: int = MAX_EVENT_BYTES, request_id: str | None = None) -> bytes | Invalid:
    """A label event (contract v1) as bytes, or an `Invalid`; with `request_id` and no
    prediction_id, it grades every prediction of that request.

    >>> encode_label(prediction_id="p1", label=0, timestamp=1767225660.0)
    b'{"prediction_id":"p1","label":0,"timestamp":1767225660.0}'
    >>> encode_label(prediction_id=None, request_id="r1", label=0, timestamp=1767225660.0)
    b'{"request_id":"r1","label":0,"timestamp":1767225660.0}'
    """
    if model is not None and (type(model) is not str or not MODEL_NAME.fullmatch(model)):
        return Invalid("label", "bad_model_name", f"model must match [A-Za-z0-9_.-]{{1,64}} (got {str(model)[:80]!r})", b"")
    if request_id is not None:
        bad = _prediction_id(request_id, "label", model, "request_id")
        if bad is not None:
            return bad
    if prediction_id is not None or request_id is None:
        bad = _prediction_id(prediction_id, "label", model)
        if bad is not None:
            return bad
    label = _scalar("label", label, "label", model)
    if type(label) is Invalid:
        return label
    event = {"prediction_id": prediction_id} if prediction_id is not None else {"request_id": request_id}
    if prediction_id is not None and request_id is not None:
        event["request_id"] = request_id
    event.update(label=label, timestamp=timestamp)
    if model is not None:
        event["model"] = model
    return _dump(event, "label", model, max_bytes)


def _inference_head(model: Any, prediction_id: Any, features: Any) -> dict | Invalid:
    """What every inference call checks first: the model name, then the prediction_id, then the
    features (returned as plain values), or the first `Invalid`."""
    if type(model) is not str or not MODEL_NAME.fullmatch(model):
        return Invalid("inference", "bad_model_name", f"model must match [A-Za-z0-9_.-]{{1,64}} (got {str(model)[:80]!r})", b"")
    bad = _prediction_id(prediction_id, "inference", model)
    if bad is not None:
        return bad
    return _features(features, model)


def _segment_and_version(event: dict, segment: Any, model_version: Any, model: str) -> Invalid | None:
    """Adds an inference's optional `segment` and `model_version` to `event`, or says why not."""
    if segment is not None:
        if not isinstance(segment, Mapping) or any(not isinstance(k, str) or not isinstance(v, str)
                                                   for k, v in segment.items()):
            return Invalid("inference", "wrong_type", "segment must map names to strings", b"", model)
        if type(segment) is not dict or any(type(k) is not str or type(v) is not str for k, v in segment.items()):
            # str subclasses (numpy.str_, enum.StrEnum, ...) as plain strings, as for features
            segment = {str.__str__(k): str.__str__(v) for k, v in segment.items()}
        event["segment"] = segment
    if model_version is not None:
        if type(model_version) is not str:
            return Invalid("inference", "wrong_type", f"model_version must be a string (got {type(model_version).__name__})", b"", model)
        event["model_version"] = model_version
    return None


def _dump(event: dict, kind: str, model: str | None, max_bytes: int) -> bytes | Invalid:
    try:
        raw = orjson.dumps(event)
    except TypeError as exc:  # e.g. a segment value's subclass orjson refuses: still never raise
        return Invalid(kind, "wrong_type", f"not serializable: {exc}", b"", model)
    if len(raw) > max_bytes:
        return Invalid(kind, "oversized", f"event is {len(raw)} bytes, limit {max_bytes}", b"", model)
    return raw


@dataclasses.dataclass(frozen=True)
class PublishStats:
    """Counters since the publisher started; a consistent snapshot.

    Once the queue is drained, sent == delivered + failed.
    """

    sent: int = 0  # taken into the local queue
    delivered: int = 0  # acknowledged by the broker
    failed: int = 0  # not delivered within message.timeout.ms, or refused by the broker
    dropped: int = 0  # local queue full, publisher closed, or refused by librdkafka: never left the process
    invalid: int = 0  # broke the event contract: not sent
    queued: int = 0  # in librdkafka's queue now: sent events not yet acknowledged or failed (plus
    #                  the odd internal event, such as an error report, not yet served)


FailureCallback = Callable[[str, str, Any], None]


class EventCalls:
    """The calls of a publisher (`Publisher`, `stream.faust.FaustPublisher`): build the event with
    the pure builders above, then hand it to the subclass's `_send(topic, key, bytes | Invalid)`.
    A subclass sets `_inferences`, `_labels` (its topics), `_clock`, `_new_id`, `_max_bytes`,
    `_warned` (a set) and defines `_send` and `_reject(invalid)`."""

    _logger = log

    def log_prediction(self, *, model: str, features: Mapping[str, Any], prediction: Any, score: float | None = None,
                       segment: Mapping[str, str] | None = None, prediction_id: str | None = None,
                       model_version: str | None = None, request_id: str | None = None) -> str:
        """Queues an inference event; returns its prediction_id (generated when none is given).

        `request_id`: the same for every model that scores one request (champion and challengers
        on shadow traffic); the event is then keyed by it, so that the request's predictions and
        its label (`log_request_label`) meet in one partition.
        Never blocks, never raises: an invalid call or a full queue is counted in `stats`.
        """
        if prediction_id is None:
            prediction_id = self._new_id()
        try:
            raw = encode_inference(prediction_id=prediction_id, model=model, features=features, prediction=prediction,
                                   timestamp=self._clock(), score=score, segment=segment,
                                   model_version=model_version, max_bytes=self._max_bytes, request_id=request_id)
            self._send(self._inferences, prediction_id if request_id is None else request_id, raw)
        except Exception as exc:  # a defect here must still not reach the request
            self._reject(Invalid("inference", "error", repr(exc), b"", None))
        return prediction_id

    def log_llm_call(self, *, model: str, input_tokens: int, output_tokens: int, duration: float,
                     time_to_first_token: float | None = None, finish_reason: str | None = None,
                     request_model: str | None = None, provider: str | None = None,
                     evaluations: Mapping[str, float] | None = None, embedding: Any = None,
                     segment: Mapping[str, str] | None = None, prediction_id: str | None = None,
                     model_version: str | None = None, features: Mapping[str, Any] | None = None) -> str:
        """Queues an LLM call (an inference event with `llm`, for a `task: llm` model); returns its
        prediction_id, to which `log_label(pid, True/False)` later attaches user feedback.

        Never blocks, never raises: an invalid call or a full queue is counted in `stats`.
        """
        if prediction_id is None:
            prediction_id = self._new_id()
        try:
            raw = encode_llm_call(prediction_id=prediction_id, model=model, timestamp=self._clock(),
                                  call={"input_tokens": input_tokens, "output_tokens": output_tokens,
                                        "duration": duration, "time_to_first_token": time_to_first_token,
                                        "finish_reason": finish_reason, "request_model": request_model,
                                        "provider": provider, "evaluations": evaluations, "embedding": embedding},
                                  segment=segment, model_version=model_version, features=features,
                                  max_bytes=self._max_bytes)
            self._send(self._inferences, prediction_id, raw)
        except Exception as exc:  # a defect here must still not reach the request
            self._reject(Invalid("inference", "error", repr(exc), b"", None))
        return prediction_id

    def log_label(self, prediction_id: str, label: Any, *, model: str | None = None) -> None:
        """Queues a label event for `prediction_id`. Never blocks, never raises."""
        try:
            raw = encode_label(prediction_id=prediction_id, label=label, timestamp=self._clock(), model=model,
                               max_bytes=self._max_bytes)
            self._send(self._labels, prediction_id, raw)
        except Exception as exc:
            self._reject(Invalid("label", "error", repr(exc), b"", None))

    def log_request_label(self, request_id: str, label: Any, *, model: str | None = None) -> None:
        """Queues a label that grades every prediction of `request_id`. Never blocks, never raises."""
        try:
            raw = encode_label(prediction_id=None, request_id=request_id, label=label, timestamp=self._clock(),
                               model=model, max_bytes=self._max_bytes)
            self._send(self._labels, request_id, raw)
        except Exception as exc:
            self._reject(Invalid("label", "error", repr(exc), b"", None))

    def _warn_once(self, key: str, message: str) -> None:
        # Once per kind of problem: a request loop must not turn into a log flood.
        if key not in self._warned:
            self._warned.add(key)
            self._logger.warning("%s (logged once; see %s.stats)", message, type(self).__name__)


class Publisher(EventCalls):
    """Publishes inference and label events to Kafka without blocking or raising.

    bootstrap: the brokers ("host:port,..."). kafka_config: librdkafka settings, passed through
    over `PRODUCER_DEFAULTS` (e.g. ``**{"message.timeout.ms": 60000}``).
    on_failure(kind, prediction_id, error): called from the delivery thread for each event the
    broker did not take (error is a confluent_kafka.KafkaError); exceptions in it are logged.
    registry: a prometheus_client CollectorRegistry to export the counters on (never the global
    one unless you pass it); clock: event time in Unix seconds; new_id: generated prediction ids
    (default: 128 random bits as 32 hex digits, uuid4's entropy at a quarter of its cost).
    Logs go to `driftline.publish` (an outage: once when it starts and once when it ends; an
    invalid call: once per reason) and librdkafka's to `driftline.publish.kafka`.

    Create one per process, in the process that serves requests (after a fork: librdkafka's
    threads do not survive one), and close it on shutdown; one never closed is closed at exit.
    """

    def __init__(self, bootstrap: str, *, inferences_topic: str = "driftline.inferences",
                 labels_topic: str = "driftline.labels", on_failure: FailureCallback | None = None,
                 registry: Any = None, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = lambda: os.urandom(16).hex(),
                 max_event_bytes: int = MAX_EVENT_BYTES, close_timeout: float = 10.0, **kafka_config: Any):
        self._inferences, self._labels = inferences_topic, labels_topic
        self._on_failure, self._clock, self._new_id = on_failure, clock, new_id
        self._max_bytes, self._close_timeout = max_event_bytes, close_timeout
        self._lock = threading.Lock()
        self._sent = self._delivered = self._failed = self._dropped = self._invalid = 0
        self._warned: set[str] = set()
        self._closed = threading.Event()
        self._outage: int | None = None  # while kafka is unreachable: `delivered` when it went away
        config = {**PRODUCER_DEFAULTS, "logger": log.getChild("kafka"), **kafka_config, "bootstrap.servers": bootstrap,
                  "on_delivery": self._on_delivery, "error_cb": self._on_error,
                  # Reports for failures only: a Python callback per delivered event would cost
                  # the interpreter lock ~2 µs per event, and an event stays in the bounded queue
                  # until its report is served, so a starved report thread would fill the queue.
                  # Delivered events are counted from the queue instead (see `stats`).
                  "delivery.report.only.error": True}
        self._producer = Producer(config)
        # Failure reports, errors and librdkafka's log lines are served by this thread, so the
        # request path never calls poll() (and never runs a callback).
        self._poller = threading.Thread(target=self._poll_loop, name="driftline-publisher", daemon=True)
        self._poller.start()
        atexit.register(self.close)  # flush on shutdown even if the application forgets to
        if registry is not None:
            registry.register(_StatsCollector(self))

    def _send(self, topic: str, key: str, raw: bytes | Invalid) -> None:
        if type(raw) is Invalid:
            self._reject(raw)
            return
        if self._closed.is_set():
            with self._lock:
                self._dropped += 1
            return
        try:
            self._producer.produce(topic, raw, key)
        except BufferError:  # librdkafka's queue is full: drop rather than wait
            with self._lock:
                self._dropped += 1
            self._warn_once("queue_full", "local queue full (broker down or too slow?): dropping events")
            return
        except Exception as exc:  # KafkaException (e.g. a fatal producer error): counted, not raised
            with self._lock:
                self._dropped += 1
            self._warn_once("produce_error", f"produce refused, dropping events: {exc}")
            return
        with self._lock:
            self._sent += 1

    def _reject(self, invalid: Invalid) -> None:
        with self._lock:
            self._invalid += 1
        self._warn_once(f"invalid:{invalid.reason}", f"invalid {invalid.kind} not sent "
                                                     f"({invalid.reason}): {invalid.detail}")

    # ------------------------------------------------------------------ delivery thread
    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.1)
                if self._outage is not None and self.stats.delivered > self._outage:
                    self._outage = None
                    log.warning("kafka reachable again: delivering the queued events")
            except Exception:  # an exception from a callback: keep serving reports
                log.exception("driftline publisher: delivery report handling failed")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:  # not reported (delivery.report.only.error): counted in `stats`
            return
        with self._lock:
            self._failed += 1
        self._warn_once("delivery_failed", f"events not delivered: {err}")
        if self._on_failure is not None:
            kind = "inference" if msg.topic() == self._inferences else "label"
            key = msg.key()
            try:
                self._on_failure(kind, key.decode() if key else "", err)
            except Exception:
                log.exception("driftline publisher: on_failure callback raised")

    def _on_error(self, err: Any) -> None:
        # Client-level errors: librdkafka retries by itself, events wait in the queue until
        # message.timeout.ms. An outage is logged once when it starts (and once when it ends,
        # above); other errors once per error code.
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self._outage is None:
                self._outage = self.stats.delivered
                log.warning("kafka unreachable (%s): events wait in the local queue until it returns, "
                            "up to message.timeout.ms and the queue bound", err.str())
            return
        self._warn_once(f"error:{err.code()}", f"kafka: {err}")

    # ------------------------------------------------------------------ lifecycle
    @property
    def stats(self) -> PublishStats:
        # Delivered events are not reported one by one (see __init__): delivered = sent, less
        # what is still queued, less what failed. Read in this order (sent, queue, failed) the
        # estimate never exceeds the truth; the high-water mark keeps it from dipping while an
        # error event sits in the queue, so it only grows, as a counter must, and it is exact
        # whenever the queue is drained.
        with self._lock:
            sent = self._sent
        queued = len(self._producer)
        with self._lock:
            self._delivered = max(self._delivered, sent - queued - self._failed)
            return PublishStats(self._sent, self._delivered, self._failed, self._dropped, self._invalid, queued)

    def flush(self, timeout: float = 10.0) -> int:
        """Waits up to `timeout` s for the queued events; returns how many are still queued."""
        try:
            return self._producer.flush(timeout)
        except Exception:  # e.g. called from a signal handler while poll() runs: never raise
            log.exception("driftline publisher: flush failed")
            return len(self._producer)

    def close(self, timeout: float | None = None) -> PublishStats:
        """Flushes (up to `timeout`, default close_timeout), stops the delivery thread; later
        calls are dropped and counted. Safe to call twice. Returns the final stats."""
        if not self._closed.is_set():
            self._closed.set()
            self._poller.join()
            left = self.flush(self._close_timeout if timeout is None else timeout)
            if left:
                log.warning("driftline publisher closed with %d events undelivered", left)
            atexit.unregister(self.close)
        return self.stats

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _StatsCollector:
    """Exports a publisher's counters at scrape time (nothing is updated per event)."""

    def __init__(self, publisher: Publisher):
        self._publisher = weakref.ref(publisher)

    def describe(self):
        return []  # collect() reads live state; registering must not call it

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pub = self._publisher()
        if pub is None:
            return
        s = pub.stats
        events = CounterMetricFamily("driftline_publish_events", "Events handed to the publishing SDK, by outcome",
                                     labels=["outcome"])
        for outcome in ("sent", "delivered", "failed", "dropped", "invalid"):
            events.add_metric([outcome], getattr(s, outcome))
        yield events
        yield GaugeMetricFamily("driftline_publish_queued_events", "Events in the SDK's local queue, not yet acknowledged",
                                value=s.queued)
