"""Streaming inference in a faust app, end to end on the real broker: a faust-streaming app
(tests/integration/faust_scorer.py, its own process) scores a stream of Shuttle sensor rows with
a frozen model inside its agents and publishes predictions and labels through its own producer
(driftline.stream.faust.FaustPublisher); a driftline worker finds the drift injected in one
segment of that stream, and only there."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from driftline.stream.demo import DRIFT_FEATURE, DRIFT_OFFSET, _trained, band
from tests.integration.harness import (
    WorkerProcess,
    producer,
    total,
    unique_prefix,
    wait_for,
    write_config,
)
from tests.integration.test_fault_tolerance import SHUTTLE_MODEL

pytestmark = pytest.mark.integration

SCORER = Path(__file__).with_name("faust_scorer.py")
ROWS, DRIFT_ROW = 12_000, 6_000


def requests_and_outcomes():
    """Shuttle rows after the training rows; from DRIFT_ROW on, f7 reads +20 in band=high."""
    rows, _ = _trained()
    reqs, outs = [], []
    for i, (x, y) in enumerate(rows[5_000:5_000 + ROWS]):
        x = dict(x)
        if i >= DRIFT_ROW and band(x) == "high":
            x[DRIFT_FEATURE] += DRIFT_OFFSET
        rid = f"req-{i:06d}"
        reqs.append({"id": rid, "features": x})
        outs.append({"id": rid, "label": y})
    return reqs, outs


def test_a_faust_app_scores_a_stream_and_the_worker_finds_the_drift_in_it(kafka_bootstrap, create_topic, tmp_path):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SHUTTLE_MODEL, partitions=3)
    worker = WorkerProcess(config, tmp_path, "w0").start()
    scorer = None
    try:
        # The worker creates driftline's topics; the app only produces to them.
        wait_for("worker ready", worker.ready, 120, [worker])
        requests_topic, outcomes_topic = create_topic(), create_topic()
        reqs, outs = requests_and_outcomes()
        p = producer(kafka_bootstrap)
        for r in reqs:
            p.produce(requests_topic, key=r["id"].encode(), value=orjson.dumps(r))
            p.poll(0)
        for o in outs:
            p.produce(outcomes_topic, key=o["id"].encode(), value=orjson.dumps(o))
            p.poll(0)
        assert p.flush(30) == 0

        log = tmp_path / "faust.log"
        cmd = [sys.executable, str(SCORER), "--bootstrap", kafka_bootstrap, "--prefix", prefix,
               "--requests", requests_topic, "--outcomes", outcomes_topic, "--expect", str(ROWS),
               "--app-id", f"{prefix}-scorer", "--datadir", str(tmp_path / "faust-data"), "--timeout", "240"]
        with open(log, "wb") as logf:
            scorer = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=logf,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            rc = scorer.wait(timeout=260)
        text = log.read_text(errors="replace")
        assert rc == 0, f"faust scorer exited {rc}:\n{text[-3000:]}"
        stats = json.loads(text.split("stats ", 1)[1].split(" left ", 1)[0].splitlines()[0])
        assert stats == {"sent": 2 * ROWS, "delivered": 2 * ROWS, "failed": 0, "dropped": 0, "invalid": 0,
                         "queued": 0}, text[-2000:]

        wait_for("every prediction graded",
                 lambda: total(worker.metrics(), "driftline_labeled_total", segment="__all__") == ROWS, 120, [worker])
        m = worker.metrics()
        assert total(m, "driftline_events_total", kind="inference", outcome="accepted") == ROWS
        assert total(m, "driftline_events_total", outcome="invalid") == 0
        error_hits = {dict(lv)["segment"]: v for (n, lv), v in m.items()
                      if n == "driftline_drift_detected_total" and dict(lv)["signal"] == "error" and v > 0}
        assert "band=high" in error_hits, error_hits
        assert not {"band=low", "band=mid"} & set(error_hits), error_hits
        # The model's accuracy in the drifted segment fell, elsewhere it held.
        acc = {dict(lv)["segment"]: v for (n, lv), v in m.items() if n == "driftline_accuracy"}
        assert acc["band=high"] < 0.9 and acc["band=low"] > 0.95 and acc["band=mid"] > 0.95, acc
    finally:
        if scorer is not None and scorer.poll() is None:
            os.killpg(scorer.pid, signal.SIGKILL)
            scorer.wait(timeout=10)
        worker.terminate()
