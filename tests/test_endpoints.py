"""The endpoints core, framework-free: the body's checks in their order, the key, one verdict
per instance, and what is logged or only counted. (Both apps over it: test_fastapi_app.py,
test_flask_app.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.endpoints import (
    MAX_NESTING,
    PredictionEndpoints,
    Rejection,
    parse_batch,
    parse_instance,
    parse_json,
)
from tests.conftest import prediction_config
from tests.serving import INSTANCE, instance


@pytest.fixture(scope="module")
def service(trained_project: Path) -> PredictionService:
    return PredictionService.from_config(prediction_config(trained_project))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PredictionLog]:
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "journal")
    yield log
    log.close()


@pytest.mark.parametrize(("body", "message"), [
    (b"{'age': 1}", "the body is not valid JSON"),
    (b'{"age": NaN}', "NaN is not a JSON value"),
    (b'{"age": Infinity}', "Infinity is not a JSON value"),
    (b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), "nests JSON deeper than 32"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # Python's parser gave up: still 400
])
def test_a_body_that_is_not_strict_json_is_a_400(body: bytes, message: str) -> None:
    with pytest.raises(Rejection, match=message) as rejected:
        parse_json(body)
    assert rejected.value.status == 400


@pytest.mark.parametrize("where", ['{"age": @}', '{"instances": [{"customer_id": @}]}',
                                   '{"churned": [[@]]}', "@", '{"age": -@}'])
def test_an_integer_past_pythons_digit_limit_is_a_400_in_the_clients_words(where: str) -> None:
    """Python's parser reads integers of up to 4300 digits (sys.get_int_max_str_digits) and
    would say to raise a setting of the server; the client is told what to change."""
    body = where.replace("@", "9" * 4301).encode()
    with pytest.raises(Rejection) as rejected:
        parse_json(body)
    assert rejected.value.status == 400
    assert rejected.value.detail == ("the body holds an integer of 4301 digits; integers of at "
                                     "most 4300 digits are read")
    assert parse_json(where.replace("@", "9" * 4300).encode())  # read: a field's rule judges it


@pytest.mark.parametrize(("value", "errors"), [
    ([INSTANCE], {"instances": "is required"}),
    ({"rows": [INSTANCE]}, {"instances": "is required"}),
    ({"instances": [], }, {"instances": "must be a non-empty list"}),
    ({"instances": [INSTANCE], "model": "x"}, {"model": "is not a known field"}),
    ({"instances": [INSTANCE] * 4}, {"instances": "must hold at most 3 instances"}),
    ({"instances": [INSTANCE, 7]}, {"instances[1]": "must be a JSON object, got int"}),
])
def test_a_batch_that_is_not_a_list_of_objects_is_a_422_naming_what(
    value: Any, errors: dict[str, str]
) -> None:
    with pytest.raises(Rejection) as rejected:
        parse_batch(value, max_batch_size=3)
    assert rejected.value.status == 422 and rejected.value.errors == errors


def test_one_instance_is_a_json_object() -> None:
    assert parse_instance(INSTANCE) == INSTANCE
    with pytest.raises(Rejection, match="must be a JSON object of production fields, got list"):
        parse_instance([INSTANCE])


def test_the_key_the_model_and_the_size_are_checked_in_this_order(
    service: PredictionService, log: PredictionLog
) -> None:
    keyed = PredictionEndpoints(service, log, api_key="s3cret")
    unloaded = PredictionEndpoints(None, log, api_key="s3cret")

    assert keyed.predict(None, "wrong").status == 401  # before the size
    assert unloaded.predict(b"{}", "s3cret").status == 503  # before the body
    assert keyed.predict(None, "s3cret").status == 413
    assert keyed.predict(b"x", " s3cret\t").status == 400  # blanks around a value are not in it
    assert keyed.predict(b"{}", "s3cret,s3cret").status == 401  # a repeated header never matches
    assert keyed.health().status == 200  # never needs the key


def test_a_refusal_before_the_route_is_answered_and_counted_never_logged(
    service: PredictionService, log: PredictionLog
) -> None:
    endpoints = PredictionEndpoints(service, log, api_key="s3cret")
    answer = endpoints.refuse(Rejection(415, "the body is gzip-encoded"))

    body = json.loads(answer.body)
    assert (answer.status, body["detail"]) == (415, "the body is gzip-encoded")
    assert body["request_id"]
    assert json.loads(endpoints.health().body)["counters"]["refused_415"] == 1
    assert log.read() == []


def test_every_authenticated_outcome_is_logged_and_refusals_only_counted(
    service: PredictionService, log: PredictionLog
) -> None:
    endpoints = PredictionEndpoints(service, log, api_key=None)
    answered = endpoints.predict(json.dumps(INSTANCE).encode(), None)
    rejected = endpoints.predict_batch(json.dumps(
        {"instances": [instance(age=7), INSTANCE]}).encode(), None)
    refused = endpoints.predict(b"not json", None)

    assert (answered.status, rejected.status, refused.status) == (200, 422, 400)
    records = log.read()
    assert [record["error"] is None for record in records] == [True, False, False]
    assert "age: must be >= 18, got 7" in records[1]["error"]
    assert records[2]["error"] == "422: not predicted: another instance in its batch is invalid"
    counters = json.loads(endpoints.health().body)["counters"]
    assert counters["refused_400"] == 1 and counters["log_journaled"] == 3


def test_a_fault_of_the_model_is_a_500_with_the_request_id_and_is_logged(
    service: PredictionService, log: PredictionLog
) -> None:
    broken = PredictionEndpoints(service, log, api_key=None)
    broken.service = type("Broken", (), {"predict_instance": lambda self, r: 1 / 0,
                                         "config": service.config,
                                         "metadata": service.metadata,
                                         "model_version": "x"})()
    reply = broken.predict(json.dumps(INSTANCE).encode(), None)

    body = json.loads(reply.body)
    assert reply.status == 500 and body["request_id"] in body["detail"]
    [record] = log.read()
    assert record["error"].startswith("500: ZeroDivisionError")
