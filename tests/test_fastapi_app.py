"""The prediction service over real HTTP: FastAPI (uvicorn) and Flask (werkzeug) on 127.0.0.1.

Behaviour tests run against both apps; tests/test_flask_app.py checks they answer alike.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pytest
import requests
from fastapi import FastAPI
from flask import Flask

from ml_project.config import Config
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.fastapi_app import create_app
from ml_project.serving.flask_app import create_flask_app
from ml_project.serving.request_model import build_request_model
from ml_project.validate import validate_production_data
from tests.conftest import PROBABILITY_TOLERANCE
from tests.serving import (
    INSTANCE,
    instance,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
)

# Small limits, so oversized requests stay small.
LIMITS = {"prediction": {"max_batch_size": 5, "max_body_bytes": 4000},
          "validation": {"unknown_fields": "reject"}}
FACTORIES: dict[str, Callable[..., FastAPI | Flask]] = {
    "fastapi": create_app,
    "flask": create_flask_app,
}


@pytest.fixture(scope="module")
def config(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_serving_config(
        write_serving_config(trained_project, tmp_path_factory.mktemp("api"), LIMITS)
    )


@pytest.fixture(scope="module")
def service(config: Config) -> PredictionService:
    return PredictionService.from_config(config)


@pytest.fixture(scope="module")
def log(config: Config) -> Iterator[PredictionLog]:
    log = PredictionLog.from_config(config)
    yield log
    log.close()


def start(framework: str, service: PredictionService | None, log: PredictionLog | None,
          api_key: str | None = None) -> Any:
    """Serve a new app; the API key is read from the environment when the app is created."""
    with pytest.MonkeyPatch.context() as patch:
        if api_key:
            patch.setenv("ML_PROJECT_API_KEY", api_key)
        else:
            patch.delenv("ML_PROJECT_API_KEY", raising=False)
        app = FACTORIES[framework](service, log)
    return serve_in_thread(app)


@pytest.fixture(scope="module", params=list(FACTORIES))
def url(request: pytest.FixtureRequest, service: PredictionService, log: PredictionLog
        ) -> Iterator[str]:
    with start(request.param, service, log) as base_url:
        yield base_url


def post(url: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers={"Content-Type": "application/json"},
                         timeout=10, **kwargs)


def test_predict_returns_the_core_prediction_with_probabilities_version_and_request_id(
    url: str, service: PredictionService
) -> None:
    response = post(f"{url}/predict", INSTANCE)

    assert response.status_code == 200
    body = response.json()
    expected = service.predict_instance(INSTANCE)
    assert body["prediction"] == expected.prediction
    assert body["probabilities"] == expected.probabilities
    assert set(body["probabilities"]) == {"0", "1"}
    assert body["model_version"] == service.model_version
    assert len(body["request_id"]) == 32


def test_predict_batch_returns_one_prediction_per_instance_in_order(
    url: str, service: PredictionService
) -> None:
    instances = [INSTANCE, instance(age=80, contract="two-year"), instance(tenure_months=1)]

    response = post(f"{url}/predict/batch", {"instances": instances})

    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = service.predict_records(instances)
    assert [p["prediction"] for p in predictions] == [e.prediction for e in expected]
    for answer, core in zip(predictions, expected):
        assert answer["probabilities"] == pytest.approx(core.probabilities, abs=PROBABILITY_TOLERANCE)
        assert answer["model_version"] == core.model_version


@pytest.mark.parametrize(
    ("path", "body", "status", "errors", "detail"),
    [
        pytest.param("/predict", b'{"age": ', 400, None, "not valid JSON", id="malformed-json"),
        pytest.param("/predict", b"", 400, None, "not valid JSON", id="empty-body"),
        pytest.param("/predict", b'{"age": NaN}', 400, None, "NaN is not a JSON value",
                     id="nan-is-not-json"),
        pytest.param("/predict", [INSTANCE], 422, None, "must be a JSON object", id="not-object"),
        pytest.param("/predict", instance(age="forty"), 422,
                     {"age": "must be a number, got 'forty'"}, "age", id="wrong-type"),
        pytest.param("/predict", instance(drop=("age",)), 422, {"age": "is required"}, "age",
                     id="missing-field"),
        pytest.param("/predict", instance(colour="red"), 422,
                     {"colour": "is not a known field"}, "colour", id="extra-field"),
        pytest.param("/predict", instance(age=300), 422, {"age": "must be <= 110, got 300"},
                     "age", id="out-of-range"),
        pytest.param("/predict", instance(contract="weekly"), 422,
                     {"contract": "must be one of ['month-to-month', 'one-year', 'two-year'], "
                                  "got 'weekly'"}, "contract", id="unknown-category"),
        pytest.param("/predict", instance(region=None), 422, {"region": "must not be null"},
                     "region", id="null-where-not-nullable"),
        pytest.param("/predict", instance(event_time={"at": 1}), 422,
                     {"event_time": "must be a year-first timestamp (ISO 8601, e.g. "
                                    "2024-05-31T14:00:00Z), got {'at': 1}"}, "event_time",
                     id="identifier-of-the-wrong-type"),
        pytest.param("/predict", instance(note="x" * 5000), 413, None,
                     "larger than 4000 bytes", id="body-too-large"),
        pytest.param("/predict/batch", [INSTANCE], 422, {"instances": "is required"},
                     "instances", id="batch-not-object"),
        pytest.param("/predict/batch", {"instances": []}, 422,
                     {"instances": "must be a non-empty list"}, "instances", id="batch-empty"),
        pytest.param("/predict/batch", {"instances": [INSTANCE], "mode": "fast"}, 422,
                     {"mode": "is not a known field"}, "mode", id="batch-extra-field"),
        pytest.param("/predict/batch", {"instances": [INSTANCE, 3]}, 422,
                     {"instances[1]": "must be a JSON object, got int"}, "JSON object",
                     id="batch-item-not-object"),
        pytest.param("/predict/batch", {"instances": [INSTANCE, instance(age="x")]}, 422,
                     {"instances[1].age": "must be a number, got 'x'"},
                     "instances[1].age", id="batch-item-invalid"),
        pytest.param("/predict/batch", {"instances": [INSTANCE] * 6}, 422,
                     {"instances": "must hold at most 5 instances"}, "at most 5",
                     id="batch-too-large"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field_and_the_rule(
    url: str, path: str, body: Any, status: int, errors: dict[str, str] | None, detail: str
) -> None:
    response = post(url + path, body)

    assert response.status_code == status
    answer = response.json()
    assert detail in answer["detail"]
    assert answer.get("errors") == errors
    assert len(answer["request_id"]) == 32


def test_every_prediction_and_rejection_is_logged_and_refusals_only_counted(
    url: str, log: PredictionLog, service: PredictionService
) -> None:
    good = post(f"{url}/predict", INSTANCE).json()
    bad = post(f"{url}/predict", instance(age="forty")).json()
    malformed = post(f"{url}/predict", b"{").json()
    batch = post(f"{url}/predict/batch", {"instances": [INSTANCE, instance(age=17)]}).json()

    records = log.read(last=20)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_request.setdefault(record["request_id"], []).append(record)

    [logged] = by_request[good["request_id"]]
    assert (logged["source"], logged["error"]) == ("api", None)
    assert logged["prediction"] == good["prediction"]
    assert logged["instance_id"] == INSTANCE["customer_id"]
    assert logged["model_version"] == service.model_version
    assert logged["model_sha256"] == service.metadata["sha256"]
    assert logged["model_name"] == service.metadata["model_name"]
    [logged] = by_request[bad["request_id"]]
    assert logged["input"]["age"] == "forty"
    assert logged["error"] == "422: invalid instance: age: must be a number, got 'forty'"
    assert malformed["request_id"] not in by_request  # refused at the door: counted only
    first, second = by_request[batch["request_id"]]
    assert (first["instance_index"], second["instance_index"]) == (0, 1)
    assert first["error"] == "422: not predicted: another instance in its batch is invalid"
    assert second["error"] == "422: invalid instance: age: must be >= 18, got 17"


def test_json_null_and_absent_fields_predict_like_missing_values_in_the_batch_path(
    config: Config, service: PredictionService, log: PredictionLog
) -> None:
    """A null reaches the Pipeline as NaN, exactly as a missing value in a data file does."""
    instances = [
        instance(payment_method=None),
        instance(internet_service=None, contract="two-year"),
        instance(drop=("payment_method", "internet_service"), age=70),
        instance(payment_method=None, total_charges=None, data_usage_gb=None),
    ]
    frame = pd.DataFrame(instances).reindex(columns=list(INSTANCE))
    raw = validate_production_data(frame, config, with_target=False).valid
    assert len(raw) == len(instances)
    batch_path = service.predict_frame(raw)

    answers: dict[str, list[dict[str, Any]]] = {}
    for framework in FACTORIES:
        with start(framework, service, log) as base_url:
            answers[framework] = [post(f"{base_url}/predict", r).json() for r in instances]
            answers[f"{framework} batch"] = post(
                f"{base_url}/predict/batch", {"instances": instances}
            ).json()["predictions"]

    for name, predictions in answers.items():
        assert [p["prediction"] for p in predictions] == batch_path["prediction"].tolist(), name
        for answer, (_, row) in zip(predictions, batch_path.iterrows()):
            expected = {"0": row["probability_0"], "1": row["probability_1"]}
            assert answer["probabilities"] == pytest.approx(expected, abs=PROBABILITY_TOLERANCE), name


@pytest.mark.parametrize("framework", FACTORIES)
def test_api_key_is_required_when_set_and_never_logged(
    framework: str, service: PredictionService, log: PredictionLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "s3cret-key-for-tests"
    with start(framework, service, log, api_key=key) as base_url:
        without_key = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=10)
        wrong_key = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=10,
                                  headers={"X-API-Key": "not-the-key"})
        right_key = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=10,
                                  headers={"X-API-Key": key})
        health = requests.get(f"{base_url}/health", timeout=10)
        ready_without_key = requests.get(f"{base_url}/ready", timeout=10)
        ready_with_key = requests.get(f"{base_url}/ready", headers={"X-API-Key": key}, timeout=10)

    assert without_key.status_code == wrong_key.status_code == 401
    assert without_key.json()["detail"] == "missing or wrong X-API-Key header"
    assert right_key.status_code == 200
    assert health.status_code == 200
    assert (ready_without_key.status_code, ready_with_key.status_code) == (401, 200)
    logged = json.dumps(log.read(last=50))
    assert without_key.json()["request_id"] not in logged  # refused at the door: not a record
    assert right_key.json()["request_id"] in logged
    assert health.json()["counters"]["refused_401"] >= 2
    assert key not in logged
    assert key not in caplog.text


@pytest.mark.parametrize("framework", FACTORIES)
def test_ready_is_503_until_a_model_is_loaded(
    framework: str, service: PredictionService, log: PredictionLog
) -> None:
    app = FACTORIES[framework](None, log)
    with serve_in_thread(app) as base_url:
        before = {path: requests.get(base_url + path, timeout=10) for path in ("/health", "/ready",
                                                                              "/model")}
        predict_before = post(f"{base_url}/predict", INSTANCE)
        endpoints = app.state.endpoints if isinstance(app, FastAPI) else app.extensions[
            "prediction_endpoints"]
        endpoints.service = service
        ready_after = requests.get(f"{base_url}/ready", timeout=10)
        predict_after = post(f"{base_url}/predict", INSTANCE)

    assert before["/health"].status_code == 200
    assert before["/ready"].status_code == before["/model"].status_code == 503
    assert before["/ready"].json() == {"detail": "no model loaded yet; retry shortly"}
    assert predict_before.status_code == 503
    assert ready_after.json() == {"status": "ready", "model_version": service.model_version}
    assert predict_after.status_code == 200


def test_model_describes_name_version_task_features_and_holdout_metrics(
    url: str, service: PredictionService
) -> None:
    body = requests.get(f"{url}/model", timeout=10).json()

    assert body["model_version"] == service.model_version
    assert body["task"] == "binary_classification"
    assert body["features"] == service.features
    assert set(body["holdout_metrics"]) >= {"roc_auc", "accuracy"}
    assert body["model_name"]


def test_model_card_serves_the_exported_card_as_json_or_markdown(
    url: str, service: PredictionService
) -> None:
    assert service.card is not None
    card, markdown = service.card
    as_json = requests.get(f"{url}/model/card", timeout=10)
    as_markdown = requests.get(f"{url}/model/card", headers={"Accept": "text/markdown"},
                               timeout=10)

    assert (as_json.status_code, as_json.json()) == (200, card)
    assert as_json.json()["model"]["model_version"] == service.model_version
    assert (as_markdown.status_code, as_markdown.text) == (200, markdown)
    assert as_markdown.headers["content-type"] == "text/markdown; charset=utf-8"


@pytest.mark.parametrize("framework", FACTORIES)
def test_model_card_is_404_for_a_model_exported_without_one(
    framework: str, service: PredictionService, log: PredictionLog
) -> None:
    uncarded = PredictionService(service.pipeline, service.metadata, service.config,
                                 service.reference)
    with start(framework, uncarded, log) as base_url:
        answer = requests.get(f"{base_url}/model/card", timeout=10)

    assert answer.status_code == 404
    assert "has no model card" in answer.json()["detail"]


def test_docs_show_the_request_model_with_an_example_that_is_accepted(
    config: Config, service: PredictionService, log: PredictionLog
) -> None:
    with start("fastapi", service, log) as base_url:
        docs = requests.get(f"{base_url}/docs", timeout=10)
        spec = requests.get(f"{base_url}/openapi.json", timeout=10).json()
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        example_answer = post(f"{base_url}/predict", body["example"])
        batch = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"][
            "application/json"]
        batch_answer = post(f"{base_url}/predict/batch", batch["example"])

    assert docs.status_code == 200
    model_schema = build_request_model(config).model_json_schema()
    assert body["schema"]["properties"].keys() == model_schema["properties"].keys()
    assert body["schema"]["required"] == model_schema["required"]
    assert body["schema"]["properties"]["age"]["maximum"] == 110
    assert example_answer.status_code == 200
    assert batch_answer.status_code == 200
    assert batch["schema"]["properties"]["instances"]["maxItems"] == 5


@pytest.mark.parametrize("framework", list(FACTORIES))
def test_concurrent_requests_are_predicted_one_at_a_time_and_all_answered(
    framework: str, config: Config, log: PredictionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads read and answer requests concurrently, but the core's CPU work runs one
    request at a time (GIL contention cost a third of the throughput)."""
    service = PredictionService.from_config(config)
    active, most = [0], [0]
    guard = threading.Lock()
    predict_instance = service.predict_instance

    def counting(record: Any) -> Any:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.005)  # long enough for other threads to arrive
        with guard:
            active[0] -= 1
        return predict_instance(record)

    monkeypatch.setattr(service, "predict_instance", counting)
    with start(framework, service, log) as base_url, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(f"{base_url}/predict", INSTANCE).status_code,
                                 range(40)))

    assert statuses == [200] * 40
    assert most[0] == 1
