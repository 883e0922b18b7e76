"""Config keys of classification quality, outcome costs (and their refusals, naming the key)."""
import pytest

from driftline.stream.settings import ConfigError, parse_settings


def model(**block):
    return parse_settings({"models": {"m": block}}, env={}).models["m"]


def test_quality_keys_parse_to_label_values():
    spec = model(classes=[0, 1], positive_class=1, score_of="predicted_class",
                 outcome_costs={"default_error": 10, "pairs": [{"predicted": 0, "actual": 1, "cost": 250},
                                                                {"predicted": 1, "actual": 1, "cost": -5}],
                                "budget": {"amount": 2400, "per": "1d"}})
    q = spec.quality
    assert q.classes == ("0", "1") and q.positive_class == "1" and q.score_of == "predicted_class"
    assert q.costs.of("0", "1") == 250 and q.costs.of("1", "1") == -5
    assert q.costs.of("1", "0") == 10 and q.costs.of("0", "0") == 0  # unlisted: default_error / default_correct
    assert q.costs.budget_per_second == pytest.approx(2400 / 86400)


def test_defaults_bound_classes_and_leave_the_positive_class_unset():
    q = model().quality
    assert q.classes == () and q.max_classes == 20 and q.positive_class is None and q.costs is None


@pytest.mark.parametrize("block, key, hint", [
    ({"classes": [1]}, "models.m.classes", "two or more"),
    ({"classes": [1, 1.0]}, "models.m.classes", "twice"),
    ({"classes": ["a", "b"], "positive_class": "c"}, "models.m.positive_class", "not one of"),
    ({"positive_class": 1, "score_of": "predicted_class"}, "models.m.score_of", "binary"),
    ({"score_of": "probability"}, "models.m.score_of", "positive_class, predicted_class"),
    ({"max_classes": 1}, "models.m.max_classes", "between 2"),
    ({"outcome_costs": {"pairs": [{"predicted": 1, "cost": 3}]}}, "models.m.outcome_costs.pairs[0].actual", "required"),
    ({"outcome_costs": {"pairs": [{"predicted": 1, "actual": 0, "cost": "high"}]}},
     "models.m.outcome_costs.pairs[0].cost", "number"),
    ({"outcome_costs": {"budget": {"amount": -1}}}, "models.m.outcome_costs.budget.amount", "> 0"),
    ({"outcome_costs": {"defualt_error": 3}}, "models.m.outcome_costs.defualt_error", "default_error"),
    ({"task": "regression", "positive_class": 1}, "models.m.positive_class", "classification models only"),
])
def test_bad_quality_config_is_refused_naming_the_key(block, key, hint):
    with pytest.raises(ConfigError) as err:
        model(**block)
    assert f"config {key}:" in str(err.value) and hint in str(err.value), str(err.value)


def test_champion_names_another_configured_classification_model():
    s = parse_settings({"models": {"a": {}, "b": {"champion": "a", "challenger_error_rate": 0.01}}}, env={})
    assert s.models["b"].champion == "a" and s.models["b"].challenger_error_rate == 0.01
    assert s.models["a"].champion is None and s.models["a"].challenger_error_rate == 0.05


@pytest.mark.parametrize("models, key, hint", [
    ({"a": {"champion": "a"}}, "models.a.champion", "its own champion"),
    ({"a": {}, "b": {"champion": "aa"}}, "models.b.champion", "did you mean 'a'"),
    ({"a": {"task": "regression"}, "b": {"champion": "a"}}, "models.b.champion", "regression model"),
    ({"a": {}, "b": {"champion": "a", "challenger_error_rate": 0.7}}, "models.b.challenger_error_rate", "<= 0.5"),
    ({"a": {"task": "regression", "champion": "b"}, "b": {}}, "models.a.champion", "classification models only"),
])
def test_bad_champion_config_is_refused_naming_the_key(models, key, hint):
    with pytest.raises(ConfigError) as err:
        parse_settings({"models": models}, env={})
    assert f"config {key}:" in str(err.value) and hint in str(err.value), str(err.value)
