"""The Flask app answers every request exactly as the FastAPI app does (request_id aside)."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from fastapi import FastAPI
from flask import Flask

from ml_project.config import Config
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.endpoints import API_KEY_ENV
from ml_project.serving.fastapi_app import create_app
from ml_project.serving.flask_app import create_flask_app
from tests.serving import (
    INSTANCE,
    instance,
    launch_server,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
)

LIMITS = {"prediction": {"max_batch_size": 3, "max_body_bytes": 3000},
          "validation": {"unknown_fields": "reject"}}


@pytest.fixture(scope="module")
def config(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_serving_config(
        write_serving_config(trained_project, tmp_path_factory.mktemp("flask_api"), LIMITS)
    )


@pytest.fixture(scope="module")
def servers(config: Config) -> Iterator[dict[str, str]]:
    """Both apps over one service and one log, each on its own port."""
    service = PredictionService.from_config(config)
    log = PredictionLog.from_config(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ML_PROJECT_API_KEY", raising=False)
        fastapi_app, flask_app = create_app(service, log), create_flask_app(service, log)
    with serve_in_thread(fastapi_app) as fastapi_url, serve_in_thread(flask_app) as flask_url:
        yield {"fastapi": fastapi_url, "flask": flask_url}
    log.close()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/health", None, id="health"),
        pytest.param("GET", "/ready", None, id="ready"),
        pytest.param("GET", "/model", None, id="model"),
        pytest.param("GET", "/model/card", None, id="model-card"),
        pytest.param("GET", "/no-such-route", None, id="not-found"),
        pytest.param("GET", "/predict", None, id="method-not-allowed"),
        pytest.param("POST", "/predict", _json(INSTANCE), id="predict"),
        pytest.param("POST", "/predict", _json(instance(payment_method=None)), id="predict-null"),
        pytest.param("POST", "/predict", _json({**INSTANCE, "age": 3.5e1}), id="predict-float"),
        pytest.param("POST", "/predict/batch", _json({"instances": [INSTANCE] * 3}), id="batch"),
        pytest.param("POST", "/predict", b"{'age': 1}", id="malformed-json"),
        pytest.param("POST", "/predict", b"\xff\xfe\x00", id="not-utf8"),
        pytest.param("POST", "/predict", b"[" * 100_000, id="too-deep-and-too-large"),
        pytest.param("POST", "/predict", b"[" * 2000, id="deeply-nested"),
        pytest.param("POST", "/predict", b'"just a string"', id="not-an-object"),
        pytest.param("POST", "/predict", _json(instance(age="x", colour=1, drop=("region",))),
                     id="several-bad-fields"),
        pytest.param("POST", "/predict", _json(instance(age=True)), id="bool-for-number"),
        pytest.param("POST", "/predict", _json(instance(contract=["one-year"])), id="list-value"),
        pytest.param("POST", "/predict", _json(instance(age=1e400)), id="infinite-number"),
        pytest.param("POST", "/predict/batch", _json({"instances": [INSTANCE] * 4}),
                     id="batch-too-large"),
        pytest.param("POST", "/predict/batch", _json({"instances": "all"}), id="batch-not-list"),
        pytest.param("POST", "/predict/batch",
                     _json({"instances": [instance(age=-1), instance(region="mars")]}),
                     id="batch-two-invalid"),
    ],
)
def test_flask_answers_like_fastapi(
    servers: dict[str, str], method: str, path: str, body: bytes | None
) -> None:
    answers = {
        framework: requests.request(method, url + path, data=body, timeout=10,
                                    headers={"Content-Type": "application/json"})
        for framework, url in servers.items()
    }

    statuses = {framework: answer.status_code for framework, answer in answers.items()}
    bodies = {framework: answer.json() for framework, answer in answers.items()}
    for content in bodies.values():
        content.pop("request_id", None)
    assert statuses["flask"] == statuses["fastapi"]
    assert bodies["flask"] == bodies["fastapi"]
    assert statuses["fastapi"] < 500


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("size", "status"), [(3000, 422), (3001, 413)])
def test_both_limit_the_body_at_exactly_max_body_bytes(
    servers: dict[str, str], chunked: bool, size: int, status: int
) -> None:
    """A chunked upload declares no length: the limit must hold while reading the stream."""
    body = b'{"note": "' + b"x" * (size - 12) + b'"}'
    assert len(body) == size

    for framework, url in servers.items():
        data = iter([body[:1000], body[1000:]]) if chunked else body
        answer = requests.post(f"{url}/predict", data=data, timeout=10)
        assert answer.status_code == status, framework
        if status == 413:
            assert answer.json()["detail"] == "the body is larger than 3000 bytes"
        else:
            assert answer.json()["errors"]["note"] == "is not a known field"


# The real servers, as launched in production (uvicorn; gunicorn), with an API key -------------

KEY = "parity-key-5b7e"


@pytest.fixture(scope="module")
def launched(trained_project: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, tuple[str, Path]]]:
    """Both launchers, each with its own folder: base URL and server output per framework."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for framework in ("fastapi", "flask"):
            root = tmp_path_factory.mktemp(f"launched_{framework}")
            config_file = write_serving_config(trained_project, root, LIMITS)
            output = root / "server.out"
            url, _ = stack.enter_context(launch_server(config_file, output, framework,
                                                       environment={API_KEY_ENV: KEY}))
            servers[framework] = (url, output)
        yield servers


def raw_request(url: str, request: bytes, method: str) -> tuple[int, str, str | None, bytes]:
    """Send exactly these bytes; the status, content type, Allow header and body of the final
    answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        answer = http.client.HTTPResponse(connection, method=method)
        answer.begin()  # skips an interim "100 Continue"
        return (answer.status, answer.getheader("Content-Type", ""), answer.getheader("Allow"),
                answer.read())


def build(method: str, path: str, body: bytes = b"", headers: tuple[str, ...] = (f"X-API-Key: {KEY}",),
          length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    if body or method in ("POST", "PUT") or length is not None:
        lines += ["Content-Type: application/json",
                  f"Content-Length: {len(body) if length is None else length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


NESTED = b'{"age": ' + b"[" * 700 + b"]" * 700 + b"}"
SURROGATE_VALUE = _json(INSTANCE).replace(b'"C000001"', b'"\\ud800"')
SURROGATE_KEY = _json(INSTANCE).replace(b'"region"', b'"\\udfff"')
FORGED = _json({**INSTANCE, "x\nFORGED 2026 INFO root: admin logged in": 1})
PAST_FLOAT_RANGE = "9" * 400
GZIP = ("Content-Encoding: gzip",)

# What both servers must answer alike (the parity table in documentation/reliability.md).
PARITY = [
    pytest.param(build("POST", "/predict/", _json(INSTANCE)), "POST", 404, id="trailing-slash"),
    pytest.param(build("HEAD", "/health"), "HEAD", 405, id="head-health"),
    pytest.param(build("HEAD", "/predict"), "HEAD", 405, id="head-predict"),
    pytest.param(build("OPTIONS", "/predict"), "OPTIONS", 405, id="options-predict"),
    pytest.param(build("OPTIONS", "/health"), "OPTIONS", 405, id="options-health"),
    pytest.param(build("GET", "/no-such-route"), "GET", 404, id="unknown-route"),
    pytest.param(build("GET", "/predict"), "GET", 405, id="wrong-method"),
    pytest.param(build("DELETE", "/predict/batch"), "DELETE", 405, id="wrong-method-delete"),
    pytest.param(build("POST", "/predict", _json(INSTANCE), headers=(f"X-API-Key: {KEY} ",)),
                 "POST", 200, id="key-trailing-space"),
    pytest.param(build("POST", "/predict", _json(INSTANCE), headers=()), "POST", 401,
                 id="no-key"),
    pytest.param(build("POST", "/predict", _json(INSTANCE),
                       headers=(f"X-API-Key: {KEY}", "X-API-Key: wrong")), "POST", 401,
                 id="two-keys"),
    pytest.param(build("POST", "/predict", _json(INSTANCE),
                       headers=(f"X-API-Key: {KEY}", f"X-API-Key: {KEY}")), "POST", 401,
                 id="two-keys-both-right"),
    pytest.param(build("POST", "/predict", _json(INSTANCE),
                       headers=(f"X-API-Key: {KEY}", "Expect: 100-continue")), "POST", 200,
                 id="expect-100-continue"),
    pytest.param(build("POST", "/predict", b"", headers=(f"X-API-Key: {KEY}",
                                                          "Expect: 100-continue"),
                       length=10_000_000), "POST", 413, id="expect-100-continue-too-large"),
    pytest.param(build("POST", "/predict", b""), "POST", 400, id="empty-body"),
    pytest.param(build("POST", "/predict", b"age=41"), "POST", 400, id="not-json"),
    pytest.param(build("POST", "/predict", b"{" + b" " * 3100 + b"}"), "POST", 413,
                 id="huge-body"),
    pytest.param(build("POST", "/predict", NESTED), "POST", 400, id="nested-700-deep"),
    pytest.param(build("POST", "/predict", SURROGATE_VALUE), "POST", 200,
                 id="lone-surrogate-value"),
    pytest.param(build("POST", "/predict", SURROGATE_KEY), "POST", 422, id="lone-surrogate-key"),
    pytest.param(build("POST", "/predict", FORGED), "POST", 422, id="newline-in-field-name"),
    # werkzeug matches a path with its leading slashes merged, whatever `merge_slashes`
    pytest.param(build("POST", "//predict", _json(INSTANCE)), "POST", 404,
                 id="double-leading-slash"),
    pytest.param(build("POST", "/%2Fpredict", _json(INSTANCE)), "POST", 404, id="slash-escaped"),
    pytest.param(build("HEAD", "//health"), "HEAD", 404, id="head-double-leading-slash"),
    pytest.param(build("POST", "/predict//batch", _json({"instances": [INSTANCE]})), "POST", 404,
                 id="double-inner-slash"),
    pytest.param(build("POST", "/./predict", _json(INSTANCE)), "POST", 404, id="dot-segment"),
    pytest.param(build("POST", "/predict", gzip.compress(_json(INSTANCE)),
                       headers=(f"X-API-Key: {KEY}", *GZIP)), "POST", 415, id="gzip"),
    pytest.param(build("POST", "/invocations", gzip.compress(_json(INSTANCE)), headers=GZIP),
                 "POST", 415, id="gzip-no-key"),
    pytest.param(build("POST", "/predict", _json(INSTANCE),
                       headers=(f"X-API-Key: {KEY}", "Content-Encoding: identity")), "POST",
                 200, id="identity"),
    pytest.param(build("POST", "/predict",
                       _json(instance(age="@")).replace(b'"@"', PAST_FLOAT_RANGE.encode())),
                 "POST", 422, id="int-past-float-range"),
    pytest.param(build("POST", "/predict", _json(instance(customer_id="@")).replace(
        b'"@"', PAST_FLOAT_RANGE.encode())), "POST", 200, id="id-past-float-range"),
]


@pytest.mark.parametrize(("request_bytes", "method", "status"), PARITY)
def test_both_launched_servers_answer_every_case_alike_and_never_500(
    launched: dict[str, tuple[str, Path]], request_bytes: bytes, method: str, status: int
) -> None:
    answers = {}
    for framework, (url, _) in launched.items():
        code, content_type, allow, body = raw_request(url, request_bytes, method)
        content = json.loads(body) if body else None
        if isinstance(content, dict):
            content.pop("request_id", None)
        answers[framework] = (code, content_type, allow, content)
    assert answers["fastapi"] == answers["flask"]
    assert answers["fastapi"][0] == status
    assert answers["fastapi"][1] == "application/json"


def test_a_field_name_cannot_forge_a_line_in_the_server_log(
    launched: dict[str, tuple[str, Path]]
) -> None:
    for framework, (url, output) in launched.items():
        raw_request(url, build("POST", "/predict", FORGED), "POST")
        lines = output.read_text().splitlines()
        assert not [line for line in lines if line.startswith("FORGED")], framework
        assert any("FORGED" in line for line in lines), framework  # logged, on its own line


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_that_leaves_mid_body_is_one_info_line_in_both(
    launched: dict[str, tuple[str, Path]], chunked: bool
) -> None:
    """Not an ERROR with a traceback (FastAPI's request stream raises ClientDisconnect, which
    uvicorn would log so), and nothing is answered or logged for the part that came."""
    framing = "Transfer-Encoding: chunked\r\n\r\n8\r\n" if chunked else \
        "Content-Length: 1000\r\n\r\n"
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: application/json\r\n{framing}").encode()
    for framework, (url, output) in launched.items():
        before = len(output.read_text().splitlines())
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(head + b'{"age": ')
            time.sleep(0.3)  # the server is reading the body
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                "Client left" in line for line in output.read_text().splitlines()[before:]):
            time.sleep(0.05)
        time.sleep(0.3)  # anything else it would log about this request
        lines = output.read_text().splitlines()[before:]
        assert len(lines) == 1, (framework, lines)
        assert " INFO " in lines[0] and "Client left before its body of POST /predict arrived" \
            in lines[0], framework


def test_a_fault_no_route_caught_is_the_same_json_500_in_both(config: Config) -> None:
    """The server's own state broken (here the served model replaced by an object that is no
    model): both frameworks answer the same JSON 500, never a text or HTML page."""
    service = PredictionService.from_config(config)
    log = PredictionLog.from_config(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ML_PROJECT_API_KEY", raising=False)
        fastapi_app, flask_app = create_app(service, log), create_flask_app(service, log)
    fastapi_app.state.endpoints.service = object()
    flask_app.extensions["prediction_endpoints"].service = object()
    answers = {}
    apps: dict[str, FastAPI | Flask] = {"fastapi": fastapi_app, "flask": flask_app}
    for framework, app in apps.items():
        with serve_in_thread(app) as url:
            answer = requests.post(f"{url}/predict", json=INSTANCE, timeout=10)
            answers[framework] = (answer.status_code, answer.headers["Content-Type"],
                                  answer.content)
    log.close()
    assert answers["fastapi"] == answers["flask"] == (
        500, "application/json", b'{"detail":"Internal Server Error"}')
