"""The launcher and the start command: real processes, real ports, stopped by the test. Both
frameworks run on uvicorn (one worker: in the launcher's process); tests/test_workers.py has
the service on several gunicorn-forked workers."""

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

import psutil
import pytest
import requests

from ml_project.config import PREDICTION_LOG_ENV, PROJECT_ROOT
from ml_project.predict import PredictionService
from ml_project.prediction_log.background import NICENESS, loader_process_alive
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving import launcher
from ml_project.serving.asgi import THREADS as FLASK_THREADS
from ml_project.serving.client import PredictionClient
from tests.serving import (
    BOOT_STOP_SECONDS,
    INSTANCE,
    assert_serves,
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
from ml_project.serving import asgi, endpoints, fastapi_app, flask_app, launcher, sagemaker
from ml_project.config import load_config
from ml_project.predict import PredictionService
config = load_config("prediction", "production", "local", config_file={str(config_file)!r},
                     root={str(tmp_path)!r})
service = PredictionService.from_config(config)
app = fastapi_app.create_app(service)
flask_app.create_flask_app(service)
reply = app.state.endpoints.predict(json.dumps({INSTANCE!r}).encode(), None)
assert reply.status == 200, reply
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY_MODULES!r})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("modules", "absent"), [
    ("launcher, fastapi_app", ["flask", "werkzeug", "a2wsgi", "gunicorn"]),  # FastAPI
    ("launcher, flask_app, asgi", ["fastapi", "starlette", "gunicorn"]),  # Flask
])
def test_each_server_imports_only_its_own_framework(modules: str, absent: list[str]) -> None:
    """Cold start: one framework's server never pays for the other's imports."""
    code = f"""
import sys
from ml_project.serving import {modules}
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
    ("flask", 1, "uvicorn.run"),
    ("fastapi", 2, "gunicorn.app.base.BaseApplication.run"),
    ("flask", 2, "gunicorn.app.base.BaseApplication.run"),
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
    # What the launcher sets in its process; here, the test's, so undone after it.
    monkeypatch.setenv(launcher.ARROW_POOL_ENV, "system")
    config_file = write_serving_config(trained_project, tmp_path)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = launcher.main([framework, "--workers", str(workers), "--port", str(free_port()),
                           "--config", str(config_file), "--root", str(tmp_path)])
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGTERM, sigterm)

    assert code == 0
    assert seen == {"collecting while loading": False, "collecting while serving": True,
                    "frozen while serving": True}
    assert gc.isenabled()


def _every_process_listening(launcher: psutil.Process) -> None:
    """Until the server's every process that serves has a listening socket (the launcher's own
    uvicorn, or each gunicorn worker: the master listens on nothing)."""
    deadline = time.monotonic() + 60
    while True:
        tree = [launcher, *launcher.children(recursive=True)]
        serving = [p for p in tree if p.name().startswith("python")]
        workers = [p for p in serving if p.pid != serving[0].pid] or serving
        try:
            if workers and all(any(c.status == psutil.CONN_LISTEN
                                   for c in p.net_connections(kind="tcp")) for p in workers):
                return
        except psutil.NoSuchProcess:
            pass
        assert time.monotonic() < deadline, "a worker is not listening"
        time.sleep(0.05)


def _environment_found() -> bool:
    """What the start command runs: the project's .venv, or Pipenv to find the environment."""
    return (PROJECT_ROOT / ".venv" / "bin" / "python").is_file() or bool(
        shutil.which("pipenv")) or (PROJECT_ROOT / ".tools" / "bin" / "pipenv").is_file()


@pytest.mark.skipif(not _environment_found(), reason="neither .venv nor pipenv is installed")
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
        assert_serves(process, port, tmp_path / "server.out")
        answer = client.predict(INSTANCE)
        client.close()
        _every_process_listening(psutil.Process(process.pid))  # a worker per CPU: all booted
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
    # Not gunicorn's graceful_timeout (30 s): every process stops at once.
    assert stop_seconds < BOOT_STOP_SECONDS, (stop_seconds, server_output)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


# Both frameworks on uvicorn, one worker ---------------------------------------------------------

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


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_the_service_answers_right_concurrently_over_keep_alive_and_logs_every_request(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    service = PredictionService.from_config(config)
    instances = [instance(customer_id=f"K{i:03d}", age=20 + i, tenure_months=i % 60)
                 for i in range(KEEP_ALIVE_CLIENTS * REQUESTS_PER_CLIENT)]
    answers: Answers = []

    with launch_server(config_file, tmp_path / "server.out", framework) as (base_url, server):
        children = server.children()
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

    # One worker: uvicorn in the launcher's own process, which loaded the model.
    assert children == [], children
    assert "Traceback" not in server_output
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
    # Every record landed in the log database at the stop: one per instance, none lost.
    sent = [single.json()["request_id"]] + [batch.json()["request_id"]] * 3 + [
        body["request_id"] for _, _, body, _ in answers]
    assert sorted(record["request_id"] for record in records) == sorted(sent)
    assert all(record["source"] == "api" and record["error"] is None for record in records)
    assert log.pending().records == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_the_service_finishes_the_request_in_flight_then_stops_cleanly(
    framework: str, signum: signal.Signals, trained_project: Path, tmp_path: Path
) -> None:
    """SIGTERM to the launcher, as a container runtime sends; SIGINT to its process group, as
    Ctrl-C in a terminal does. An idle keep-alive connection is open too."""
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out", framework) as (base_url, server):
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
    # The idle keep-alive connection did not hold the stop up.
    assert stop_seconds < STOP_SECONDS, stop_seconds
    assert "Traceback" not in server_output, server_output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base_url}/health", timeout=5)


def _pipelined(base_url: str, bodies: list[bytes], timeout: float = 10
               ) -> list[tuple[bytes, bytes]]:
    """Send every request on one connection before reading any answer (HTTP/1.1 pipelining);
    return each answer's status line and body, in the order they came."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"".join(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body) for body in bodies))
        stream = sock.makefile("rb")
        answers = []
        for _ in bodies:
            status, length = stream.readline(), 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.append((status.strip(), stream.read(length)))
    return answers


@pytest.mark.parametrize("count", [2, 5, 10])
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_pipelined_requests_are_answered_in_order_and_each_logged_once(
    framework: str, count: int, trained_project: Path, tmp_path: Path
) -> None:
    """HTTP/1.1 pipelining: every request sent on one connection before any answer is read
    gets its answer, in order (gunicorn's gthread worker answered 1 and dropped the rest)."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    service = PredictionService.from_config(config)
    instances = [instance(customer_id=f"P{i:03d}", age=20 + i) for i in range(count)]

    with launch_server(config_file, tmp_path / "server.out", framework) as (base_url, _):
        pipelined = _pipelined(base_url, [json.dumps(item).encode() for item in instances])
    answers = [json.loads(body) for _, body in pipelined]
    log = PredictionLog.from_config(config)
    records = log.read()
    log.close()

    assert [status for status, _ in pipelined] == [b"HTTP/1.1 200 OK"] * count
    assert [answer["probabilities"] for answer in answers] == [
        service.predict_instance(item).probabilities for item in instances]
    assert [record["request_id"] for record in records] == [
        answer["request_id"] for answer in answers]
    assert [record["instance_id"] for record in records] == [
        item["customer_id"] for item in instances]


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_stalled_clients_cannot_starve_the_service(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """Twice as many connections as the Flask app has threads each declare a 1,000-byte body,
    send 10 bytes and stall: /health and a prediction from another client are still answered at
    once. uvicorn reads every body on its event loop, before the app runs: a stalled client
    holds a socket, never a thread."""
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out", framework) as (base_url, _):
        host, port = base_url.removeprefix("http://").split(":")
        stalled = []
        try:
            for _ in range(2 * FLASK_THREADS):
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
            # A stalled body that finally arrives is answered too.
            late = stalled.pop()
            late.sendall(b"}" + b" " * 989)
            late_answer = late.recv(65536)
            late.close()
        finally:
            for connection in stalled:
                connection.close()
    assert (health.status_code, prediction.status_code) == (200, 200)
    assert elapsed < 2
    assert late_answer.startswith(b"HTTP/1.1 422"), late_answer


def test_a_missing_gunicorn_config_file_stops_the_launcher_naming_it(
    trained_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    with pytest.raises(SystemExit) as stop:
        launcher.main(["fastapi", "--workers", "2", "--gunicorn-config",
                       str(tmp_path / "nowhere.conf.py"), "--config", str(config_file),
                       "--root", str(tmp_path)])
    assert stop.value.code == 2
    assert f"gunicorn config file not found: {tmp_path / 'nowhere.conf.py'}" in \
        capsys.readouterr().err


def test_a_gunicorn_config_file_that_fails_stops_the_launcher_naming_it(
    trained_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    broken = tmp_path / "gunicorn.conf.py"
    broken.write_text("workers = undefined_name\n")
    with pytest.raises(SystemExit) as stop:
        launcher.main(["fastapi", "--workers", "2", "--gunicorn-config", str(broken),
                       "--config", str(config_file), "--root", str(tmp_path)])
    assert stop.value.code == 2
    assert f"gunicorn config file {broken}: NameError" in capsys.readouterr().err


def test_the_gunicorn_config_file_holds_gunicorn_settings_and_hooks_only() -> None:
    """Every name the shipped gunicorn.conf.py defines is one of gunicorn's settings (its
    server hooks are settings too), so nothing in it is ignored."""
    from gunicorn.config import Config as GunicornConfig

    settings = launcher.read_gunicorn_config(launcher.GUNICORN_CONFIG)

    assert settings and set(settings) <= set(GunicornConfig().settings), settings
    assert settings["worker_class"] == "uvicorn_worker.UvicornWorker"


def model_libraries(process: psutil.Process,
                    libraries: tuple[str, ...] = ("numpy", "scipy", "pandas", "sklearn")
                    ) -> set[str]:
    """The libraries (by default the model's) whose compiled modules the process has mapped."""
    return {part for region in process.memory_maps() for part in Path(region.path).parts
            if part in libraries}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_loader_is_forked_before_the_model_and_its_libraries_load(
    trained_project: Path, tmp_path: Path, workers: int
) -> None:
    """The service's loader process holds none of the model's libraries (they load after it is
    forked), so it costs what a database client costs, whatever the model's size; the service
    holds no database library (the loader's process alone imports it); the loader stores what
    the service answered."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    status_file = config.output_dir / "prediction_log_journal" / "loader.json"
    with launch_server(config_file, tmp_path / "server.out", workers=workers) as (url, server):
        assert requests.post(f"{url}/predict", json=INSTANCE, timeout=10).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                not status_file.exists() or json.loads(status_file.read_text())["loaded"] < 1):
            time.sleep(0.1)
        loader = psutil.Process(json.loads(status_file.read_text())["pid"])
        in_loader, in_server = (model_libraries(process) for process in (loader, server))
        database = [model_libraries(process, ("sqlalchemy",))
                    for process in (loader, server, *server.children(recursive=True))]
        assert loader.pid not in {child.pid for child in server.children(recursive=True)}
        priorities = (loader.nice(), server.nice())
    assert priorities[0] == min(19, priorities[1] + NICENESS)  # a request gets the core first
    assert {"numpy", "scipy", "pandas", "sklearn"} <= in_server  # so the check below can fail
    assert not in_loader
    assert database[0] == {"sqlalchemy"}  # its compiled modules: the check below can fail
    assert not any(database[1:])
    assert json.loads(status_file.read_text())["loaded"] >= 1


SERVING_PROCESS = """
import sys
import uvicorn
from ml_project.serving import launcher

def serving(*args, **kwargs):  # in place of uvicorn: what the serving process holds by now
    import pyarrow
    held = sorted({name.split(".")[0] for name in sys.modules} & {"sqlalchemy", "psycopg"})
    print("serving:", pyarrow.default_memory_pool().backend_name, held, flush=True)

uvicorn.run = serving
raise SystemExit(launcher.main(sys.argv[1:]))
"""


def _other_arrow_backend() -> str | None:
    import pyarrow

    return next((name for name in pyarrow.supported_memory_backends() if name != "system"), None)


@pytest.mark.parametrize("chosen", [None, "other"])
def test_the_serving_process_holds_no_database_library_and_arrow_uses_the_c_heap(
    chosen: str | None, trained_project: Path, tmp_path: Path
) -> None:
    """The loader's process alone imports SQLAlchemy (and a driver); the serving process, whose
    Arrow reads one small file (the reference sample), gives Arrow the C heap, unless the user
    chose an allocator (mimalloc reserved ~9 MB for that read, for the process's life)."""
    backend = "system" if chosen is None else _other_arrow_backend()
    if backend is None:
        pytest.skip("this pyarrow has no allocator but the C heap")
    config_file = write_serving_config(trained_project, tmp_path)
    env = {name: value for name, value in os.environ.items() if name != launcher.ARROW_POOL_ENV}
    if chosen is not None:
        env[launcher.ARROW_POOL_ENV] = backend
    result = subprocess.run(
        [sys.executable, "-c", SERVING_PROCESS, "--workers", "1", "--port", str(free_port()),
         "--config", str(config_file), "--root", str(tmp_path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, env=env)

    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith("serving:")]
    assert said == [f"serving: {backend} []"], result.stdout + result.stderr


def test_a_log_url_that_is_no_database_url_stops_the_start_before_the_model_loads(
    trained_project: Path, tmp_path: Path
) -> None:
    """The loader's process checks the URL (the service imports no database library) and the
    launcher stops with its verdict, the password masked, before the model loads."""
    config_file = write_serving_config(trained_project, tmp_path)
    env = {**os.environ, PREDICTION_LOG_ENV: "nosuchdb://user:hunter2@host/db"}
    result = subprocess.run(
        [sys.executable, "-m", "ml_project.serving.launcher", "--port", str(free_port()),
         "--config", str(config_file), "--root", str(tmp_path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, env=env)

    assert result.returncode == 2, result.stderr
    assert "Cannot start the prediction service: the prediction log URL" in result.stderr
    assert "cannot open" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert "Prediction core" not in result.stderr  # the model was never loaded
    journal_dir = load_serving_config(config_file).output_dir / "prediction_log_journal"
    assert not loader_process_alive(journal_dir)
