"""A `driftline run` process runs the compiled hot modules (docs/compiled.md), and says so: a build
that failed or does not load would otherwise only show as a slower worker. With DRIFTLINE_PURE=1
the same worker says it runs pure, and both count the same events the same way."""
from __future__ import annotations

import pytest

from driftline import _compiled
from tests.integration.harness import WorkerProcess, producer, publish, total, unique_prefix, wait_for, write_config
from tests.integration.test_fault_tolerance import SYNTH_MODELS

pytestmark = pytest.mark.integration


def hot_modules_line(w: WorkerProcess) -> str:
    lines = [line for line in w.log_path.read_text().splitlines() if "hot modules: " in line]
    assert len(lines) == 1, w.log_tail()
    return lines[0].split("hot modules: ", 1)[1]


@pytest.mark.parametrize("build", ["compiled", "pure"])
def test_the_worker_runs_and_names_the_build_it_loaded(kafka_bootstrap, tmp_path, build):
    prefix = unique_prefix()
    config = write_config(tmp_path / "c.yml", kafka_bootstrap, prefix, SYNTH_MODELS, partitions=1)
    env = {_compiled.PURE_ENV: "1" if build == "pure" else ""}
    w = WorkerProcess(config, tmp_path, build, env=env).start()
    try:
        wait_for("the worker to be ready", w.ready, 120, [w])
        expected = f"compiled ({len(_compiled.HOT)} modules)" if build == "compiled" else "pure (DRIFTLINE_PURE=1)"
        assert hot_modules_line(w) == expected
        p = producer(kafka_bootstrap)
        publish(p, f"{prefix}.inferences", [{"prediction_id": f"r{i}", "model": "m0", "features": {"x": float(i)},
                                             "prediction": i % 2, "timestamp": 100.0 + i} for i in range(50)])
        publish(p, f"{prefix}.labels", [{"prediction_id": f"r{i}", "label": 0, "timestamp": 100.5 + i}
                                        for i in range(50)])
        p.flush(30)
        wait_for("every label joined", lambda: total(w.metrics(), "driftline_labeled_total", model="m0") == 50, 90, [w])
        samples = w.metrics()
        assert total(samples, "driftline_events_total", model="m0") == 100
        assert total(samples, "driftline_correct_total", model="m0") == 25
    finally:
        w.terminate()
