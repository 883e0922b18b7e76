"""A churn model served by FastAPI that publishes every prediction (and later label) to driftline.

Run it from the repository root (needs the `fastapi` extra: pip install -e '.[fastapi]'):

    DRIFTLINE_BOOTSTRAP=127.0.0.1:9092 .venv/bin/uvicorn --factory examples.serving.app:create_app --port 8080 --no-access-log

    POST /predict   {"tenure": 5, "monthly_charges": 80, "support_calls": 3, "plan": "basic", "region": "eu"}
                 -> {"churn": true, "probability": 0.93, "prediction_id": "..."}  (+ X-Prediction-ID header)
    POST /feedback  [{"prediction_id": "...", "churned": false}, ...]   ground truth, when it is known
    GET  /metrics   the SDK's counters (driftline_publish_events_total{outcome=...})

The publishing is the two marked lines; everything else is an ordinary model server.
"""
from __future__ import annotations

import contextlib
import os
from typing import Literal

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from examples.serving import churn
from driftline import Publisher
from driftline.stream.serving import PredictionLog, PredictionLogger

# The example's own topics (and, in driftline.yml, its own consumer group): nothing else
# published to the broker shows in its figures.
TOPIC_PREFIX = "example-churn"


class Customer(BaseModel):
    tenure: int = Field(ge=0, le=600, description="months")
    monthly_charges: float = Field(ge=0)
    support_calls: int = Field(ge=0)
    plan: Literal["basic", "pro"]
    region: Literal["eu", "us", "apac"]


class Outcome(BaseModel):
    prediction_id: str
    churned: bool


def create_app(bootstrap: str | None = None, **publisher_options) -> FastAPI:
    """The app; `bootstrap` defaults to $DRIFTLINE_BOOTSTRAP or 127.0.0.1:9092. publisher_options
    go to `Publisher` (librdkafka settings; topics, default TOPIC_PREFIX.inferences and .labels)."""
    bootstrap = bootstrap or os.environ.get("DRIFTLINE_BOOTSTRAP", "127.0.0.1:9092")
    publisher_options = {"inferences_topic": f"{TOPIC_PREFIX}.inferences", "labels_topic": f"{TOPIC_PREFIX}.labels",
                         **publisher_options}
    registry = CollectorRegistry()
    model = churn.train()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Created here, in the serving process (librdkafka's threads do not survive a fork), and
        # closed on shutdown, which flushes what is still queued.
        app.state.publisher = Publisher(bootstrap=bootstrap, registry=registry, **publisher_options)
        try:
            yield
        finally:
            app.state.publisher.close()

    app = FastAPI(title="churn model", lifespan=lifespan)
    log_churn = PredictionLogger(lambda: app.state.publisher, model=churn.MODEL, model_version=churn.VERSION)

    @app.post("/predict")
    def predict(customer: Customer, log: PredictionLog = Depends(log_churn)):  # driftline: 1/2
        features = customer.model_dump()
        churns, probability = churn.predict(model, features)
        prediction_id = log(features=features, prediction=churns, score=probability)  # driftline: 2/2
        return {"churn": churns, "probability": round(probability, 4), "prediction_id": prediction_id}

    @app.post("/feedback")
    def feedback(outcomes: list[Outcome]):
        for o in outcomes:
            app.state.publisher.log_label(o.prediction_id, o.churned)
        return {"accepted": len(outcomes)}

    @app.get("/metrics")
    def metrics():
        return PlainTextResponse(generate_latest(registry).decode())

    return app
