"""The example's world: synthetic customers, their true churn behaviour, and a River model.

Customers have a tenure (months), monthly charges, support calls, a plan and a region. Whether
one churns follows a fixed logistic rule, so the model can learn it well, until `drifted=True`:
then in region `apac` a competitor's offer makes long-standing, low-charge customers leave too
(the rule changes: concept drift), and charges there rise by 25 (the inputs move: data drift).
The other regions are untouched, so driftline should flag `region=apac` and nothing else.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

from river import compose, linear_model, optim, preprocessing

MODEL = "churn"
VERSION = "2026.01"
REGIONS = ("eu", "us", "apac")
DRIFT_REGION = "apac"
NUMERIC = ("tenure", "monthly_charges", "support_calls")


def customer(rng: random.Random, drifted: bool = False) -> tuple[dict[str, Any], bool]:
    """One customer's features and whether they churn."""
    region = rng.choice(REGIONS)
    plan = "basic" if rng.random() < 0.6 else "pro"
    tenure = rng.randint(1, 72)
    charges = round(rng.gauss(65 if plan == "basic" else 95, 12), 2)
    calls = min(int(rng.expovariate(0.6)), 12)
    shifted = drifted and region == DRIFT_REGION
    if shifted:
        charges = round(charges + 25, 2)
    logit = 2.0 - 0.09 * tenure + 0.04 * (charges - 75) + 0.7 * calls + (0.8 if plan == "basic" else -0.8)
    if shifted:  # the competitor targets exactly the customers the model trusts most
        logit += 0.1 * (tenure - 24)
    churned = rng.random() < 1 / (1 + math.exp(-2 * logit))
    features = {"tenure": tenure, "monthly_charges": charges, "support_calls": calls, "plan": plan, "region": region}
    return features, churned


def customers(seed: int, n: int, drift_after: int | None = None) -> Iterator[tuple[dict[str, Any], bool]]:
    rng = random.Random(seed)
    for i in range(n):
        yield customer(rng, drifted=drift_after is not None and i >= drift_after)


def train(rows: int = 5_000, seed: int = 7):
    """A River pipeline trained once on pre-drift data, then frozen as a deployed model is."""
    model = compose.TransformerUnion(
        compose.Select(*NUMERIC) | preprocessing.StandardScaler(),
        compose.Select("plan") | preprocessing.OneHotEncoder(),
    ) | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
    for _ in range(3):  # a few passes: SGD on 5k rows has not converged after one
        for x, y in customers(seed, rows):
            model.learn_one(x, y)
    return model


def predict(model, features: dict[str, Any]) -> tuple[bool, float]:
    """(churns?, probability of the predicted class)."""
    p = model.predict_proba_one(features).get(True, 0.0)
    return p >= 0.5, max(p, 1 - p)
