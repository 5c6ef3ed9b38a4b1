"""The SageMaker inference contract over the endpoints core: `GET /ping` and `POST /invocations`,
routes of both apps (`fastapi_app.py`, `flask_app.py`), so a SageMaker container is the
launcher on port 8080 (`deployment/aws_sagemaker/serve`) and any host may use them.

`/invocations` takes
- `application/json` (or no content type): the body of POST /predict (one instance) or of
  POST /predict/batch (`{"instances": [...]}`), answered as those routes answer it;
- `text/csv`: one instance per row, the values in the config's feature order; an optional
  first row of column names (then any known columns, in any order, the id too); an empty
  cell is a missing value. Answered as a batch: `{"predictions": [...], "request_id": ...}`.
Answers are JSON whatever the Accept header. This module imports no web framework.
"""

from __future__ import annotations

import csv
import io
import json

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

PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
DEFAULT_PORT = 8080
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"


def ping(endpoints: PredictionEndpoints) -> Reply:
    """200 once a model is loaded. No API key: SageMaker's health check sends none."""
    service = endpoints.service
    if service is None:
        return error_reply(503, "no model loaded yet; retry shortly")
    return reply(200, ReadyResponse(status="ready", model_version=service.model_version))


def media_type(content_type: str | None) -> str:
    """The media type alone, lower case (`text/csv` of `text/csv; charset=utf-8`)."""
    return (content_type or "").split(";")[0].strip().lower()


def invocations(endpoints: PredictionEndpoints, body: bytes | None, content_type: str | None,
                api_key: str | None) -> Reply:
    """JSON as /predict or /predict/batch would answer it; CSV rows as a batch. `body` None:
    larger than the limit (413, after the key and the model, as every route)."""
    kind = media_type(content_type)
    if kind in ("", JSON_TYPE):
        try:
            value = parse_json(body or b"")
        except Rejection:
            value = None  # /predict gives the same 400 (or the 401, 503, 413 before it)
        if isinstance(value, dict) and BATCH_FIELD in value:
            return endpoints.predict_batch(body, api_key)
        return endpoints.predict(body, api_key)
    if kind != CSV_TYPE:
        return error_reply(415, f"unsupported content type {kind!r}: send {JSON_TYPE} or "
                                f"{CSV_TYPE}")
    admitted = endpoints.ready(api_key)  # the key and the model before the body
    if admitted.status != 200:
        return admitted
    if body is None or endpoints.service is None:
        return endpoints.predict_batch(None, api_key)  # 413
    try:
        instances = csv_instances(body, endpoints.service.config)
    except ValueError as err:
        return error_reply(400, f"the body is not CSV this model reads: {err}")
    return endpoints.predict_batch(json.dumps({BATCH_FIELD: instances}).encode(), api_key)


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
