"""Google Cloud Functions (2nd gen) entry: `prediction_service`, an HTTP function.

Deployed with `--entry-point prediction_service` (main.tf does), it answers every route of the
local API (`/predict`, `/predict/batch`, `/health`, `/ready`, `/model`) under the function's
URL, with the same status and bytes: the request goes through the one serverless router
(`ml_project/serving/serverless.py`). The model is loaded by the first request an instance serves and
kept for the next ones. Run it locally as Cloud Functions does:

    functions-framework --target prediction_service --source main.py --port 8080
"""

from __future__ import annotations

from pathlib import Path

import flask
import functions_framework

from ml_project.serving.serverless import Request, app_for, header_map

BUNDLE = Path(__file__).resolve().parent


@functions_framework.http
def prediction_service(request: flask.Request) -> flask.Response:
    app = app_for(BUNDLE)
    reply = app.handle(Request(request.method, request.path, header_map(request.headers.items()),
                               _read_body(request, app.max_body_bytes)))
    headers = {"Allow": reply.allow} if reply.allow is not None else None
    return flask.Response(reply.body, status=reply.status, mimetype=reply.media_type,
                          headers=headers)


def _read_body(request: flask.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes (never buffered past)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = request.stream.read(limit + 1)
    return None if len(body) > limit else body
