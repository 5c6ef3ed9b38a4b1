"""Start the prediction service in the foreground: FastAPI on uvicorn, or Flask on gunicorn.

    bash executables/start_prediction_service.sh [fastapi|flask] [PORT] [--workers N]
    pipenv run python -m ml_project.serving.launcher [fastapi|flask] [--port PORT] [--host HOST] [--workers N]

Without --port it binds $PORT when set (Heroku, App Engine, Cloud Run set it), else 8000.

The model is loaded here, once, before the port is bound: a missing or tampered artifact stops
the start with a message saying what to do, rather than a server that cannot answer. Workers
(--workers, else $WEB_CONCURRENCY, else the CPUs this process may use): one worker process
predicts one request at a time, so a CPU-bound model needs one per core. gunicorn, embedded in
this process, makes it the master (it binds the port and replaces a worker that dies) and forks
the workers, which serve the app created here, so the model loaded here is shared with them,
never loaded again: Flask on gthread workers (a pool of threads each), FastAPI on uvicorn
workers. FastAPI on one worker runs uvicorn in this process, with no master.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ml_project.predict import PredictionService
    from ml_project.prediction_log.log import PredictionLog

logger = logging.getLogger(__name__)

FRAMEWORKS = ("fastapi", "flask")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The variable gunicorn, uvicorn and hosting platforms (Heroku, Render) already use.
WORKERS_ENV = "WEB_CONCURRENCY"


def default_workers() -> int:
    """$WEB_CONCURRENCY, else the CPUs this process may run on (its affinity, not the host's).
    A container's CPU quota is not an affinity: set WEB_CONCURRENCY to it."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value:
        return positive_int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of workers >= 1, got {value!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    """Python's recipe for a server that loads once and forks (`gc.freeze`'s documentation):
    no cyclic garbage collection while the start creates its long-lived objects (the libraries'
    modules, the model, the proof), where each collection scans them all again for nothing;
    then, just before serving, a freeze (`ready_to_serve`), so that they are never scanned
    again, here or in a forked worker, whose pages they share."""
    gc.disable()
    try:
        return _start(argv)
    finally:
        gc.enable()


def ready_to_serve() -> None:
    """Freeze what the start created and collect as usual from now on. No collection first: on
    the shipped model it took 0.27 s to free 3,272 objects (under 1 MB) of 210,000."""
    gc.freeze()
    gc.enable()


def _start(argv: list[str] | None) -> int:
    # Imported here, with the collector off (`main`): these bring in the libraries.
    from threadpoolctl import ThreadpoolController

    from ml_project.cli import base_parser, start_run
    from ml_project.serving.endpoints import API_KEY_ENV
    from ml_project.export import ArtifactError
    from ml_project.predict import PredictionService
    from ml_project.prediction_log.log import PredictionLog

    parser = base_parser("Start the prediction service in the foreground (Ctrl-C stops it).")
    parser.add_argument("framework", nargs="?", default="fastapi", choices=FRAMEWORKS)
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to bind (default: $PORT, as platforms set it, else {DEFAULT_PORT})")
    parser.add_argument("--host", default=None,
                        help=f"interface to bind (default: $HOST, else {DEFAULT_HOST})")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"worker processes (default: ${WORKERS_ENV}, else the CPU count)")
    args = parser.parse_args(argv)
    host = args.host or os.environ.get("HOST") or DEFAULT_HOST
    port = args.port if args.port is not None else int(os.environ.get("PORT") or DEFAULT_PORT)
    try:
        workers = args.workers or default_workers()
    except argparse.ArgumentTypeError as err:
        parser.error(f"{WORKERS_ENV}: {err}")
    config, _ = start_run(
        parser, args, "prediction", "production", "local", f"serving_{args.framework}"
    )
    try:
        # Workers are forked from this process, and libgomp hangs a child that runs OpenMP on
        # several threads after its parent did: what runs the model here (the fast path's proof
        # at load) runs on one OpenMP thread, so no OpenMP thread pool exists before the fork.
        with ThreadpoolController().limit(limits=1, user_api="openmp"):
            service = PredictionService.from_config(config)
    except ArtifactError as err:
        logger.error("Cannot start the prediction service: %s", err)
        return 2
    log = PredictionLog.from_config(config)
    logger.info("Serving %s version %s with %s on %d worker%s on http://%s:%d (API key %s); "
                "log: %s", service.metadata.get("model_name"), service.model_version,
                args.framework, workers, "" if workers == 1 else "s", host, port,
                "required" if os.environ.get(API_KEY_ENV) else "not required", log.url)
    try:
        if args.framework == "fastapi":
            run_fastapi(service, log, host, port, workers)
        else:
            run_flask(service, log, host, port, workers)
    finally:
        log.close()
    return 0


def run_fastapi(service: PredictionService, log: PredictionLog, host: str, port: int,
                workers: int = 1) -> None:
    """Until SIGINT/SIGTERM; uvicorn then finishes the requests in flight. Several workers:
    uvicorn workers forked by gunicorn (`asgi_workers`), as `run_flask` forks Flask's."""
    from ml_project.serving.fastapi_app import create_app  # imported here: a Flask server needs no FastAPI

    app = create_app(service, log)
    if workers > 1:
        from ml_project.serving.asgi_workers import serve_asgi

        log.prepare()
        ready_to_serve()
        serve_asgi(app, host, port, post_fork=log.after_fork, workers=workers)
        return
    import uvicorn

    ready_to_serve()

    # uvicorn re-raises SIGTERM once it has stopped; by default that would kill this process
    # before `main` stores what the prediction log still holds. Exit normally instead.
    signal.signal(signal.SIGTERM, _exit_normally)
    # log_config=None: uvicorn's loggers go to the handlers configure_logging set up.
    # workers=1: uvicorn would otherwise read WEB_CONCURRENCY itself.
    uvicorn.run(app, host=host, port=port, log_config=None, workers=1)


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_flask(service: PredictionService, log: PredictionLog, host: str, port: int,
              workers: int = 1) -> None:
    """Until SIGINT/SIGTERM, on gunicorn (`wsgi_server`); it then finishes the requests in flight.

    OpenMP is fork-safe here: libgomp hangs a child that runs OpenMP on several threads after
    its parent did, but this process (the master) runs the model on one OpenMP thread only
    (`main`), and the workers run it on one OpenMP thread per request (`PredictionService`).
    The same holds for FastAPI's workers.
    """
    from ml_project.serving.flask_app import create_flask_app  # imported here: FastAPI needs neither
    from ml_project.serving.wsgi_server import serve_wsgi

    app = create_flask_app(service, log)
    log.prepare()
    ready_to_serve()
    serve_wsgi(app, host, port, post_fork=log.after_fork, workers=workers)


if __name__ == "__main__":
    raise SystemExit(main())
