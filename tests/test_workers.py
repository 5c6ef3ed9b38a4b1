"""The service on several worker processes (gunicorn's master in the launcher, uvicorn workers
as uvicorn-worker ships them): real launchers on free ports, stopped by the test."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from ml_project.config import PROJECT_ROOT
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.client import PredictionClient
from ml_project.serving.launcher import GUNICORN_CONFIG, WORKERS_ENV, default_workers, main
from tests.serving import (
    free_port,
    instance,
    launch_server,
    load_serving_config,
    send_slowly_and_stop,
    write_serving_config,
)

CLIENTS = 8
STOP_SECONDS = 5  # from a stop to the exit of every process
REQUESTS_PER_CLIENT = 12
# Keep-alive clients that connect at once: spread by a hash of their ports, all 16 land on one of
# two workers once in 32,768 runs.
KEEP_ALIVE_CLIENTS = 16
def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _load(base_url: str, instances: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int, Any]]:
    """CLIENTS threads sending `instances` on a new connection each (so the workers share them)."""
    answers: list[tuple[dict[str, Any], int, Any]] = []

    def client(items: list[dict[str, Any]]) -> None:
        for item in items:
            response = requests.post(f"{base_url}/predict", json=item, timeout=30,
                                     headers={"Connection": "close"})
            answers.append((item, response.status_code, response.json()))

    threads = [threading.Thread(target=client, args=(instances[n::CLIENTS],))
               for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def _workers(server: psutil.Process, count: int) -> list[psutil.Process]:
    """The master's `count` worker processes, once it has forked them all."""
    deadline = time.monotonic() + 60
    while len(workers := [p for p in server.children() if p.is_running()
                          and p.status() != psutil.STATUS_ZOMBIE]) < count:
        assert time.monotonic() < deadline, f"{len(workers)} workers, not {count}"
        time.sleep(0.05)
    return workers


def _listening(workers: list[psutil.Process]) -> None:
    """Until every worker has a listening socket (its own, or the master's it inherited)."""
    deadline = time.monotonic() + 60
    while not all(any(c.status == psutil.CONN_LISTEN for c in w.net_connections(kind="tcp"))
                  for w in workers):
        assert time.monotonic() < deadline, "a worker is not listening"
        time.sleep(0.05)


def _keep_alive_load(base_url: str, body: bytes) -> list[int]:
    """KEEP_ALIVE_CLIENTS connections opened at once, then REQUESTS_PER_CLIENT requests on each,
    concurrently: as a proxy's pool of persistent connections sends them."""
    address = urlsplit(base_url)
    connections = [http.client.HTTPConnection(str(address.hostname), address.port, timeout=30)
                   for _ in range(KEEP_ALIVE_CLIENTS)]
    for connection in connections:
        connection.connect()
    statuses: list[int] = []

    def client(connection: http.client.HTTPConnection) -> None:
        for _ in range(REQUESTS_PER_CLIENT):
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)

    threads = [threading.Thread(target=client, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for connection in connections:
        connection.close()
    return statuses


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_keep_alive_clients_that_connect_at_once_are_spread_over_the_workers(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """On one shared socket, the worker that woke first accepted every connection waiting: a
    few persistent clients kept one worker busy and left the other idle (the benchmark measured
    2 workers at 0.98x one). Each worker now listens on a socket of its own (SO_REUSEPORT), and
    the kernel spreads the connections over them."""
    config_file = write_serving_config(trained_project, tmp_path)
    body = json.dumps(instance(customer_id="K001", age=40, tenure_months=12)).encode()

    with launch_server(config_file, tmp_path / "server.out", framework, workers=2) as (
        base_url, server
    ):
        workers = _workers(server, 2)
        _listening(workers)
        cpu_before = [_cpu_seconds(worker) for worker in workers]
        statuses = _keep_alive_load(base_url, body)
        cpu_used = [_cpu_seconds(worker) - before for worker, before in zip(workers, cpu_before)]

    assert statuses == [200] * (KEEP_ALIVE_CLIENTS * REQUESTS_PER_CLIENT)
    assert min(cpu_used) > 0.1 * sum(cpu_used), cpu_used


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_a_port_in_use_stops_the_launcher_at_once_on_several_workers(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """Several workers bind a socket each, on the port the master holds for them: a port that
    another process holds fails there, once, where each worker would fail to bind and gunicorn
    would replace it, forever."""
    config_file = write_serving_config(trained_project, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ml_project.serving.launcher", framework, "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2", "--config", str(config_file),
             "--root", str(config_file.parent)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, start_new_session=True)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Cannot serve on 127.0.0.1 port {port}: " in result.stdout + result.stderr
    assert "Address already in use" in result.stdout + result.stderr


def _wait_until_logged(log: PredictionLog, request_ids: list[str]) -> None:
    """Until every id is in the log (the workers' writers run beside their requests)."""
    deadline = time.monotonic() + 30
    while sorted(record["request_id"] for record in log.read()) != sorted(request_ids):
        assert time.monotonic() < deadline, "the workers did not store their records"
        time.sleep(0.05)


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_two_workers_share_requests_survive_a_killed_worker_and_log_each_request_once(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """Concurrent clients are served by both workers, forked from the launcher, which alone
    loaded the model; a worker killed (as the OOM killer would) is replaced; SIGTERM finishes the
    request in flight; every answered request is in the log exactly once."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    service = PredictionService.from_config(config)
    instances = [instance(customer_id=f"W{i:03d}", age=20 + i % 50, tenure_months=i % 60)
                 for i in range(CLIENTS * REQUESTS_PER_CLIENT)]
    log = PredictionLog.from_config(config)

    with launch_server(config_file, tmp_path / "server.out", framework, workers=2) as (
        base_url, server
    ):
        workers = _workers(server, 2)  # /ready answered once one of them was up
        cpu_before = [_cpu_seconds(worker) for worker in workers]
        answers = _load(base_url, instances)
        cpu_used = [_cpu_seconds(worker) - before for worker, before in zip(workers, cpu_before)]
        sent = [body["request_id"] for _, _, body in answers]
        _wait_until_logged(log, sent)  # before the kill: a killed worker's queue is lost

        workers[0].kill()
        workers[0].wait(timeout=30)
        replaced = _workers(server, 2)
        after_kill = _load(base_url, instances[:CLIENTS])
        replacement = ({p.pid for p in replaced} - {w.pid for w in workers}).pop()

        answer, _ = send_slowly_and_stop(
            base_url, server, lambda: server.send_signal(signal.SIGTERM))
        code = server.wait(timeout=60)
    output = (tmp_path / "server.out").read_text()
    records = log.read()
    log.close()

    assert len(workers) == 2 and server.pid not in {w.pid for w in workers}
    for item, status, body in [*answers, *after_kill]:
        assert status == 200, body
        assert body["probabilities"] == service.predict_instance(item).probabilities
    # Both workers predicted (the prediction's CPU time, not the idle workers' ticks).
    assert min(cpu_used) > 0.1 * sum(cpu_used), cpu_used
    # The model was loaded once, by the launcher (gunicorn's master), never by a worker.
    assert output.count("ml_project.predict: Loaded ") == 1, output
    assert replacement not in {w.pid for w in workers}
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert code == 0, output
    assert "Traceback" not in output, output
    sent += [body["request_id"] for _, _, body in after_kill] + [json.loads(body)["request_id"]]
    assert sorted(record["request_id"] for record in records) == sorted(sent)
    assert log.pending().records == 0


def test_default_workers_is_web_concurrency_else_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert default_workers() == len(psutil.Process().cpu_affinity() or [])
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers() == 3


@pytest.mark.parametrize(("argv", "environment"), [
    (["--workers", "0"], ""),
    (["--workers", "two"], ""),
    ([], "0"),
    ([], "many"),
])
def test_a_worker_count_below_one_or_not_a_number_stops_the_launcher(
    argv: list[str], environment: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(WORKERS_ENV, environment)
    with pytest.raises(SystemExit) as stop:
        main(["fastapi", *argv])
    assert stop.value.code == 2
    assert "workers >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_of_the_running_service_ends_every_process_in_seconds(
    signum: signal.Signals, trained_project: Path, tmp_path: Path
) -> None:
    """SIGTERM to the launcher, or SIGINT to its process group (Ctrl-C): every process exits
    cleanly at once, not after gunicorn's graceful_timeout (30 s)."""
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out", "fastapi", workers=2) as (
        _, server
    ):
        workers = _workers(server, 2)
        _listening(workers)
        if signum == signal.SIGTERM:
            server.send_signal(signal.SIGTERM)
        else:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: the whole process group
        stopped_at = time.monotonic()
        code = server.wait(timeout=60)
        stop_seconds = time.monotonic() - stopped_at
    output = (tmp_path / "server.out").read_text()

    assert code == 0, output
    assert stop_seconds < STOP_SECONDS, (stop_seconds, output)
    assert not any(worker.is_running() for worker in workers)
    assert "Traceback" not in output, output


# The shipped config, plus a post_fork hook of the user's that takes BOOT_SECONDS: a worker
# still in it has no handlers of its own yet.
SLOW_BOOT_CONFIG = """
import runpy, time
from pathlib import Path
globals().update({{name: value for name, value in runpy.run_path({shipped!r}).items()
                  if not name.startswith("_")}})

def post_fork(server, worker):
    Path({marker!r}).write_text("booting")
    time.sleep({seconds})
"""
BOOT_SECONDS = 5


def test_a_stop_while_a_worker_boots_stops_it_at_once_not_after_the_graceful_timeout(
    trained_project: Path, tmp_path: Path
) -> None:
    """SIGTERM reaches the master while its worker is still booting (the service just started,
    or a dead worker is being replaced; here in a slow post_fork hook): the launcher forks
    workers with the default action for the stop signals until their own handlers are in
    place, so it stops at once. With the master's handlers, which it would inherit, it would
    boot and serve on, and the master would wait its graceful_timeout (30 s) to kill it."""
    config_file = write_serving_config(trained_project, tmp_path)
    marker = tmp_path / "booting"
    slow = tmp_path / "gunicorn.conf.py"
    slow.write_text(SLOW_BOOT_CONFIG.format(shipped=str(GUNICORN_CONFIG), marker=str(marker),
                                            seconds=BOOT_SECONDS))
    with (tmp_path / "server.out").open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "ml_project.serving.launcher", "fastapi", "--host",
             "127.0.0.1", "--port", str(free_port()), "--workers", "2", "--gunicorn-config",
             str(slow), "--config", str(config_file), "--root", str(tmp_path)],
            cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            server.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            code = server.wait(timeout=60)
            stop_seconds = time.monotonic() - stopped_at
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    text = (tmp_path / "server.out").read_text()

    assert code == 0, text
    assert stop_seconds < BOOT_SECONDS, (stop_seconds, text)
    assert "Traceback" not in text, text


def test_the_gunicorn_config_file_is_read_and_an_unknown_setting_is_named(
    trained_project: Path, tmp_path: Path
) -> None:
    """A user's gunicorn config (here the shipped one plus `max_requests`, which makes a worker
    restart after that many requests, and a misspelt setting) runs as gunicorn would run it."""
    config_file = write_serving_config(trained_project, tmp_path)
    own = tmp_path / "gunicorn.conf.py"
    own.write_text(GUNICORN_CONFIG.read_text() + "\nmax_requests = 5\nkeep_alive = 2\n")
    with launch_server(config_file, tmp_path / "server.out", "fastapi", workers=2,
                       arguments=["--gunicorn-config", str(own)]) as (base_url, server):
        first = {worker.pid for worker in _workers(server, 2)}
        # A worker that exits drops the connections waiting on its own socket (SO_REUSEPORT):
        # the client retries them, as any client of a restarting server must.
        client = PredictionClient(base_url, max_retries=5, backoff_seconds=0.05)
        for item in [instance(customer_id=f"M{i:02d}") for i in range(30)]:
            assert client.predict(item).ok
        client.close()
        deadline = time.monotonic() + 30
        while first & {worker.pid for worker in _workers(server, 2)} == first:
            assert time.monotonic() < deadline, "no worker was restarted after max_requests"
            time.sleep(0.05)
    output = (tmp_path / "server.out").read_text()

    assert "gunicorn has no setting 'keep_alive'" in output, output
    assert "Traceback" not in output, output
