"""One entry mode of a deployment bundle, run as its provider runs it, until it has answered one
prediction request; then the package's modules this process loaded.

Run by tests/test_cloud_setup.py in the bundle's own virtualenv, with the bundle folder as
working directory (so `ml_project` is the bundle's copy, never the checkout's):

    python -c "import runpy; runpy.run_path('.../tests/entry_modes.py', run_name='__main__')" \
        MODE REQUEST_BODY

MODE (`MODES`):
    launcher:fastapi, launcher:flask   `python -m ml_project.serving.launcher FRAMEWORK` on one
                                       worker and a free loopback port (a Procfile, app.yaml's
                                       entrypoint, a container's CMD), stopped by SIGTERM
    sagemaker_serve                    the bundle's `serve` script, as SageMaker runs it
    lambda_handler                     `lambda_function.handler` on a direct invocation and on
                                       an HTTP API event, as the Lambda runtime calls it
    cloud_function                     `main.prediction_service` on a Flask request, as
                                       functions-framework calls it
    wsgi_main                          `main:app`, App Engine's default entry (gunicorn)

REQUEST_BODY: a JSON instance POST /predict must answer with 200.

The last line of stdout is `ENTRY_MODE_RESULT <json>`: the request's status, the package's
modules in sys.modules, the file `ml_project` was imported from, and the files beside the
modules that the launcher reads (its gunicorn config) when the launcher was loaded. Only the
standard library is imported here before the mode runs.
"""

from __future__ import annotations

import http.client
import json
import os
import runpy
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

RESULT_MARKER = "ENTRY_MODE_RESULT "
PACKAGE = "ml_project"
START_SECONDS = 120


def free_port() -> int:
    """A loopback port nothing listens on, held back from other processes for a minute.

    A port merely found free can be handed to another process (another pytest-xdist worker,
    another test run) before our server binds it; our server then fails to start while its
    /ready is answered by the other one. So the port is left in TIME_WAIT, the state a closed
    connection keeps for 60 s on Linux: the kernel hands it to no `bind(("", 0))` meanwhile,
    and a server that sets SO_REUSEADDR (uvicorn, gunicorn, werkzeug, PostgreSQL do) binds it.
    The technique of Yelp's ephemeral-port-reserve. (Here, not in tests/serving.py: this file
    imports only the standard library, and every test takes its ports from here.)"""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the side holding our port closes first: it is what waits
            client.recv(1)    # the other side's close after the FIN: the wait has begun
    port: int = address[1]
    return port


def post_when_up_then_stop(port: int, body: bytes, statuses: list[int]) -> None:
    """POST /predict once the server accepts connections, then SIGTERM this process (the
    server's own stop: it finishes, closes the log and returns)."""
    deadline = time.monotonic() + START_SECONDS
    try:
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                connection.request("POST", "/predict", body,
                                   {"Content-Type": "application/json"})
                statuses.append(connection.getresponse().status)
                return
            except ConnectionError:
                time.sleep(0.1)
            finally:
                connection.close()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def serve_until_answered(start: Callable[[int], object], body: bytes) -> int:
    """Run a server `start(port)` in this (the main) thread until it answered one request."""
    port = free_port()
    statuses: list[int] = []
    client = threading.Thread(target=post_when_up_then_stop, args=(port, body, statuses),
                              daemon=True)
    client.start()
    try:
        start(port)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    client.join(timeout=30)
    return statuses[0] if statuses else 0


def launcher(framework: str, body: bytes) -> int:
    from ml_project.serving.launcher import main

    return serve_until_answered(lambda port: main(
        [framework, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]), body)


def sagemaker_serve(body: bytes) -> int:
    def start(port: int) -> None:
        os.environ["SAGEMAKER_BIND_TO_PORT"] = str(port)
        sys.argv = ["serve", "--host", "127.0.0.1", "--workers", "1"]
        runpy.run_path("serve", run_name="__main__")

    return serve_until_answered(start, body)


def lambda_handler(body: bytes) -> int:
    import lambda_function

    direct = lambda_function.handler({"instance": json.loads(body)}, None)
    http_api = lambda_function.handler({
        "version": "2.0", "routeKey": "$default", "rawPath": "/predict", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/predict",
                                    "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1"},
                           "routeKey": "$default", "stage": "$default"},
        "body": body.decode(), "isBase64Encoded": False}, None)
    statuses = {direct["statusCode"], http_api["statusCode"]}
    return statuses.pop() if len(statuses) == 1 else 0


def cloud_function(body: bytes) -> int:
    import flask

    import main

    with flask.Flask(__name__).test_request_context(
            "/predict", method="POST", data=body, content_type="application/json"):
        response = main.prediction_service(flask.request)
    status: int = response.status_code
    return status


def wsgi_main(body: bytes) -> int:
    import main

    status: int = main.app.test_client().post(
        "/predict", data=body, content_type="application/json").status_code
    return status


MODES: dict[str, Callable[[bytes], int]] = {
    "launcher:fastapi": lambda body: launcher("fastapi", body),
    "launcher:flask": lambda body: launcher("flask", body),
    "sagemaker_serve": sagemaker_serve,
    "lambda_handler": lambda_handler,
    "cloud_function": cloud_function,
    "wsgi_main": wsgi_main,
}


def read_files(working_directory: Path) -> list[str]:
    """The files beside the modules that the loaded launcher reads (its gunicorn config, read
    as the launcher reads it for several workers), relative to the working directory."""
    loaded = sys.modules.get(f"{PACKAGE}.serving.launcher")
    if loaded is None:
        return []
    path: Path = loaded.GUNICORN_CONFIG
    settings: dict[str, Any] = loaded.read_gunicorn_config(path)
    assert settings["worker_class"], path
    return [path.resolve().relative_to(working_directory).as_posix()]


def run(mode: str, body: bytes) -> dict[str, Any]:
    status = MODES[mode](body)
    if f"{PACKAGE}.serving.launcher" in sys.modules:
        # The launcher's loader process (a fork of this one) alone imports the database side of
        # the log, as it builds its loader: those modules are the bundle's too.
        __import__(f"{PACKAGE}.prediction_log.loader")
    package = sys.modules.get(PACKAGE)
    working_directory = Path.cwd().resolve()
    return {
        "status": status,
        "modules": sorted(name for name in sys.modules
                          if name == PACKAGE or name.startswith(f"{PACKAGE}.")),
        "package_file": str(Path(str(getattr(package, "__file__", ""))).resolve()),
        "files": read_files(working_directory),
    }


if __name__ == "__main__":
    outcome = run(sys.argv[1], sys.argv[2].encode())
    print(RESULT_MARKER + json.dumps(outcome), flush=True)
