"""The examples in module docstrings run, so they stay true."""
import doctest
import importlib

import pytest

MODULES = [
    "detectors.accuracy", "detectors.baseline", "detectors.categorical", "detectors.drift", "detectors.segments",
    "stream.codec", "stream.settings",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0, f"{name} has no examples"
    assert failed == 0
