"""`driftline replay` compares a challenger with its champion per segment on shadow traffic
(River's bundled Phishing data, two online models scoring every request, labels by request_id);
the exported delta, interval and decision equal an independent computation."""
from __future__ import annotations

import numpy as np
import orjson
import pytest
from river import datasets, linear_model, naive_bayes, preprocessing

from driftline.stream.replay import replay
from driftline.stream.settings import load_settings
from tests.integration.harness import parse, total
from tests.unit.test_challenger import reference_cs

CONFIG = """\
models:
  champ:
    segments: [https]
    accuracy_window: 300          # the label-free estimate calibrates on the first 300 labels
  chall:
    segments: [https]
    champion: champ
    challenger_error_rate: 0.1
  loner: {}
"""


def shadow_events():
    """Inferences of two models per request (and of a third model in no comparison), labels by
    request_id; returns them with (segment, champion correct, challenger correct) per request."""
    champ = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    chall = naive_bayes.BernoulliNB()
    inferences, labels, rows = [], [], []
    t0 = 1_767_225_600.0
    for i, (x, y) in enumerate(datasets.Phishing()):
        seg = {0.0: "no", 0.5: "mixed", 1.0: "yes"}[float(x["https"])]
        a, b = champ.predict_one(x), chall.predict_one(x)
        score = champ.predict_proba_one(x).get(True, 0.5)
        a = False if a is None else a
        b = False if b is None else b
        champ.learn_one(x, y)
        chall.learn_one(x, y)
        rid = f"r{i}"
        for model, pid, p in (("champ", f"a{i}", a), ("chall", f"b{i}", b), ("loner", f"c{i}", a)):
            inferences.append({"prediction_id": pid, "request_id": rid, "model": model, "timestamp": t0 + i,
                               "features": {}, "prediction": p, "segment": {"https": seg}})
            if model == "champ":
                inferences[-1]["score"] = score if a else 1 - score  # the confidence in its prediction
        labels.append({"request_id": rid, "label": y, "timestamp": t0 + i + 30})
        rows.append((seg, a == y, b == y))
    # A label naming both ids, which disagree: refused (request_mismatch), the prediction still graded.
    labels.append({"prediction_id": "a5", "request_id": "r6", "label": True, "timestamp": t0 + 5.5})
    return inferences, labels, rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow")
    inferences, labels, rows = shadow_events()
    (tmp / "i.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in inferences))
    (tmp / "l.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in labels))
    (tmp / "c.yml").write_text(CONFIG)
    result = replay(load_settings(tmp / "c.yml"), tmp / "i.jsonl", tmp / "l.jsonl")
    return rows, result, parse(result.exposition().decode())


def test_delta_interval_and_decision_per_segment_equal_an_independent_computation(run):
    rows, _, s = run
    segments = {"__all__": rows, **{f"https={g}": [r for r in rows if r[0] == g] for g in {r[0] for r in rows}}}
    decided = 0
    for segment, seg_rows in segments.items():
        d = np.array([int(b) - int(a) for _, a, b in seg_rows])
        lo, hi = reference_cs(d, 0.1)
        lv = dict(model="chall", champion="champ", segment=segment)
        assert total(s, "driftline_challenger_pairs_total", **lv) == len(d)
        assert total(s, "driftline_challenger_accuracy_delta", **lv) == pytest.approx(d.mean(), abs=1e-12)
        assert total(s, "driftline_challenger_accuracy_delta_lower", **lv) == pytest.approx(lo[-1], abs=1e-9)
        assert total(s, "driftline_challenger_accuracy_delta_upper", **lv) == pytest.approx(hi[-1], abs=1e-9)
        expected = 1 if lo[-1] > 0 else (-1 if hi[-1] < 0 else 0)
        assert total(s, "driftline_challenger_decision", **lv) == expected
        decided += expected != 0
    # On this data the online logistic regression beats Bernoulli naive Bayes: decided somewhere.
    assert decided >= 1


def test_request_labels_grade_every_model_and_bad_input_has_its_fate(run):
    rows, result, s = run
    n = len(rows)
    for model in ("champ", "chall", "loner"):
        assert total(s, "driftline_labeled_total", model=model, segment="__all__") == n
    # a request_id on a model in no comparison: graded, counted, compared with nothing
    assert total(s, "driftline_shadow_outcomes_total", model="loner", outcome="uncompared") == n
    assert not [k for k in s if k[0].startswith("driftline_challenger") and dict(k[1]).get("model") == "loner"]
    # the label whose ids disagree is a dead letter
    assert result.invalid[("label", "request_mismatch")] == 1
    assert total(s, "driftline_events_total", kind="label", outcome="invalid") == 1
