"""Start the prediction service in the foreground: FastAPI on uvicorn, or Flask on gunicorn.

    bash executables/start_prediction_service.sh [fastapi|flask] [PORT]
    pipenv run python -m ml_project.serve [fastapi|flask] [--port PORT] [--host HOST]

Without --port it binds $PORT when set (Heroku, App Engine, Cloud Run set it), else 8000.

The model is loaded here, once, before the port is bound: a missing or tampered artifact stops
the start with a message saying what to do, rather than a server that cannot answer. Flask runs
on gunicorn, embedded in this process: this process is gunicorn's master (it binds the port and
watches the worker) and forks one worker, which serves the app created here with a pool of
threads, so the model loaded here is shared with it, never loaded twice.
"""

from __future__ import annotations

import logging
import os

from ml_project.cli import base_parser, start_run
from ml_project.endpoints import API_KEY_ENV
from ml_project.export import ArtifactError
from ml_project.predict import PredictionService
from ml_project.prediction_log import PredictionLog

logger = logging.getLogger(__name__)

FRAMEWORKS = ("fastapi", "flask")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Start the prediction service in the foreground (Ctrl-C stops it).")
    parser.add_argument("framework", nargs="?", default="fastapi", choices=FRAMEWORKS)
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to bind (default: $PORT, as platforms set it, else {DEFAULT_PORT})")
    parser.add_argument("--host", default=None,
                        help=f"interface to bind (default: $HOST, else {DEFAULT_HOST})")
    args = parser.parse_args(argv)
    host = args.host or os.environ.get("HOST") or DEFAULT_HOST
    port = args.port if args.port is not None else int(os.environ.get("PORT") or DEFAULT_PORT)
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
                port, "required" if os.environ.get(API_KEY_ENV) else "not required", log.url)
    try:
        if args.framework == "fastapi":
            run_fastapi(service, log, host, port)
        else:
            run_flask(service, log, host, port)
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
    """Until SIGINT/SIGTERM, on gunicorn (`wsgi_server`); it then finishes the requests in flight.

    OpenMP is fork-safe here: libgomp hangs a child that runs OpenMP on several threads after
    its parent did, but this process (the master) only loads the model, and the worker runs it
    on one OpenMP thread per request (`PredictionService`).
    """
    from ml_project.flask_api import create_flask_app  # imported here: FastAPI needs neither
    from ml_project.wsgi_server import serve_wsgi

    serve_wsgi(create_flask_app(service, log), host, port, post_fork=log.after_fork)


if __name__ == "__main__":
    raise SystemExit(main())
