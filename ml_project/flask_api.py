"""The Flask app over the one prediction core: `create_flask_app(service)`.

The same routes, statuses and bodies as the FastAPI app (`api.py`): both are thin adapters over
`PredictionEndpoints`; only reading the request and sending the reply differ. Werkzeug's own
errors (404, 405) answer in JSON too, as FastAPI's do.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ml_project.endpoints import API_KEY_HEADER, PredictionEndpoints, Reply, error_reply
from ml_project.predict import PredictionService
from ml_project.prediction_log import PredictionLog

logger = logging.getLogger(__name__)


def create_flask_app(service: PredictionService | None, log: PredictionLog | None = None) -> Flask:
    """An app serving `service` (None: alive but not ready until
    `app.extensions["prediction_endpoints"].service` is set). Requests are logged to `log`, by
    default the prediction log the config names."""
    endpoints = PredictionEndpoints.create(service, log)
    app = Flask(__name__)
    app.extensions["prediction_endpoints"] = endpoints

    @app.get("/health")
    def health() -> Response:
        return _send(endpoints.health())

    @app.get("/ready")
    def ready() -> Response:
        return _send(endpoints.ready(request.headers.get(API_KEY_HEADER)))

    @app.get("/model")
    def model() -> Response:
        return _send(endpoints.model(request.headers.get(API_KEY_HEADER)))

    @app.post("/predict")
    def predict() -> Response:
        body = _read_body(endpoints.max_body_bytes)
        return _send(endpoints.predict(body, request.headers.get(API_KEY_HEADER)))

    @app.post("/predict/batch")
    def predict_batch() -> Response:
        body = _read_body(endpoints.max_body_bytes)
        return _send(endpoints.predict_batch(body, request.headers.get(API_KEY_HEADER)))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _send(error_reply(error.code or 500, error.name))

    return app


def _send(reply: Reply) -> Response:
    return Response(reply.body, status=reply.status, mimetype=reply.media_type)


def _read_body(limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes (never buffered past).

    Werkzeug ends a chunked body at the limit without an error, so read one byte more to tell.
    """
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return None
    return None if len(body) > limit else body
