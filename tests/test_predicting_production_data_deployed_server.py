"""The client of a deployed server: API key, timeouts, retries with backoff, a clear summary.

A FastAPI service started here stands in for the deployed one; a tiny stub server scripts the
failures (503 twice, then 200; a 422 that must not be retried).
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.client import PredictionClient
from ml_project.serving.fastapi_app import create_app
from tests.serving import (
    INSTANCE,
    free_port,
    load_serving_config,
    sample_size_and_rejections,
    serve_in_thread,
    write_serving_config,
)
from use_cases import predicting_production_data_deployed_server


@contextmanager
def stub_server(post_statuses: list[int]) -> Iterator[tuple[str, list[str | None]]]:
    """Answers POSTs with the given statuses in turn (then 200) and every GET with 200.
    Yields its URL and the X-API-Key header of every POST it received."""
    statuses = iter(post_statuses)
    received: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._send(200, {"status": "ready", "model_name": "stub", "model_version": "7"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(self.headers.get("X-API-Key"))
            status = next(statuses, 200)
            body: dict[str, object] = (
                {"prediction": 1, "model_version": "7"} if status == 200 else {"detail": "no"}
            )
            self._send(status, body)

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's backoff delays, recorded instead of slept. Only this thread's: threads other
    tests left running (py4j's finalizer after a Spark session, log writers) sleep for real."""
    delays: list[float] = []
    real_sleep, test_thread = time.sleep, threading.get_ident()

    def sleep(seconds: float) -> None:
        if threading.get_ident() == test_thread:
            delays.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return delays


def test_client_retries_5xx_with_exponential_backoff_then_succeeds(sleeps: list[float]) -> None:
    with stub_server([503, 503]) as (url, received):
        client = PredictionClient(url, api_key="k", max_retries=3, backoff_seconds=0.25)
        answer = client.predict(INSTANCE)

    assert answer.ok and answer.attempts == 3
    assert answer.body == {"prediction": 1, "model_version": "7"}
    assert sleeps == [0.25, 0.5]
    assert received == ["k", "k", "k"]


def test_client_never_retries_a_4xx(sleeps: list[float]) -> None:
    with stub_server([422]) as (url, received):
        answer = PredictionClient(url, max_retries=3).predict(INSTANCE)

    assert answer.rejected and answer.status == 422 and answer.attempts == 1
    assert len(received) == 1
    assert sleeps == []


def test_client_retries_connection_errors_then_reports_the_failure(sleeps: list[float]) -> None:
    answer = PredictionClient(f"http://127.0.0.1:{free_port()}", max_retries=2,
                              backoff_seconds=0.1).predict(INSTANCE)

    assert answer.failed and answer.status is None and answer.attempts == 3
    assert answer.error is not None and "ConnectionError" in answer.error
    assert sleeps == [0.1, 0.2]


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
