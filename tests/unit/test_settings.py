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


# ------------------------------------------------------------------ what cannot work is refused at start
@pytest.mark.parametrize("section, key, value, allowed", [
    ("worker", "checkpoint_interval", float("inf"), "from 100ms to 1h"),
    ("worker", "checkpoint_interval", "0.5ms", "from 100ms to 1h"),
    ("worker", "commit_interval", float("inf"), "from 10ms to 1h"),
    ("worker", "session_timeout", "2s", "from 6s to 30m"),
    ("limits", "segment_idle", "1ms", "from 1m to 365d"),
    ("defaults", "label_ttl", float("inf"), "from 1s to 365d"),
    ("defaults", "drift_hold", float("inf"), "from 1s to 365d"),
    ("defaults", "drift_hold", float("nan"), "more than zero"),
])
def test_infinite_and_absurd_durations_are_refused_with_the_allowed_range(section, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        parse_settings({section: {key: value}}, env={})
    assert f"config {section}.{key}:" in str(err.value) and allowed in str(err.value)


def test_transaction_timeout_must_outlast_the_checkpoint_interval():
    with pytest.raises(ConfigError, match="worker.transaction_timeout: must be at least 3x"):
        parse_settings({"worker": {"exactly_once": True, "checkpoint_interval": "10s", "transaction_timeout": "20s"}},
                       env={})
    ws = parse_settings({"worker": {"exactly_once": False, "checkpoint_interval": "10s",
                                    "transaction_timeout": "20s"}}, env={}).worker
    assert ws.exactly_once is False  # without transactions the timeout does not matter


def test_exactly_once_is_a_setting():
    ws = parse_settings({"worker": {"exactly_once": True}}, env={}).worker
    assert ws.exactly_once is True and ws.transaction_timeout >= 3 * ws.checkpoint_interval
    with pytest.raises(ConfigError, match="worker.exactly_once: must be true or false"):
        parse_settings({"worker": {"exactly_once": "yes please"}}, env={})


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("kafka:\n  bootstrap: a:9092\n  group_id: g\n  bootstrap: b:9092\n")
    with pytest.raises(ConfigError, match=r"config bootstrap: given twice \(lines 2 and 4\)"):
        load_settings(path, env={})


def test_an_empty_config_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n"):
        path = tmp_path / "c.yml"
        path.write_text(text)
        with pytest.raises(ConfigError, match="the file is empty"):
            load_settings(path, env={})


def test_librdkafka_names_a_setting_it_refuses():
    from driftline.stream.clients import check_client_config

    s = parse_settings({"kafka": {"config": {"socket.timeout.mss": 100}}}, env={})
    with pytest.raises(ConfigError, match=r"config kafka.config.socket.timeout.mss: librdkafka refuses it"):
        check_client_config(s)
    s = parse_settings({}, env={"DRIFTLINE_KAFKA_COMPRESSION_TYPE": "zip"})
    with pytest.raises(ConfigError, match=r"kafka.config.compression.type: .*DRIFTLINE_KAFKA_COMPRESSION_TYPE"):
        check_client_config(s)
    check_client_config(parse_settings({"kafka": {"config": {"socket.timeout.ms": 30000}}}, env={}))


def test_an_unresolvable_or_taken_listen_address_is_refused():
    import socket

    from driftline.stream.http import check_listen

    with pytest.raises(ValueError, match="does not resolve"):
        check_listen("256.1.1.1:8000")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="cannot listen there"):
            check_listen(f"127.0.0.1:{taken.getsockname()[1]}")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert check_listen(f"127.0.0.1:{port}") == ("127.0.0.1", port)
