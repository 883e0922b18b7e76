"""The public surface of the `driftline` package: a small, deliberate set of names."""
import subprocess
import sys

import driftline


def test_public_names_are_exactly_these():
    assert sorted(driftline.__all__) == ["PublishStats", "Publisher", "__version__"]
    assert sorted(n for n in dir(driftline) if not n.startswith("_")) == ["PublishStats", "Publisher"]


def test_publisher_is_the_sdk_class():
    from driftline.stream.publish import Publisher, PublishStats

    assert driftline.Publisher is Publisher
    assert driftline.PublishStats is PublishStats


def test_version_matches_the_installed_distribution_and_the_cli():
    from importlib.metadata import version

    assert driftline.__version__ == version("driftline")
    out = subprocess.run([sys.executable, "-m", "driftline.stream.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"driftline {driftline.__version__}"


def test_importing_the_package_loads_no_kafka_client():
    code = "import sys, driftline; print('confluent_kafka' in sys.modules, 'driftline.stream' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
