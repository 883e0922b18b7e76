"""The package as a user installs it: a wheel built from this repository, in an empty virtualenv.

- one import namespace: the wheel holds `driftline` only, and the installed environment has no
  top-level `stream` or `detectors`;
- the plain install is the SDK: it publishes to the real broker with confluent-kafka and orjson
  alone (River, numpy, PyYAML and prometheus-client are not installed), and `driftline run`
  names the extra it needs instead of failing with a traceback.

pip fetches confluent-kafka and orjson (and setuptools, to build) through the package index;
its cache makes a second run quick.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from driftline.stream.codec import DecodeLimits, decode_inference, decode_label
from driftline.stream.events import Inference, Label
from tests.integration.harness import REPO

pytestmark = pytest.mark.integration

# What a wheel needs from the repository: the metadata and the three package folders.
SOURCES = ("pyproject.toml", "README.md", "src", "stream", "detectors")
WORKER_ONLY = ("river", "numpy", "yaml", "prometheus_client")


def run(cmd: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)], cwd=src)
    (built,) = out.glob("driftline-*.whl")
    return built


@pytest.fixture(scope="module")
def plain_env(wheel, tmp_path_factory) -> Path:
    """An empty virtualenv with the wheel installed plainly (no extras)."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env)
    run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        cwd=env)
    return env


def test_the_wheel_ships_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"driftline", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "driftline/stream/publish.py" in names and "driftline/detectors/bank.py" in names
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    base = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert sorted(ln.split()[1].split(">")[0].split("<")[0] for ln in base) == ["confluent-kafka", "orjson"]


def test_plain_install_has_no_stray_top_level_packages_and_no_worker_dependencies(plain_env, tmp_path):
    py = str(plain_env / "bin" / "python")
    code = ("import importlib.util as u, json; "
            f"print(json.dumps({{m: u.find_spec(m) is not None for m in {('stream', 'detectors', *WORKER_ONLY)!r}}}))")
    found = orjson.loads(run([py, "-c", code], cwd=tmp_path).stdout)
    assert found == {m: False for m in ("stream", "detectors", *WORKER_ONLY)}
    dists = run([py, "-m", "pip", "list", "--format=json"], cwd=tmp_path).stdout
    names = {d["name"].lower() for d in orjson.loads(dists)}
    assert {"driftline", "confluent-kafka", "orjson"} <= names
    assert not names & {"river", "numpy", "pyyaml", "prometheus-client", "faust-streaming"}


def test_plain_install_publishes_to_the_real_broker(plain_env, kafka_bootstrap, create_topic, tmp_path):
    inferences, labels = create_topic(), create_topic()
    script = f"""
import sys, driftline
from driftline import Publisher
pub = Publisher(bootstrap={kafka_bootstrap!r}, inferences_topic={inferences!r}, labels_topic={labels!r})
pid = pub.log_prediction(model="churn", features={{"tenure": 3, "plan": "pro"}}, prediction=1, score=0.83,
                         segment={{"region": "eu"}})
pub.log_label(pid, 0, model="churn")
left = pub.flush(30)
s = pub.stats
print(pid, s.sent, s.delivered, s.dropped, s.failed, s.invalid, left, "river" in sys.modules, "numpy" in sys.modules)
pub.close()
"""
    out = run([str(plain_env / "bin" / "python"), "-c", script], cwd=tmp_path, timeout=120).stdout.split()
    pid = out[0]
    assert out[1:] == ["2", "2", "0", "0", "0", "0", "False", "False"], out

    limits = DecodeLimits(max_bytes=256 * 1024, max_depth=8)
    inf = consume_one(kafka_bootstrap, inferences)
    lab = consume_one(kafka_bootstrap, labels)
    ev = decode_inference(inf, 0.0, limits)
    assert isinstance(ev, Inference), ev
    assert (ev.prediction_id, ev.model, ev.prediction, ev.score) == (pid, "churn", 1, 0.83)
    assert ev.features == {"tenure": 3, "plan": "pro"} and ev.segment == {"region": "eu"}
    lb = decode_label(lab, 0.0, limits)
    assert isinstance(lb, Label) and (lb.prediction_id, lb.label) == (pid, 0)


def test_worker_commands_name_the_extra_they_need(plain_env, tmp_path):
    exe = str(plain_env / "bin" / "driftline")
    version = run([exe, "--version"], cwd=tmp_path)
    assert version.stdout.startswith("driftline ")
    cfg = tmp_path / "driftline.yml"
    cfg.write_text("kafka: {bootstrap: 127.0.0.1:1}\n")
    for cmd in (["run", "--config", str(cfg)],
                ["replay", "--config", str(cfg), "--inferences", "x", "--labels", "y"]):
        res = run([exe, *cmd], cwd=tmp_path, check=False)
        assert res.returncode == 2, res
        assert "pip install 'driftline[worker]'" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def consume_one(bootstrap: str, topic: str, timeout: float = 30.0) -> bytes:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"i15-{topic}", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg.value()
        raise AssertionError(f"nothing on {topic} within {timeout:.0f} s")
    finally:
        c.close()
