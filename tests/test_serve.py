"""The launcher and the start command: real processes, real ports, stopped by the test."""

from __future__ import annotations

import gc
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from ml_project.serving import launcher as serve
from ml_project.serving.client import PredictionClient
from ml_project.config import PROJECT_ROOT
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.wsgi_server import THREADS as FLASK_THREADS
from tests.serving import (
    BOOT_STOP_SECONDS,
    INSTANCE,
    free_port,
    instance,
    launch_server,
    load_serving_config,
    send_slowly_and_stop,
    write_serving_config,
)

HEAVY_MODULES = ("mlflow", "evidently", "pandera", "matplotlib")


def test_serving_path_imports_no_mlflow_evidently_pandera_or_plotting(
    trained_project: Path, tmp_path: Path
) -> None:
    """In a fresh interpreter: import the serving modules, load the model, answer a request."""
    config_file = write_serving_config(trained_project, tmp_path)
    code = f"""
import json, sys
from ml_project.serving import endpoints
from ml_project.serving import fastapi_app as api
from ml_project.serving import flask_app as flask_api
from ml_project.serving import launcher as serve
from ml_project.config import load_config
from ml_project.predict import PredictionService
config = load_config("prediction", "production", "local", config_file={str(config_file)!r},
                     root={str(tmp_path)!r})
service = PredictionService.from_config(config)
app = api.create_app(service)
flask_api.create_flask_app(service)
reply = app.state.endpoints.predict(json.dumps({INSTANCE!r}).encode(), None)
assert reply.status == 200, reply
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY_MODULES!r})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("modules", "absent"), [
    ("serve, api", ["flask", "gunicorn"]),  # FastAPI on uvicorn
    ("serve, flask_api, wsgi_server", ["fastapi", "uvicorn"]),  # Flask on gunicorn
])
def test_each_server_imports_only_its_own_framework(modules: str, absent: list[str]) -> None:
    """Cold start: one framework's server never pays for the other's imports."""
    code = f"""
import sys
from ml_project import {modules}
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({absent!r})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_launcher_without_a_model_says_to_run_the_modelling_use_case(
    trained_project: Path, tmp_path: Path
) -> None:
    config_file = write_serving_config(
        trained_project, tmp_path, {"paths": {"model_artifacts": str(tmp_path / "no_models")}}
    )

    result = subprocess.run(
        [sys.executable, "-m", "ml_project.serving.launcher", "--port", str(free_port()),
         "--config", str(config_file), "--root", str(tmp_path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )

    assert result.returncode == 2
    assert "run the modelling use case first" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("framework", "workers", "server"), [
    ("fastapi", 1, "uvicorn.run"),
    ("fastapi", 2, "ml_project.asgi_workers.serve_asgi"),
    ("flask", 1, "ml_project.wsgi_server.serve_wsgi"),
])
def test_the_model_loads_without_the_garbage_collector_and_is_frozen_before_serving(
    framework: str, workers: int, server: str, trained_project: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gc.freeze`'s recipe for a server that loads once and forks: no collection while the
    start creates its objects, then the collector on, with them frozen, when serving begins
    (the server is replaced by a probe that records that moment and returns)."""
    seen: dict[str, Any] = {}
    load = PredictionService.from_config

    def loading(config: Any, alias: str = "champion") -> PredictionService:
        seen["collecting while loading"] = gc.isenabled()
        return load(config, alias)

    def serving(*args: Any, **kwargs: Any) -> None:
        seen["collecting while serving"] = gc.isenabled()
        seen["frozen while serving"] = gc.get_freeze_count() > 0

    monkeypatch.setattr(PredictionService, "from_config", loading)
    monkeypatch.setattr(server, serving)
    config_file = write_serving_config(trained_project, tmp_path)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = serve.main([framework, "--workers", str(workers), "--port", str(free_port()),
                           "--config", str(config_file), "--root", str(tmp_path)])
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGTERM, sigterm)

    assert code == 0
    assert seen == {"collecting while loading": False, "collecting while serving": True,
                    "frozen while serving": True}
    assert gc.isenabled()


def _pipenv_available() -> bool:
    return bool(shutil.which("pipenv")) or (PROJECT_ROOT / ".tools" / "bin" / "pipenv").is_file()


@pytest.mark.skipif(not _pipenv_available(), reason="pipenv is not installed")
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_start_command_serves_in_the_foreground_until_interrupted(
    trained_project: Path, tmp_path: Path, framework: str
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    port = free_port()
    output = (tmp_path / "server.out").open("w")
    process = subprocess.Popen(
        ["bash", "executables/start_prediction_service.sh", framework, str(port),
         "--config", str(config_file), "--root", str(tmp_path)],
        cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        client = PredictionClient(f"http://127.0.0.1:{port}", max_retries=0)
        ready = client.wait_until_ready(90, give_up=lambda: process.poll() is not None)
        answer = client.predict(INSTANCE)
        client.close()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        interrupted_at = time.monotonic()
        code = process.wait(timeout=60)
        stop_seconds = time.monotonic() - interrupted_at
        output.close()
    server_output = (tmp_path / "server.out").read_text()

    assert ready.ok, server_output
    assert answer.ok and answer.body["model_version"] == ready.body["model_version"]
    assert code == 0, server_output
    # Not gunicorn's graceful_timeout (30 s), even when a worker was still booting.
    assert stop_seconds < BOOT_STOP_SECONDS, (stop_seconds, server_output)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


# Flask on gunicorn -------------------------------------------------------------------------------

KEEP_ALIVE_CLIENTS = 4
REQUESTS_PER_CLIENT = 10
STOP_SECONDS = 5  # from the signal to the exit, the request in flight included


Answers = list[tuple[dict[str, Any], int, dict[str, Any], bool]]


def _keep_alive_client(base_url: str, instances: list[dict[str, Any]], answers: Answers) -> None:
    """POST each instance over ONE connection; record the instance, the status, the body, and
    whether the connection was still the first one (the server kept it alive)."""
    connection = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=30)
    connection.connect()
    first_socket = connection.sock
    for item in instances:
        connection.request("POST", "/predict", json.dumps(item),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        answers.append((item, response.status, json.loads(response.read()),
                        connection.sock is first_socket))
    connection.close()


def test_flask_on_gunicorn_answers_right_concurrently_over_keep_alive_and_logs_every_request(
    trained_project: Path, tmp_path: Path
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    service = PredictionService.from_config(config)
    instances = [instance(customer_id=f"K{i:03d}", age=20 + i, tenure_months=i % 60)
                 for i in range(KEEP_ALIVE_CLIENTS * REQUESTS_PER_CLIENT)]
    answers: Answers = []

    with launch_server(config_file, tmp_path / "server.out", "flask") as (base_url, server):
        workers = server.children()
        health = requests.get(f"{base_url}/health", timeout=30)
        ready = requests.get(f"{base_url}/ready", timeout=30)
        single = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=30)
        batch = requests.post(f"{base_url}/predict/batch", json={"instances": instances[:3]},
                              timeout=30)
        clients = [
            threading.Thread(target=_keep_alive_client, args=(
                base_url, instances[n::KEEP_ALIVE_CLIENTS], answers))
            for n in range(KEEP_ALIVE_CLIENTS)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=60)
    server_output = (tmp_path / "server.out").read_text()
    log = PredictionLog.from_config(config)
    records = log.read()
    log.close()

    # One gthread worker, forked from the launcher (gunicorn's master), which loaded the model.
    assert len(workers) == 1, workers
    assert "Using worker: _GthreadWorker" in server_output and "Traceback" not in server_output
    assert (health.status_code, health.json()["status"]) == (200, "alive")
    assert ready.json() == {"status": "ready", "model_version": service.model_version}
    expected = service.predict_instance(INSTANCE)
    assert single.status_code == 200
    assert (single.json()["prediction"], single.json()["probabilities"]) == (
        expected.prediction, expected.probabilities)
    assert batch.status_code == 200 and len(batch.json()["predictions"]) == 3
    # Concurrent keep-alive clients: every answer right, every connection kept alive throughout.
    assert len(answers) == len(instances)
    for item, status, body, kept_alive in answers:
        assert status == 200 and kept_alive
        assert body["probabilities"] == service.predict_instance(item).probabilities
    # The worker's writes landed in the log database: one record per instance, none lost.
    sent = [single.json()["request_id"]] + [batch.json()["request_id"]] * 3 + [
        body["request_id"] for _, _, body, _ in answers]
    assert sorted(record["request_id"] for record in records) == sorted(sent)
    assert all(record["source"] == "api" and record["error"] is None for record in records)
    assert not log.spill_files()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_flask_on_gunicorn_finishes_the_request_in_flight_then_stops_cleanly(
    trained_project: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM to the launcher, as a container runtime sends; SIGINT to its process group, as
    Ctrl-C in a terminal does. An idle keep-alive connection is open too."""
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out", "flask") as (base_url, server):
        worker = server.children()[0]
        idle = requests.Session()
        assert idle.get(f"{base_url}/health", timeout=30).ok  # then left open, idle

        def stop() -> None:
            if signum == signal.SIGTERM:
                server.send_signal(signal.SIGTERM)
            else:
                os.killpg(server.pid, signal.SIGINT)

        answer, stopped_at = send_slowly_and_stop(base_url, server, stop)
        code = server.wait(timeout=30)
        stop_seconds = time.monotonic() - stopped_at
        idle.close()
    server_output = (tmp_path / "server.out").read_text()
    log = PredictionLog.from_config(load_serving_config(config_file))
    records = log.read()
    log.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    request_id = json.loads(body)["request_id"]
    assert [record["request_id"] for record in records] == [request_id]
    assert code == 0, server_output
    # The idle keep-alive connection did not hold the stop up (gunicorn alone: 30 s).
    assert stop_seconds < STOP_SECONDS, stop_seconds
    assert not worker.is_running()
    assert "Traceback" not in server_output, server_output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base_url}/health", timeout=5)


def test_flask_worker_threads_serve_requests_concurrently(
    trained_project: Path, tmp_path: Path
) -> None:
    """With FLASK_THREADS - 1 requests in flight (their bodies arrive slowly), one more is
    answered at once: the one worker process serves requests on its threads concurrently."""
    config_file = write_serving_config(trained_project, tmp_path)
    body = json.dumps(INSTANCE).encode()
    with launch_server(config_file, tmp_path / "server.out", "flask") as (base_url, _):
        host, port = base_url.removeprefix("http://").split(":")
        slow = [socket.create_connection((host, int(port)), timeout=30)
                for _ in range(FLASK_THREADS - 1)]
        for sock in slow:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body[:20])
        time.sleep(0.5)  # FLASK_THREADS - 1 threads now wait for the rest of their bodies
        fast = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=10)
        for sock in slow:
            sock.sendall(body[20:])
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.close()

    assert fast.status_code == 200


def test_flask_worker_killed_is_replaced_by_a_fork_of_the_launcher_without_reloading_the_model(
    trained_project: Path, tmp_path: Path
) -> None:
    """SIGKILL the worker, as the OOM killer would: gunicorn's master forks a new one from the
    launcher, which still holds the model and the log, and the service answers again."""
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out", "flask") as (base_url, server):
        killed = server.children()[0]
        killed.kill()
        deadline = time.monotonic() + 30
        while [p.pid for p in server.children()] in ([], [killed.pid]):
            assert time.monotonic() < deadline, "no new worker"
            time.sleep(0.05)
        client = PredictionClient(base_url, max_retries=0)
        ready = client.wait_until_ready(30)
        answer = client.predict(INSTANCE)
        client.close()
    server_output = (tmp_path / "server.out").read_text()
    log = PredictionLog.from_config(load_serving_config(config_file))
    records = log.read()
    log.close()

    assert ready.ok and answer.ok, server_output
    assert server_output.count("ml_project.predict: Loaded ") == 1  # by the launcher, once
    assert [record["request_id"] for record in records] == [answer.body["request_id"]]


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_stalled_clients_cannot_starve_the_service(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """8 connections each declare a 1,000-byte body and send 10 bytes, then stall: /health and
    a prediction from another client are still answered at once."""
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out", framework) as (base_url, _):
        host, port = base_url.removeprefix("http://").split(":")
        stalled = []
        try:
            for _ in range(8):
                connection = socket.create_connection((host, int(port)), timeout=10)
                connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Content-Type: application/json\r\n"
                                   b"Content-Length: 1000\r\n\r\n" + b'{"age": 41')
                stalled.append(connection)
            time.sleep(0.5)  # every stalled request is now in the server's hands
            started = time.perf_counter()
            health = requests.get(f"{base_url}/health", timeout=5)
            prediction = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=5)
            elapsed = time.perf_counter() - started
        finally:
            for connection in stalled:
                connection.close()
    assert (health.status_code, prediction.status_code) == (200, 200)
    assert elapsed < 2
