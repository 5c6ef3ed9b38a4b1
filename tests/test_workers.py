"""The service on several worker processes: real launchers on free ports, stopped by the test."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from ml_project.predict import PredictionService
from ml_project.prediction_log import PredictionLog
from ml_project.serve import WORKERS_ENV, default_workers, main
from tests.serving import (
    INSTANCE,
    instance,
    launch_server,
    load_serving_config,
    write_serving_config,
)

CLIENTS = 8
REQUESTS_PER_CLIENT = 12


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


def _wait_until_logged(log: PredictionLog, request_ids: list[str]) -> None:
    """Until every id is in the log (the workers' writers run beside their requests)."""
    deadline = time.monotonic() + 30
    while sorted(record["request_id"] for record in log.read()) != sorted(request_ids):
        assert time.monotonic() < deadline, "the workers did not store their records"
        time.sleep(0.05)


def _slow_request_during_stop(base_url: str, server: psutil.Process) -> bytes:
    """A /predict whose body is still on the way when the master gets SIGTERM; its answer."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps(INSTANCE).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:20])
        time.sleep(0.5)  # a worker is now reading the body
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.is_running(), "the server did not wait for the request in flight"
        sock.sendall(body[20:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


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

        answer = _slow_request_during_stop(base_url, server)
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
    assert not log.spill_files()


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
