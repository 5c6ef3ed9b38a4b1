"""The SageMaker contract: /ping, and /invocations with JSON (as /predict and /predict/batch
answer it) and CSV (the same predictions as the same rows in JSON)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from werkzeug.test import Client

from ml_project.config import Config
from ml_project.serving.endpoints import API_KEY_ENV
from ml_project.serving.sagemaker import (
    DEFAULT_PORT,
    SAGEMAKER_ROUTES,
    bind_port,
    csv_instances,
    wsgi_app,
)
from ml_project.serving.serverless import Request, ServerlessApp
from tests.serverless_cases import (
    KEY,
    MAX_BODY_BYTES,
    Comparable,
    keyed_app,
    local_api,
    write_bundle,
)
from tests.serving import INSTANCE, instance, load_serving_config

HEADERS = {"x-api-key": KEY}
BATCH = [instance(), instance(customer_id="C2", contract="two-year", tenure_months=3),
         instance(customer_id="C3", total_charges=None, internet_service=None)]


@pytest.fixture(scope="module")
def bundle(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(trained_project, tmp_path_factory.mktemp("sagemaker"))


@pytest.fixture(scope="module")
def config(bundle: Path) -> Config:
    return load_serving_config(bundle / "project_config.yaml")


@pytest.fixture(scope="module")
def local(bundle: Path) -> Iterator[dict[str, Comparable]]:
    with local_api(bundle) as answers:
        yield answers


@pytest.fixture(scope="module")
def app(bundle: Path) -> Iterator[ServerlessApp]:
    app = keyed_app(bundle, SAGEMAKER_ROUTES)
    yield app
    if app.endpoints.log is not None:
        app.endpoints.log.close()


def invoke(app: ServerlessApp, body: bytes, content_type: str | None = "application/json",
           headers: dict[str, str] = HEADERS) -> tuple[int, Any]:
    more = {"content-type": content_type} if content_type else {}
    reply = app.handle(Request("POST", "/invocations", {**headers, **more}, body))
    content = json.loads(reply.body)
    content.pop("request_id", None)
    return reply.status, content


def as_csv(instances: list[dict[str, Any]], columns: list[str], header: bool) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    if header:
        writer.writerow(columns)
    for item in instances:
        writer.writerow(["" if item.get(name) is None else item[name] for name in columns])
    return text.getvalue().encode()


def test_ping_is_200_once_the_model_is_loaded_and_needs_no_key(app: ServerlessApp) -> None:
    reply = app.handle(Request("GET", "/ping", {}, b""))
    assert reply.status == 200
    assert json.loads(reply.body)["status"] == "ready"


@pytest.mark.parametrize(("case", "body"), [
    ("predict", json.dumps(INSTANCE).encode()),
    ("batch", json.dumps({"instances": [INSTANCE] * 3}).encode()),
    ("invalid", json.dumps(instance(age="x", colour=1, drop=("region",))).encode()),
    ("batch-invalid", json.dumps({"instances": [instance(age=-1),
                                                instance(region="mars")]}).encode()),
    ("malformed-json", b"{'age': 1}"),
    ("body-too-large", b"{" + b" " * 3100 + b"}"),
])
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          None])
def test_json_invocations_answer_as_predict_or_predict_batch(
    app: ServerlessApp, local: dict[str, Comparable], case: str, body: bytes,
    content_type: str | None
) -> None:
    status, content = invoke(app, body, content_type)
    assert (status, "application/json", None, content) == local[case]


@pytest.mark.parametrize("header", [False, True], ids=["no-header", "header"])
def test_csv_rows_get_the_predictions_of_the_same_rows_in_json(
    app: ServerlessApp, config: Config, header: bool
) -> None:
    features = list(config.columns.features)
    columns = features if not header else [config.columns.id, *reversed(features)]
    csv_body = as_csv(BATCH, columns, header)
    by_csv = invoke(app, csv_body, "text/csv")
    rows = [{name: item.get(name) for name in features} for item in BATCH]
    by_json = invoke(app, json.dumps({"instances": rows}).encode())
    assert by_csv[0] == 200
    assert by_csv == by_json
    assert len(by_csv[1]["predictions"]) == len(BATCH)


def test_csv_empty_cells_are_missing_values_and_a_header_is_told_by_its_names(
    config: Config
) -> None:
    features = list(config.columns.features)
    values = ["1"] * len(features)
    values[1] = ""
    instances = csv_instances(",".join(values).encode(), config)
    assert instances == [{name: (None if i == 1 else "1") for i, name in enumerate(features)}]
    header = ",".join(reversed(features)) + "\n" + ",".join(values) + "\n"
    assert list(csv_instances(header.encode(), config)[0]) == list(reversed(features))


@pytest.mark.parametrize(("body", "content_type", "headers", "status", "detail"), [
    pytest.param(b"1,2\n", "text/csv", HEADERS, 400, "row 1 has 2 values, expected",
                 id="csv-short-row"),
    pytest.param(b"\xff\xfe", "text/csv", HEADERS, 400, "not CSV", id="csv-not-utf8"),
    pytest.param(b"", "text/csv", HEADERS, 422, "must be a non-empty list", id="csv-empty"),
    pytest.param(b"a" * (MAX_BODY_BYTES + 1), "text/csv", HEADERS, 413, "larger than",
                 id="csv-too-large"),
    pytest.param(b"1,2\n", "text/csv", {}, 401, "X-API-Key", id="csv-no-key"),
    pytest.param(b"<x/>", "application/xml", HEADERS, 415, "text/csv", id="xml"),
])
def test_invocations_refuse_what_they_cannot_read_with_a_4xx_saying_why(
    app: ServerlessApp, body: bytes, content_type: str, headers: dict[str, str], status: int,
    detail: str
) -> None:
    got_status, content = invoke(app, body, content_type, headers)
    assert got_status == status
    assert detail in content["detail"]


def test_the_wsgi_app_reads_headers_and_limits_the_body(app: ServerlessApp) -> None:
    client = Client(wsgi_app(app))
    answer = client.post("/invocations", data=json.dumps(INSTANCE),
                         headers={"Content-Type": "application/json", "X-API-Key": KEY})
    assert answer.status_code == 200
    assert "prediction" in answer.json  # type: ignore[operator]
    too_large = client.post("/predict", data=b"{" + b" " * MAX_BODY_BYTES + b"}",
                            headers={"X-API-Key": KEY})
    assert too_large.status_code == 413
    wrong = client.get("/invocations")
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")


def test_the_port_is_8080_unless_sagemaker_sets_another() -> None:
    assert DEFAULT_PORT == 8080
    assert bind_port({}) == 8080
    assert bind_port({"SAGEMAKER_BIND_TO_PORT": "9123"}) == 9123


def test_the_api_key_is_read_when_the_app_loads(bundle: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    open_app = ServerlessApp.load(bundle, routes=SAGEMAKER_ROUTES)
    try:
        status, _ = invoke(open_app, json.dumps(INSTANCE).encode(), headers={})
        assert status == 200
    finally:
        if open_app.endpoints.log is not None:
            open_app.endpoints.log.close()
