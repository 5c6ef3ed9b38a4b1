"""The requests every cloud entry point must answer as the local API does, and how to compare.

A case is (name, method, path, body, headers). `local_answers` sends each to a running local
API; `comparable` reduces an answer to what must be identical: status, content type, Allow
header and the JSON body without its request id (and, for /health, without the counters, which
depend on what each process has served and written). The event builders make the Lambda events
API Gateway and Function URLs send for a case.
"""

from __future__ import annotations

import base64 as b64
import gzip
import http.client
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import yaml
from fastapi import FastAPI
from flask import Flask

from ml_project.config import _merge
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.bundle import load_bundle
from ml_project.serving.endpoints import API_KEY_ENV
from ml_project.serving.fastapi_app import create_app
from ml_project.serving.flask_app import create_flask_app
from tests.serving import (
    INSTANCE,
    instance,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
)

KEY = "serverless-key-41c9"
# Small limits, so the oversized cases stay small (the same in every app compared), but room for
# an integer past Python's int-to-str limit (4300 digits).
MAX_BODY_BYTES = 5000
LIMITS: dict[str, Any] = {"prediction": {"max_batch_size": 3, "max_body_bytes": MAX_BODY_BYTES},
                          "validation": {"unknown_fields": "reject"}}


class Case(NamedTuple):
    name: str
    method: str
    path: str
    body: bytes
    headers: dict[str, str]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _case(name: str, method: str, path: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> Case:
    keyed = {"X-API-Key": KEY, "Content-Type": "application/json"}
    return Case(name, method, path, body, keyed if headers is None else headers)


def _with(field: str, json_text: str) -> bytes:
    """INSTANCE with `field` set to a JSON value written as is (an integer Python would not
    write: past float range, or past its int-to-str limit)."""
    return _json({**INSTANCE, field: "@"}).replace(b'"@"', json_text.encode())


PAST_FLOAT_RANGE = "9" * 400  # a float holds integers of up to 309 digits
PAST_DIGIT_LIMIT = "9" * 4301  # Python reads (and writes) integers of up to 4300 digits
KEYED = {"X-API-Key": KEY, "Content-Type": "application/json"}


CASES = [
    _case("health", "GET", "/health"),
    _case("ready", "GET", "/ready"),
    _case("model", "GET", "/model"),
    _case("predict", "POST", "/predict", _json(INSTANCE)),
    _case("predict-null", "POST", "/predict", _json(instance(payment_method=None))),
    _case("batch", "POST", "/predict/batch", _json({"instances": [INSTANCE] * 3})),
    _case("invalid", "POST", "/predict", _json(instance(age="x", colour=1, drop=("region",)))),
    _case("batch-invalid", "POST", "/predict/batch",
          _json({"instances": [instance(age=-1), instance(region="mars")]})),
    _case("batch-too-large", "POST", "/predict/batch", _json({"instances": [INSTANCE] * 4})),
    _case("malformed-json", "POST", "/predict", b"{'age': 1}"),
    _case("empty-body", "POST", "/predict/batch"),
    _case("body-too-large", "POST", "/predict", b"{" + b" " * (MAX_BODY_BYTES + 100) + b"}"),
    _case("no-key", "POST", "/predict", _json(INSTANCE), {"Content-Type": "application/json"}),
    _case("wrong-key", "GET", "/model", headers={"X-API-Key": "wrong"}),
    _case("unknown-path", "GET", "/no-such-route"),
    _case("trailing-slash", "POST", "/predict/", _json(INSTANCE)),
    _case("wrong-method", "GET", "/predict"),
    _case("head", "HEAD", "/health"),
    _case("delete", "DELETE", "/predict/batch"),
    # Paths: only the exact route is served, never a redirect (an HTML 308 from werkzeug).
    _case("double-leading-slash", "POST", "//predict", _json(INSTANCE)),
    _case("double-leading-slash-get", "GET", "//ready"),
    _case("slash-escaped", "POST", "/%2Fpredict", _json(INSTANCE)),
    _case("double-inner-slash", "POST", "/predict//batch", _json({"instances": [INSTANCE]})),
    _case("dot-segment", "POST", "/./predict", _json(INSTANCE)),
    _case("trailing-slash-batch", "POST", "/predict/batch/", _json({"instances": [INSTANCE]})),
    _case("robots", "GET", "/robots.txt"),  # functions-framework answers these two itself
    _case("favicon", "GET", "/favicon.ico"),
    # Integers past float range: a 422 naming the field (the id takes any integer); past
    # Python's int-to-str limit, the body is refused whole (400), in any field.
    _case("int-past-float-range", "POST", "/predict", _with("age", PAST_FLOAT_RANGE)),
    _case("negative-int-past-float-range", "POST", "/predict",
          _with("total_charges", "-" + PAST_FLOAT_RANGE)),
    _case("int-past-float-range-in-a-list", "POST", "/predict",
          _with("monthly_charges", f"[{PAST_FLOAT_RANGE}]")),
    _case("int-past-float-range-for-a-category", "POST", "/predict",
          _with("contract", PAST_FLOAT_RANGE)),
    _case("int-past-float-range-for-the-label", "POST", "/predict",
          _with("churned", PAST_FLOAT_RANGE)),
    _case("int-past-float-range-for-the-label-nested", "POST", "/predict",
          _with("churned", f'{{"a": [{PAST_FLOAT_RANGE}]}}')),
    _case("int-past-float-range-for-the-id", "POST", "/predict",
          _with("customer_id", PAST_FLOAT_RANGE)),
    _case("int-past-float-range-in-a-batch", "POST", "/predict/batch",
          b'{"instances": [' + _with("age", PAST_FLOAT_RANGE) + b"]}"),
    _case("int-past-float-range-invocations", "POST", "/invocations",
          _with("support_calls", PAST_FLOAT_RANGE)),
    _case("int-past-digit-limit", "POST", "/predict", _with("age", PAST_DIGIT_LIMIT)),
    _case("int-past-digit-limit-for-the-id", "POST", "/predict/batch",
          b'{"instances": [' + _with("customer_id", PAST_DIGIT_LIMIT) + b"]}"),
    _case("int-past-digit-limit-invocations", "POST", "/invocations",
          _with("customer_id", PAST_DIGIT_LIMIT)),
    # A body in a content coding no route decodes: 415 naming it, before the key is checked.
    _case("gzip", "POST", "/predict", gzip.compress(_json(INSTANCE)),
          {**KEYED, "Content-Encoding": "gzip"}),
    _case("gzip-batch-no-key", "POST", "/predict/batch",
          gzip.compress(_json({"instances": [INSTANCE]})),
          {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
    _case("br-invocations", "POST", "/invocations", _json(INSTANCE),
          {**KEYED, "Content-Encoding": "br"}),
    _case("identity", "POST", "/predict", _json(INSTANCE),
          {**KEYED, "Content-Encoding": "identity"}),
]
CASE_IDS = [case.name for case in CASES]
# What the local API answers to the cases above an attack found answered otherwise somewhere
# (a 500, an HTML redirect, a 400 in a UTF-8 decoder's words): the status, and the field the
# 422 names or words of the detail. Every provider must then answer each case as the local API.
VERDICTS: dict[str, tuple[int, str]] = {
    "double-leading-slash": (404, "Not Found"), "double-leading-slash-get": (404, "Not Found"),
    "slash-escaped": (404, "Not Found"), "double-inner-slash": (404, "Not Found"),
    "dot-segment": (404, "Not Found"), "trailing-slash-batch": (404, "Not Found"),
    "robots": (404, "Not Found"), "favicon": (404, "Not Found"),
    "int-past-float-range": (422, "age"), "negative-int-past-float-range": (422, "total_charges"),
    "int-past-float-range-in-a-list": (422, "monthly_charges"),
    "int-past-float-range-for-a-category": (422, "contract"),
    "int-past-float-range-for-the-label": (422, "churned"),
    "int-past-float-range-for-the-label-nested": (422, "churned"),
    "int-past-float-range-for-the-id": (200, ""),
    "int-past-float-range-in-a-batch": (422, "instances[0].age"),
    "int-past-float-range-invocations": (422, "support_calls"),
    "int-past-digit-limit": (400, "an integer of 4301 digits"),
    "int-past-digit-limit-for-the-id": (400, "an integer of 4301 digits"),
    "int-past-digit-limit-invocations": (400, "an integer of 4301 digits"),
    "gzip": (415, "gzip-encoded"), "gzip-batch-no-key": (415, "gzip-encoded"),
    "br-invocations": (415, "br-encoded"), "identity": (200, ""),
}

Comparable = tuple[int, str, str | None, Any]


def comparable(status: int, content_type: str, allow: str | None, body: bytes) -> Comparable:
    content = json.loads(body) if body else None
    if isinstance(content, dict):
        content.pop("request_id", None)
        if "counters" in content:
            content.pop("counters")
    return status, content_type.split(";")[0], allow, content


def http_answer(base_url: str, case: Case) -> Comparable:
    """A running server's answer to `case`, its path sent as it is (an HTTP client library
    would remove `/./`). For HEAD, the body a GET would have had is not sent, so the body
    compared is empty."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(case.method, case.path, body=case.body or None,
                            headers=case.headers)
        answer = connection.getresponse()
        return comparable(answer.status, answer.getheader("Content-Type", ""),
                          answer.getheader("Allow"), answer.read())
    finally:
        connection.close()


def local_answers(base_url: str) -> dict[str, Comparable]:
    return {case.name: http_answer(base_url, case) for case in CASES}


def limit_bundle(bundle: Path) -> Path:
    """A provider's bundle (a copy: its config is rewritten) with LIMITS applied."""
    config_file = bundle / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump(_merge(content, LIMITS), sort_keys=False))
    return bundle


def write_bundle(trained_project: Path, root: Path) -> Path:
    """`root` with a project_config.yaml (LIMITS applied) serving `trained_project`'s champion."""
    write_serving_config(trained_project, root, LIMITS)
    return root


@contextmanager
def local_api(bundle: Path) -> Iterator[dict[str, Comparable]]:
    """The local FastAPI app (with the API key KEY) over `bundle`'s config: its answer to every
    case."""
    config = load_serving_config(bundle / "project_config.yaml")
    log = PredictionLog.from_config(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_KEY_ENV, KEY)
        app = create_app(PredictionService.from_config(config), log)
    try:
        with serve_in_thread(app) as url:
            yield local_answers(url)
    finally:
        log.close()


def keyed_app(bundle: Path) -> FastAPI:
    """The FastAPI app over `bundle`'s service, as a cloud entry point creates it, requiring
    the API key KEY."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_KEY_ENV, KEY)
        return create_app(*load_bundle(bundle))


def keyed_flask_app(bundle: Path) -> Flask:
    """The same, as the Flask app."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_KEY_ENV, KEY)
        return create_flask_app(*load_bundle(bundle))


# Lambda events as API Gateway and Function URLs send them (the fields the handler reads, and
# some it must ignore), built from a case.

def _text_body(case: Case) -> str | None:
    return case.body.decode("utf-8") if case.body else None


def _binary(case: Case) -> bool:
    """A body that is not text (a gzip one): every source sends it base64-encoded."""
    try:
        case.body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def rest_api_event(case: Case) -> dict[str, Any]:
    """API Gateway REST API proxy integration, payload 1.0, stage `prod`."""
    if _binary(case):
        return {**rest_api_event(case._replace(body=b"")),
                "body": b64.b64encode(case.body).decode("ascii"), "isBase64Encoded": True}
    return {
        "resource": "/{proxy+}", "path": case.path, "httpMethod": case.method,
        "headers": dict(case.headers) or None,
        "multiValueHeaders": {name: [value] for name, value in case.headers.items()} or None,
        "queryStringParameters": None, "pathParameters": {"proxy": case.path.lstrip("/")},
        "requestContext": {"stage": "prod", "path": f"/prod{case.path}",
                           "httpMethod": case.method, "resourcePath": "/{proxy+}"},
        "body": _text_body(case), "isBase64Encoded": False,
    }


def http_api_event(case: Case, stage: str = "$default", base64: bool = False) -> dict[str, Any]:
    """API Gateway HTTP API, payload 2.0, its default stage (main.tf's); a named stage prefixes
    rawPath and the path."""
    prefix = "" if stage == "$default" else f"/{stage}"
    base64 = base64 or _binary(case)
    body: str | None = None if base64 else _text_body(case)
    if base64 and case.body:
        body = b64.b64encode(case.body).decode("ascii")
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": prefix + case.path,
        "rawQueryString": "", "headers": {name.lower(): value
                                          for name, value in case.headers.items()},
        "requestContext": {"http": {"method": case.method, "path": prefix + case.path,
                                    "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1"},
                           "routeKey": "$default", "stage": stage},
        "body": body, "isBase64Encoded": base64 and bool(case.body),
    }


def function_url_event(case: Case) -> dict[str, Any]:
    """A Lambda Function URL: payload 2.0, stage $default, the body base64-encoded."""
    event = http_api_event(case, stage="$default", base64=True)
    event["requestContext"]["domainName"] = "example.lambda-url.eu-west-1.on.aws"
    return event


def direct_event(case: Case) -> dict[str, Any] | None:
    """A direct invocation for a POST case whose body is a JSON object, else None."""
    if case.method != "POST" or case.path not in ("/predict", "/predict/batch"):
        return None
    if len(case.body) > MAX_BODY_BYTES:
        return None  # an invocation has no body size: Lambda limits the payload itself
    try:
        value = json.loads(case.body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    headers = {"X-API-Key": case.headers["X-API-Key"]} if "X-API-Key" in case.headers else {}
    body = {"instance": value} if case.path == "/predict" else value
    return {**body, "headers": headers}


EVENT_SHAPES = {
    "rest_api_v1": rest_api_event,
    "http_api_v2": http_api_event,
    "function_url": function_url_event,
}


def proxy_comparable(response: dict[str, Any], method: str) -> Comparable:
    """A proxy response reduced as `comparable` reduces an HTTP answer (header names in any
    case, as HTTP has them)."""
    body = response["body"].encode()
    if response.get("isBase64Encoded"):
        body = b64.b64decode(body)
    headers = {name.lower(): value for name, value in (response.get("headers") or {}).items()}
    return comparable(response["statusCode"], headers.get("content-type", ""),
                      headers.get("allow"), b"" if method == "HEAD" else body)
