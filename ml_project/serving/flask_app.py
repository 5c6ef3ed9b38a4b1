"""The Flask app over the one prediction core: `create_flask_app(service)`.

The same routes, statuses and bodies as the FastAPI app (`fastapi_app.py`): both are thin
adapters over `PredictionEndpoints`; only reading the request and sending the reply differ.
Werkzeug's own errors (404, 405) and any fault no route caught (500) answer in the same JSON as
FastAPI's; HEAD and OPTIONS are refused (405) as FastAPI refuses them. It is a WSGI app: the
launcher serves it on uvicorn through `asgi.wsgi_as_asgi`; any WSGI host (App Engine's
gunicorn, the Cloud Function's functions-framework) serves it as it is.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Iterable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from ml_project.cli import escape_for_log
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.endpoints import (
    API_KEY_HEADER,
    PredictionEndpoints,
    Reply,
    error_reply,
    internal_error_reply,
)
from ml_project.serving.sagemaker import invocations, ping

logger = logging.getLogger(__name__)


def create_flask_app(service: PredictionService | None, log: PredictionLog | None = None) -> Flask:
    """An app serving `service` (None: alive but not ready until
    `app.extensions["prediction_endpoints"].service` is set). Requests are logged to `log`, by
    default the prediction log the config names."""
    endpoints = PredictionEndpoints.create(service, log)
    app = Flask(__name__)
    # `//predict` is not found, as in FastAPI, rather than a redirect to /predict.
    app.url_map.merge_slashes = False
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

    @app.get("/ping")
    def sagemaker_ping() -> Response:
        return _send(ping(endpoints))

    @app.post("/invocations")
    def sagemaker_invocations() -> Response:
        body = _read_body(endpoints.max_body_bytes)
        return _send(invocations(endpoints, body, request.headers.get("Content-Type"),
                                 request.headers.get(API_KEY_HEADER)))

    @app.before_request
    def refuse_head_and_options() -> Response | None:
        """HEAD and OPTIONS get 405 on every route, as in FastAPI (Flask would answer both)."""
        rule = request.url_rule
        if request.method in ("HEAD", "OPTIONS") and rule is not None:
            return _send(replace(error_reply(405, "Method Not Allowed"),
                                 allow=_allowed(rule.methods or set())))
        return None

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if (error.code or 500) >= 500:
            return server_error(error)
        allow = getattr(error, "valid_methods", None)
        return _send(replace(error_reply(error.code or 500, error.name),
                             allow=None if allow is None else _allowed(allow)))

    @app.errorhandler(Exception)
    def server_error(error: Exception) -> Response:
        """Whatever no route caught: the same JSON 500 as FastAPI."""
        logger.error("Unexpected %s on %s %s", type(error).__name__, request.method,
                     escape_for_log(request.path), exc_info=error)
        return _send(internal_error_reply())

    return app


def _send(reply: Reply) -> Response:
    headers = {"Allow": reply.allow} if reply.allow is not None else None
    return Response(reply.body, status=reply.status, mimetype=reply.media_type, headers=headers)


def _allowed(methods: Iterable[str]) -> str:
    """The Allow header FastAPI sends: the route's own methods (Flask adds HEAD and OPTIONS)."""
    return ", ".join(sorted(set(methods) - {"HEAD", "OPTIONS"}))


def _read_body(limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes (never buffered past).

    Werkzeug ends a chunked body at the limit without an error, so read one byte more to tell.
    """
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return None
    except OSError as err:  # the server's read timeout: the client stalled mid-body
        raise RequestTimeout("the body did not arrive in time") from err
    return None if len(body) > limit else body
