"""AWS Lambda events in, proxy responses out, through the one serverless router.

Four event shapes reach the handler (`deployment/aws_lambda/lambda_function.py`):

- API Gateway REST API proxy (payload 1.0): `httpMethod`, `path`, `headers` and
  `multiValueHeaders`, `body`, `isBase64Encoded`;
- API Gateway HTTP API (payload 2.0) and Lambda Function URLs (the same shape): `rawPath`
  (with the stage in front unless it is `$default`), `requestContext.http.method`, `headers`;
- a direct invocation (`aws lambda invoke`, another function, Step Functions): the body itself,
  `{"instance": {...}}` for POST /predict or `{"instances": [...]}` for POST /predict/batch,
  and optionally `"headers": {"X-API-Key": "..."}`.

Every answer is a proxy response, `{"statusCode", "headers", "body", "isBase64Encoded"}`, which
both API Gateway payload versions and Function URLs accept; a direct invocation gets it too,
so its caller sees the status and the same body bytes as from the local API.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

from ml_project.serving.endpoints import BATCH_FIELD, Reply, error_reply
from ml_project.serving.serverless import Request, ServerlessApp, header_map

DIRECT_INSTANCE = "instance"
DIRECT_HEADERS = "headers"
DEFAULT_STAGE = "$default"


def handle_event(app: ServerlessApp, event: Any) -> dict[str, Any]:
    """The proxy response to any of the four event shapes."""
    try:
        request = event_request(event)
    except ValueError as err:
        return proxy_response(error_reply(400, str(err)))
    return proxy_response(app.handle(request))


def event_request(event: Any) -> Request:
    """The request an event carries; ValueError names what makes an event none of the shapes."""
    if not isinstance(event, Mapping):
        raise ValueError(f"a direct invocation is a JSON object, got {type(event).__name__}")
    context = event.get("requestContext")
    if isinstance(context, Mapping) and isinstance(context.get("http"), Mapping):
        return _http_api_request(event, context)
    if "httpMethod" in event:
        return _rest_api_request(event)
    return _direct_request(event)


def _rest_api_request(event: Mapping[str, Any]) -> Request:
    """Payload 1.0: `path` is the resource path, without the stage."""
    multi = event.get("multiValueHeaders") or {}
    if multi:
        pairs = [(name, value) for name, values in multi.items() for value in values or ()]
    else:
        pairs = list((event.get("headers") or {}).items())
    return Request(str(event["httpMethod"]), str(event.get("path") or "/"), header_map(pairs),
                   _body(event))


def _http_api_request(event: Mapping[str, Any], context: Mapping[str, Any]) -> Request:
    """Payload 2.0 (HTTP API, Function URL): a named stage prefixes `rawPath`; remove it."""
    path = str(event.get("rawPath") or context["http"].get("path") or "/")
    stage = context.get("stage")
    if isinstance(stage, str) and stage and stage != DEFAULT_STAGE:
        prefix = f"/{stage}"
        if path == prefix or path.startswith(prefix + "/"):
            path = path[len(prefix):] or "/"
    return Request(str(context["http"]["method"]), path,
                   header_map((event.get("headers") or {}).items()), _body(event))


def _direct_request(event: Mapping[str, Any]) -> Request:
    """`{"instance": {...}}` or `{"instances": [...]}`, plus optional `headers`."""
    headers = event.get(DIRECT_HEADERS) or {}
    if not isinstance(headers, Mapping):
        raise ValueError(f'"{DIRECT_HEADERS}" must be a JSON object of header names and values')
    rest = {key: value for key, value in event.items() if key != DIRECT_HEADERS}
    pairs = [(str(name), str(value)) for name, value in headers.items()]
    if DIRECT_INSTANCE in rest and len(rest) == 1:
        return Request("POST", "/predict", header_map(pairs),
                       json.dumps(rest[DIRECT_INSTANCE]).encode())
    if BATCH_FIELD in rest:  # other keys are refused by the batch check, as in the local API
        return Request("POST", "/predict/batch", header_map(pairs), json.dumps(rest).encode())
    raise ValueError(
        f'a direct invocation is {{"{DIRECT_INSTANCE}": {{...}}}} or {{"{BATCH_FIELD}": [...]}} '
        f'(with optional "{DIRECT_HEADERS}"), or an API Gateway or Function URL event; '
        f"got the keys {sorted(str(key) for key in event)}")


def _body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(str(body), validate=True)
        except binascii.Error as err:
            raise ValueError(f"the body is marked base64 but is not: {err}") from err
    # A lone surrogate passes through, to be refused by the JSON check as in the local API.
    return str(body).encode("utf-8", "surrogatepass")


def proxy_response(reply: Reply) -> dict[str, Any]:
    """The response API Gateway and Function URLs send as HTTP: the reply's bytes as text
    (they are JSON, so ASCII), base64 only if they were ever not UTF-8."""
    headers = {"Content-Type": reply.media_type}
    if reply.allow is not None:
        headers["Allow"] = reply.allow
    try:
        body, encoded = reply.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(reply.body).decode("ascii"), True
    return {"statusCode": reply.status, "headers": headers, "body": body,
            "isBase64Encoded": encoded}
