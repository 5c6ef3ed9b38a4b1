"""AWS Lambda events to the FastAPI app, through Mangum: `lambda_handler(app)`.

Mangum reads every event API Gateway and Lambda can send an HTTP function (REST API payload 1.0,
HTTP API payload 2.0, Function URLs, Application Load Balancers) as a request to the app, and
its answer back as the response the event's source expects: the local API's status and bytes.
A named HTTP API stage prefixes the path: set ML_PROJECT_API_BASE_PATH to it (`/prod`), which
Mangum removes (its `api_gateway_base_path`).

Two cases stay ours, a few lines each over the same endpoints core:
- a direct invocation (`aws lambda invoke`, another function, Step Functions): the body itself,
  `{"instance": {...}}` for POST /predict or `{"instances": [...]}` for POST /predict/batch,
  and optionally `"headers": {"X-API-Key": "..."}`; answered with a proxy response;
- an event Mangum cannot read (a shape no source sends, or a field of the wrong type): 400
  naming the problem, never an exception out of the handler. The fields Mangum would misread
  rather than fail on, or fail on without naming them, are checked first (`misread_field`):
  `isBase64Encoded` must be a bool (the text "false" is true to Python, and a body that happens
  to be base64 would be decoded), header values text.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping

from fastapi import FastAPI
from mangum import Mangum

from ml_project.serving.bodies import BATCH_FIELD
from ml_project.serving.endpoints import (
    API_KEY_HEADER,
    PredictionEndpoints,
    Reply,
    error_reply,
)
from ml_project.wording import shown

logger = logging.getLogger(__name__)

BASE_PATH_ENV = "ML_PROJECT_API_BASE_PATH"
DIRECT_INSTANCE = "instance"
DIRECT_HEADERS = "headers"
LambdaHandler = Callable[[Any, Any], dict[str, Any]]


def lambda_handler(app: FastAPI) -> LambdaHandler:
    """The Lambda handler of `app` (an app of `fastapi_app.create_app`)."""
    adapter = Mangum(app, lifespan="off", api_gateway_base_path=os.environ.get(BASE_PATH_ENV, "/"))
    endpoints: PredictionEndpoints = app.state.endpoints

    def handler(event: Any, context: Any) -> dict[str, Any]:
        if is_direct_invocation(event):
            return proxy_response(direct_invocation(endpoints, event))
        if isinstance(event, Mapping) and (problem := misread_field(event)):
            return unreadable(problem)
        try:
            return adapter(event, context)
        except Exception as err:  # the app's own faults are its 500s: this is the event's
            return unreadable(f"{type(err).__name__}: {err}")

    return handler


def unreadable(problem: str) -> dict[str, Any]:
    """The 400 of an event this function cannot read, `problem` named."""
    logger.warning("Unreadable Lambda event (%s)", problem)
    return proxy_response(error_reply(
        400, f"the event is not an HTTP request this function reads ({problem}); send an API "
             f'Gateway, Function URL or load balancer event, or {{"{DIRECT_INSTANCE}": {{...}}}}'))


def misread_field(event: Mapping[str, Any]) -> str | None:
    """What in an HTTP event is of a type no source sends, where Mangum would misread it or
    fail without naming it; None if nothing."""
    flag = event.get("isBase64Encoded")
    if flag is not None and not isinstance(flag, bool):
        return f'"isBase64Encoded" must be true or false, got {flag!r}'
    for field in ("headers", "multiValueHeaders"):
        headers = event.get(field) or {}
        if not isinstance(headers, Mapping):
            return f'"{field}" must be a JSON object of header names and values'
        many = field == "multiValueHeaders"  # each value a list of texts
        for name, value in headers.items():
            texts = value if many and isinstance(value, list) else [value]
            if (many and not isinstance(value, list)) or not all(
                    isinstance(text, str) for text in texts):
                return (f'"{field}": the value of {shown(str(name))} must be '
                        f'{"a list of texts" if many else "text"}, got {shown(value)}')
    return None


def is_direct_invocation(event: Any) -> bool:
    """Not an HTTP event: no request context, and the body's own keys."""
    return isinstance(event, Mapping) and "requestContext" not in event and (
        DIRECT_INSTANCE in event or BATCH_FIELD in event)


def direct_invocation(endpoints: PredictionEndpoints, event: Mapping[str, Any]) -> Reply:
    """`{"instance": {...}}` as POST /predict, `{"instances": [...]}` as POST /predict/batch."""
    headers = event.get(DIRECT_HEADERS) or {}
    if not isinstance(headers, Mapping):
        return error_reply(400, f'"{DIRECT_HEADERS}" must be a JSON object of header names '
                                "and values")
    keys = [value for name, value in headers.items() if str(name).lower() == API_KEY_HEADER.lower()]
    api_key = ",".join(str(value) for value in keys) if keys else None
    rest = {key: value for key, value in event.items() if key != DIRECT_HEADERS}
    if DIRECT_INSTANCE in rest and len(rest) == 1:
        return endpoints.predict(json.dumps(rest[DIRECT_INSTANCE]).encode(), api_key)
    return endpoints.predict_batch(json.dumps(rest).encode(), api_key)  # other keys: 422


def proxy_response(reply: Reply) -> dict[str, Any]:
    """A reply as the proxy response every HTTP source of Lambda accepts."""
    headers = {"content-type": reply.media_type}
    if reply.allow is not None:
        headers["allow"] = reply.allow
    return {"statusCode": reply.status, "headers": headers, "body": reply.body.decode("utf-8"),
            "isBase64Encoded": False}
