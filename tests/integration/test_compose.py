"""docker-compose.yml stays consistent with the repo and with the no-Docker stack (no Docker
engine needed: these read files only; `docker compose config` runs too where Compose exists)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def script_default(script: str, var: str) -> int:
    """The default of ${VAR:-N} in a deploy/local script."""
    text = (REPO / "deploy/local" / script).read_text()
    m = re.search(r"\$\{" + var + r":-(\d+)\}", text)
    assert m, f"no default for {var} in deploy/local/{script}"
    return int(m.group(1))


def host_ports(service: str) -> dict[int, int]:
    """{container port: host port} from the short `ports` syntax."""
    out = {}
    for spec in SERVICES[service].get("ports", []):
        parts = str(spec).split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def test_services_present():
    assert {"kafka", "driftline", "prometheus", "alertmanager", "grafana"} <= set(SERVICES)
    assert SERVICES["kafka"]["image"] == "apache/kafka:3.9.1"
    assert "KAFKA_VERSION=3.9.1" in (REPO / "deploy/local/kafka").read_text()


def test_every_mounted_or_built_host_path_exists():
    checked = 0
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith((".", "/")):         # bind mount (named volumes have no slash)
                assert (REPO / src).resolve().exists(), f"{name}: {src} does not exist"
                checked += 1
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (REPO / ctx / dockerfile).is_file(), f"{name}: no {dockerfile} in {ctx}"
            checked += 1
    assert checked >= 6


def test_dockerfile_copies_only_existing_paths():
    # README.md too: pyproject.toml names it as the readme, and `pip install .` fails without it.
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which is missing"


def test_ports_match_the_local_scripts():
    assert host_ports("kafka").get(29092) == script_default("kafka", "KAFKA_PORT") == 9092
    assert host_ports("prometheus") == {9090: script_default("prometheus", "PROMETHEUS_PORT")}
    assert host_ports("alertmanager") == {9093: script_default("alertmanager", "ALERTMANAGER_PORT")}
    # The local Kafka controller port must not take Alertmanager's.
    assert "KAFKA_PORT + 2" in (REPO / "deploy/local/kafka").read_text()


def test_worker_command_config_and_scrape_agree():
    worker = SERVICES["driftline"]
    cmd = worker["command"]
    assert cmd[:2] == ["driftline", "run"]
    config_path = cmd[cmd.index("--config") + 1]
    listen_port = int(cmd[cmd.index("--listen") + 1].rsplit(":", 1)[1])
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in worker["volumes"]}
    assert config_path in mounts

    cfg = yaml.safe_load((REPO / mounts[config_path]).read_text())
    bootstrap = cfg["kafka"]["bootstrap"]
    assert bootstrap == "kafka:9092"
    kafka_env = SERVICES["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    model = cfg["models"]["shuttle"]
    assert model["task"] == "classification" and model["segments"] == ["region"]
    assert model["features"] == {"f1": "numeric", "f2": "numeric", "f3": "numeric"}

    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.docker.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "driftline")
    assert job["dns_sd_configs"][0]["names"] == ["driftline"]
    assert job["dns_sd_configs"][0]["port"] == listen_port
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    cmdline = " ".join(SERVICES["prometheus"]["command"])
    assert "/etc/prometheus/prometheus.docker.yml" in cmdline


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/driftline.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert mounts[path] == "./deploy/grafana/dashboards"
    uid = ds["datasources"][0]["uid"]
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (REPO / "deploy/grafana/dashboards" / home[len(path) + 1:]).is_file()
    dashboards = sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))
    assert {d.name for d in dashboards} == {"fleet.json", "llm.json", "model.json", "workers.json"}
    uids = set()
    for path in dashboards:
        dash = json.loads(path.read_text())
        uids.add(dash["uid"])
        used = [p["datasource"] for p in _all_panels(dash["panels"]) if p["type"] != "row"]
        used += [t["datasource"] for p in _all_panels(dash["panels"]) for t in p.get("targets", [])]
        used += [a["datasource"] for a in dash["annotations"]["list"]]
        used += [v["datasource"] for v in dash["templating"]["list"] if v["type"] == "query"]
        assert used and all(d == {"type": "prometheus", "uid": uid} for d in used), path.name
        ids = [p["id"] for p in _all_panels(dash["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    assert len(uids) == len(dashboards), "dashboard uids must be unique"


def _all_panels(panels):
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _compose_available() -> bool:
    if not shutil.which("docker"):
        return False
    res = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return res.returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="no docker compose plugin (no engine needed, only the CLI)")
def test_docker_compose_config_validates():
    res = subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr


def test_dockerfile_installs_the_worker_extra_and_every_package_folder():
    # The plain package is the SDK only: an image built with `pip install .` could not run the
    # worker. And every folder pyproject.toml maps into the `driftline` namespace must be copied.
    import tomllib

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install '.[worker]'" in dockerfile
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in mapped.values():
        assert folder.split("/")[0] in copied, f"Dockerfile does not copy {folder}"
