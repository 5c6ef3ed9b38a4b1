"""The SageMaker inference contract over the endpoints core: `GET /ping` and `POST /invocations`,
routes of both apps (`fastapi_app.py`, `flask_app.py`), so a SageMaker container is the
launcher on port 8080 (`deployment/aws_sagemaker/serve`) and any host may use them.

`/invocations` takes
- `application/json` (or no content type): the body of POST /predict (one instance) or of
  POST /predict/batch (`{"instances": [...]}`), answered as those routes answer it;
- `text/csv`: one instance per row, read as the batch reads a CSV file (`csv_format.read_csv_records`:
  the format of `csv_format.py`, refused whole with a 400 saying why when the body is not in
  it). The first line names the columns when any of its cells is a known column (the id,
  timestamp, a feature, the target: then in any order, unknown ones ignored or refused as
  `validation.unknown_fields` says, a repeated one refused); otherwise there is no header and
  each row holds the config's features in order. A cell that a CSV reader reads as missing is
  a missing value. Answered as a batch: `{"predictions": [...], "request_id": ...}`.
Answers are JSON whatever the Accept header. This module imports no web framework.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re

from ml_project.config import Config
from ml_project.csv_format import CsvFormatError, fields, read_csv_records
from ml_project.schemas import known_fields
from ml_project.serving.bodies import BATCH_FIELD, Rejection, parse_json
from ml_project.serving.endpoints import (
    PredictionEndpoints,
    ReadyResponse,
    Reply,
    error_reply,
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
    except ValueError as err:  # CsvFormatError, or pandas' own refusal
        return error_reply(400, f"the body is not CSV this model reads: {err}")
    return endpoints.predict_batch(json.dumps({BATCH_FIELD: instances}).encode(), api_key)


def csv_instances(body: bytes, config: Config) -> list[dict[str, str | None]]:
    """CSV rows as instances: a body with a header is a CSV file; one without is given the
    features' names as its header. An empty body holds no instance."""
    data = body.removeprefix(codecs.BOM_UTF8)
    first = re.split(rb"[\r\n]", data.lstrip(b"\r\n"), maxsplit=1)[0]
    if not first:
        return []
    line = first.decode("utf-8", errors="replace")
    known = set(known_fields(config))
    # A line with an odd number of quotes continues on the next: a row, not names.
    if not line.count('"') % 2 and any(name in known for name in fields(line)):
        return read_csv_records(data)
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(config.columns.features)
    try:
        return read_csv_records(header.getvalue().encode() + data)
    except CsvFormatError as err:
        raise CsvFormatError(f"no header (the {len(config.columns.features)} features in "
                             f"order); {err}") from err
