"""Stage 1 -> stage 2 in memory where one exactly-once worker owns both ends (stream/repartition.py),
on a real broker: once the handover is done, a bank counts what its worker's intakes send it
before the transaction that carries their messages commits (through the topic alone it sees
them only after that commit), and the counts stay exact across a restart that restores both
stages from their checkpoints. (Rebalances, crashes and replay agreement with 2 and 3 workers, half
of the pairs local: tests/integration/test_fault_tolerance.py, test_event_time.py.)"""
from __future__ import annotations

import time

import pytest

from tests.integration.harness import WorkerProcess, producer, publish, total, unique_prefix, wait_for, write_config
from tests.integration.test_fault_tolerance import SYNTH_MODELS, synth_events

pytestmark = pytest.mark.integration

INTERVAL = 15.0  # seconds between commits: far longer than an in-memory hand-over takes


def commits(w: WorkerProcess) -> float:
    return total(w.metrics(), "driftline_checkpoints_total", outcome="ok")


def labeled(w: WorkerProcess) -> float:
    return total(w.metrics(), "driftline_labeled_total", segment="__all__")


def test_an_owned_bank_counts_observations_before_their_transaction_commits(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=2,
                          extra=f"worker:\n  checkpoint_interval: {INTERVAL:.0f}s\n  transaction_timeout: {4 * INTERVAL:.0f}s\n")
    p = producer(kafka_bootstrap)
    w = WorkerProcess(config, tmp_path, "w0").start()
    try:
        wait_for("w0 ready", w.ready, 90, [w])
        # The handover needs one commit after the assignment that carries each pair's marker
        # (the first input makes the states dirty, so a round commits): through the topic first.
        inf, lab = synth_events(300)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(30)
        wait_for("the first events counted", lambda: labeled(w) == 300, 3 * INTERVAL + 30, [w])
        # Right after a commit: the next one is INTERVAL away.
        before = commits(w)
        wait_for("a commit", lambda: commits(w) > before, 2 * INTERVAL + 10, [w])
        committed, started = commits(w), time.monotonic()
        inf, lab = synth_events(300, start=300, seed=1)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(30)
        wait_for("the second events counted", lambda: labeled(w) == 600, INTERVAL, [w])
        took = time.monotonic() - started
        assert commits(w) == committed, f"counted only after a commit ({took:.1f} s)"
        assert took < INTERVAL / 2
        assert total(w.metrics(), "driftline_events_total") == 1200
        assert total(w.metrics(), "driftline_observations_deduplicated_total") == 0
        before = {k: v for k, v in w.metrics().items() if k[0] in ("driftline_events_total", "driftline_labeled_total",
                                                                   "driftline_correct_total")}
    finally:
        assert w.terminate() == 0

    # A restart restores both stages from the last commit (the shutdown's): nothing read again
    # or missing, and the copies on the topic of what the banks got in memory are not counted twice.
    w = WorkerProcess(config, tmp_path, "w1").start()
    try:
        wait_for("w1 ready", w.ready, 90, [w])
        inf, lab = synth_events(300, start=600, seed=2)
        publish(p, f"{prefix}.inferences", inf)
        publish(p, f"{prefix}.labels", lab)
        p.flush(30)
        wait_for("the third events counted", lambda: labeled(w) == 900, 3 * INTERVAL + 30, [w])
        time.sleep(2.0)
        after = w.metrics()
        assert total(after, "driftline_events_total") == 1800
        for key, value in before.items():
            assert after.get(key, 0.0) >= value, key
    finally:
        assert w.terminate() == 0
