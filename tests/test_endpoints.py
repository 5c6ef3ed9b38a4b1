"""The endpoints core, framework-free: the body's checks in their order, the key, one verdict
per instance, and what is logged or only counted. (Both apps over it: test_fastapi_app.py,
test_flask_app.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.bodies import Rejection
from ml_project.serving.endpoints import PredictionEndpoints, wants_markdown
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


def test_the_model_card_is_json_markdown_on_request_404_without_one_and_keyed(
    service: PredictionService, log: PredictionLog
) -> None:
    assert service.card is not None
    card, markdown = service.card
    endpoints = PredictionEndpoints(service, log, api_key="s3cret")
    uncarded = PredictionEndpoints(PredictionService(service.pipeline, service.metadata,
                                                     service.config, service.reference), log, None)

    assert json.loads(endpoints.model_card("s3cret").body) == card
    answer = endpoints.model_card("s3cret", "text/markdown")
    assert (answer.status, answer.body.decode()) == (200, markdown)
    assert answer.media_type.startswith("text/markdown")
    assert endpoints.model_card("wrong").status == 401
    assert PredictionEndpoints(None, log, None).model_card(None).status == 503
    missing = uncarded.model_card(None)
    assert missing.status == 404
    assert json.loads(missing.body)["detail"].startswith(
        f"model version {service.model_version} has no model card")


@pytest.mark.parametrize(("accept", "markdown"), [
    (None, False), ("*/*", False), ("application/json", False), ("text/markdown", True),
    ("text/markdown;q=0.9, text/plain", True), ("TEXT/MARKDOWN", True),
    ("text/markdown, application/json", False), ("text/html", False),
])
def test_markdown_only_when_asked_for_and_json_not(accept: str | None, markdown: bool) -> None:
    assert wants_markdown(accept) is markdown
