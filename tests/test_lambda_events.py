"""The Lambda handler's event translation: every event shape answers as the local API does."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ml_project.serving.lambda_events import event_request, handle_event, proxy_response
from ml_project.serving.serverless import ServerlessApp
from tests.serverless_cases import (
    CASE_IDS,
    CASES,
    EVENT_SHAPES,
    KEY,
    Case,
    Comparable,
    direct_event,
    http_api_event,
    keyed_app,
    local_api,
    proxy_comparable,
    write_bundle,
)
from tests.serving import INSTANCE


@pytest.fixture(scope="module")
def bundle(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(trained_project, tmp_path_factory.mktemp("lambda_events"))


@pytest.fixture(scope="module")
def local(bundle: Path) -> Iterator[dict[str, Comparable]]:
    with local_api(bundle) as answers:
        yield answers


@pytest.fixture(scope="module")
def app(bundle: Path) -> Iterator[ServerlessApp]:
    app = keyed_app(bundle)
    yield app
    if app.endpoints.log is not None:
        app.endpoints.log.close()


@pytest.mark.parametrize("shape", list(EVENT_SHAPES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_event_shape_answers_like_the_local_api(
    app: ServerlessApp, local: dict[str, Comparable], case: Case, shape: str
) -> None:
    build: Callable[[Case], dict[str, Any]] = EVENT_SHAPES[shape]
    response = handle_event(app, build(case))
    assert set(response) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert proxy_comparable(response, case.method) == local[case.name]


DIRECT = [case for case in CASES if direct_event(case) is not None]


@pytest.mark.parametrize("case", DIRECT, ids=[case.name for case in DIRECT])
def test_direct_invocations_answer_like_the_local_api(
    app: ServerlessApp, local: dict[str, Comparable], case: Case
) -> None:
    assert proxy_comparable(handle_event(app, direct_event(case)), "POST") == local[case.name]


def test_direct_invocations_cover_one_instance_batches_and_rejections() -> None:
    assert {case.name for case in DIRECT} >= {"predict", "batch", "invalid", "batch-invalid",
                                              "no-key"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        pytest.param([INSTANCE], "a direct invocation is a JSON object, got list", id="list"),
        pytest.param({"rows": [INSTANCE]}, "got the keys \\['rows'\\]", id="unknown-shape"),
        pytest.param({"instance": INSTANCE, "extra": 1}, "got the keys", id="instance-and-more"),
        pytest.param({"instance": INSTANCE, "headers": "key"}, '"headers" must be a JSON object',
                     id="headers-not-object"),
        pytest.param({**http_api_event(CASES[3]), "isBase64Encoded": True, "body": "*not*"},
                     "marked base64 but is not", id="bad-base64"),
    ],
)
def test_an_event_of_no_known_shape_gets_a_400_naming_the_shapes(
    app: ServerlessApp, event: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        event_request(event)
    response = handle_event(app, event)
    assert response["statusCode"] == 400


def test_a_named_stage_is_removed_from_the_path_and_only_a_whole_segment() -> None:
    case = Case("x", "GET", "/ready", b"", {"X-API-Key": KEY})
    assert event_request(http_api_event(case, stage="prod")).path == "/ready"
    assert event_request(http_api_event(case, stage="$default")).path == "/ready"
    lookalike = http_api_event(case, stage="pro")
    lookalike["rawPath"] = "/production/ready"
    assert event_request(lookalike).path == "/production/ready"


def test_a_reply_that_is_not_utf8_goes_back_base64_encoded() -> None:
    from ml_project.serving.endpoints import Reply

    response = proxy_response(Reply(200, b"\xff\x00"))
    assert response["isBase64Encoded"] is True
    assert base64.b64decode(response["body"]) == b"\xff\x00"
