"""The config contract: good configs parse to frozen values, bad ones are refused naming the key."""
import pytest

from driftline.stream.settings import ConfigError, load_settings, parse_settings

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
    ({"models": {"churn": {"false_alarm_budget": False, "adwin": {"delta": 2}}}}, "models.churn.adwin.delta", "<= 1"),
    ({"models": {"churn": {"false_alarm_budget": False, "page_hinkley": {"mode": "sideways"}}}},
     "models.churn.page_hinkley.mode", "up, down, both"),
    ({"models": {"churn": {"page_hinkley": {"threshold": 9}}}}, "models.churn.page_hinkley", "false_alarm_budget: off"),
    ({"models": {"churn": {"false_alarm_budget": {"events": 5}}}}, "models.churn.false_alarm_budget.events",
     "known keys: events_between_false_alarms, warmup"),
    ({"models": {"churn": {"false_alarm_budget": {"events_between_false_alarms": 0}}}},
     "models.churn.false_alarm_budget.events_between_false_alarms", ">= 100"),
    ({"models": {"churn": {"accuracy_objective": 1.5}}}, "models.churn.accuracy_objective", "(0, 1]"),
    ({"models": {"bad name": {}}}, "models.bad name", "A-Z"),
    ({"kafka": {"partitions": "six"}}, "kafka.partitions", "integer"),
    ({"kafka": {"config": {"bootstrap.servers": "x"}}}, "kafka.config.bootstrap.servers", "kafka.bootstrap"),
    ({"kafka": {"topics": {"inferences": ""}}}, "kafka.topics.inferences", "non-empty"),
    ({"limits": {"max_models": -1}}, "limits.max_models", "integer"),
    ({"worker": {"checkpoint_interval": "soon"}}, "worker.checkpoint_interval", "duration"),
    ({"modles": {}}, "modles", "did you mean 'models'"),
    ({"models": {"churn": {"baseline_checks": {"psi": 0}}}}, "models.churn.baseline_checks.psi", "> 0.0"),
    ({"models": {"churn": {"baseline_checks": {"js_distance": 1.5}}}}, "models.churn.baseline_checks.js_distance", "<= 1"),
    ({"models": {"churn": {"baseline_checks": {"ks_statistic": "big"}}}}, "models.churn.baseline_checks.ks_statistic",
     "number"),
    ({"models": {"churn": {"baseline_checks": {"window": 5}}}}, "models.churn.baseline_checks.window", "between 10"),
    ({"models": {"churn": {"baseline_checks": {"window": 100, "min_values": 101}}}},
     "models.churn.baseline_checks.min_values", "between 1 and 100"),
    ({"models": {"churn": {"baseline_checks": {"environment": "prod env"}}}},
     "models.churn.baseline_checks.environment", "A-Z"),
    ({"models": {"churn": {"baseline_checks": {"range_tolerance": -1}}}},
     "models.churn.baseline_checks.range_tolerance", ">= 0"),
    ({"models": {"churn": {"baseline_checks": {"psy": 0.2}}}}, "models.churn.baseline_checks.psy", "did you mean 'psi'"),
    ({"models": {"churn": {"baseline_check": {}}}}, "models.churn.baseline_check", "did you mean 'baseline_checks'"),
    ({"defaults": {"baseline": "x.json"}}, "defaults.baseline", "models.<name>.baseline"),
    ({"kafka": {"topics": {"baselines": ""}}}, "kafka.topics.baselines", "non-empty"),
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


def test_baseline_checks_default_and_override():
    s = parse_settings({"defaults": {"baseline_checks": {"environment": "validation", "psi": 0.2}},
                        "models": {"churn": {"baseline_checks": {"window": 500, "ks_statistic": 0.15}}}}, env={})
    checks = s.models["churn"].baseline_checks
    assert (checks.environment, checks.psi, checks.window, checks.ks_statistic) == ("validation", 0.2, 500, 0.15)
    assert checks.min_values == 500 and checks.js_distance == 0.2 and checks.model_version is None
    assert s.spec_for("other").baseline_checks.environment == "validation"
    assert s.kafka.topics.baselines == "driftline.baselines"
    small = parse_settings({"models": {"m": {"baseline_checks": {"window": 50}}}}, env={}).models["m"].baseline_checks
    assert small.min_values == 50  # never more than the window


def test_baseline_file_is_found_relative_to_the_config(tmp_path):
    from driftline.detectors.baseline import ProfileBuilder
    from driftline.detectors.spec import ModelSpec

    b = ProfileBuilder(ModelSpec(name="churn", features={"tenure": "numeric"}))
    for i in range(10):
        b.add({"tenure": float(i)}, 1)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "churn.json").write_bytes(b.build("v1", "training", 0.0).to_json())
    path = tmp_path / "c.yml"
    path.write_text("models:\n  churn:\n    features: {tenure: numeric}\n    baseline: profiles/churn.json\n")
    s = load_settings(path, env={})
    assert s.models["churn"].baseline == str(tmp_path / "profiles" / "churn.json")
    assert s.baselines["churn"].model_version == "v1"


def test_false_alarm_budget_is_the_default_and_can_be_turned_off():
    s = parse_settings({"models": {"a": {}, "b": {"false_alarm_budget": {"events_between_false_alarms": 1e9,
                                                                         "warmup": 200}},
                                   "c": {"false_alarm_budget": False, "page_hinkley": {"threshold": 9}}}}, env={})
    assert s.models["a"].false_alarm_budget == 1e7 and s.models["a"].warmup == 500
    assert s.models["b"].false_alarm_budget == 1e9 and s.models["b"].warmup == 200
    assert s.models["c"].false_alarm_budget is None and s.models["c"].page_hinkley.threshold == 9
    assert s.spec_for("unconfigured").false_alarm_budget == 1e7
