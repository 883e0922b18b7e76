"""The README's example-service block, run as written: its commands in one bash, in order, on a
stack of their own. The only change is the port numbers (the block's 9092, 8000 and 8080 become
free ports, and `deploy/local/stack` gets them through its environment), so the test collides
with nothing else on the machine. It asserts what the block says a user sees: accuracy per
region with apac the worst, drift detections in region=apac (and __all__) only, no zero lines;
and that its last line stops what it started."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MARK = "The example service end to end"


def readme_block(path: Path = REPO / "README.md") -> str:
    """The bash block that follows MARK in the README."""
    text = path.read_text()
    start = text.index(MARK)
    m = re.compile(r"```bash\n(.*?)```", re.S).search(text, start)
    assert m, f"no bash block after {MARK!r} in {path}"
    return m.group(1)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_other_copies_of_the_example_say_the_same_commands():
    """examples/serving/README.md and docs/sdk.md show the example too: the same command lines."""
    lines = commands(readme_block())
    for other in (REPO / "examples/serving/README.md", REPO / "docs/sdk.md"):
        text = other.read_text()
        missing = [line for line in lines if line not in text and not line.startswith("kill ")]
        assert missing == [], f"{other.name} lacks {missing}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_readme_example_block_runs_as_written(tmp_path):
    block = readme_block()
    ports = {"kafka": free_port(), "worker": free_port(), "app": free_port()}
    script = (block.replace("127.0.0.1:9092", f"127.0.0.1:{ports['kafka']}")
              .replace("127.0.0.1:8000", f"127.0.0.1:{ports['worker']}")
              .replace("127.0.0.1:8080", f"127.0.0.1:{ports['app']}")
              .replace("--port 8080", f"--port {ports['app']}"))
    assert not re.search(r"\b(9092|8000|8080)\b", script), script  # every fixed port was mapped
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update({
        "DRIFTLINE_STATE": str(tmp_path / "state"), "KAFKA_PORT": str(ports["kafka"]),
        "KAFKA_CONTROLLER_PORT": str(free_port()), "PROMETHEUS_PORT": str(free_port()),
        "ALERTMANAGER_PORT": str(free_port()), "DRIFTLINE_WORKER_PORTS": str(ports["worker"]),
        # the worker line reads the config's bootstrap (127.0.0.1:9092): point it at this stack's
        "DRIFTLINE_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
    })
    # If a line fails, `set -e` ends the block before its `kill` line: the trap still stops the
    # background jobs, which would otherwise hold the output pipes open until the timeout.
    prologue = "set -eo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
    proc = subprocess.Popen(["bash", "-c", prologue + script], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:  # whatever the block left (its background jobs share its process group)
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        subprocess.run([str(REPO / "deploy/local/stack"), "stop"], env=env, capture_output=True, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-6000:]}"

    series = {}
    for line in out.splitlines():
        if line.startswith("driftline_"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    assert series, out
    assert all(v != 0 for v in series.values()), "the zero filter let zeros through"
    accuracy = {re.search(r'segment="([^"]+)"', k).group(1): v for k, v in series.items()
                if k.startswith("driftline_accuracy{") and 'model="churn"' in k}
    assert set(accuracy) == {"__all__", "region=eu", "region=us", "region=apac"}, accuracy
    assert accuracy["region=apac"] < min(accuracy["region=eu"], accuracy["region=us"]) - 0.1, accuracy
    drifted = {re.search(r'segment="([^"]+)"', k).group(1) for k in series if k.startswith("driftline_drift_detected_total{")}
    assert "region=apac" in drifted and drifted <= {"region=apac", "__all__"}, drifted
    assert any('segment="region=apac"' in k and 'signal="error"' in k for k in series
               if k.startswith("driftline_drift_detected_total{")), series
    # The block's last line stopped the worker, the app and the stack.
    assert [name for name, port in ports.items() if _listening(port)] == []
