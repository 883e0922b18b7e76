"""bench/perf_record.py names the compiled functions perf samples: Cython's mangled symbols, read back."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import perf_record  # noqa: E402


@pytest.mark.parametrize("symbol, name", [
    ("__pyx_pw_9driftline_6stream_8ordering_15EventTimeDriver_15_take", "stream.ordering.EventTimeDriver._take"),
    ("__pyx_pw_9driftline_9detectors_4bank_11SignalState_13update", "detectors.bank.SignalState.update"),
    ("__pyx_pw_9driftline_6stream_9eventtime_3compact_json", "stream.eventtime.compact_json"),
    ("__pyx_pw_9driftline_6stream_9eventtime_5_Pack_1__init__", "stream.eventtime._Pack.__init__"),
    ("__pyx_pw_9driftline_6stream_6worker_10run_worker_1metrics", "stream.worker.run_worker.metrics"),
])
def test_a_compiled_function_is_named_by_its_module_class_and_name(symbol, name):
    assert perf_record.cython_name(symbol) == name


def test_symbols_that_are_not_driftline_functions_have_no_name():
    assert perf_record.cython_name("gc_collect_main") is None
    assert perf_record.cython_name("__pyx_pw_5river_5drift_4ADWIN_3update") is None
