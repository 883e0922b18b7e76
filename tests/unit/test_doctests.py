"""The examples in module docstrings run, so they stay true."""
import doctest
import importlib

import pytest

MODULES = [
    "driftline.detectors.accuracy", "driftline.detectors.baseline", "driftline.detectors.categorical", "driftline.detectors.drift", "driftline.detectors.segments",
    "driftline.stream.codec", "driftline.stream.settings", "driftline.detectors.llm", "driftline.stream.llm_event", "driftline.stream.publish",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0, f"{name} has no examples"
    assert failed == 0
