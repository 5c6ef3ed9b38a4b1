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
from werkzeug.exceptions import (
    ClientDisconnected,
    HTTPException,
    NotFound,
    RequestEntityTooLarge,
    RequestTimeout,
)

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
from ml_project.serving.transport import client_left, refused_coding

logger = logging.getLogger(__name__)


def create_flask_app(service: PredictionService | None, log: PredictionLog | None = None) -> Flask:
    """An app serving `service` (None: alive but not ready until
    `app.extensions["prediction_endpoints"].service` is set). Requests are logged to `log`, by
    default the prediction log the config names."""
    endpoints = PredictionEndpoints.create(service, log)
    app = Flask(__name__)
    # `/predict//batch` is not found, as in FastAPI, rather than a redirect to /predict/batch.
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

    @app.get("/model/card")
    def model_card() -> Response:
        return _send(endpoints.model_card(request.headers.get(API_KEY_HEADER),
                                          request.headers.get("Accept")))

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
    def refuse_what_fastapi_refuses() -> Response | None:
        """What FastAPI refuses before a route runs, refused here too: a path with leading
        slashes doubled (werkzeug strips them to match, whatever `merge_slashes`: `//predict`
        would be served), HEAD and OPTIONS (405 on every route; Flask would answer both), and a
        POST body in a content coding (415)."""
        rule = request.url_rule
        if request.environ.get("PATH_INFO", "").startswith("//"):
            raise NotFound()
        if request.method in ("HEAD", "OPTIONS") and rule is not None:
            return _send(replace(error_reply(405, "Method Not Allowed"),
                                 allow=_allowed(rule.methods or set())))
        if request.method == "POST" and rule is not None and (
                refusal := refused_coding(request.headers.get("Content-Encoding"))):
            return _send(endpoints.refuse(refusal))
        return None

    @app.errorhandler(ClientDisconnected)
    def client_disconnected(error: ClientDisconnected) -> Response:
        """The client left mid-body (werkzeug's stream raises): one INFO line, no traceback."""
        return _send(client_left(request.method, request.path))

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
    A server that ends the stream itself (gunicorn: `wsgi.input_terminated`) ends it early, and
    quietly, when the client leaves: a body shorter than its Content-Length is one it left.
    """
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return None
    except OSError as err:  # the server's read timeout: the client stalled mid-body
        raise RequestTimeout("the body did not arrive in time") from err
    if len(body) < (request.content_length or 0):
        raise ClientDisconnected()
    return None if len(body) > limit else body
