"""FastAPI integration of the publishing SDK: one dependency, one call per prediction.

Optional: needs the `fastapi` extra (``pip install 'driftline[fastapi]'``); stream.publish works
without it (Flask, batch scorers, gateways call `Publisher.log_prediction` directly).

    log_churn = PredictionLogger(lambda: app.state.publisher, model="churn", model_version="3")

    @app.post("/predict")
    def predict(customer: Customer, log: PredictionLog = Depends(log_churn)):
        y, p = score(customer)
        return {"churn": y, "prediction_id": log(features=customer.model_dump(), prediction=y, score=p)}

`log(...)` returns the prediction id and also sets it as the `X-Prediction-ID` response header
(unless the endpoint returns a `Response` object itself, which FastAPI sends as it is). A client
that sends `X-Prediction-ID` chooses the id (e.g. its own order id) so that it can send the
label later without keeping ours. Like the SDK, logging never blocks and never raises.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from fastapi import Request, Response

from driftline.stream.publish import Publisher

__all__ = ["HEADER", "PredictionLog", "PredictionLogger"]

HEADER = "X-Prediction-ID"


class PredictionLog:
    """One request's handle: call it once with the prediction; returns the prediction id."""

    __slots__ = ("_publisher", "_model", "_version", "_response", "prediction_id")

    def __init__(self, publisher: Publisher, model: str, model_version: str | None, response: Response,
                 prediction_id: str | None):
        self._publisher, self._model, self._version, self._response = publisher, model, model_version, response
        self.prediction_id = prediction_id  # the client's id (from the header) until logged

    def __call__(self, *, features: Mapping[str, Any], prediction: Any, score: float | None = None,
                 segment: Mapping[str, str] | None = None) -> str:
        pid = self._publisher.log_prediction(model=self._model, features=features, prediction=prediction, score=score,
                                             segment=segment, prediction_id=self.prediction_id,
                                             model_version=self._version)
        self.prediction_id = pid
        try:
            self._response.headers[HEADER] = pid
        except Exception:  # e.g. characters a header cannot carry: the body still has the id
            pass
        return pid


class PredictionLogger:
    """The dependency: ``Depends(PredictionLogger(publisher, model="churn"))``.

    publisher: a `Publisher`, or a function that returns one (e.g. ``lambda: app.state.publisher``
    when the publisher is created in the app's lifespan, in the serving process).
    id_header: the request header that may carry the caller's prediction id; None to ignore it.
    """

    def __init__(self, publisher: Publisher | Callable[[], Publisher], *, model: str,
                 model_version: str | None = None, id_header: str | None = HEADER):
        self._publisher, self._model, self._version, self._header = publisher, model, model_version, id_header

    def __call__(self, request: Request, response: Response) -> PredictionLog:
        pub = self._publisher if isinstance(self._publisher, Publisher) else self._publisher()
        pid = request.headers.get(self._header) if self._header else None
        return PredictionLog(pub, self._model, self._version, response, pid or None)
