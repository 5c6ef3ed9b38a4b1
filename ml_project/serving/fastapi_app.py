"""The FastAPI app over the one prediction core: `create_app(service)`.

Routes take the raw body rather than a Pydantic parameter, on purpose: the request is checked
by the same compiled `InstanceValidator` as in Flask, the stream and every cloud handler, so
an error names the field and its rule in the same words everywhere (FastAPI's own validation
would answer in its own). The Pydantic request model from `build_request_model` (the same field
rules) still documents the body in /docs, with a working example, through `openapi_extra`.
/docs and /redoc load Swagger UI and ReDoc from assets packaged with fastapi-offline, served by
the app itself: they work offline and behind a firewall, where a CDN is out of reach.
`GET /ping` and `POST /invocations` are SageMaker's contract (`sagemaker.py`). When the server
stops (lifespan shutdown) the app's prediction log stores what it still holds.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ml_project.cli import escape_for_log
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.bodies import BATCH_FIELD
from ml_project.serving.endpoints import (
    API_KEY_HEADER,
    BatchPredictionResponse,
    ErrorResponse,
    HealthResponse,
    PredictionEndpoints,
    PredictionResponse,
    ReadyResponse,
    Reply,
    error_reply,
    internal_error_reply,
)
from ml_project.serving.request_model import build_request_model
from ml_project.serving.sagemaker import JSON_TYPE, invocations, ping
from ml_project.serving.transport import client_left, refused_coding

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The body is not JSON",
        401: f"Missing or wrong {API_KEY_HEADER} header",
        413: "The body is too large",
        415: "The body is in a content coding (Content-Encoding: gzip, ...), which no route "
             "decodes; or, for /invocations, its content type is neither JSON nor CSV",
        422: "The input breaks the schema (a batch too: at most `maxItems` instances); `errors` "
             "names each field and its rule",
        503: "No model loaded yet",
    }.items()
}
POST_ERRORS: dict[int | str, dict[str, Any]] = {
    status: ERRORS[status] for status in (400, 401, 413, 415, 422, 503)}
# What the GET routes can answer besides 200: they read no body.
GET_ERRORS: dict[int | str, dict[str, Any]] = {status: ERRORS[status] for status in (401, 503)}
INVOCATIONS_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "As POST /predict answers one instance, and POST /predict/batch a batch "
                         "or CSV rows",
          "content": {"application/json": {"schema": {"anyOf": [
              {"$ref": "#/components/schemas/PredictionResponse"},
              {"$ref": "#/components/schemas/BatchPredictionResponse"}]}}}},
}
MODEL_DESCRIPTION: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Name, version, task, features, classes, metric and holdout metrics",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
CARD_DESCRIPTION: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The model card: purpose, training data, holdout metrics with 95% "
                       "intervals, slices, calibration, importance, limitations, provenance",
        "content": {"application/json": {"schema": {"type": "object"}},
                    "text/markdown": {"schema": {"type": "string"}}},
    },
    404: {"model": ErrorResponse, "description": "The served model has no model card"},
}


def create_app(service: PredictionService | None, log: PredictionLog | None = None) -> FastAPI:
    """An app serving `service` (None: alive but not ready until `app.state.endpoints.service`
    is set). Requests are logged to `log`, by default the prediction log the config names."""
    endpoints = PredictionEndpoints.create(service, log)
    name = service.config.project_name if service else "ml_project"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if endpoints.log is not None:  # the server stopped: store what the log still holds
            await run_in_threadpool(endpoints.log.close)

    app = FastAPIOffline(
        title=f"{name} prediction service",
        description="Predictions from the champion model. Errors name the field and the rule.",
        redirect_slashes=False,  # `/predict/` is not found, as in Flask, rather than a 307
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        lifespan=lifespan,
    )
    app.state.endpoints = endpoints
    # The document declares the key only when one is configured: it describes the running
    # service. The key itself is read from the request (`_api_key`), declared or not.
    keyed = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] \
        if endpoints.requires_key else []
    errors = POST_ERRORS if endpoints.requires_key else _without(POST_ERRORS, 401)
    invocation_errors = ERRORS if endpoints.requires_key else _without(ERRORS, 401)
    get_errors = GET_ERRORS if endpoints.requires_key else _without(GET_ERRORS, 401)

    @app.get("/health", responses={200: {"model": HealthResponse}})
    async def health() -> Response:
        """Alive: the process answers (open even when an API key is set)."""
        return _send(endpoints.health())

    @app.get("/ready", responses={200: {"model": ReadyResponse}, **get_errors},
             dependencies=keyed)
    async def ready(request: Request) -> Response:
        """Ready: the model is loaded and requests will be predicted."""
        return _send(endpoints.ready(_api_key(request)))

    @app.get("/model", responses={**MODEL_DESCRIPTION, **get_errors}, dependencies=keyed)
    async def model(request: Request) -> Response:
        """The served model: name, version, task, features and holdout metrics."""
        return _send(endpoints.model(_api_key(request)))

    @app.get("/model/card", responses={**CARD_DESCRIPTION, **get_errors}, dependencies=keyed)
    async def model_card(request: Request) -> Response:
        """The served model's card: JSON, or Markdown with `Accept: text/markdown`."""
        return _send(endpoints.model_card(_api_key(request), request.headers.get("accept")))

    @app.post(
        "/predict",
        responses={200: {"model": PredictionResponse}, **errors},
        openapi_extra=_request_body(service, batch=False),
        dependencies=keyed,
    )
    async def predict(request: Request) -> Response:
        """One production instance as a JSON object; a JSON null is a missing value."""
        if refusal := refused_coding(request.headers.get("content-encoding")):
            return _send(endpoints.refuse(refusal))
        body = await _read_body(request, endpoints.max_body_bytes)
        return _send(await run_in_threadpool(endpoints.predict, body, _api_key(request)))

    @app.post(
        "/predict/batch",
        responses={200: {"model": BatchPredictionResponse}, **errors},
        openapi_extra=_request_body(service, batch=True),
        dependencies=keyed,
    )
    async def predict_batch(request: Request) -> Response:
        """Several instances, all or none (at most `prediction.max_batch_size`)."""
        if refusal := refused_coding(request.headers.get("content-encoding")):
            return _send(endpoints.refuse(refusal))
        body = await _read_body(request, endpoints.max_body_bytes)
        return _send(await run_in_threadpool(endpoints.predict_batch, body, _api_key(request)))

    @app.get("/ping", responses={200: {"model": ReadyResponse}, 503: ERRORS[503]})
    async def sagemaker_ping() -> Response:
        """SageMaker's health check: ready once the model is loaded (no API key)."""
        return _send(ping(endpoints))

    @app.post(
        "/invocations",
        responses={**INVOCATIONS_ANSWER, **invocation_errors},
        openapi_extra=_invocations_body(service),
        dependencies=keyed,
    )
    async def sagemaker_invocations(request: Request) -> Response:
        """SageMaker's inference route: one instance or a batch as JSON, as /predict and
        /predict/batch take them; or, as `text/csv`, one instance per row in the features'
        order (an optional first row of column names; an empty cell is a missing value),
        answered as a batch."""
        if refusal := refused_coding(request.headers.get("content-encoding")):
            return _send(endpoints.refuse(refusal))
        body = await _read_body(request, endpoints.max_body_bytes)
        return _send(await run_in_threadpool(
            invocations, endpoints, body, request.headers.get("content-type"),
            _api_key(request)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        """404, 405 (HEAD and OPTIONS included) in the error body of every other answer."""
        allow = (error.headers or {}).get("Allow")
        return _send(replace(error_reply(error.status_code, str(error.detail)), allow=allow))

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(request: Request, error: ClientDisconnect) -> Response:
        """The client left mid-body (`request.stream()` raises): one INFO line, no traceback."""
        return _send(client_left(request.method, request.url.path))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> Response:
        """Whatever no route caught: the same JSON 500 as Flask, never a text page."""
        logger.error("Unexpected %s on %s %s", type(error).__name__, request.method,
                     escape_for_log(request.url.path))
        return _send(internal_error_reply())

    return app


def _without(responses: dict[int | str, dict[str, Any]], status: int
             ) -> dict[int | str, dict[str, Any]]:
    return {code: response for code, response in responses.items() if code != status}


def _api_key(request: Request) -> str | None:
    """The X-API-Key header; repeated, its values joined by a comma (as WSGI servers do)."""
    values = request.headers.getlist(API_KEY_HEADER)
    return ",".join(values) if values else None


def _send(reply: Reply) -> Response:
    headers = {"Allow": reply.allow} if reply.allow is not None else None
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type,
                    headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes (never buffered past)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _schemas(service: PredictionService) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The JSON schemas of one instance and of a batch, from the Pydantic model of the rules,
    and an instance that passes them."""
    instance = build_request_model(service.config).model_json_schema()
    example = instance.pop("examples", [{}])[0]
    batch = {
        "type": "object",
        "properties": {BATCH_FIELD: {"type": "array", "items": instance, "minItems": 1,
                                     "maxItems": service.config.prediction.max_batch_size}},
        "required": [BATCH_FIELD],
        "additionalProperties": False,
    }
    return instance, batch, example


def _request_body(service: PredictionService | None, *, batch: bool) -> dict[str, Any]:
    """The OpenAPI request body of /predict or /predict/batch, with its example."""
    if service is None:
        return {}
    instance, batch_schema, example = _schemas(service)
    schema, example = (batch_schema, {BATCH_FIELD: [example]}) if batch else (instance, example)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


def _invocations_body(service: PredictionService | None) -> dict[str, Any]:
    """The OpenAPI request body of /invocations: an instance or a batch as JSON. CSV rows are
    taken too (the route's description says how), but no schema can say which texts are rows of
    this model, so the document declares JSON only, and every body it declares is answered."""
    if service is None:
        return {}
    instance, batch, example = _schemas(service)
    return {
        "requestBody": {
            "required": True,
            "content": {JSON_TYPE: {"schema": {"anyOf": [instance, batch]}, "example": example}},
        }
    }
