"""The Flask app answers every request exactly as the FastAPI app does (request_id aside)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from ml_project.api import create_app
from ml_project.config import Config
from ml_project.flask_api import create_flask_app
from ml_project.predict import PredictionService
from ml_project.prediction_log import PredictionLog
from tests.serving import (
    INSTANCE,
    instance,
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
