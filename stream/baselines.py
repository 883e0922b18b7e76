"""Reference profiles at the edges: training data files, profile files and the baselines topic.

- `read_rows()` reads CSV, JSONL (inference events of the event contract with an optional
  `label`, or flat objects) and Parquet (pyarrow: the `parquet` extra) into plain rows, and
  `build_profile()` profiles them with detectors.baseline.ProfileBuilder
  (`driftline baseline build`).
- `publish_profile()` writes a profile to the compacted baselines topic, keyed
  `model/model_version/environment` (`driftline baseline publish`).
- `BaselineTopic` is the worker's reader of that topic: it reads it to its end at start, then
  is polled (never blocking) from the worker's loop; for each model without a `baseline:` file
  in the config it picks the newest profile published for the model's
  `baseline_checks.environment` (and `model_version` when pinned), and swaps it into the
  process's `ProfileBook`, which resets that model's live windows.
- `profile_book()` is the ProfileBook of the config's `baseline:` files (replay uses only these).

See docs/baselines.md.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, ContextManager, Iterator

import orjson

from driftline.detectors.baseline import BaselineProfile, ProfileBook, ProfileBuilder, ProfileError
from driftline.detectors.spec import ModelSpec

log = logging.getLogger("driftline.baselines")

MISSING_CELLS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})
FORMATS = ("csv", "jsonl", "parquet")
POLL_BATCH = 100  # profiles read per poll (they are rare and small)


@dataclasses.dataclass(slots=True)
class Row:
    features: dict[str, Any]
    prediction: Any = None
    score: Any = None
    label: Any = None
    segment: dict[str, Any] | None = None
    model: str | None = None
    model_version: str | None = None
    embedding: list | None = None  # an LLM call's (`llm.embedding` of an event)


@dataclasses.dataclass
class BuildReport:
    rows: int = 0  # rows profiled
    other_models: int = 0  # rows of another model, skipped
    malformed: int = 0  # lines that are not JSON objects, skipped
    versions: set = dataclasses.field(default_factory=set)


def guess_format(path: str | os.PathLike) -> str:
    name = str(path).lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"cannot tell the format of {str(path)!r} from its name: pass --format csv, jsonl or parquet")


def _scalar(cell: str) -> Any:
    """A CSV cell as the JSON value it spells: 1 -> 1, 1.5 -> 1.5, anything else stays a string."""
    if cell in MISSING_CELLS:
        return None
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        v = float(cell)
    except ValueError:
        return cell
    return v if math.isfinite(v) else None


def _no_nan(v: Any) -> Any:
    return None if type(v) is float and not math.isfinite(v) else v


def _flat_row(obj: dict) -> Row:
    return Row(features={k: _no_nan(v) for k, v in obj.items()}, prediction=_no_nan(obj.get("prediction")),
               score=_no_nan(obj.get("score")), label=_no_nan(obj.get("label")), model=obj.get("model"),
               model_version=obj.get("model_version"))


def _object_row(obj: dict) -> Row:
    feats = obj.get("features")
    if isinstance(feats, dict):  # an inference event (with an optional label)
        seg = obj.get("segment")
        return Row(features={k: _no_nan(v) for k, v in feats.items()}, prediction=_no_nan(obj.get("prediction")),
                   score=_no_nan(obj.get("score")), label=_no_nan(obj.get("label")),
                   segment=seg if isinstance(seg, dict) else None, model=obj.get("model"),
                   model_version=obj.get("model_version"), embedding=_embedding(obj))
    if isinstance(obj.get("llm"), dict):  # an LLM call event without features
        seg = obj.get("segment")
        return Row(features={}, label=_no_nan(obj.get("label")), segment=seg if isinstance(seg, dict) else None,
                   model=obj.get("model"), model_version=obj.get("model_version"), embedding=_embedding(obj))
    return _flat_row(obj)


def _embedding(obj: dict) -> list | None:
    llm = obj.get("llm")
    emb = llm.get("embedding") if isinstance(llm, dict) else None
    if isinstance(emb, list) and emb and all(type(x) in (int, float) and math.isfinite(x) for x in emb):
        return emb
    return None


def read_rows(path: str | os.PathLike, spec: ModelSpec, fmt: str | None = None,
              report: BuildReport | None = None) -> Iterator[Row]:
    """Rows of a data file. CSV cells of numeric features are read as numbers, other cells as the
    JSON value they spell; `NA`, `NaN`, `null` and empty cells are missing."""
    fmt = fmt or guess_format(path)
    report = report if report is not None else BuildReport()
    if fmt == "csv":
        numeric = set(spec.numeric_features())
        with open(path, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                feats: dict[str, Any] = {}
                for k, cell in rec.items():
                    if k is None:
                        continue  # more cells than the header has names
                    if cell is None or cell in MISSING_CELLS:
                        feats[k] = None
                    elif k in numeric:
                        try:
                            v = float(cell)
                            feats[k] = v if math.isfinite(v) else None
                        except ValueError:
                            feats[k] = cell  # a type violation, counted by the profile
                    else:
                        feats[k] = cell if k in spec.features or k in spec.segments else _scalar(cell)
                yield Row(features=feats, prediction=_scalar(rec.get("prediction") or ""),
                          score=_scalar(rec.get("score") or ""), label=_scalar(rec.get("label") or ""),
                          model=rec.get("model") or None, model_version=rec.get("model_version") or None)
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    report.malformed += 1
                    continue
                if not isinstance(obj, dict):
                    report.malformed += 1
                    continue
                yield _object_row(obj)
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow: pip install 'driftline[parquet]'") from None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for obj in batch.to_pylist():
                yield _object_row(obj)
    else:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def build_profile(spec: ModelSpec, data: str | os.PathLike, model_version: str | None = None,
                  environment: str = "training", bins: int = 20, min_segment_rows: int = 100,
                  fmt: str | None = None, created: float | None = None) -> tuple[BaselineProfile, BuildReport]:
    """Profile a data file for one model. Rows that name another model are skipped."""
    builder = ProfileBuilder(spec, bins=bins, min_segment_rows=min_segment_rows)
    report = BuildReport()
    for row in read_rows(data, spec, fmt, report):
        if row.model is not None and row.model != spec.name:
            report.other_models += 1
            continue
        if row.model_version is not None:
            report.versions.add(str(row.model_version))
        builder.add(row.features, row.prediction, row.score, row.label, row.segment, row.embedding)
        report.rows += 1
    if not report.rows:
        raise ValueError(f"{str(data)!r} holds no rows of model {spec.name!r}")
    if model_version is None:
        if len(report.versions) > 1:
            raise ValueError(f"the rows carry several model versions ({', '.join(sorted(report.versions))}): "
                             "pass --model-version")
        model_version = next(iter(report.versions), "unknown")
    profile = builder.build(model_version, environment, time.time() if created is None else created,
                            source=Path(data).name)
    BaselineProfile.from_dict(orjson.loads(profile.to_json()))  # what we write, we can read
    return profile, report


def read_profile(path: str | os.PathLike) -> BaselineProfile:
    with open(path, "rb") as f:
        try:
            return BaselineProfile.from_json(f.read())
        except ProfileError as exc:
            raise ProfileError(f"{str(path)!r} is not a driftline baseline profile: {exc}") from None


def write_profile(profile: BaselineProfile, path: str | os.PathLike) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(profile.to_json())
    os.replace(tmp, path)


def profile_book(settings) -> ProfileBook:
    """A ProfileBook with the profiles of the config's `baseline:` files."""
    book = ProfileBook(settings.spec_for)
    for model, profile in settings.baselines.items():
        book.set(model, profile)
    return book


# ------------------------------------------------------------------------------------------ Kafka
def publish_profile(settings, profile: BaselineProfile, timeout: float = 30.0) -> tuple[str, int, int]:
    """Write a profile to the baselines topic (created if missing); returns (topic, partition, offset)."""
    from confluent_kafka import Producer

    from driftline.stream.admin import ensure_topics
    from driftline.stream.clients import client_config

    ensure_topics(settings, timeout)
    topic = settings.kafka.topics.baselines
    producer = Producer(client_config(settings, {"compression.type": "lz4"},
                                      {"acks": "all", "enable.idempotence": True, "message.max.bytes": 16 * 1024 * 1024}))
    where: list = []
    producer.produce(topic, key=profile.key.encode(), value=profile.to_json(indent=False),
                     on_delivery=lambda err, msg: where.append((err, msg)))
    left = producer.flush(timeout)
    if left or not where:
        raise RuntimeError(f"the profile was not delivered to {topic!r} within {timeout:.0f} s")
    err, msg = where[0]
    if err is not None:
        raise RuntimeError(f"the broker refused the profile: {err}")
    return topic, msg.partition(), msg.offset()


class BaselineTopic:
    """The worker's view of the baselines topic (compacted; key model/model_version/environment).

    Profiles are configuration: the choice is applied to the process's ProfileBook, which every
    bank shares. Models with a `baseline:` file in the config keep it; the topic never overrides
    a file.
    """

    def __init__(self, settings, book: ProfileBook):
        self.settings = settings
        self.book = book
        self.topic = settings.kafka.topics.baselines
        self.published: dict[str, tuple[int, BaselineProfile]] = {}  # key -> (arrival, profile)
        self.refused = 0  # records that are not valid profiles
        self._arrival = 0
        self._consumer = None

    def start(self, timeout: float = 30.0) -> int:
        """Read the topic to its end and apply what it holds; returns the profiles in use from it.
        A broker that cannot be read now is not fatal: `poll()` tries again."""
        from confluent_kafka import Consumer, KafkaException

        from driftline.stream.clients import client_config
        from driftline.stream.topic_reader import TopicUnreadable, partitions_of, read_to_end

        try:
            consumer = Consumer(client_config(self.settings, {}, {
                "group.id": "driftline-baseline-reader", "enable.auto.commit": False,
                "enable.partition.eof": True, "auto.offset.reset": "earliest",
            }))
        except KafkaException as exc:
            log.warning("cannot read baselines topic %r: %s; will retry", self.topic, exc)
            return 0
        try:
            partitions = partitions_of(consumer, self.topic, timeout)
        except (TopicUnreadable, KafkaException) as exc:
            consumer.close()
            log.warning("baselines topic %r is not readable yet (%s); will retry", self.topic, exc)
            return 0
        self._consumer = consumer
        touched: set[str] = set()
        if not read_to_end(consumer, self.topic, partitions, lambda msg: self._take(msg, touched), timeout):
            log.warning("baselines topic %r not read to its end within %.0f s; the rest comes with polling",
                        self.topic, timeout)
        self._apply(touched)
        return sum(1 for m in touched if self.book.get(m) is not None and m not in self.settings.baselines)

    def poll(self, lock: ContextManager | None = None) -> list[str]:
        """Take what was published since; never blocks. Returns the models whose profile changed."""
        if self._consumer is None:
            self.start(timeout=5.0)
            return []
        touched: set[str] = set()
        for msg in self._consumer.consume(POLL_BATCH, 0):
            self._take(msg, touched)
        if not touched:
            return []
        with lock if lock is not None else contextlib.nullcontext():
            return self._apply(touched)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _take(self, msg, touched: set[str]) -> None:
        from confluent_kafka import KafkaError

        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:  # the end of what is published: nothing to say
                log.warning("reading baselines topic %r: %s", self.topic, err)
            return
        key = msg.key().decode(errors="replace") if msg.key() else ""
        model = key.split("/", 1)[0]
        if msg.value() is None:  # tombstone: the profile was withdrawn
            if self.published.pop(key, None) is not None:
                touched.add(model)
            return
        try:
            profile = BaselineProfile.from_json(msg.value())
        except ProfileError as exc:
            self.refused += 1
            log.warning("baselines topic %r offset %d (key %r): not a profile: %s", self.topic, msg.offset(), key, exc)
            return
        if profile.key != key:
            self.refused += 1
            log.warning("baselines topic %r offset %d: key %r does not match the profile's %r; ignored",
                        self.topic, msg.offset(), key, profile.key)
            return
        self._arrival += 1
        self.published[key] = (self._arrival, profile)
        touched.add(profile.model)

    def choose(self, model: str) -> BaselineProfile | None:
        """The newest published profile of `model` for its configured environment (and version)."""
        checks = self.settings.spec_for(model).baseline_checks
        best = None
        for arrival, p in self.published.values():
            if p.model != model or p.environment != checks.environment:
                continue
            if checks.model_version is not None and p.model_version != checks.model_version:
                continue
            if best is None or (p.created, arrival) > (best[1].created, best[0]):
                best = (arrival, p)
        return None if best is None else best[1]

    def _apply(self, models: set[str]) -> list[str]:
        changed = []
        for model in sorted(models):
            if model in self.settings.baselines:
                continue  # the config's file wins
            chosen = self.choose(model)
            before = self.book.get(model)
            compiled = self.book.set(model, chosen)
            if (before.id if before else None) == (compiled.id if compiled else None):
                continue
            changed.append(model)
            if compiled is None:
                log.info("model %s: no published baseline for environment %r any more", model,
                         self.settings.spec_for(model).baseline_checks.environment)
            else:
                p = compiled.profile
                log.info("model %s: baseline %s (created %s, digest %s) from topic %s; live windows reset",
                         model, p.key, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p.created)), p.digest, self.topic)
                for problem in compiled.problems:
                    log.warning("model %s: baseline %s: %s (that feature is not compared)", model, p.key, problem)
        return changed
