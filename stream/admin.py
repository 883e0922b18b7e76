"""Topic provisioning with confluent-kafka's AdminClient: idempotent, with clear refusals."""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.stream.checkpoint import DATA_RETENTION_MS

DAY_MS = 86_400_000


class ProvisioningError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    config: Mapping[str, str]
    why: str


def topic_plan(settings) -> list[TopicPlan]:
    """Every topic driftline reads or writes, with its retention and why."""
    t = settings.kafka.topics
    p = settings.kafka.partitions
    return [
        # Inferences and labels are co-partitioned by prediction_id: same count, or the join breaks.
        TopicPlan(t.inferences, p, {"retention.ms": str(7 * DAY_MS)}, "inference events from serving systems"),
        TopicPlan(t.labels, p, {"retention.ms": str(7 * DAY_MS)}, "ground-truth label events"),
        TopicPlan(t.observations, p, {"retention.ms": str(1 * DAY_MS)},
                  "internal repartition by (model, segment); replayed only after a crash"),
        TopicPlan(t.dead_letters, 1, {"retention.ms": str(14 * DAY_MS)}, "invalid events with their reason"),
        TopicPlan(t.drift_events, 1, {"retention.ms": str(30 * DAY_MS)}, "one record per detection, for audit"),
        # One small manifest per partition state; compaction keeps the latest of each.
        TopicPlan(t.checkpoints, 1, {"cleanup.policy": "compact", "segment.ms": str(600_000),
                                     "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(3_600_000)},
                  "latest checkpoint manifest of each partition's state"),
        TopicPlan(t.checkpoint_data, 1, {"retention.ms": str(DATA_RETENTION_MS), "segment.ms": str(3_600_000)},
                  "checkpoint bytes, in chunks; manifests point here"),
        # Reference profiles (`driftline baseline publish`), key model/model_version/environment:
        # compaction keeps the latest of each; workers read it whole at start (docs/baselines.md).
        TopicPlan(t.baselines, 1, {"cleanup.policy": "compact", "max.message.bytes": str(16 * 1024 * 1024),
                                   "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(86_400_000)},
                  "reference baseline profiles, the latest per model, version and environment"),
    ]


def admin_client(settings, errors: list | None = None) -> AdminClient:
    conf = {"bootstrap.servers": settings.kafka.bootstrap, **settings.kafka.client_config}
    if errors is not None:
        # librdkafka reports why it cannot connect (authentication, TLS, DNS) here, not in the
        # exception a timed-out request raises.
        conf["error_cb"] = errors.append
        conf["log_level"] = 2
    return AdminClient(conf)


def ensure_topics(settings, timeout: float = 30.0) -> tuple[dict[str, str], dict[str, int]]:
    """Create missing topics; check existing ones.

    Returns ({topic: 'created' | 'exists'}, {topic: partition count}).
    """
    errors: list = []
    admin = admin_client(settings, errors)
    plans = topic_plan(settings)
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        admin.poll(1)  # error callbacks are served by poll()
        # The same failure repeats per attempt with its timing: keep one of each.
        why = "; ".join(sorted({re.sub(r" \(after \d+ms[^)]*\)", "", e.str()) for e in errors})) or exc.args[0].str()
        raise ProvisioningError(
            f"cannot reach Kafka at {settings.kafka.bootstrap}: {why} "
            "(check kafka.bootstrap / DRIFTLINE_BOOTSTRAP and the kafka.config security settings)"
        ) from exc
    result: dict[str, str] = {}
    missing = [pl for pl in plans if pl.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(pl.name, num_partitions=pl.partitions, replication_factor=-1, config=dict(pl.config)) for pl in missing],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    result[name] = "exists"
                    continue
                raise ProvisioningError(f"broker refused to create topic {name!r}: {err.str()}") from exc
    existing = _wait_for_leaders(admin, [pl.name for pl in plans], timeout)
    for pl in plans:
        result.setdefault(pl.name, "exists")
    t = settings.kafka.topics
    n_inf = len(existing[t.inferences].partitions)
    n_lab = len(existing[t.labels].partitions)
    if n_inf != n_lab:
        raise ProvisioningError(
            f"topics {t.inferences!r} ({n_inf} partitions) and {t.labels!r} ({n_lab}) must have the same "
            "partition count: labels join predictions by prediction_id within one partition"
        )
    return result, {pl.name: len(existing[pl.name].partitions) for pl in plans}


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> dict:
    """Topic metadata once every partition of `names` has a leader (new topics take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        missing = [n for n in names if n not in topics or topics[n].error is not None
                   or any(p.leader < 0 for p in topics[n].partitions.values())]
        if not missing:
            return topics
        if time.monotonic() > deadline:
            raise ProvisioningError(f"topics {', '.join(missing)} have no leader after {timeout:.0f} s")
        time.sleep(0.1)
