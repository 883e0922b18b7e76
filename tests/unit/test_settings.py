"""The config contract: good configs parse to frozen values, bad ones are refused naming the key."""
import pytest

from stream.settings import ConfigError, load_settings, parse_settings

CONTRACT_EXAMPLE = """
kafka:
  bootstrap: localhost:9092
models:
  churn:
    task: classification
    segments: [region, plan]
    max_segments: 50
    features:
      tenure: numeric
      plan: categorical
    accuracy_window: 1000
    label_ttl: 3d
    drift_hold: 10m
"""


def test_the_contracts_example_parses(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(CONTRACT_EXAMPLE)
    s = load_settings(path, env={})
    spec = s.models["churn"]
    assert spec.segments == ("region", "plan") and spec.max_segments == 50
    assert dict(spec.features) == {"tenure": "numeric", "plan": "categorical"}
    assert spec.label_ttl == 3 * 86400 and spec.drift_hold == 600 and spec.accuracy_window == 1000
    assert s.kafka.bootstrap == "localhost:9092"


def test_unconfigured_model_gets_the_defaults_block():
    s = parse_settings({"defaults": {"label_ttl": "2h", "accuracy_window": 50}}, env={})
    spec = s.spec_for("newmodel")
    assert spec.name == "newmodel" and spec.label_ttl == 7200 and spec.accuracy_window == 50
    assert spec.segments == () and s.spec_for("newmodel") is spec  # cached: no spec per event


def test_environment_overrides_bootstrap_and_passes_kafka_settings():
    env = {"DRIFTLINE_BOOTSTRAP": "broker:9093", "DRIFTLINE_KAFKA_SASL_PASSWORD": "s3cret",
           "DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    s = parse_settings({"kafka": {"bootstrap": "x:1", "config": {"sasl.mechanism": "PLAIN"}}}, env=env)
    assert s.kafka.bootstrap == "broker:9093"
    assert dict(s.kafka.client_config) == {"sasl.mechanism": "PLAIN", "sasl.password": "s3cret",
                                           "security.protocol": "SASL_PLAINTEXT"}
    assert "s3cret" not in s.describe() and "***" in s.describe()


@pytest.mark.parametrize("data,key,hint", [
    ({"models": {"churn": {"task": "clasification"}}}, "models.churn.task", "classification, regression"),
    ({"models": {"churn": {"segmnets": ["a"]}}}, "models.churn.segmnets", "did you mean 'segments'"),
    ({"models": {"churn": {"segments": "region"}}}, "models.churn.segments", "list"),
    ({"models": {"churn": {"label_ttl": "three days"}}}, "models.churn.label_ttl", "duration"),
    ({"models": {"churn": {"drift_hold": 0}}}, "models.churn.drift_hold", "more than zero"),
    ({"models": {"churn": {"max_segments": 0}}}, "models.churn.max_segments", "integer"),
    ({"models": {"churn": {"features": {"tenure": "number"}}}}, "models.churn.features.tenure", "numeric or categorical"),
    ({"models": {"churn": {"detectors": ["cusum"]}}}, "models.churn.detectors", "adwin"),
    ({"models": {"churn": {"adwin": {"delta": 2}}}}, "models.churn.adwin.delta", "<= 1"),
    ({"models": {"churn": {"page_hinkley": {"mode": "sideways"}}}}, "models.churn.page_hinkley.mode", "up, down, both"),
    ({"models": {"churn": {"accuracy_objective": 1.5}}}, "models.churn.accuracy_objective", "(0, 1]"),
    ({"models": {"bad name": {}}}, "models.bad name", "A-Z"),
    ({"kafka": {"partitions": "six"}}, "kafka.partitions", "integer"),
    ({"kafka": {"config": {"bootstrap.servers": "x"}}}, "kafka.config.bootstrap.servers", "kafka.bootstrap"),
    ({"kafka": {"topics": {"inferences": ""}}}, "kafka.topics.inferences", "non-empty"),
    ({"limits": {"max_models": -1}}, "limits.max_models", "integer"),
    ({"worker": {"checkpoint_interval": "soon"}}, "worker.checkpoint_interval", "duration"),
    ({"modles": {}}, "modles", "did you mean 'models'"),
    (["not", "a", "mapping"], "<top level>", "mapping"),
])
def test_bad_config_is_refused_naming_the_key(data, key, hint):
    with pytest.raises(ConfigError) as err:
        parse_settings(data, env={})
    msg = str(err.value)
    assert msg.startswith(f"config {key}:"), msg
    assert hint in msg


def test_missing_baseline_file_is_refused(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("models:\n  churn:\n    baseline: nowhere.json\n")
    with pytest.raises(ConfigError, match="models.churn.baseline: file 'nowhere.json' not found"):
        load_settings(path, env={})


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, env={})
