"""`driftline baseline build` from CSV, JSONL and Parquet, and the profile in use by replay."""
import csv
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from driftline.detectors.baseline import BaselineProfile
from driftline.stream.baselines import build_profile, read_rows
from driftline.stream.replay import replay
from driftline.stream.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
models:
  churn:
    segments: [plan]
    features: {tenure: numeric, plan: categorical, active: categorical}
    baseline_checks: {window: 200, min_values: 50}
"""


def rows(n=800, seed=1, shift=0.0):
    rng = random.Random(seed)
    for i in range(n):
        plan = rng.choice(["basic", "pro"])
        tenure = round(rng.gauss(20 if plan == "basic" else 40, 5) + shift, 2)
        yield {"tenure": None if i % 25 == 0 else tenure, "plan": plan, "active": rng.random() < 0.7,
               "prediction": int(tenure > 30), "score": round(rng.random(), 4), "label": int(tenure > 31)}


@pytest.fixture
def data(tmp_path):
    (tmp_path / "c.yml").write_text(CONFIG)
    recs = list(rows())
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(recs[0]))
        w.writeheader()
        for r in recs:
            w.writerow({k: ("" if v is None else ("true" if v is True else "false" if v is False else v))
                        for k, v in r.items()})
    with open(tmp_path / "train.jsonl", "wb") as f:
        for i, r in enumerate(recs):
            ev = {"prediction_id": f"p{i}", "model": "churn", "model_version": "v7",
                  "features": {k: r[k] for k in ("tenure", "plan", "active")},
                  "prediction": r["prediction"], "score": r["score"], "label": r["label"]}
            f.write(orjson.dumps(ev) + b"\n")
        f.write(orjson.dumps({"prediction_id": "x", "model": "other", "features": {}, "prediction": 1}) + b"\n")
        f.write(b"not json\n")
    return tmp_path, recs


def comparable(p: BaselineProfile) -> dict:
    d = p.to_dict()
    for k in ("source", "created", "model_version"):
        d.pop(k)
    return d


def test_csv_jsonl_and_parquet_give_the_same_profile(data):
    import pyarrow as pa  # the test extra installs it: missing must fail, not skip
    import pyarrow.parquet as pq

    tmp, recs = data
    spec = load_settings(tmp / "c.yml", env={}).models["churn"]
    pq.write_table(pa.Table.from_pylist(recs), tmp / "train.parquet")
    from_csv, r1 = build_profile(spec, tmp / "train.csv")
    from_jsonl, r2 = build_profile(spec, tmp / "train.jsonl")
    from_parquet, r3 = build_profile(spec, tmp / "train.parquet")
    assert r1.rows == r2.rows == r3.rows == 800
    assert r2.other_models == 1 and r2.malformed == 1
    assert comparable(from_csv) == comparable(from_jsonl) == comparable(from_parquet)
    assert from_jsonl.model_version == "v7" and from_csv.model_version == "unknown"
    assert from_csv.overall.features["active"].categories == ("true", "false")
    assert from_csv.overall.features["tenure"].missing == 32
    assert set(from_csv.slices) == {"__all__", "plan=basic", "plan=pro"}


def test_csv_cells_that_are_not_numbers_count_as_invalid(tmp_path):
    (tmp_path / "c.yml").write_text(CONFIG)
    (tmp_path / "d.csv").write_text("tenure,plan\n3,a\nabc,b\nNA,a\n")
    spec = load_settings(tmp_path / "c.yml", env={}).models["churn"]
    assert [r.features["tenure"] for r in read_rows(tmp_path / "d.csv", spec)] == [3.0, "abc", None]
    p, _ = build_profile(spec, tmp_path / "d.csv")
    t = p.overall.features["tenure"]
    assert (t.valid, t.invalid, t.missing) == (1, 1, 1)


def test_cli_build_then_replay_exports_the_gauges(data):
    tmp, _ = data
    out = tmp / "churn.json"
    res = subprocess.run([sys.executable, "-m", "driftline.stream.cli", "baseline", "build", "--config", str(tmp / "c.yml"),
                          "--model", "churn", "--out", str(out), "--environment", "validation", str(tmp / "train.jsonl")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "churn/v7/validation" in res.stderr and "accuracy" in res.stderr
    (tmp / "c2.yml").write_text(CONFIG + "    baseline: churn.json\n")
    settings = load_settings(tmp / "c2.yml", env={})
    assert settings.baselines["churn"].environment == "validation"
    live = [dict(r) for r in rows(400, seed=5, shift=15.0)]
    with open(tmp / "inf.jsonl", "wb") as f:
        for i, r in enumerate(live):
            f.write(orjson.dumps({"prediction_id": f"l{i}", "model": "churn", "timestamp": 1000 + i,
                                  "features": {k: r[k] for k in ("tenure", "plan", "active")},
                                  "prediction": r["prediction"], "score": r["score"]}) + b"\n")
    (tmp / "lab.jsonl").write_text("")
    result = replay(settings, tmp / "inf.jsonl", tmp / "lab.jsonl")
    text = result.exposition().decode()
    psi = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
           for line in text.splitlines() if line.startswith("driftline_feature_psi{")}
    assert psi['model="churn",segment="plan=pro",feature="tenure"'] > 1.0  # shifted by 3 standard deviations
    assert psi['model="churn",segment="plan=pro",feature="active"'] < 0.25
    assert 'driftline_feature_invalid_total{model="churn",feature="tenure",reason="range"}' in text
    res = subprocess.run(["promtool", "check", "metrics"], input=result.exposition(), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cli_build_refuses_bad_input(data, tmp_path):
    tmp, _ = data
    res = subprocess.run([sys.executable, "-m", "driftline.stream.cli", "baseline", "build", "--config", str(tmp / "c.yml"),
                          "--model", "churn", "--out", str(tmp / "x.json"), str(tmp / "train.txt")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--format" in res.stderr


def test_config_refuses_a_profile_that_does_not_fit(data):
    tmp, _ = data
    spec = load_settings(tmp / "c.yml", env={}).models["churn"]
    p, _ = build_profile(spec, tmp / "train.jsonl")
    (tmp / "p.json").write_bytes(p.to_json())
    (tmp / "wrong-kind.yml").write_text(CONFIG.replace("plan: categorical", "plan: numeric") + "    baseline: p.json\n")
    with pytest.raises(ConfigError, match="models.churn.baseline: feature 'plan' is categorical"):
        load_settings(tmp / "wrong-kind.yml", env={})
    (tmp / "wrong-model.yml").write_text(CONFIG.replace("churn:", "upsell:") + "    baseline: p.json\n")
    with pytest.raises(ConfigError, match="models.upsell.baseline: .* profiles model 'churn'"):
        load_settings(tmp / "wrong-model.yml", env={})
    (tmp / "junk.json").write_text("{}")
    (tmp / "junk.yml").write_text(CONFIG + "    baseline: junk.json\n")
    with pytest.raises(ConfigError, match="models.churn.baseline: .* not a driftline baseline profile: format"):
        load_settings(tmp / "junk.yml", env={})
