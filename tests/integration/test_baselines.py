"""Baseline profiles through the real broker: publish, read at start and on change, and a worker
whose distribution gauges equal replay's against the same profile."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.detectors.baseline import ProfileBook
from driftline.stream.baselines import BaselineTopic, build_profile, write_profile
from driftline.stream.demo import DEMO_CONFIG, FEATURE_DRIFT_FEATURE, MODEL, demo_config, demo_events, training_events
from driftline.stream.replay import replay
from driftline.stream.settings import load_settings
from tests.integration.harness import REPO, WorkerProcess, parse, producer, publish, total, unique_prefix, wait_for

pytestmark = pytest.mark.integration

ROWS = 8_000
DRIFT_ROW = 6_000
FEATURE_DRIFT_ROW = 2_000
TOPICS = ("inferences", "labels", "observations", "dead-letters", "drift-events", "checkpoints", "checkpoint-data",
          "baselines")


def config_text(bootstrap: str, prefix: str, baseline: str | None = None) -> str:
    topics = ", ".join(f"{t.replace('-', '_')}: {prefix}.{t}" for t in TOPICS)
    body = demo_config(baseline).split("models:", 1)[1]
    # The whole stream is published before its labels: a TTL longer than its event-time span.
    body = body.replace("label_ttl: 1h", "label_ttl: 1d")
    return (f"kafka:\n  bootstrap: {bootstrap}\n  group_id: {prefix}\n  partitions: 3\n  topics: {{{topics}}}\n"
            f"models:{body}")


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("training")
    path = tmp / "training.jsonl"
    import orjson

    path.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for ev in training_events()))
    (tmp / "demo.yml").write_text(DEMO_CONFIG)
    spec = load_settings(tmp / "demo.yml", env={}).models[MODEL]
    return tmp, path, spec


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "driftline.stream.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_profiles_round_trip_through_the_topic(kafka_bootstrap, training, tmp_path):
    _, data, spec = training
    prefix = unique_prefix()
    cfg = tmp_path / "c.yml"
    cfg.write_text(config_text(kafka_bootstrap, prefix))
    old, _ = build_profile(spec, data, created=1_700_000_000.0)
    new, _ = build_profile(spec, data, bins=10, created=1_700_000_100.0)  # same key, newer, other content
    val, _ = build_profile(spec, data, environment="validation", created=1_700_000_200.0)
    for name, p in (("old", old), ("new", new), ("val", val)):
        write_profile(p, tmp_path / f"{name}.json")
    res = cli("baseline", "publish", "--config", str(cfg), str(tmp_path / "old.json"))
    assert res.returncode == 0, res.stderr
    assert f"{prefix}.baselines" in res.stderr and old.digest in res.stderr

    settings = load_settings(cfg, env={})
    book = ProfileBook(settings.spec_for)
    reader = BaselineTopic(settings, book)
    try:
        assert reader.start(timeout=30) == 1
        assert book.get(MODEL).id == old.digest
        assert cli("baseline", "publish", "--config", str(cfg), str(tmp_path / "val.json")).returncode == 0
        assert cli("baseline", "publish", "--config", str(cfg), str(tmp_path / "new.json")).returncode == 0
        p = Producer({"bootstrap.servers": kafka_bootstrap})
        p.produce(f"{prefix}.baselines", key=b"shuttle/x/training", value=b"{not a profile")
        p.flush(10)
        wait_for("the newer training profile and the refused record",
                 lambda: (reader.poll(), book.get(MODEL).id == new.digest and reader.refused == 1)[1], 30)
        assert book.get(MODEL).id == new.digest  # the validation profile is not the configured environment
        # Withdrawn (a tombstone for the newer key... which is the same key as the older: both gone).
        p.produce(f"{prefix}.baselines", key=new.key.encode(), value=None)
        p.flush(10)
        wait_for("the withdrawal", lambda: (reader.poll(), book.get(MODEL) is None)[1], 30)
    finally:
        reader.close()
    # A new reader sees what compaction keeps: the latest value per key (a tombstone: nothing),
    # so the model has no training profile; one pinned to validation finds that one.
    book2 = ProfileBook(settings.spec_for)
    fresh = BaselineTopic(settings, book2)
    try:
        fresh.start(timeout=30)
        assert book2.get(MODEL) is None and set(fresh.published) == {val.key}
        spec_val = dataclasses.replace(settings.models[MODEL], baseline_checks=dataclasses.replace(
            settings.models[MODEL].baseline_checks, environment="validation"))
        assert fresh.choose(MODEL) is None
        fresh.settings = dataclasses.replace(settings, models={MODEL: spec_val}, _unconfigured={})
        assert fresh.choose(MODEL).digest == val.digest
    finally:
        fresh.close()


def test_worker_uses_the_published_profile_as_replay_uses_the_file(kafka_bootstrap, training, tmp_path):
    _, data, spec = training
    prefix = unique_prefix()
    profile, _ = build_profile(spec, data, created=1_700_000_000.0)
    write_profile(profile, tmp_path / "shuttle-baseline.json")
    cfg = tmp_path / "worker.yml"
    cfg.write_text(config_text(kafka_bootstrap, prefix))
    # Source topics with one partition: each segment sees its events in replay's order (created
    # first: publishing a profile creates every missing driftline topic).
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for f in admin.create_topics([NewTopic(f"{prefix}.{t}", 1, 1) for t in ("inferences", "labels")]).values():
        f.result()
    assert cli("baseline", "publish", "--config", str(cfg), str(tmp_path / "shuttle-baseline.json")).returncode == 0
    inferences, labels, _ = demo_events(rows_limit=ROWS, drift_row=DRIFT_ROW, feature_drift_row=FEATURE_DRIFT_ROW)
    worker = WorkerProcess(cfg, tmp_path, "w1").start()
    try:
        wait_for("the worker to be ready", worker.ready, 90, [worker])
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", inferences)
        p.flush(30)
        wait_for("every inference", lambda: total(worker.metrics(), "driftline_events_total", model=MODEL,
                                                  kind="inference", outcome="accepted") >= ROWS, 120, [worker])
        smp = worker.metrics()
        info = [dict(lv) for (n, lv) in smp if n == "driftline_baseline_info"]
        assert info == [{"model": MODEL, "model_version": "ht-1", "environment": "training",
                         "digest": profile.digest}]
        live = {(dict(lv)["segment"], dict(lv)["feature"], n): v for (n, lv), v in smp.items()
                if n.startswith("driftline_feature_") and "threshold" not in n and "invalid" not in n}
        # Replay the same events against the same profile, named as a file.
        (tmp_path / "replay.yml").write_text(config_text(kafka_bootstrap, prefix, "shuttle-baseline.json"))
        inf_path, lab_path = tmp_path / "inf.jsonl", tmp_path / "lab.jsonl"
        import orjson

        inf_path.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for ev in inferences))
        lab_path.write_bytes(b"")
        rep = parse(replay(load_settings(tmp_path / "replay.yml", env={}), inf_path, lab_path).exposition().decode())
        offline = {(dict(lv)["segment"], dict(lv)["feature"], n): v for (n, lv), v in rep.items()
                   if n.startswith("driftline_feature_") and "threshold" not in n and "invalid" not in n}
        assert live.keys() == offline.keys() and len(live) > 40
        assert all(live[k] == pytest.approx(offline[k], abs=1e-12) for k in live)
        assert live[("band=mid", FEATURE_DRIFT_FEATURE, "driftline_feature_psi")] > 0.25
        assert live[("band=low", FEATURE_DRIFT_FEATURE, "driftline_feature_psi")] < 0.25
        assert total(smp, "driftline_feature_invalid_total", model=MODEL) == total(
            rep, "driftline_feature_invalid_total", model=MODEL)
        # A new profile on the topic: the worker switches within a poll, and the old windows stop
        # being exported (they are reset on each segment's next event).
        newer, _ = build_profile(spec, data, bins=10, created=1_700_000_100.0)
        write_profile(newer, tmp_path / "newer.json")
        assert cli("baseline", "publish", "--config", str(cfg), str(tmp_path / "newer.json")).returncode == 0
        started = time.monotonic()
        wait_for("the newer profile", lambda: ("driftline_baseline_info", (
            ("digest", newer.digest), ("environment", "training"), ("model", MODEL), ("model_version", "ht-1")))
            in worker.metrics(), 30, [worker])
        assert time.monotonic() - started < 20
        assert not [k for k in worker.metrics() if k[0] == "driftline_feature_psi"]
    finally:
        assert worker.terminate() == 0, worker.log_tail()
