"""Results files are written by their bench, never by hand: every field of a committed results
file is a name its script writes (a string literal in it). Keys that are data, not fields (the
names of a plan's signals, of installed packages), are exempt by their parent's name."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA_KEYED = {"signals_at_all", "versions"}  # their keys are signal / package names, not fields


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
