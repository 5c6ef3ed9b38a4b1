"""Helpers for the serving tests: a config that serves the session's champion, and real servers.

`serve_in_thread` runs an app on 127.0.0.1 on a free port in a thread and stops it afterwards;
the socket is bound before the server starts, so no other process can take the port.
`launch_server` runs the launcher (`python -m ml_project.serving.launcher`) as a process, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import psutil
import uvicorn
import yaml
from fastapi import FastAPI
from flask import Flask
from werkzeug.serving import make_server

from ml_project.config import PROJECT_ROOT, Config, _merge, load_config
from ml_project.ingest import stream_production_instances
from ml_project.schemas import InstanceValidator, InvalidInstance
from ml_project.serving.client import PredictionClient
from ml_project.serving.endpoints import API_KEY_ENV
from tests.entry_modes import free_port as free_port  # re-exported: the one port helper


def write_serving_config(trained_project: Path, root: Path, overrides: dict[str, Any] | None = None
                         ) -> Path:
    """A config file in `root` serving `trained_project`'s champion and reading its data, while
    everything written (logs, prediction log) goes under `root`. Returns the file."""
    content = yaml.safe_load((trained_project / "project_config.yaml").read_text())
    data = trained_project / "data"
    content = _merge(content, {
        "data": {name: str(data / Path(content["data"][name]).name)
                 for name in ("historic", "production", "production_labels")},
        "paths": {"model_artifacts": str(data / "model_artifacts")},
    })
    config_file = root / "project_config.yaml"
    config_file.write_text(yaml.safe_dump(_merge(content, overrides or {}), sort_keys=False))
    return config_file


def load_serving_config(config_file: Path) -> Config:
    return load_config("prediction", "production", "local", config_file=config_file,
                       root=config_file.parent)


def sample_size_and_rejections(config: Config) -> tuple[int, int]:
    """How many production instances the sample holds, and how many the core rejects."""
    validator = InstanceValidator(config)
    source = Path(config.resolve(config.data.production))
    rejected = total = 0
    for record in stream_production_instances(source, config):
        total += 1
        try:
            validator.validate(record)
        except InvalidInstance:
            rejected += 1
    return total, rejected


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` or one of its descendants listens on TCP `port`: a server that
    failed to bind its port must not pass for ready because another process answers there."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in family:
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in connections):
            return True
    return False


def assert_serves(process: subprocess.Popen[Any], port: int, output: Path) -> None:
    """`process` is the one answering on `port` (see `listens`), or the test stops here."""
    state = "running" if process.poll() is None else f"exited with {process.returncode}"
    assert listens(process.pid, port), (
        f"something answers on port {port}, but not the process started for it (pid "
        f"{process.pid}, {state}); its output:\n{output.read_text()}")


@contextmanager
def serve_in_thread(app: FastAPI | Flask) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn or a Flask app with werkzeug; yield the base URL."""
    if isinstance(app, Flask):
        wsgi_server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=wsgi_server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{wsgi_server.port}"
        finally:
            wsgi_server.shutdown()
            thread.join(timeout=10)
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def launch_server(config_file: Path, output: Path, framework: str = "fastapi",
                  environment: dict[str, str] | None = None, workers: int = 1,
                  arguments: Sequence[str] = ()) -> Iterator[tuple[str, psutil.Process]]:
    """The launcher on 127.0.0.1 and a free port with `workers` worker processes (and further
    `arguments`), its output in `output`, rooted at the config file's folder; yields the base
    URL once /ready answers, and the server process. Stopped with SIGTERM, as a container
    runtime would."""
    port = free_port()
    with output.open("w") as output_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "ml_project.serving.launcher", framework, "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers), "--config", str(config_file),
             "--root", str(config_file.parent), *arguments],
            cwd=PROJECT_ROOT, stdout=output_file, stderr=subprocess.STDOUT,
            env={**os.environ, **(environment or {})}, start_new_session=True,
        )
        try:
            client = PredictionClient(f"http://127.0.0.1:{port}", max_retries=0,
                                      api_key=(environment or {}).get(API_KEY_ENV))
            ready = client.wait_until_ready(120, give_up=lambda: process.poll() is not None)
            client.close()
            assert ready.ok, output.read_text()
            assert_serves(process, port, output)
            yield f"http://127.0.0.1:{port}", psutil.Process(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


# A valid instance of the shipped example schema (project_config.yaml), as a client sends it.
INSTANCE: dict[str, Any] = {
    "customer_id": "C000001",
    "event_time": "2026-01-01T00:16:17",
    "tenure_months": 36,
    "monthly_charges": 79.9,
    "total_charges": 2760.56,
    "support_calls": 5,
    "data_usage_gb": 45.9,
    "age": 42,
    "contract": "month-to-month",
    "payment_method": "bank-transfer",
    "internet_service": "dsl",
    "region": "west",
}


# From a stop signal to the exit when a worker may still be booting: its boot plus the stop, far
# under gunicorn's graceful_timeout (30 s), which is what a lost stop signal costs.
BOOT_STOP_SECONDS = 15


def instance(drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    """INSTANCE with some fields changed or dropped."""
    return {k: v for k, v in {**INSTANCE, **changes}.items() if k not in drop}


def send_slowly_and_stop(base_url: str, server: psutil.Process, stop: Callable[[], None]
                         ) -> tuple[bytes, float]:
    """Start a /predict request, `stop()` the server while its body is still on the way, check
    the server waits for it, then finish it. Returns the raw answer and when `stop()` ran."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps(INSTANCE).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:20])
        time.sleep(0.5)  # a worker is now reading the body
        stopped_at = time.monotonic()
        stop()
        time.sleep(0.5)
        assert server.is_running(), "the server did not wait for the request in flight"
        sock.sendall(body[20:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, stopped_at


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
