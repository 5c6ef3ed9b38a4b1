"""The SageMaker contract, routes of both apps: /ping, and /invocations with JSON (as /predict
and /predict/batch answer it) and CSV (the same predictions as the same rows in JSON), answered
alike by FastAPI and Flask on real servers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from ml_project.config import Config
from ml_project.csv_format import CsvFormatError, check_csv
from ml_project.serving.sagemaker import csv_instances, media_type
from tests.csv_cases import CASE_NAMES, csv_cases
from tests.serverless_cases import (
    KEY,
    MAX_BODY_BYTES,
    Comparable,
    keyed_app,
    keyed_flask_app,
    local_api,
    write_bundle,
)
from tests.serving import INSTANCE, instance, load_serving_config, serve_in_thread

HEADERS = {"X-API-Key": KEY}
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


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def url(request: pytest.FixtureRequest, bundle: Path) -> Iterator[str]:
    """A real server of each app, keyed."""
    app = keyed_app(bundle) if request.param == "fastapi" else keyed_flask_app(bundle)
    with serve_in_thread(app) as base_url:
        yield base_url


def invoke(url: str, body: bytes, content_type: str | None = "application/json",
           headers: dict[str, str] = HEADERS) -> tuple[int, Any]:
    more = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(f"{url}/invocations", data=body, headers={**headers, **more},
                           timeout=30)
    content = answer.json()
    content.pop("request_id", None)
    return answer.status_code, content


def as_csv(instances: list[dict[str, Any]], columns: list[str], header: bool) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    if header:
        writer.writerow(columns)
    for item in instances:
        writer.writerow(["" if item.get(name) is None else item[name] for name in columns])
    return text.getvalue().encode()


def test_ping_is_200_once_the_model_is_loaded_and_needs_no_key(url: str) -> None:
    answer = requests.get(f"{url}/ping", timeout=30)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ready"


@pytest.mark.parametrize(("case", "body"), [
    ("predict", json.dumps(INSTANCE).encode()),
    ("batch", json.dumps({"instances": [INSTANCE] * 3}).encode()),
    ("invalid", json.dumps(instance(age="x", colour=1, drop=("region",))).encode()),
    ("batch-invalid", json.dumps({"instances": [instance(age=-1),
                                                instance(region="mars")]}).encode()),
    ("malformed-json", b"{'age': 1}"),
    ("body-too-large", b"{" + b" " * (MAX_BODY_BYTES + 100) + b"}"),
])
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          None])
def test_json_invocations_answer_as_predict_or_predict_batch(
    url: str, local: dict[str, Comparable], case: str, body: bytes, content_type: str | None
) -> None:
    status, content = invoke(url, body, content_type)
    assert (status, "application/json", None, content) == local[case]


@pytest.mark.parametrize("header", [False, True], ids=["no-header", "header"])
def test_csv_rows_get_the_predictions_of_the_same_rows_in_json(
    url: str, config: Config, header: bool
) -> None:
    features = list(config.columns.features)
    columns = features if not header else [config.columns.id, *reversed(features)]
    csv_body = as_csv(BATCH, columns, header)
    by_csv = invoke(url, csv_body, "text/csv")
    rows = [{name: item.get(name) for name in features} for item in BATCH]
    by_json = invoke(url, json.dumps({"instances": rows}).encode())
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
    pytest.param(b"1,2\n", "text/csv", HEADERS, 400,
                 "no header (the 10 features in order); a row has 2 fields where the header "
                 "has 10: '1,2'", id="csv-short-row"),
    pytest.param(b"\xff\xfe", "text/csv", HEADERS, 400, "not CSV", id="csv-not-utf8"),
    pytest.param(b"", "text/csv", HEADERS, 422, "must be a non-empty list", id="csv-empty"),
    pytest.param(b"a" * (MAX_BODY_BYTES + 1), "text/csv", HEADERS, 413, "larger than",
                 id="csv-too-large"),
    pytest.param(b"1,2\n", "text/csv", {}, 401, "X-API-Key", id="csv-no-key"),
    pytest.param(b"<x/>", "application/xml", HEADERS, 415, "text/csv", id="xml"),
])
def test_invocations_refuse_what_they_cannot_read_with_a_4xx_saying_why(
    url: str, body: bytes, content_type: str, headers: dict[str, str], status: int,
    detail: str
) -> None:
    got_status, content = invoke(url, body, content_type, headers)
    assert got_status == status
    assert detail in content["detail"]


def test_only_post_reaches_invocations(url: str) -> None:
    wrong = requests.get(f"{url}/invocations", headers=HEADERS, timeout=30)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")


@pytest.mark.parametrize(("header", "kind"), [
    ("text/csv; charset=utf-8", "text/csv"), ("Application/JSON", "application/json"),
    (None, ""), ("", "")])
def test_the_media_type_is_read_without_parameters_or_case(header: str | None, kind: str) -> None:
    assert media_type(header) == kind


@pytest.mark.parametrize("digits", [400, 4400], ids=["past-float-range", "past-digit-limit"])
def test_csv_integers_past_float_range_get_the_verdict_of_their_field(
    url: str, config: Config, digits: int
) -> None:
    """A CSV cell is text, so no digit limit applies (JSON's 400 past 4300 digits does not): a
    number reads as infinite and is refused naming its field, a label is named, the id taken."""
    target = config.columns.target
    row = BATCH[0] | {"age": "9" * digits}
    if digits < 1000:  # the id and a label past float range too, within the body limit
        row |= {config.columns.id: "9" * digits, target: "9" * digits}
    columns = [config.columns.id, *([target] if target in row else []),
               *config.columns.features]
    status, content = invoke(url, as_csv([row], columns, header=True), "text/csv")
    assert status == 422
    label = {f"instances[0].{target}": "label '" + "9" * 76 + "... is not one of [0, 1]"}
    assert content["errors"] == {"instances[0].age": "must be a finite number, got inf",
                                 **(label if target in row else {})}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_csv_case_gets_the_format_s_verdict(
    url: str, trained_project: Path, config: Config, name: str
) -> None:
    """A body out of the CSV format: 400 and the one line the batch use cases log for the same
    file (tests/csv_cases.py). A body in it: its rows are instances, answered as the same rows
    sent as JSON (this bundle rejects unknown fields and takes at most 3 instances). A body
    with no row (empty, or a header alone) is an empty batch: 422, as ever."""
    source = trained_project / "data" / "production_data.csv"
    case = next(case for case in csv_cases(source, config, rows=3) if case.name == name)
    status, content = invoke(url, case.text, "text/csv")
    if case.name in ("header_only", "empty"):  # no instance: refused as an empty batch
        assert (status, content["detail"]) == (422, "instances must be a non-empty list of JSON "
                                                    "objects")
        return
    if case.error is not None:
        with pytest.raises(CsvFormatError) as refusal:
            check_csv(case.text)
        assert str(refusal.value).startswith(case.error)
        assert (status, content["detail"]) == (
            400, f"the body is not CSV this model reads: {refusal.value}")
        return
    if case.name == "unknown_header_column":  # a header, not a row: its column refused
        assert (status, content["errors"]) == (422, {f"instances[{i}].colour": "is not a known "
                                                     "field" for i in range(3)})
    elif case.quarantined:  # the batch quarantines the row; a request is all or none
        assert status == 422
        assert list(content["errors"]) == [f"instances[1].{case.column}"]
    else:
        rows = list(csv.DictReader(io.StringIO(source.read_text())))[:3]
        if case.name == "line_break_in_quoted_id":
            rows[1][config.columns.id] += "\nX"
        by_json = invoke(url, json.dumps({"instances": [
            {key: value or None for key, value in row.items()} for row in rows]}).encode())
        assert (status, content) == by_json
        assert status == 200 and len(content["predictions"]) == 3


def test_a_header_with_an_unknown_column_is_read_as_a_header(config: Config) -> None:
    """Any known name makes the first line a header; the unknown columns go to the rules on
    unknown fields (ignored, or refused as here), never read as a row of values."""
    features = list(config.columns.features)
    body = ",".join([*features, "colour"]) + "\n" + ",".join(["1"] * len(features) + ["red"])
    assert csv_instances(body.encode(), config) == [dict.fromkeys(features, "1") | {
        "colour": "red"}]
