"""The Lambda handler (Mangum over the FastAPI app): every event shape API Gateway and Function
URLs send answers as the local API does; direct invocations too; and an event no source sends,
or with a field of the wrong type, gets a 4xx, never an exception out of the handler."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fastapi import FastAPI

from ml_project.config import PROJECT_ROOT
from ml_project.serving.aws_lambda import BASE_PATH_ENV, LambdaHandler, lambda_handler
from ml_project.serving.bundle import load_bundle
from ml_project.serving.endpoints import API_KEY_ENV
from ml_project.serving.fastapi_app import create_app
from tests.conftest import PROBABILITY_TOLERANCE
from tests.serverless_cases import (
    CASE_IDS,
    CASES,
    EVENT_SHAPES,
    KEY,
    VERDICTS,
    Case,
    Comparable,
    direct_event,
    http_api_event,
    keyed_app,
    local_api,
    proxy_comparable,
    rest_api_event,
    write_bundle,
)
from tests.serving import INSTANCE


@pytest.fixture(scope="module")
def bundle(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(trained_project, tmp_path_factory.mktemp("aws_lambda"))


@pytest.fixture(scope="module")
def local(bundle: Path) -> Iterator[dict[str, Comparable]]:
    with local_api(bundle) as answers:
        yield answers


@pytest.fixture(scope="module")
def app(bundle: Path) -> Iterator[FastAPI]:
    app = keyed_app(bundle)
    yield app
    app.state.endpoints.log.close()


@pytest.fixture(scope="module")
def handler(app: FastAPI) -> LambdaHandler:
    return lambda_handler(app)


@pytest.mark.parametrize("shape", list(EVENT_SHAPES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_event_shape_answers_like_the_local_api(
    handler: LambdaHandler, local: dict[str, Comparable], case: Case, shape: str
) -> None:
    build: Callable[[Case], dict[str, Any]] = EVENT_SHAPES[shape]
    response = handler(build(case), None)
    assert {"statusCode", "body", "isBase64Encoded"} <= set(response)
    assert proxy_comparable(response, case.method) == local[case.name]


@pytest.mark.parametrize("name", list(VERDICTS))
def test_the_local_api_answers_what_an_attack_found_with_a_clear_verdict(
    local: dict[str, Comparable], name: str
) -> None:
    """The verdict every event shape above must then give: a 4xx naming the field or the
    problem, in JSON (404s too, never a redirect), or a prediction."""
    status, named = VERDICTS[name]
    got_status, content_type, _, content = local[name]
    assert (got_status, content_type) == (status, "application/json")
    if status == 422:
        assert named in content["errors"] and content["detail"].startswith("invalid instance")
    elif status != 200:
        assert named in content["detail"]


def test_a_named_http_api_stage_is_removed_by_its_base_path(
    app: FastAPI, local: dict[str, Comparable], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named stage prefixes the path: ML_PROJECT_API_BASE_PATH tells Mangum to remove it."""
    case = next(case for case in CASES if case.name == "ready")
    monkeypatch.setenv(BASE_PATH_ENV, "/prod")
    staged = lambda_handler(app)
    assert proxy_comparable(staged(http_api_event(case, stage="prod"), None), "GET") == \
        local["ready"]


DIRECT = [case for case in CASES if direct_event(case) is not None]


@pytest.mark.parametrize("case", DIRECT, ids=[case.name for case in DIRECT])
def test_direct_invocations_answer_like_the_local_api(
    handler: LambdaHandler, local: dict[str, Comparable], case: Case
) -> None:
    assert proxy_comparable(handler(direct_event(case), None), "POST") == local[case.name]


def test_direct_invocations_cover_one_instance_batches_and_rejections() -> None:
    assert {case.name for case in DIRECT} >= {"predict", "batch", "invalid", "batch-invalid",
                                              "no-key"}


PREDICT = next(case for case in CASES if case.name == "predict")


def _changed(event: dict[str, Any], *path: str, value: Any) -> dict[str, Any]:
    """`event` with the field at `path` set to `value` (or removed, for `...`)."""
    event = copy.deepcopy(event)
    target = event
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return event


MALFORMED = {
    "not-an-object": [INSTANCE],
    "no-known-shape": {"rows": [INSTANCE]},
    "direct-headers-not-object": {"instance": INSTANCE, "headers": "key"},
    "rest-headers-not-mapping": _changed(rest_api_event(PREDICT), "headers", value=["x"]),
    "rest-multi-value-headers-a-list": _changed(rest_api_event(PREDICT), "multiValueHeaders",
                                                value=[["X-API-Key", KEY]]),
    "rest-int-header-value": _changed(_changed(rest_api_event(PREDICT), "multiValueHeaders",
                                               value=None), "headers", value={
        "X-API-Key": 41, "Content-Type": "application/json"}),
    "rest-int-multi-value": _changed(rest_api_event(PREDICT), "multiValueHeaders", value={
        "X-API-Key": [41], "Content-Type": ["application/json"]}),
    "rest-no-method": _changed(rest_api_event(PREDICT), "httpMethod", value=...),
    "http-headers-not-mapping": _changed(http_api_event(PREDICT), "headers", value="x"),
    "http-int-header-value": _changed(http_api_event(PREDICT), "headers", value={
        "x-api-key": 41, "content-type": "application/json"}),
    "http-dict-header-value": _changed(http_api_event(PREDICT), "headers", value={
        "x-api-key": {"a": 1}, "content-type": "application/json"}),
    "http-no-method": _changed(http_api_event(PREDICT), "requestContext", "http", "method",
                               value=...),
    "http-http-not-object": _changed(http_api_event(PREDICT), "requestContext", "http",
                                     value="GET"),
    "base64-not-base64": {**http_api_event(PREDICT), "isBase64Encoded": True, "body": "*not*"},
    "base64-flag-a-string": {**http_api_event(PREDICT), "isBase64Encoded": "false"},
}


@pytest.mark.parametrize("event", list(MALFORMED.values()), ids=list(MALFORMED))
def test_an_event_no_source_sends_gets_a_4xx_never_an_exception(
    handler: LambdaHandler, event: Any
) -> None:
    response = handler(event, None)

    assert 400 <= response["statusCode"] < 500, response
    assert json.loads(response["body"])["detail"]


def _key_header(event: dict[str, Any], value: Any, multi: bool = False) -> dict[str, Any]:
    """`event` (keyed) with its X-API-Key header's value replaced, in either header field."""
    field = "multiValueHeaders" if multi else "headers"
    name = next(name for name in event[field] if name.lower() == "x-api-key")
    changed = _changed(event, field, name, value=value)
    return changed if multi or "multiValueHeaders" not in event else _changed(
        changed, "multiValueHeaders", value=None)


BASE64_LOOKING = Case("base64-looking", "POST", "/predict", b"true", PREDICT.headers)

# Fields of a type no source sends, which Mangum would misread (the text "false" is true to
# Python: a body that happens to be base64 would be decoded) or fail on without naming them,
# with the API key set: a 400 naming the field, never a 500 (nor a 401, for a key no HTTP
# request can carry).
NAMED = {
    "base64-flag-the-text-false": ({**http_api_event(PREDICT), "isBase64Encoded": "false"},
                                   '"isBase64Encoded" must be true or false, got \'false\''),
    "base64-flag-false-on-a-base64-looking-body": (
        {**http_api_event(BASE64_LOOKING), "isBase64Encoded": "false"},
        '"isBase64Encoded" must be true or false'),
    "rest-base64-flag-a-number": ({**rest_api_event(PREDICT), "isBase64Encoded": 0},
                                  '"isBase64Encoded" must be true or false, got 0'),
    "rest-int-key": (_key_header(rest_api_event(PREDICT), 41),
                     '"headers": the value of \'X-API-Key\' must be text, got 41'),
    "rest-list-key": (_key_header(rest_api_event(PREDICT), [KEY]),
                      '"headers": the value of \'X-API-Key\' must be text, got [\''),
    "rest-multi-value-key-not-a-list": (
        _key_header(rest_api_event(PREDICT), KEY, multi=True),
        '"multiValueHeaders": the value of \'X-API-Key\' must be a list of texts'),
    "rest-multi-value-int-key": (
        _key_header(rest_api_event(PREDICT), [41], multi=True),
        '"multiValueHeaders": the value of \'X-API-Key\' must be a list of texts, got [41]'),
    "http-dict-key": (_key_header(http_api_event(PREDICT), {"a": 1}),
                      '"headers": the value of \'x-api-key\' must be text, got {\'a\': 1}'),
    "http-null-key": (_key_header(http_api_event(PREDICT), None),
                      '"headers": the value of \'x-api-key\' must be text, got None'),
    "http-headers-a-text": (_changed(http_api_event(PREDICT), "headers", value="x"),
                            '"headers" must be a JSON object'),
}


@pytest.mark.parametrize(("event", "named"), list(NAMED.values()), ids=list(NAMED))
def test_a_field_mangum_would_misread_is_a_400_naming_it(
    handler: LambdaHandler, event: dict[str, Any], named: str
) -> None:
    response = handler(event, None)
    detail = json.loads(response["body"])["detail"]
    assert response["statusCode"] == 400, response
    assert detail.startswith(f"the event is not an HTTP request this function reads ({named}")


def test_a_bool_base64_flag_is_read_as_it_says(
    handler: LambdaHandler, local: dict[str, Comparable]
) -> None:
    """The check takes nothing a source sends: false and true (the body encoded) both predict."""
    for event in (http_api_event(PREDICT), http_api_event(PREDICT, base64=True)):
        assert proxy_comparable(handler(event, None), "POST") == local["predict"]


def test_an_event_the_adapter_cannot_read_is_a_400_naming_the_shapes(
    handler: LambdaHandler
) -> None:
    response = handler(MALFORMED["no-known-shape"], None)
    assert response["statusCode"] == 400
    assert "send an API Gateway, Function URL or load balancer event" in response["body"]


def test_a_fault_of_the_app_is_the_local_apis_json_500(bundle: Path) -> None:
    """The server's own state broken (the served model replaced by an object that is no model):
    the app's own 500, through the adapter, as the local API sends it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(API_KEY_ENV, raising=False)
        broken = create_app(*load_bundle(bundle))
    broken.state.endpoints.service = object()
    try:
        response = lambda_handler(broken)(http_api_event(PREDICT), None)
    finally:
        broken.state.endpoints.log.close()
    assert (response["statusCode"], response["body"]) == (
        500, '{"detail":"Internal Server Error"}')


SHIPPED_EVENT = PROJECT_ROOT / "deployment" / "aws_lambda" / "event.json"


def test_the_shipped_event_is_an_http_api_predict_answered_with_a_prediction(bundle: Path) -> None:
    """deployment/aws_lambda/event.json, the event documentation/deployment.md runs locally:
    an HTTP API (payload 2.0) POST /predict whose body the example's model predicts."""
    event = json.loads(SHIPPED_EVENT.read_text())
    assert (event["version"], event["rawPath"], event["requestContext"]["http"]["method"]) == (
        "2.0", "/predict", "POST")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(API_KEY_ENV, raising=False)  # as shipped: no key, as deployment.md runs it
        app = create_app(*load_bundle(bundle))
    try:
        response = lambda_handler(app)(event, None)
    finally:
        app.state.endpoints.log.close()

    assert response["statusCode"] == 200, response
    answer = json.loads(response["body"])
    assert set(answer["probabilities"]) == {"0", "1"}
    assert str(answer["prediction"]) in answer["probabilities"]
    assert abs(sum(answer["probabilities"].values()) - 1) <= PROBABILITY_TOLERANCE
    assert answer["model_version"]

