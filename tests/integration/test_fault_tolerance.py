"""Scale-out and failures with real worker processes on a real broker: totals against what was published.

Each test publishes a stream whose contents it knows, does something to the workers (or the
broker), waits until the fleet has accounted for every event, and checks the fleet's /metrics:
counters are state that moves with partitions, so the sum over live workers must equal what
was published, whatever happened in between (exactly, also after a kill -9: transactions).
"""
from __future__ import annotations

import ast
import base64
import heapq
import random
import re
import signal
import threading
import time
from collections import Counter

import orjson
import pytest

from driftline.stream.checkpoint import ENV_FAULT_PAUSE
from driftline.stream.demo import demo_events
from tests.integration.harness import (
    StreamCounts,
    WorkerProcess,
    consume_all,
    fleet_counts,
    fleet_metrics,
    fleet_total,
    free_port,
    producer,
    publish,
    series,
    summed,
    total,
    event_time_report,
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
    fleet = fleet_counts(workers)
    owned = total(fleet, "driftline_worker_partitions", stage="intake")
    banks = total(fleet, "driftline_worker_partitions", stage="bank")
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
        fleet = summed(ms)
        counts = StreamCounts.of(fleet)
        assert (counts.inferences, counts.labels, counts.labeled) == (15_000, 15_000, 15_000)
        assert total(fleet, "driftline_events_total", outcome="invalid") == 30

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
        fleet = fleet_counts(workers[1:])
        assert total(fleet, "driftline_labeled_total", segment="__all__") == 21_000
        assert total(fleet, "driftline_events_replayed_total") == 0  # a graceful handover replays nothing
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


# Checkpoints (= transactions) every 300 ms, so that every restore finds populated state; the
# shortest session timeout the broker allows, so that failovers take seconds.
EOS_WORKER = "worker: {exactly_once: true, checkpoint_interval: 300ms, session_timeout: 6s, transaction_timeout: 10s}\n"


class PacedPublisher(threading.Thread):
    """Publishes the inferences in order at `rate` per second, and each label 0-2x`lag` steps
    after its inference (at random), so that crashes land with traffic in flight, with
    predictions pending in the join, and with labels that sometimes arrive before their
    prediction is read: the interleavings a replay can change.

    The last `held` inferences go at `TRICKLE` per second until `release()`: the traffic is still
    in flight when the test's crashes, rebalances or outage are over, however long those take on
    a busy machine (at `rate` alone, a slow failover let the publisher finish first)."""

    TRICKLE = 100.0

    def __init__(self, bootstrap: str, prefix: str, inferences: list, labels: list, rate: float, lag: int = 200,
                 held: int = 0):
        super().__init__(daemon=True)
        self.p = producer(bootstrap)
        self.prefix, self.inf, self.lab, self.rate, self.lag = prefix, inferences, labels, rate, lag
        self.hold_from = len(inferences) - held
        self.released = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def release(self) -> None:
        """The held inferences go at `rate` again."""
        self.released.set()

    def run(self) -> None:
        try:
            rng = random.Random(11)
            due: list[tuple[int, int]] = []  # (step, label index)
            started = time.monotonic()
            n = len(self.inf)
            i = 0
            while i < n or due:
                if i < n:
                    self.p.produce(f"{self.prefix}.inferences", key=self.inf[i]["prediction_id"],
                                   value=orjson.dumps(self.inf[i]))
                    heapq.heappush(due, (i + rng.randrange(2 * self.lag), i))
                while due and (due[0][0] <= i or i >= n):
                    lab = self.lab[heapq.heappop(due)[1]]
                    self.p.produce(f"{self.prefix}.labels", key=lab["prediction_id"], value=orjson.dumps(lab))
                i += 1
                self.sent = min(i, n)
                if self.hold_from <= i < n and not self.released.is_set():
                    self.p.poll(0)
                    self.released.wait(1 / self.TRICKLE)
                    started = time.monotonic() - i / self.rate  # released: on at `rate`, not in a burst
                elif i % 100 == 0:
                    self.p.poll(0)
                    ahead = started + i / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            assert self.p.flush(60) == 0
        except BaseException as exc:  # reported by the test
            self.error = exc


def settle_after(pub: PacedPublisher, workers, rows: int, timeout: float) -> tuple[list[dict], dict]:
    """Waits for `pub` to finish and the fleet to count a label for each of the `rows`, then 3 s
    more (anything counted twice would arrive by then): each live worker's samples, and their sum."""
    pub.join(timeout)
    assert pub.error is None, pub.error
    wait_for("every label accounted",
             lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") >= rows, timeout, workers)
    time.sleep(3)
    ms = fleet_metrics(workers)
    return ms, summed(ms)


def restored_offsets(workers) -> list[dict]:
    """The offsets of every checkpoint the workers restored (from their logs)."""
    found = []
    for w in workers:
        for m in re.finditer(r"restored \S+/intake/\d+ from its checkpoint at offsets (\{[^}]*\})", w.log_path.read_text()):
            found.append(ast.literal_eval(m.group(1)))
    return found


def test_kill_9_twice_once_mid_checkpoint_counts_stay_exact(kafka_bootstrap, tmp_path):
    rows, drift_row = 24_000, 12_000
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SHUTTLE_MODEL, partitions=6, extra=EOS_WORKER)
    pause_flag = tmp_path / "pause-before-manifest"
    workers = start_fleet(config, tmp_path, 2, 6)
    # The second victim pauses between a checkpoint's chunks and its manifest once the flag exists.
    victim2 = WorkerProcess(config, tmp_path, "w-mid-checkpoint", {ENV_FAULT_PAUSE: str(pause_flag)}).start()
    workers.append(victim2)
    wait_for("every partition owned", lambda: fleet_ready(workers, 6), 120, workers)
    inf, lab = shuttle_stream(rows, drift_row)
    expected_correct = sum(a["prediction"] == b["label"] for a, b in zip(inf, lab))
    pub = PacedPublisher(kafka_bootstrap, prefix, inf, lab, rate=1000, held=rows // 4)
    try:
        pub.start()
        wait_for("a quarter published", lambda: pub.sent >= rows // 4, 120)
        # Crash 1: a plain kill -9 of a worker that owns partitions, with traffic in flight.
        victim1 = workers[0]
        wait_for("populated checkpoints", lambda: total(victim1.metrics(), "driftline_checkpoints_total", outcome="ok") > 3,
                 60, workers)
        victim1.kill9()
        victim1.expected_dead = True
        alive = [w for w in workers if w is not victim1]
        wait_for("the others own every partition", lambda: fleet_ready(alive, 6), 90, alive)
        assert pub.sent < rows, "the publisher finished before the second crash: slow it down"

        # Crash 2: kill -9 between a checkpoint's chunk writes and its manifest write.
        pause_flag.touch()
        wait_for("the victim paused mid-checkpoint", lambda: "fault injection: chunks of" in victim2.log_path.read_text(),
                 60, alive)
        victim2.kill9()
        victim2.expected_dead = True
        survivors = [w for w in alive if w is not victim2]
        survivors.append(WorkerProcess(config, tmp_path, "w-restarted").start())  # a replacement joins
        wait_for("survivors own every partition", lambda: fleet_ready(survivors, 6), 90, survivors)
        pub.release()
        ms, fleet = settle_after(pub, survivors, rows, 180)
        counts = StreamCounts.of(fleet)
        restored = restored_offsets(survivors)
        print(f"\nkill -9 twice: {counts} of {rows} rows ({expected_correct} correct); "
              f"{len(restored)} intake checkpoints restored, largest offset {max((off for o in restored for off in o.values()), default=0)}")
        per_worker = {w.name: total(m, "driftline_events_total", kind="inference", outcome="accepted")
                      for w, m in zip([w for w in survivors if w.alive], ms)}
        print(f"accepted inferences per worker: {per_worker}")
        # Exact: every accepted event counted once, every label joined once (docs/guarantees.md).
        assert counts == StreamCounts(inferences=rows, labels=rows, labeled=rows, correct=expected_correct)
        assert total(fleet, "driftline_events_total") == 2 * rows
        # The successors resumed populated checkpoints (not only the empty ones of an assignment).
        assert any(off > 1000 for o in restored for off in o.values()), restored
        error_hits = {dict(lv)["segment"]: v for (n, lv), v in fleet.items()
                      if n == "driftline_drift_detected_total" and dict(lv)["signal"] == "error" and v > 0}
        assert "band=high" in error_hits, error_hits  # the drift is still found, across both crashes
        assert not {"band=low", "band=mid"} & set(error_hits), error_hits
    finally:
        stop_all(workers + [w for w in locals().get("survivors", []) if w not in workers])


def test_a_worker_paused_past_its_transaction_timeout_rewinds_and_counts_stay_exact(kafka_bootstrap, tmp_path):
    """A worker stopped (SIGSTOP) longer than `worker.transaction_timeout`, as a starved or
    paused process is: the broker aborts its open transaction and bumps its producer's epoch
    (librdkafka: "fenced by newer producer instance"). On SIGCONT the worker replaces the
    producer, rewinds to its last commit and goes on; before, it exited 1 (issue-ci's e2e runs
    under load died so). Its partitions stay (the stop is shorter than the session timeout)."""
    rows = 12_000
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SHUTTLE_MODEL, partitions=3,
                          extra="worker: {transaction_timeout: 4s}\n")
    workers = start_fleet(config, tmp_path, 1, 3)
    worker = workers[0]
    inf, lab = shuttle_stream(rows, rows // 2)
    expected_correct = sum(a["prediction"] == b["label"] for a, b in zip(inf, lab))
    pub = PacedPublisher(kafka_bootstrap, prefix, inf, lab, rate=400, held=rows // 4)
    try:
        pub.start()
        wait_for("traffic flowing", lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") > 1000,
                 90, workers)
        worker.proc.send_signal(signal.SIGSTOP)
        time.sleep(10)  # 2.5x the transaction timeout (the broker checks for expired ones every 1 s)
        worker.proc.send_signal(signal.SIGCONT)
        assert pub.sent < rows, "the publisher finished during the pause: slow it down"
        pub.release()
        ms, fleet = settle_after(pub, workers, rows, 240)
        counts = StreamCounts.of(fleet)
        rewinds = total(fleet, "driftline_transaction_rewinds_total")
        log = worker.log_path.read_text(errors="replace")
        print(f"\npaused 10 s past a 4 s transaction timeout: {counts} of {rows} rows ({expected_correct} correct); "
              f"rewinds {rewinds:.0f}")
        assert worker.alive, log[-3000:]
        # The case really happened: the transaction ended under the worker. Which error it meets
        # first depends on timing: the broker's fencing of the expired transaction, or its own
        # records timing out (message.timeout.ms is the transaction timeout) with an epoch bump.
        assert "fenced" in log or "requires epoch bump" in log, log[-3000:]
        assert rewinds >= 1
        assert counts == StreamCounts(inferences=rows, labels=rows, labeled=rows, correct=expected_correct)
    finally:
        pub.join(1)
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
        # max_models holds for the fleet (the admission bank decides): 7 models past the 3
        # configured, whichever of the 2 input partitions their events arrived on.
        refused_models = reasons["too_many_models"]
        assert refused_models == 200 - 7
        assert invalid == len(bad) + refused_models
        assert all(r["detail"] and r["reason"] for r in records)
        originals = {base64.b64decode(r["raw_base64"]) for r in records if not r["raw_truncated"]}
        assert {raw for raw, _ in bad if len(raw) < 500_000} <= originals
    finally:
        stop_all([w])


def test_segment_cardinality_flood_folds_into_other(kafka_bootstrap, tmp_path):
    """max_segments holds for the fleet: 6 input partitions, 2 worker processes, 60,000 values."""
    prefix = unique_prefix()
    models = "  clicks: {segments: [user], max_segments: 50, features: {x: numeric}}\n"
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, models, partitions=6)
    workers = start_fleet(config, tmp_path, 2, 6)
    try:
        now = time.time()
        events = [{"prediction_id": f"c{i}", "model": "clicks", "timestamp": now + i * 1e-4,
                   "features": {"x": i % 10, "user": f"user-{i}"}, "prediction": 1} for i in range(60_000)]
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", events)
        p.flush(60)
        # `driftline_events_total` is counted at `__all__`, whose bank (crc32 of (clicks, __all__))
        # is not the one owning (clicks, user): each bank applies its observations in its own
        # loop steps (even in one worker: RELEASE_PER_STEP is shared, banks served in turn), so
        # `__all__` can have counted all 60,000 while the user bank has applied none yet. Wait
        # for both: every event counted, and every one reaching a user segment or __other__.
        def accounted(ms):
            fleet = summed(ms)
            user = sum(v for (name, lv), v in fleet.items()
                       if name == "driftline_segment_inferences_total" and dict(lv)["segment"].startswith("user="))
            return total(fleet, "driftline_events_total") == 60_000 and user == 60_000 and ms

        ms = wait_for("60k events, at __all__ and in the user bank", lambda: accounted(fleet_metrics(workers)),
                      180, workers)
        segments = Counter(dict(lv)["segment"] for m in ms for lv in series(m, "driftline_segment_inferences_total"))
        # One owner per (model, attribute) across the fleet: the cap is the fleet's, 50 + __other__ + __all__.
        assert len(segments) == 50 + 2 and set(segments.values()) == {1}, segments
        assert "user=__other__" in segments and "__all__" in segments
        fleet = summed(ms)
        folded = total(fleet, "driftline_segments_folded_total", model="clicks", attribute="user")
        assert folded == 60_000 - 50
        assert total(fleet, "driftline_segment_inferences_total", segment="user=__other__") == folded
    finally:
        stop_all(workers)


def test_an_admitted_segment_is_counted_on_all_its_events_from_every_partition(kafka_bootstrap, tmp_path):
    """120 values x 30 events each, spread over 6 input partitions, max_segments 40: every value is
    either a segment with all 30 of its events and labels, or folded on all of them; the admitted
    values are those `driftline replay` admits for the same events."""
    from driftline.stream.replay import replay
    from driftline.stream.settings import load_settings

    prefix = unique_prefix()
    models = "  clicks: {segments: [user], max_segments: 40, features: {x: numeric}, label_ttl: 1d}\n"
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, models, partitions=6)
    workers = start_fleet(config, tmp_path, 2, 6)
    try:
        now = time.time()
        rng = random.Random(7)
        inf, lab = [], []
        for i in range(120 * 30):
            user = f"u{rng.randrange(120) if i >= 120 else i}"  # every value at least once early, then at random
            inf.append({"prediction_id": f"q{i}", "model": "clicks", "timestamp": now + i * 0.01,
                        "features": {"x": float(i % 7), "user": user}, "prediction": 1})
            lab.append({"prediction_id": f"q{i}", "label": i % 3 != 0, "timestamp": now + i * 0.01 + 0.5})
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(60)
        n = len(inf)
        wait_for("every label joined", lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") == n,
                 180, workers)
        fleet = fleet_counts(workers)
        per_value = Counter(ev["features"]["user"] for ev in inf)
        counted = {dict(lv)["segment"]: v for (name, lv), v in fleet.items()
                   if name == "driftline_segment_inferences_total"}
        labeled = {dict(lv)["segment"]: v for (name, lv), v in fleet.items()
                   if name == "driftline_labeled_total"}
        admitted = {s.removeprefix("user=") for s in counted} - {"__all__", "__other__"}
        assert len(admitted) == 40
        for value in admitted:  # all of its events, whichever partition they arrived on
            assert counted[f"user={value}"] == labeled[f"user={value}"] == per_value[value], value
        rest = sum(c for v, c in per_value.items() if v not in admitted)
        assert counted["user=__other__"] == labeled["user=__other__"] == rest
        assert total(fleet, "driftline_segments_folded_total", attribute="user") == rest

        # driftline replay admits the same values (stage 2 applies observations in event-time order).
        (tmp_path / "inf.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in inf))
        (tmp_path / "lab.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in lab))
        result = replay(load_settings(config, env={}), tmp_path / "inf.jsonl", tmp_path / "lab.jsonl")
        replayed = {seg.removeprefix("user=") for (_, seg), _ in result.bank.items()} - {"__all__", "__other__"}
        assert replayed == admitted
    finally:
        stop_all(workers)


def test_max_models_holds_for_the_fleet_and_a_model_is_monitored_on_all_its_events(kafka_bootstrap, tmp_path):
    """2,000 model names, max_models 20 (1 configured), 6 input partitions, 2 worker processes:
    20 models exported fleet-wide, each admitted one counted on all its inferences and labels,
    every event of the others dead-lettered (`too_many_models`), the same set as replay."""
    from driftline.stream.replay import replay
    from driftline.stream.settings import load_settings

    prefix = unique_prefix()
    models = "  clicks: {features: {x: numeric}, label_ttl: 1d}\n"
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, models, partitions=6,
                          extra="limits: {max_models: 20}\ndefaults: {label_ttl: 1d}\n")
    workers = start_fleet(config, tmp_path, 2, 6)
    try:
        now = time.time()
        rng = random.Random(11)
        inf, lab = [], []
        for i in range(12_000):
            # every name once early (clicks among them), then at random: ~6 events per name
            model = "clicks" if i % 500 == 250 else f"m{i if i < 2000 else rng.randrange(2000)}"
            inf.append({"prediction_id": f"q{i}", "model": model, "timestamp": now + i * 0.01,
                        "features": {"x": float(i % 7)}, "prediction": 1})
            lab.append({"prediction_id": f"q{i}", "label": i % 3 != 0, "timestamp": now + i * 0.01 + 0.5})
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(60)
        n = len(inf)
        every_label = lambda: (fleet_total(workers, "driftline_labeled_total", segment="__all__")  # noqa: E731
                               + fleet_total(workers, "driftline_events_total", kind="label", outcome="unmatched"))
        wait_for("every label joined or refused", lambda: every_label() == n, 240, workers)
        ms = fleet_metrics(workers)
        report = event_time_report(ms)  # late, early, held, de-duplicated: what a failure needs
        print(f"\nthe fleet's event-time figures:\n{report}")
        exported = Counter(dict(lv)["model"] for m in ms for lv in series(m, "driftline_segment_inferences_total"))
        assert len(exported) == 20 and set(exported.values()) == {1}, (exported, report)  # one owner each
        assert "clicks" in exported  # configured: always admitted
        print(f"\nmax_models 20, {len(set(ev['model'] for ev in inf))} names, 6 partitions, 2 workers: "
              f"{len(exported)} models exported")
        per_model = Counter(ev["model"] for ev in inf)
        fleet = summed(ms)
        for model in exported:  # all of its events, whichever partition they arrived on
            assert total(fleet, "driftline_events_total", model=model, kind="inference", outcome="accepted") \
                == per_model[model], model
            assert total(fleet, "driftline_labeled_total", model=model, segment="__all__") == per_model[model], model
        rest = sum(c for model, c in per_model.items() if model not in exported)
        assert total(fleet, "driftline_events_total", model="__unknown__", kind="inference", outcome="invalid") == rest
        assert total(fleet, "driftline_events_total", model="__unknown__", kind="label", outcome="unmatched") == rest
        letters = [orjson.loads(x.value()) for x in consume_all(kafka_bootstrap, f"{prefix}.dead-letters", rest)]
        assert len(letters) == rest and {r["reason"] for r in letters} == {"too_many_models"}
        assert {r["model"] for r in letters} == set(per_model) - set(exported)
        sent = {ev["prediction_id"]: orjson.dumps(ev) for ev in inf}
        for r in letters[:50]:  # the event's own bytes, with where it came from
            raw = base64.b64decode(r["raw_base64"])
            assert orjson.loads(raw) == orjson.loads(sent[orjson.loads(raw)["prediction_id"]])
            assert r["topic"] == f"{prefix}.inferences" and 0 <= r["partition"] < 6 and r["offset"] >= 0

        # driftline replay admits the same models (stage 2 applies observations in event-time
        # order). The fleet was idle when the burst was published: the admission bank must not
        # take the first worker's observations for all there is while the other's sources still
        # count as idle on their word from before the burst (docs/guarantees.md, "A source's
        # idleness is only as fresh as the heartbeat that said it"); under load it did, and
        # admitted later models (3 of 3 runs with two CPU burners).
        (tmp_path / "inf.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in inf))
        (tmp_path / "lab.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in lab))
        result = replay(load_settings(config, env={}), tmp_path / "inf.jsonl", tmp_path / "lab.jsonl")
        late = sum(total(m, "driftline_observations_late_total") for m in ms)
        replayed = {model for (model, _), _ in result.bank.items()}
        # The documented bound (docs/guarantees.md, Caps): the same models as replay when no
        # observation is late. Under heavy load a partition's heartbeat can still run ahead of
        # its own later observations (1 of 4 runs with two CPU burners, 772 late on the
        # admission bank): then the late count says why the sets differ, and is printed.
        if late == 0:
            assert replayed == set(exported), report
        else:
            print(f"{late:g} observations late: admitted {sorted(set(exported) - replayed)} "
                  f"where replay admitted {sorted(replayed - set(exported))}")
        # Replay refuses every event of the models it did not admit: the fleet's `rest` when no
        # observation was late (the sets are equal, asserted above); with late ones, its own.
        assert result.invalid[("inference", "too_many_models")] == sum(
            c for model, c in per_model.items() if model not in replayed)
    finally:
        stop_all(workers)


# ----------------------------------------------------------------------------------- mis-keyed events
def test_events_keyed_wrongly_or_not_at_all_are_rekeyed_and_join_on_six_partitions(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=6)
    workers = start_fleet(config, tmp_path, 2, 6)
    try:
        inf, lab = synth_events(900)
        p = producer(kafka_bootstrap)
        # 600 inferences with a null key (they land on any partition), 300 with a wrong one;
        # their labels keyed by prediction_id, as the contract asks.
        publish(p, f"{prefix}.inferences", inf[:600], key_of=lambda ev: None)
        publish(p, f"{prefix}.inferences", inf[600:], key_of=lambda ev: "k-" + ev["prediction_id"][::-1])
        publish(p, f"{prefix}.labels", lab)
        p.flush(30)
        wait_for("every label joined", lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") == 900,
                 120, workers)
        time.sleep(2)
        fleet = fleet_counts(workers)
        assert total(fleet, "driftline_labeled_total", segment="__all__") == 900
        assert total(fleet, "driftline_events_total", kind="inference", outcome="accepted") == 900
        # Counted: every inference re-published once (fewer would mean some happened to sit
        # on their right partition, which the rule does not look at: the key must be the id).
        assert total(fleet, "driftline_events_rekeyed_total", kind="inference") == 900
        assert total(fleet, "driftline_events_rekeyed_total", kind="label") == 0
    finally:
        stop_all(workers)


def test_mis_keyed_events_are_dead_lettered_when_configured(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=6,
                          extra="worker: {miskeyed: dead_letter}\n")
    [w] = start_fleet(config, tmp_path, 1, 6)
    try:
        inf, lab = synth_events(300)
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", inf[:200], key_of=lambda ev: None)
        publish(p, f"{prefix}.inferences", inf[200:])
        publish(p, f"{prefix}.labels", lab[200:])
        p.flush(30)
        wait_for("accounted", lambda: total(w.metrics(), "driftline_events_total") == 400, 60, [w])
        m = w.metrics()
        assert total(m, "driftline_events_total", kind="inference", outcome="invalid") == 200
        assert total(m, "driftline_labeled_total", segment="__all__") == 100
        letters = [orjson.loads(x.value()) for x in consume_all(kafka_bootstrap, f"{prefix}.dead-letters", 200)]
        assert len(letters) == 200 and {r["reason"] for r in letters} == {"wrong_key"}
        assert "message key null is not the prediction_id" in letters[0]["detail"]
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
        counts = StreamCounts.of(fleet_counts(workers))
        assert (counts.inferences, counts.labels) == (8000, 8000)
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


# ----------------------------------------------------------------------------------- replay: source ids
# At least once, no periodic checkpoint; the shortest session timeout, so that the successor of the
# killed worker gets its partitions after 6 s instead of the default 45.
ALO_WORKER = "worker: {exactly_once: false, checkpoint_interval: 1h, session_timeout: 6s}\n"


def drift_records(bootstrap: str, topic: str, at_least: int) -> list[dict]:
    return [orjson.loads(m.value()) for m in consume_all(bootstrap, topic, at_least, timeout=60, linger=3)]


def test_a_drift_event_replayed_after_a_crash_carries_the_same_source_id(kafka_bootstrap, tmp_path):
    """docs/guarantees.md, without transactions: a crash re-publishes the drift events of the
    replayed window, each with the `source` id it had, so a consumer can drop the copies. (The
    replay may also count outcomes twice, the documented interleaving exception of this mode, and
    those can make detections of their own: new ids, not copies.)"""
    rows, drift_row = 6_000, 3_000
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SHUTTLE_MODEL, partitions=2, extra=ALO_WORKER)
    [w] = start_fleet(config, tmp_path, 1, 2)
    successor = None
    try:
        inf, lab = shuttle_stream(rows, drift_row)
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(60)
        wait_for("every label joined", lambda: total(w.metrics(), "driftline_labeled_total", segment="__all__") == rows,
                 120, [w])
        first = drift_records(kafka_bootstrap, f"{prefix}.drift-events", 1)
        detections = [r for r in first if r["kind"] == "detection"]
        assert any(r["segment"] == "band=high" and r["signal"] == "error" for r in detections), detections
        assert len({r["source"] for r in first}) == len(first)  # one id per record
        # The only checkpoints are the assignment's (empty, offsets 0): a successor replays it all.
        w.kill9()
        successor = WorkerProcess(config, tmp_path, "successor").start()
        wait_for("the successor replayed every label",
                 lambda: successor.ready() and total(successor.metrics(), "driftline_labeled_total", segment="__all__") >= rows
                 and total(successor.metrics(), "driftline_consumer_lag") == 0, 180, [successor])
        again = drift_records(kafka_bootstrap, f"{prefix}.drift-events", 2 * len(first))
        by_source: dict[str, list] = {}
        for r in again:
            by_source.setdefault(r["source"], []).append(r)
        # Every detection published before the crash came again, once, under its own id, the same.
        # Explanation refreshes are made at counts of labelled outcomes (100, 400, 1,600 after the
        # change point), and the replay's outcomes counted twice (this mode's documented exception)
        # move those counts: a refresh may come under another id. Any that came again is the same.
        missing = 0
        for r in first:
            if r["kind"] == "detection":
                assert by_source[r["source"]] == [r, r], (r["source"], by_source[r["source"]])
            else:
                assert all(x == r for x in by_source[r["source"]]), (r["source"], by_source[r["source"]])
                missing += len(by_source[r["source"]]) == 1
        new = [s for s in by_source if s not in {r["source"] for r in first}]
        print(f"\nreplay: {len(first)} drift records, {missing} explanation refreshes not republished under their id; "
              f"{len(new)} new ids; labeled "
              f"{total(successor.metrics(), 'driftline_labeled_total', segment='__all__'):.0f}/{rows}")
    finally:
        stop_all([w] + ([successor] if successor else []))


def test_a_checkpoint_whose_chunks_are_gone_stops_the_worker_with_exit_1(kafka_bootstrap, tmp_path):
    """docs/guarantees.md: a checkpoint that cannot be fetched at assignment (here: its chunks
    deleted from the data topic, as a retention shorter than the checkpoint's age does) stops the
    worker with exit code 1, after its retries, instead of starting the partition empty (which
    would silently lose what the join and the detectors held)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=2)
    [w] = start_fleet(config, tmp_path, 1, 2)
    inf, lab = synth_events(400)
    p = producer(kafka_bootstrap)
    publish(p, f"{prefix}.inferences", inf)
    publish(p, f"{prefix}.labels", lab[:200])  # 200 predictions still wait in the join
    p.flush(30)
    wait_for("400 + 200 events", lambda: total(w.metrics(), "driftline_events_total") == 600, 60, [w])
    assert w.terminate() == 0  # a graceful stop: every partition's state checkpointed

    data = f"{prefix}.checkpoint-data"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    parts = admin.list_topics(data, timeout=10).topics[data].partitions
    probe = producer(kafka_bootstrap)
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"probe-{prefix}"})
    ends = {part: c.get_watermark_offsets(TopicPartition(data, part), timeout=10)[1] for part in parts}
    c.close()
    for f in admin.delete_records([TopicPartition(data, part, end) for part, end in ends.items()]).values():
        f.result(30)
    for part in parts:  # what the data topic holds now: other records where the chunks were
        probe.produce(data, key=b"someone-else#1#0", value=b"x", partition=part)
    probe.flush(30)

    successor = WorkerProcess(config, tmp_path, "successor").start()
    try:
        code = successor.proc.wait(120)
    finally:
        successor.kill9()
    log = successor.log_path.read_text()
    assert code == 1, log[-3000:]
    assert "cannot restore checkpoints" in log, log[-3000:]
    assert log.count("reading checkpoints (attempt") >= 2  # it retried first (repeats are rate-limited in the log)


# An outage bound that holds here: the broker's own controlled shutdown takes 15-45 s on this
# machine before its 20 s of silence, and its start ~5 s; heartbeats fail from the shutdown's
# start. The partitions must survive an outage shorter than worker.session_timeout.
OUTAGE_WORKER = "worker: {session_timeout: 90s, transaction_timeout: 60s}\n"


def log_size(w) -> int:
    return w.log_path.stat().st_size


def test_broker_outage_of_20_s_with_traffic_in_flight_keeps_partitions_and_exact_counts(own_broker, tmp_path):
    rows = 24_000
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", own_broker.bootstrap, prefix, SHUTTLE_MODEL, partitions=3,
                          extra=OUTAGE_WORKER)
    workers = start_fleet(config, tmp_path, 2, 3)
    inf, lab = shuttle_stream(rows, rows // 2)
    expected_correct = sum(a["prediction"] == b["label"] for a, b in zip(inf, lab))
    pub = PacedPublisher(own_broker.bootstrap, prefix, inf, lab, rate=400, held=rows // 4)
    try:
        pub.start()
        wait_for("traffic flowing", lambda: fleet_total(workers, "driftline_labeled_total", segment="__all__") > 2000,
                 90, workers)
        before = [total(w.metrics(), "driftline_rebalances_total") for w in workers]
        log_from = [log_size(w) for w in workers]
        stopping_at = time.time()
        own_broker.run("stop")
        stopped_at = time.time()
        time.sleep(20)
        assert all(w.alive for w in workers)
        own_broker.run("start")
        started_at = time.time()
        time.sleep(10)  # the first lines after the start: the summaries of what was held back
        log_to = [log_size(w) for w in workers]
        assert pub.sent < rows, "the publisher finished during the outage: slow it down"
        pub.release()
        ms, fleet = settle_after(pub, workers, rows, 240)
        counts = StreamCounts.of(fleet)
        failed = total(fleet, "driftline_checkpoints_total", outcome="failed")
        rewinds = total(fleet, "driftline_transaction_rewinds_total")
        after = [total(m, "driftline_rebalances_total") for m in ms]
        logs = [w.log_path.read_text(errors="replace") for w in workers]
        # Every line a worker wrote from the stop to 10 s after the start (librdkafka's too).
        during = [w.log_path.read_bytes()[a:b].decode(errors="replace").splitlines()
                  for w, a, b in zip(workers, log_from, log_to)]
        held_back = [sum(int(n) for n in re.findall(r"\((\d+) similar lines in the last", "\n".join(d))) for d in during]
        print(f"\nbroker outage: stop took {stopped_at - stopping_at:.1f} s, stop to started {started_at - stopping_at:.1f} s; "
              f"{counts} of {rows} rows ({expected_correct} correct); failed checkpoint rounds {failed:.0f}, rewinds {rewinds:.0f}, "
              f"rebalances before/after {before}/{after}; log lines during the outage per worker "
              f"{[len(d) for d in during]}, lines held back by the rate limit {held_back}")
        # The partitions stayed (no rebalance, nothing lost), the counts are exact.
        assert after == before, (before, after)
        assert not any("lost" in line and "partitions" in line for text in logs for line in text.splitlines())
        assert counts == StreamCounts(inferences=rows, labels=rows, labeled=rows, correct=expected_correct)
        # The outage was seen: checkpoint rounds failed, the open transaction was aborted and rewound.
        assert failed > 0 and rewinds > 0
        # Readable logs: librdkafka repeats its connection errors many times a second per client;
        # each kind passes once per 10 s with a count of the lines it held back.
        assert all(len(d) <= 150 for d in during), [len(d) for d in during]
        assert sum(held_back) > 0, held_back
    finally:
        pub.join(1)
        stop_all(workers)


def test_rebalance_while_publishing_a_worker_joins_and_one_leaves_counts_stay_exact(kafka_bootstrap, tmp_path):
    rows = 24_000
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SHUTTLE_MODEL, partitions=6)
    workers = start_fleet(config, tmp_path, 2, 6)
    inf, lab = shuttle_stream(rows, rows // 2)
    expected_correct = sum(a["prediction"] == b["label"] for a, b in zip(inf, lab))
    pub = PacedPublisher(kafka_bootstrap, prefix, inf, lab, rate=800, held=rows // 4)
    try:
        pub.start()
        wait_for("a quarter published", lambda: pub.sent >= rows // 4, 120)
        # A worker joins with traffic in flight: every member gives partitions up and takes some.
        workers.append(WorkerProcess(config, tmp_path, "w-joins").start())
        wait_for("three own every partition", lambda: fleet_ready(workers, 6) and
                 all(total(w.metrics(), "driftline_worker_partitions") > 0 for w in workers), 90, workers)
        joined_at = pub.sent
        # One of the first two leaves (SIGTERM) with traffic in flight.
        assert workers[0].terminate() == 0
        workers[0].expected_dead = True
        left_at = pub.sent
        survivors = workers[1:]
        wait_for("two own every partition", lambda: fleet_ready(survivors, 6), 90, survivors)
        assert pub.sent < rows, "the publisher finished before the leave: slow it down"
        pub.release()
        ms, fleet = settle_after(pub, survivors, rows, 180)
        counts = StreamCounts.of(fleet)
        rebalances = [total(m, "driftline_rebalances_total") for m in ms]
        print(f"\nrebalance in flight: joined at {joined_at}, left at {left_at} of {rows} published; {counts} "
              f"({expected_correct} correct); rebalances per survivor {rebalances}")
        assert joined_at < left_at < rows
        assert all(n >= 2 for n in rebalances), rebalances  # each survivor went through both
        assert counts == StreamCounts(inferences=rows, labels=rows, labeled=rows, correct=expected_correct)
    finally:
        pub.join(1)
        stop_all(workers)
