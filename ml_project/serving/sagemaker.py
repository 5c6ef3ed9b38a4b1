"""The SageMaker inference contract over the one serverless router: the image's `serve` command.

SageMaker starts the container with `serve` and expects, on port 8080 (SAGEMAKER_BIND_TO_PORT
when set): `GET /ping`, 200 once the model is loaded, and `POST /invocations`, the prediction.
`/invocations` takes
- `application/json` (or no content type): the body of POST /predict (one instance) or of
  POST /predict/batch (`{"instances": [...]}`), answered as those routes answer it;
- `text/csv`: one instance per row, the values in the config's feature order; an optional
  first row of column names (then any known columns, in any order, the id too); an empty
  cell is a missing value. Answered as a batch: `{"predictions": [...], "request_id": ...}`.
Answers are JSON whatever the Accept header. The local API's routes answer too, so the
container can be smoke-tested with the deployed-server use case.

The model is loaded before the port is bound, then gunicorn serves (`wsgi_server`), as the
Flask launcher does: one worker process with a pool of threads, the model shared with it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ml_project.config import Config
from ml_project.serving.endpoints import (
    BATCH_FIELD,
    PredictionEndpoints,
    ReadyResponse,
    Rejection,
    Reply,
    error_reply,
    parse_json,
    reply,
)
from ml_project.export import ArtifactError
from ml_project.serving.serverless import (
    ROUTES,
    Request,
    Route,
    ServerlessApp,
    configure_logging,
    header_map,
)

logger = logging.getLogger(__name__)

PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
DEFAULT_PORT = 8080
# Inside the container: SageMaker connects from outside it.
DEFAULT_HOST = "0.0.0.0"  # nosec B104
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"


def ping(endpoints: PredictionEndpoints, request: Request) -> Reply:
    """200 once a model is loaded. No API key: SageMaker's health check sends none."""
    service = endpoints.service
    if service is None:
        return error_reply(503, "no model loaded yet; retry shortly")
    return reply(200, ReadyResponse(status="ready", model_version=service.model_version))


def invocations(endpoints: PredictionEndpoints, request: Request) -> Reply:
    """JSON as /predict or /predict/batch would answer it; CSV rows as a batch."""
    if request.content_type in ("", JSON_TYPE):
        try:
            value = parse_json(request.body or b"")
        except Rejection:
            value = None  # /predict gives the same 400 (or the 401, 503, 413 before it)
        if isinstance(value, dict) and BATCH_FIELD in value:
            return endpoints.predict_batch(request.body, request.api_key)
        return endpoints.predict(request.body, request.api_key)
    if request.content_type != CSV_TYPE:
        return error_reply(415, f"unsupported content type {request.content_type!r}: send "
                                f"{JSON_TYPE} or {CSV_TYPE}")
    admitted = endpoints.ready(request.api_key)  # the key and the model before the body
    if admitted.status != 200:
        return admitted
    if request.body is None or endpoints.service is None:
        return endpoints.predict_batch(None, request.api_key)  # 413
    try:
        instances = csv_instances(request.body, endpoints.service.config)
    except ValueError as err:
        return error_reply(400, f"the body is not CSV this model reads: {err}")
    return endpoints.predict_batch(json.dumps({BATCH_FIELD: instances}).encode(),
                                   request.api_key)


def csv_instances(body: bytes, config: Config) -> list[dict[str, str | None]]:
    """CSV rows as instances: the header's names, or the config's features in order."""
    columns = config.columns
    features = list(columns.features)
    known = {*features, columns.id, columns.target, *([columns.timestamp] if columns.timestamp
                                                       else [])}
    try:
        rows = [row for row in csv.reader(io.StringIO(body.decode("utf-8-sig"))) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(str(err)) from err
    names = features
    if rows and all(cell.strip() in known for cell in rows[0]):
        names, rows = [cell.strip() for cell in rows[0]], rows[1:]
    for number, row in enumerate(rows, start=1):
        if len(row) != len(names):
            raise ValueError(f"row {number} has {len(row)} values, expected {len(names)} "
                             f"({', '.join(names)})")
    return [{name: cell if cell.strip() else None for name, cell in zip(names, row)}
            for row in rows]


SAGEMAKER_ROUTES: dict[str, tuple[str, Route]] = {
    **ROUTES,
    "/ping": ("GET", ping),
    "/invocations": ("POST", invocations),
}


def wsgi_app(app: ServerlessApp) -> Callable[..., Iterable[bytes]]:
    """A WSGI application over `app`: read the request (the body up to the limit), answer."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
        pairs = [(name[5:].replace("_", "-"), str(value)) for name, value in environ.items()
                 if name.startswith("HTTP_")]
        if environ.get("CONTENT_TYPE"):
            pairs.append(("content-type", str(environ["CONTENT_TYPE"])))
        request = Request(str(environ["REQUEST_METHOD"]), str(environ.get("PATH_INFO") or "/"),
                          header_map(pairs), _read_body(environ, app.max_body_bytes))
        answer = app.handle(request)
        headers = [("Content-Type", answer.media_type), ("Content-Length", str(len(answer.body)))]
        if answer.allow is not None:
            headers.append(("Allow", answer.allow))
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        return [answer.body]

    return application


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes (never buffered past)."""
    declared = str(environ.get("CONTENT_LENGTH") or "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = environ["wsgi.input"].read(limit + 1)
    return None if len(body) > limit else bytes(body)


def bind_port(environ: Mapping[str, str]) -> int:
    """SAGEMAKER_BIND_TO_PORT when SageMaker sets it, else the contract's 8080."""
    return int(environ.get(PORT_ENV) or DEFAULT_PORT)


def main(argv: list[str] | None = None) -> int:
    """`serve`: load the bundle's model, then answer on the SageMaker port until SIGTERM."""
    parser = argparse.ArgumentParser(description="Serve the SageMaker inference contract.")
    parser.add_argument("--bundle", type=Path, default=Path.cwd(),
                        help="the bundle folder (project_config.yaml, ml_project, the model)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="default: %(default)s")
    args = parser.parse_args(argv)
    port = bind_port(os.environ)
    configure_logging()
    try:
        app = ServerlessApp.load(args.bundle, routes=SAGEMAKER_ROUTES)
    except ArtifactError as err:
        logger.error("Cannot start: %s", err)
        return 2
    from ml_project.serving.wsgi_server import serve_wsgi  # imported here: gunicorn only to serve

    log = app.endpoints.log
    logger.info("SageMaker contract on http://%s:%d (/ping, /invocations)", args.host, port)
    try:
        serve_wsgi(wsgi_app(app), args.host, port,
                   post_fork=log.after_fork if log is not None else lambda: None)
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
