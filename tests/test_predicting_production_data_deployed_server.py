"""The client of a deployed server: API key, timeouts, retries with backoff, a clear summary.

A FastAPI service started here stands in for the deployed one; a tiny stub server scripts the
failures (503 twice, then 200; a 422 that must not be retried).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.fastapi_app import create_app
from tests.serving import (
    load_serving_config,
    sample_size_and_rejections,
    serve_in_thread,
    stub_server,
    write_serving_config,
)
from use_cases import predicting_production_data_deployed_server


def test_main_streams_to_the_server_with_the_api_key_and_summarises(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    log = PredictionLog.from_config(config)
    monkeypatch.setenv("ML_PROJECT_API_KEY", "deployed-key")
    app = create_app(PredictionService.from_config(config), log)
    with serve_in_thread(app) as url:
        monkeypatch.setenv("ML_PROJECT_SERVER_URL", url)
        code = predicting_production_data_deployed_server.main(
            ["--config", str(config_file), "--root", str(tmp_path)]
        )

    output = capsys.readouterr().out
    sent, rejected = sample_size_and_rejections(config)
    assert code == 0, output
    assert f"Streamed {sent} instances to {url} (model churn_model version" in output
    assert (f"ok {sent - rejected}, rejected {rejected} (invalid, not retried), failed 0"
            in output)
    assert "p50" in output and "p99" in output
    assert log.count() == sent
    log.close()


def test_main_retries_a_server_that_answers_503_then_recovers(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    with stub_server([503, 503]) as (url, received):
        monkeypatch.setenv("ML_PROJECT_SERVER_URL", url)
        code = predicting_production_data_deployed_server.main(
            ["--config", str(config_file), "--root", str(tmp_path), "--limit", "4",
             "--backoff", "0.01"]
        )

    output = capsys.readouterr().out
    assert code == 0, output
    assert "ok 4, rejected 0 (invalid, not retried), failed 0" in output
    assert "1 needed a retry" in output
    assert len(received) == 6


def test_main_exits_1_when_requests_still_fail_after_their_retries(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_file = write_serving_config(trained_project, tmp_path,
                                       {"prediction": {"max_retries": 2}})
    with stub_server([500] * 9) as (url, received):
        monkeypatch.setenv("ML_PROJECT_SERVER_URL", url)
        code = predicting_production_data_deployed_server.main(
            ["--config", str(config_file), "--root", str(tmp_path), "--limit", "3",
             "--backoff", "0.01"]
        )

    output = capsys.readouterr().out
    assert code == 1
    assert "ok 0, rejected 0 (invalid, not retried), failed 3 (after up to 2 retries)" in output
    assert len(received) == 9


def test_main_exits_1_when_the_server_refuses_the_api_key(
    trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    monkeypatch.setenv("ML_PROJECT_API_KEY", "the-right-key")
    app = create_app(PredictionService.from_config(config), None)
    with serve_in_thread(app) as url:
        monkeypatch.setenv("ML_PROJECT_SERVER_URL", url)
        monkeypatch.setenv("ML_PROJECT_API_KEY", "a-wrong-key")
        code = predicting_production_data_deployed_server.main(
            ["--config", str(config_file), "--root", str(tmp_path)]
        )

    assert code == 1
    assert "Streamed" not in capsys.readouterr().out
