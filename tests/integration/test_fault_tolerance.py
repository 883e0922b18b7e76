"""Scale-out and failures with real worker processes on a real broker: totals against what was published.

Each test publishes a stream whose contents it knows, does something to the workers (or the
broker), waits until the fleet has accounted for every event, and checks the fleet's /metrics:
counters are state that moves with partitions, so the sum over live workers must equal what
was published, whatever happened in between (within the replay bound after a kill -9).
"""
from __future__ import annotations

import base64
import random
import time
from collections import Counter

import orjson
import pytest

from driftline.stream.demo import demo_events
from tests.integration.harness import (
    WorkerProcess,
    consume_all,
    fleet_metrics,
    fleet_total,
    free_port,
    producer,
    publish,
    series,
    total,
    unique_prefix,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

SYNTH_MODELS = """\
  m0: {segments: [region], features: {x: numeric}, label_ttl: 1d}
  m1: {segments: [region], features: {x: numeric}, label_ttl: 1d}
  m2: {segments: [region], features: {x: numeric}, label_ttl: 1d}
"""
SHUTTLE_MODEL = """\
  shuttle:
    segments: [band]
    max_segments: 10
    features: {f1: numeric, f5: numeric, f7: numeric, f9: numeric}
    accuracy_window: 500
    label_ttl: 1d
    drift_hold: 1h
"""


def synth_events(n: int, start: int = 0, seed: int = 0):
    """Inferences and labels of 3 models x 6 regions (21 (model, segment) keys)."""
    rng = random.Random(seed)
    now = time.time()
    inferences, labels = [], []
    for i in range(start, start + n):
        pid = f"p{i:07d}"
        pred = rng.random() < 0.5
        inferences.append({"prediction_id": pid, "model": f"m{i % 3}", "timestamp": now + i * 0.001,
                           "features": {"x": rng.gauss(0, 1), "region": f"r{rng.randrange(6)}"}, "prediction": pred})
        labels.append({"prediction_id": pid, "label": pred if rng.random() < 0.8 else not pred,
                       "timestamp": now + i * 0.001 + 1})
    return inferences, labels


def fleet_ready(workers, partitions: int):
    ms = fleet_metrics(workers)
    owned = sum(total(m, "driftline_worker_partitions", stage="intake") for m in ms)
    banks = sum(total(m, "driftline_worker_partitions", stage="bank") for m in ms)
    return owned == partitions and banks == partitions and all(w.ready() for w in workers if w.alive)


def start_fleet(config, tmp_path, n: int, partitions: int, env=None):
    workers = [WorkerProcess(config, tmp_path, f"w{i}", env).start() for i in range(n)]
    wait_for("every partition owned", lambda: fleet_ready(workers, partitions), 120, workers)
    return workers


def stop_all(workers):
    for w in workers:
        if w.alive:
            w.terminate()


# ----------------------------------------------------------------------------------- scale-out
def test_three_workers_share_six_partitions_and_counts_survive_a_graceful_leave(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=6)
    workers = start_fleet(config, tmp_path, 3, 6)
    try:
        inf, lab = synth_events(15_000)
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        publish(p, f"{prefix}.inferences", [b"not json"] * 30)
        p.flush(30)
        wait_for("all events accounted", lambda: fleet_total(workers, "driftline_events_total") == 30_030, 120, workers)
        ms = fleet_metrics(workers)
        # Every worker owns partitions, and every (model, segment) lives in exactly one worker.
        assert all(total(m, "driftline_worker_partitions") > 0 for m in ms)
        owners = Counter(lv for m in ms for lv in series(m, "driftline_labeled_total"))
        assert len(owners) == 3 * 7 and set(owners.values()) == {1}, owners
        assert sum(total(m, "driftline_events_total", kind="inference", outcome="accepted") for m in ms) == 15_000
        assert sum(total(m, "driftline_events_total", kind="label", outcome="accepted") for m in ms) == 15_000
        assert sum(total(m, "driftline_events_total", outcome="invalid") for m in ms) == 30
        labeled_before = sum(total(m, "driftline_labeled_total", segment="__all__") for m in ms)
        assert labeled_before == 15_000

        # One worker leaves (SIGTERM): it checkpoints, the others take its partitions and its counts.
        assert workers[0].terminate() == 0
        workers[0].expected_dead = True
        wait_for("the two left own everything", lambda: fleet_ready(workers[1:], 6), 60, workers[1:])
        inf2, lab2 = synth_events(6_000, start=15_000, seed=1)
        publish(p, f"{prefix}.inferences", inf2)
        publish(p, f"{prefix}.labels", lab2)
        p.flush(30)
        wait_for("the second batch accounted",
                 lambda: fleet_total(workers[1:], "driftline_events_total") == 30_030 + 12_000, 120, workers[1:])
        ms = fleet_metrics(workers[1:])
        assert sum(total(m, "driftline_labeled_total", segment="__all__") for m in ms) == 21_000
        assert sum(total(m, "driftline_events_replayed_total") for m in ms) == 0  # a graceful handover replays nothing
    finally:
        stop_all(workers)


# ----------------------------------------------------------------------------------- kill -9
def shuttle_stream(rows: int, drift_row: int):
    """The demo's real data with the drift in band=high, on a live clock (1 ms per event)."""
    inf, lab, _ = demo_events(rows_limit=rows, drift_row=drift_row)
    now = time.time()
    for i, (a, b) in enumerate(zip(inf, lab)):
        a["timestamp"] = now + i * 0.001
        b["timestamp"] = now + i * 0.001 + 0.5
    return inf, lab


def test_kill_9_mid_stream_loses_nothing_and_the_drift_is_still_found(kafka_bootstrap, tmp_path):
    rows, drift_row = 14_000, 7_000
    prefix = unique_prefix()
    # Checkpoints only at assignment (the interval outlasts the test): the successor must replay
    # everything the dead worker did, which the de-duplication has to absorb.
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SHUTTLE_MODEL, partitions=6,
                          extra="worker: {checkpoint_interval: 10m}\n")
    workers = start_fleet(config, tmp_path, 3, 6)
    try:
        inf, lab = shuttle_stream(rows, drift_row)
        p = producer(kafka_bootstrap)
        cut = drift_row + 30  # the drift has begun; its detection needs ~50 more band=high labels
        publish(p, f"{prefix}.inferences", inf[:cut])
        publish(p, f"{prefix}.labels", lab[:cut])
        p.flush(30)
        wait_for("the first part accounted",
                 lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") == cut, 120, workers)
        owner = next(w for w in workers if ("driftline_labeled_total", (("model", "shuttle"), ("segment", "band=high")))
                     in w.metrics())
        assert fleet_total(workers, "driftline_drift_detected_total", segment="band=high", signal="error") == 0
        time.sleep(1.5)  # the owner commits its offsets every second: they tell its successor what it replays

        owner.kill9()
        owner.expected_dead = True
        killed_at = time.monotonic()
        survivors = [w for w in workers if w is not owner]
        publish(p, f"{prefix}.inferences", inf[cut:])
        publish(p, f"{prefix}.labels", lab[cut:])
        p.flush(30)
        wait_for("the survivors own every partition", lambda: fleet_ready(survivors, 6), 90, survivors)
        recovered = time.monotonic() - killed_at
        wait_for("every label accounted",
                 lambda: fleet_total(survivors, "driftline_labeled_total", segment="__all__") >= rows, 120, survivors)
        time.sleep(1)
        ms = fleet_metrics(survivors)
        replayed = sum(total(m, "driftline_events_replayed_total") for m in ms)
        accepted_inf = sum(total(m, "driftline_events_total", kind="inference", outcome="accepted") for m in ms)
        accepted_lab = sum(total(m, "driftline_events_total", kind="label", outcome="accepted") for m in ms)
        labeled = sum(total(m, "driftline_labeled_total", segment="__all__") for m in ms)
        print(f"\nkill -9: partitions owned again {recovered:.1f} s after the kill; events replayed {replayed:.0f}; "
              f"accepted inferences {accepted_inf:.0f}/{rows}, labels {accepted_lab:.0f}/{rows}, "
              f"duplicates counted {accepted_inf + accepted_lab - 2 * rows:.0f}")
        # Nothing missing; at most the replayed events counted twice (docs/guarantees.md).
        assert rows <= accepted_inf <= rows + replayed
        assert rows <= accepted_lab <= rows + replayed
        assert rows <= labeled <= rows + replayed
        assert replayed > 0  # the owner was killed mid-stream: its successor did replay
        error_hits = {dict(lv)["segment"]: v for m in ms for (n, lv), v in m.items()
                      if n == "driftline_drift_detected_total" and dict(lv)["signal"] == "error" and v > 0}
        assert "band=high" in error_hits, error_hits  # the drift that began before the kill is found after it
        assert not {"band=low", "band=mid"} & set(error_hits), error_hits
    finally:
        stop_all(workers)


# ----------------------------------------------------------------------------------- poison
def poison(n_random: int = 200):
    rng = random.Random(7)
    bad = []  # (payload, expected reason)
    for _ in range(n_random):
        bad.append((bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), None))
    bad += [(b'{"x": "' + b"y" * 600_000 + b'"}', "oversized")] * 3
    bad += [(b'{"prediction_id": "d", "model": "m", "features": {}, "prediction": 1, "n": '
             + b"[" * 300 + b"]" * 300 + b"}", "too_deep")] * 20
    bad += [(orjson.dumps({"prediction_id": 5, "model": "m", "features": {}, "prediction": 1}), "wrong_type")] * 20
    bad += [(orjson.dumps({"prediction_id": "a", "model": "m", "features": {"f": [1]}, "prediction": 1}), "wrong_type")] * 20
    bad += [(b'{"prediction_id": "a", "model": "m", "features": {}, "prediction": NaN}', "not_finite")] * 20
    return bad


def test_poison_stream_goes_to_dead_letters_and_the_worker_stays_up_and_bounded(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=2,
                          extra="limits: {max_models: 10, max_pending: 5000}\n")
    [w] = start_fleet(config, tmp_path, 1, 2)
    try:
        p = producer(kafka_bootstrap, **{"message.max.bytes": 2_000_000})
        # A warm-up of good traffic, so that memory is measured after the worker's first allocations.
        inf, lab = synth_events(5_000)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(30)
        wait_for("warm-up", lambda: total(w.metrics(), "driftline_events_total") == 10_000, 60, [w])
        rss_before = total(w.metrics(), "process_resident_memory_bytes")

        bad = poison()
        publish(p, f"{prefix}.inferences", [raw for raw, _ in bad])
        # 200 unknown models: 7 more fit under max_models=10 (3 configured), the rest are refused.
        unknown = [{"prediction_id": f"u{i}", "model": f"junk{i}", "features": {}, "prediction": 1} for i in range(200)]
        publish(p, f"{prefix}.inferences", unknown)
        # A label flood for ids that never come: held, capped by max_pending, then unmatched.
        flood = [{"prediction_id": f"ghost-{i}", "label": 1} for i in range(40_000)]
        publish(p, f"{prefix}.labels", flood)
        p.flush(60)
        n_in = 10_000 + len(bad) + len(unknown) + len(flood)
        # Every event has a fate, but labels still held for their prediction, which have none yet.
        accounted = lambda m: total(m, "driftline_events_total") + total(m, "driftline_join_pending", kind="label")  # noqa: E731
        wait_for("the poison accounted", lambda: accounted(w.metrics()) == n_in, 120, [w])
        m = w.metrics()
        assert w.alive and w.ready()
        invalid = total(m, "driftline_events_total", outcome="invalid")
        # Held labels stay under the cap, per partition (2 partitions here).
        assert total(m, "driftline_join_pending", kind="label") <= 2 * 5000
        assert total(m, "driftline_events_total", kind="label", outcome="unmatched") >= 40_000 - 2 * 5000
        rss_after = total(m, "process_resident_memory_bytes")
        print(f"\npoison: RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB")
        assert rss_after - rss_before < 150 * 2**20

        letters = consume_all(kafka_bootstrap, f"{prefix}.dead-letters", int(invalid),
                              **{"fetch.max.bytes": 5_000_000})
        records = [orjson.loads(x.value()) for x in letters]
        assert len(records) == invalid
        reasons = Counter(r["reason"] for r in records)
        for raw, reason in bad:
            if reason is not None:
                assert reasons[reason] >= sum(1 for _, r in bad if r == reason)
        # max_models holds per input partition: each of the 2 admits 7 models past the 3 configured.
        refused_models = reasons["too_many_models"]
        assert 200 - 2 * 7 <= refused_models <= 200 - 7
        assert invalid == len(bad) + refused_models
        assert all(r["detail"] and r["reason"] for r in records)
        originals = {base64.b64decode(r["raw_base64"]) for r in records if not r["raw_truncated"]}
        assert {raw for raw, _ in bad if len(raw) < 500_000} <= originals
    finally:
        stop_all([w])


def test_segment_cardinality_flood_folds_into_other(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    models = "  clicks: {segments: [user], max_segments: 50, features: {x: numeric}}\n"
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, models, partitions=2)
    [w] = start_fleet(config, tmp_path, 1, 2)
    try:
        now = time.time()
        events = [{"prediction_id": f"c{i}", "model": "clicks", "timestamp": now + i * 1e-4,
                   "features": {"x": i % 10, "user": f"user-{i}"}, "prediction": 1} for i in range(100_000)]
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", events)
        p.flush(60)
        wait_for("100k events", lambda: total(w.metrics(), "driftline_events_total") == 100_000, 180, [w])
        m = w.metrics()
        segments = {dict(lv)["segment"] for lv in series(m, "driftline_segment_inferences_total")}
        # The cap is per input partition (each partition's router has its own): 2 x 50 values at most.
        assert len(segments) <= 2 * 50 + 2 and "user=__other__" in segments and "__all__" in segments
        folded = total(m, "driftline_segments_folded_total", model="clicks", attribute="user")
        kept = len(segments) - 2
        assert folded == 100_000 - kept
        assert total(m, "driftline_segment_inferences_total", segment="user=__other__") == folded
    finally:
        stop_all([w])


# ----------------------------------------------------------------------------------- broker restart and SASL
@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    """A broker of this module's own (restartable), with a SASL_PLAINTEXT listener too."""
    from tests.integration.conftest import run_script

    state = tmp_path_factory.mktemp("own-broker")
    env = {"DRIFTLINE_STATE": str(state), "KAFKA_PORT": str(free_port()), "KAFKA_CONTROLLER_PORT": str(free_port()),
           "KAFKA_SASL_PORT": str(free_port()), "KAFKA_SASL_USERS": "driftline:s3cret-pw admin:admin-pw"}

    class Broker:
        bootstrap = f"127.0.0.1:{env['KAFKA_PORT']}"
        sasl_bootstrap = f"127.0.0.1:{env['KAFKA_SASL_PORT']}"

        @staticmethod
        def run(action: str):
            res = run_script("kafka", action, env, timeout=300)
            assert res.returncode == 0, res.stdout + res.stderr
            return res

    Broker.run("start")
    yield Broker
    run_script("kafka", "stop", env, timeout=60)


def test_broker_stop_and_start_mid_stream_loses_nothing(own_broker, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", own_broker.bootstrap, prefix, SYNTH_MODELS, partitions=3,
                          extra="worker: {checkpoint_interval: 2s}\n")
    workers = start_fleet(config, tmp_path, 2, 3)
    try:
        inf, lab = synth_events(8_000)
        p = producer(own_broker.bootstrap)
        publish(p, f"{prefix}.inferences", inf[:4000])
        publish(p, f"{prefix}.labels", lab[:4000])
        p.flush(30)
        wait_for("the first half", lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") == 4000,
                 60, workers)
        own_broker.run("stop")
        time.sleep(3)
        assert all(w.alive for w in workers)  # a broker away is not a reason to exit
        own_broker.run("start")
        publish(p, f"{prefix}.inferences", inf[4000:])
        publish(p, f"{prefix}.labels", lab[4000:])
        assert p.flush(60) == 0
        wait_for("every event after the restart",
                 lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") == 8000, 180, workers)
        ms = fleet_metrics(workers)
        assert sum(total(m, "driftline_events_total", kind="inference", outcome="accepted") for m in ms) == 8000
        assert sum(total(m, "driftline_events_total", kind="label", outcome="accepted") for m in ms) == 8000
        wait_for("ready again", lambda: all(w.ready() for w in workers), 60, workers)
    finally:
        stop_all(workers)


def test_worker_authenticates_with_sasl_plain_and_never_logs_the_secret(own_broker, tmp_path):
    prefix = unique_prefix()
    sasl = "  config: {security.protocol: SASL_PLAINTEXT, sasl.mechanism: PLAIN, sasl.username: driftline}\n"
    config = write_config(tmp_path / "c.yml", own_broker.sasl_bootstrap, prefix, SYNTH_MODELS, partitions=2)
    text = config.read_text().replace("  topics:", sasl + "  topics:", 1)
    config.write_text(text)
    [w] = start_fleet(config, tmp_path, 1, 2, env={"DRIFTLINE_KAFKA_SASL_PASSWORD": "s3cret-pw"})
    try:
        inf, _ = synth_events(500)
        p = producer(own_broker.sasl_bootstrap, **{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                                                   "sasl.username": "admin", "sasl.password": "admin-pw"})
        publish(p, f"{prefix}.inferences", inf)
        p.flush(30)
        wait_for("events over SASL", lambda: total(w.metrics(), "driftline_events_total") == 500, 60, [w])
    finally:
        stop_all([w])
    assert "s3cret-pw" not in w.log_path.read_text()

    bad = WorkerProcess(config, tmp_path, "wrong-password", env={"DRIFTLINE_KAFKA_SASL_PASSWORD": "nope"}).start()
    try:
        code = bad.proc.wait(90)
    finally:
        bad.kill9()
    log = bad.log_path.read_text()
    assert code == 3 and "cannot reach Kafka" in log and "uthentication" in log, log[-2000:]
    assert "nope" not in log
