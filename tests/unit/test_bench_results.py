"""Results files are written by their bench, never by hand: every field of a committed results
file is a name its script writes (a string literal in it). Keys that are data, not fields (the
names of a plan's signals, of installed packages), are exempt by their parent's name."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA_KEYED = {"signals_at_all", "versions"}  # their keys are signal / package names, not fields


def load_perf(name: str):
    """bench/perf.py as a module of its own under `name` (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench/perf.py")
    perf = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = perf  # its dataclasses look their module up
    spec.loader.exec_module(perf)
    return perf


def literals(script: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def fields(value, parent: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if parent not in DATA_KEYED:
                out.add(k)
            out |= fields(v, k)
    elif isinstance(value, list):
        for v in value:
            out |= fields(v, parent)
    return out


@pytest.mark.parametrize("results, script", [("perf.json", "perf.py"), ("scrape_load.json", "scrape_load.py")])
def test_every_field_of_a_results_file_is_written_by_its_bench(results, script):
    data = json.loads((REPO / "bench/results" / results).read_text())
    unknown = fields(data) - literals(REPO / "bench" / script)
    assert not unknown, f"bench/results/{results} holds fields bench/{script} does not write: {sorted(unknown)}"


def test_the_readme_table_of_measured_figures_is_the_one_perf_py_makes_of_perf_json():
    """The README's Measured table is bench/perf.py's rendering of bench/results/perf.json, word
    for word: a figure typed into it by hand, or a results file committed without `--readme`,
    fails here."""
    perf = load_perf("bench_perf")
    text = (REPO / "README.md").read_text()
    assert perf.README_BEGIN in text and perf.README_END in text
    shown = text.split(perf.README_BEGIN, 1)[1].split(perf.README_END, 1)[0].strip("\n")
    assert shown == perf.table(json.loads((REPO / "bench/results/perf.json").read_text()))


def test_the_benchs_cpu_figure_is_the_processs_own_from_proc():
    """bench/perf.py counts a worker's CPU from /proc (its /metrics body is cached, so its
    process_cpu_seconds_total lags by up to a second): the figure must grow with CPU burnt, match
    what the process says of itself, and be None for a process that is gone."""
    import os
    import subprocess
    import time

    perf = load_perf("bench_perf_cpu")
    before, own_before = perf.process_cpu_seconds(os.getpid()), time.process_time()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    burnt = perf.process_cpu_seconds(os.getpid()) - before
    assert abs(burnt - (time.process_time() - own_before)) < 0.05 and burnt >= 0.25
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert perf.process_cpu_seconds(gone.pid) is None


def test_the_replay_figure_is_a_timed_replay_of_every_event_given():
    """bench/perf.py's replay row runs `driftline replay` on the very events the workers read,
    in a process of its own: every pass reads them all (a replay that read fewer would flatter
    the figure, and replay_timed refuses one), and the rates are those events over its times."""
    perf = load_perf("bench_perf_replay")
    inf, lab = perf.demo_raw(300)
    figure = perf.replay_timed(inf, lab, passes=2)
    assert figure["events_read"] == [600, 600] and figure["events"] == 600
    assert figure["events_per_cpu_s"] == 600 / sorted(figure["cpu_seconds_per_pass"])[1]
    # Wall time at least the CPU time of one thread: events/s of wall never above per CPU s by much.
    assert 0 < figure["events_per_s"] <= 1.2 * figure["events_per_cpu_s"]
