"""Start the prediction service in the foreground: FastAPI on uvicorn, or Flask on gunicorn.

    bash executables/start_prediction_service.sh [fastapi|flask] [PORT]
    pipenv run python -m ml_project.serve [fastapi|flask] [--port PORT] [--host HOST]

The model is loaded here, once, before the port is bound: a missing or tampered artifact stops
the start with a message saying what to do, rather than a server that cannot answer. Flask runs
on gunicorn, embedded in this process: this process is gunicorn's master (it binds the port and
watches the worker) and forks one worker, which serves the app created here with a pool of
threads, so the model loaded here is shared with it, never loaded twice.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.gthread import ThreadWorker

from ml_project.cli import base_parser, start_run
from ml_project.endpoints import API_KEY_ENV
from ml_project.export import ArtifactError
from ml_project.predict import PredictionService
from ml_project.prediction_log import PredictionLog

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

FRAMEWORKS = ("fastapi", "flask")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Threads of the one gunicorn worker, so requests are served concurrently: a connection holds a
# thread only while its request runs (idle keep-alive connections wait in the worker's poller),
# and the model's compiled code and the SQLite write release the GIL. 8 covers the benchmark's
# 8 keep-alive clients.
FLASK_THREADS = 8
# How long an idle keep-alive connection stays open (uvicorn's default too).
FLASK_KEEPALIVE_SECONDS = 5


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Start the prediction service in the foreground (Ctrl-C stops it).")
    parser.add_argument("framework", nargs="?", default="fastapi", choices=FRAMEWORKS)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    parser.add_argument("--host", default=None,
                        help=f"interface to bind (default: $HOST, else {DEFAULT_HOST})")
    args = parser.parse_args(argv)
    host = args.host or os.environ.get("HOST") or DEFAULT_HOST
    config, _ = start_run(
        parser, args, "prediction", "production", "local", f"serving_{args.framework}"
    )
    try:
        service = PredictionService.from_config(config)
    except ArtifactError as err:
        logger.error("Cannot start the prediction service: %s", err)
        return 2
    log = PredictionLog.from_config(config)
    logger.info("Serving %s version %s with %s on http://%s:%d (API key %s); log: %s",
                service.metadata.get("model_name"), service.model_version, args.framework, host,
                args.port, "required" if os.environ.get(API_KEY_ENV) else "not required", log.url)
    try:
        if args.framework == "fastapi":
            run_fastapi(service, log, host, args.port)
        else:
            run_flask(service, log, host, args.port)
    finally:
        log.close()
    return 0


def run_fastapi(service: PredictionService, log: PredictionLog, host: str, port: int) -> None:
    """Until SIGINT/SIGTERM; uvicorn then finishes the requests in flight."""
    import uvicorn  # imported here: a Flask server needs neither uvicorn nor FastAPI

    from ml_project.api import create_app

    # log_config=None: uvicorn's loggers go to the handlers configure_logging set up.
    uvicorn.run(create_app(service, log), host=host, port=port, log_config=None)


def run_flask(service: PredictionService, log: PredictionLog, host: str, port: int) -> None:
    """Until SIGINT/SIGTERM, on gunicorn; it then finishes the requests in flight.

    This process becomes gunicorn's master and forks one gthread worker: one process, as
    uvicorn serves FastAPI, since the model is in memory and the prediction log is one SQLite
    file; concurrency comes from the worker's threads. OpenMP is fork-safe here: libgomp hangs
    a child that runs OpenMP on several threads after its parent did, but the master only loads
    the model, and the worker runs it on one OpenMP thread per request (`PredictionService`).
    """
    from ml_project.flask_api import create_flask_app

    def post_fork(arbiter: Any, worker: Any) -> None:
        log.after_fork()  # the worker opens its own database connections

    server = _EmbeddedGunicorn(create_flask_app(service, log), {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": 1,
        "worker_class": _GthreadWorker,
        "threads": FLASK_THREADS,
        "keepalive": FLASK_KEEPALIVE_SECONDS,
        "accesslog": None,  # every prediction request is in the prediction log already
        "logger_class": _GunicornLogging,
        "control_socket_disable": True,  # else a socket in $XDG_RUNTIME_DIR or ~/.gunicorn
        "post_fork": post_fork,
    })
    master = os.getpid()
    try:
        server.run()
    except SystemExit as stop:
        # gunicorn ends its processes with sys.exit: the master once it has stopped, and the
        # worker, a fork of this process unwinding this same stack. Only the master's clean stop
        # returns; the worker, or a master that failed, exits with its own status.
        if os.getpid() != master or stop.code not in (0, None):
            raise


class _EmbeddedGunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn serving an app already created in this process: `load()` returns it, so the
    worker imports and loads nothing (no app module path, no preload)."""

    def __init__(self, app: Flask, settings: dict[str, Any]) -> None:
        self._app = app
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._settings.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return self._app

    def run(self) -> None:
        _GracefulArbiter(self).run()


class _GracefulArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, but SIGINT (Ctrl-C) stops as gracefully as SIGTERM, as uvicorn does:
    the requests in flight finish. A second SIGINT during the stop still forces it."""

    def handle_int(self) -> None:
        self.handle_term()


class _GthreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, stopping as uvicorn does: the requests in flight finish, and

    - SIGINT stops it as gracefully as SIGTERM (Ctrl-C reaches the whole process group, the
      worker too), rather than with gunicorn's quick exit;
    - idle keep-alive connections are closed at once. gunicorn 26 leaves them open and then
      waits in select() for the rest of graceful_timeout (30 s) before it notices they expired.
    """

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.siginterrupt(signal.SIGINT, False)

    def murder_keepalived(self) -> None:
        if not self.alive:  # stopping: no connection waiting here has a request in flight
            for connection in (*self.keepalived_conns, *self.pending_conns):
                connection.timeout = 0.0
        super().murder_keepalived()


class _GunicornLogging(GunicornLogger):  # type: ignore[misc]
    """gunicorn's messages go to the handlers configure_logging set up, at the root logger's
    level (as uvicorn's with log_config=None), instead of gunicorn's own stderr handler."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self.error_log.propagate = True
        self.error_log.setLevel(logging.NOTSET)


if __name__ == "__main__":
    raise SystemExit(main())
