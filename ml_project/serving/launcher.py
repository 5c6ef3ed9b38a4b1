"""Start the prediction service in the foreground: the FastAPI or the Flask app on uvicorn.

    bash executables/start_prediction_service.sh [fastapi|flask] [PORT] [--workers N]
    python -m ml_project.serving.launcher [fastapi|flask] [--port PORT] [--host HOST]
        [--workers N] [--gunicorn-config FILE]

Without --port it binds $PORT when set (Heroku, App Engine, Cloud Run set it), else 8000.

The model is loaded here, once, before the port is bound: a missing or tampered artifact stops
the start with a message saying what to do, rather than a server that cannot answer. Workers
(--workers, else $WEB_CONCURRENCY, else the CPUs this process may use): one worker process
predicts one request at a time, so a CPU-bound model needs one per core. One worker is uvicorn
in this process. Several: gunicorn, embedded as a custom application (its documented
`BaseApplication`), makes this process their master and forks them after the model is loaded,
so they share it; each runs uvicorn (uvicorn-worker's `UvicornWorker`, as shipped) and the
master replaces one that dies. gunicorn's settings come from `gunicorn.conf.py` beside this
module. Either way uvicorn reads every request, body included, on its event loop, answers
pipelined requests in order, and on SIGTERM or Ctrl-C finishes the requests in flight.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import runpy
import signal
import socket
import types
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    from ml_project.config import Config
    from ml_project.predict import PredictionService
    from ml_project.prediction_log.background import LoaderProcess
    from ml_project.prediction_log.log import PredictionLog
    from ml_project.serving.asgi import ASGIApp

logger = logging.getLogger(__name__)

FRAMEWORKS = ("fastapi", "flask")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The variable gunicorn, uvicorn and hosting platforms (Heroku, Render) already use.
WORKERS_ENV = "WEB_CONCURRENCY"
GUNICORN_CONFIG = Path(__file__).with_name("gunicorn.conf.py")
# The signals that stop the service. A worker forked with the master's handlers for them would
# only queue one in the master's state as it copied it, boot and serve on, and the master would
# wait its graceful_timeout (30 s) to kill it: `_hold_stop_signals_across_forks`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# How long the stop waits for the loader's last pass (bounded itself by the database timeouts).
LOADER_STOP_SECONDS = 60
# Arrow's documented switch of its default allocator, read when Arrow loads (`_load_and_serve`).
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
_forking = False  # gunicorn is forking workers in this process
_fork_hooks: list[None] = []  # one entry once the fork hooks are registered


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
    # Imported here, with the collector off (`main`); the libraries and the model come after
    # the loader's fork (`_load_and_serve`).
    from ml_project.cli import base_parser, start_run
    from ml_project.config import ConfigError
    from ml_project.prediction_log.log import PredictionLog

    parser = base_parser("Start the prediction service in the foreground (Ctrl-C stops it).")
    parser.add_argument("framework", nargs="?", default="fastapi", choices=FRAMEWORKS)
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to bind (default: $PORT, as platforms set it, else {DEFAULT_PORT})")
    parser.add_argument("--host", default=None,
                        help=f"interface to bind (default: $HOST, else {DEFAULT_HOST})")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"worker processes (default: ${WORKERS_ENV}, else the CPU count)")
    parser.add_argument("--gunicorn-config", type=Path, default=GUNICORN_CONFIG,
                        help="gunicorn's settings for several workers (default: %(default)s)")
    args = parser.parse_args(argv)
    host = args.host or os.environ.get("HOST") or DEFAULT_HOST
    port = args.port if args.port is not None else int(os.environ.get("PORT") or DEFAULT_PORT)
    try:
        workers = args.workers or default_workers()
    except argparse.ArgumentTypeError as err:
        parser.error(f"{WORKERS_ENV}: {err}")
    try:
        settings = read_gunicorn_config(args.gunicorn_config) if workers > 1 else {}
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    config, _ = start_run(
        parser, args, "prediction", "production", "local", f"serving_{args.framework}"
    )
    # The records are loaded by a process beside the service, forked now, before the libraries
    # and the model: a small process, whatever the model's size. It alone imports the database
    # library, and checks the log's URL first: one that is no database URL stops the start at
    # once, before the model loads.
    log = PredictionLog.from_config(config, load_in_background=False)
    try:
        try:
            loader = log.start_loader_process()
        except ConfigError as err:
            logger.error("Cannot start the prediction service: %s", err)
            return 2
        with loading_beside(log, loader):
            return _load_and_serve(args.framework, config, log, loader, host, port, workers,
                                   settings)
    finally:
        log.close()


def _load_and_serve(framework: str, config: Config, log: PredictionLog, loader: LoaderProcess,
                    host: str, port: int, workers: int, settings: Mapping[str, Any]) -> int:
    # Arrow (pandas loads it) reads one small file here, the reference sample; its default
    # allocator, mimalloc, reserves ~9 MB for that, which the process keeps for its life. The C
    # heap takes what the read needs. Set before Arrow loads; a value of the user's wins.
    os.environ.setdefault(ARROW_POOL_ENV, "system")
    from threadpoolctl import ThreadpoolController

    from ml_project.export import ArtifactError
    from ml_project.predict import PredictionService
    from ml_project.serving.endpoints import API_KEY_ENV

    try:
        # Workers are forked from this process, and libgomp hangs a child that runs OpenMP on
        # several threads after its parent did: what runs the model here (the fast path's proof
        # at load) runs on one OpenMP thread, so no OpenMP thread pool exists before the fork.
        with ThreadpoolController().limit(limits=1, user_api="openmp"):
            service = PredictionService.from_config(config)
    except ArtifactError as err:
        logger.error("Cannot start the prediction service: %s", err)
        return 2
    logger.info("Serving %s version %s with %s on %d worker%s on http://%s:%d (API key %s); "
                "log: %s", service.metadata.get("model_name"), service.model_version,
                framework, workers, "" if workers == 1 else "s", host, port,
                "required" if os.environ.get(API_KEY_ENV) else "not required", log.url)
    app = create_asgi_app(framework, service, log)
    loader.service_ready()  # the table, before the workers answer
    with shadow_beside(config, service, log):
        if workers == 1:
            serve_in_process(app, host, port)
            return 0
        return serve_on_workers(app, host, port, workers, settings)


@contextmanager
def shadow_beside(config: Config, service: PredictionService, log: PredictionLog
                  ) -> Iterator[None]:
    """With `prediction.shadow: challenger`, the challenger's shadow process
    (`serving/shadow.py`), forked before the port is bound or a thread starts; once the
    service has stopped, it scores what remains (a bounded wait), before the loader's last
    pass stores it."""
    if config.prediction.shadow != "challenger":
        yield
        return
    from ml_project.serving.shadow import DRAIN_SECONDS, start_shadow_process

    shadow = start_shadow_process(config, service, log.journal_dir)
    owner = os.getpid()
    try:
        yield
    finally:
        if os.getpid() == owner and not shadow.stop(DRAIN_SECONDS + 5):
            logger.error("The challenger's shadow was still scoring after %d s: it goes on "
                         "alone", DRAIN_SECONDS + 5)


def create_asgi_app(framework: str, service: PredictionService, log: PredictionLog) -> ASGIApp:
    """The app uvicorn serves; only the chosen framework is imported."""
    if framework == "fastapi":
        from ml_project.serving.fastapi_app import create_app

        return create_app(service, log)
    from ml_project.serving.asgi import wsgi_as_asgi
    from ml_project.serving.flask_app import create_flask_app

    flask_app = create_flask_app(service, log)
    return wsgi_as_asgi(flask_app, flask_app.extensions["prediction_endpoints"])


def serve_in_process(app: ASGIApp, host: str, port: int) -> None:
    """uvicorn in this process until SIGINT/SIGTERM; the requests in flight then finish."""
    import uvicorn

    ready_to_serve()
    # uvicorn re-raises SIGTERM once it has stopped; by default that would kill this process
    # before `main` closes the log. Exit normally instead.
    signal.signal(signal.SIGTERM, _exit_normally)
    # log_config=None: uvicorn's loggers go to the handlers configure_logging set up.
    # workers=1: uvicorn would otherwise read WEB_CONCURRENCY itself.
    # access_log=False: every prediction request is in the prediction log already.
    uvicorn.run(app, host=host, port=port, log_config=None, workers=1, lifespan="on",
                access_log=False)


@contextmanager
def loading_beside(log: PredictionLog, loader: LoaderProcess) -> Iterator[None]:
    """While the service starts and runs, the prediction log's loader in a process of its own
    (`PredictionLog.start_loader_process`, forked before the libraries and the model load: it
    shares none of their pages, and takes none; the service imports none of its database
    library); when the service has stopped, the loader's last pass, then a report of any
    records still waiting for the database. gunicorn's workers unwind this same stack as they
    exit: only the process that started the loader stops it."""
    owner = os.getpid()
    try:
        yield
    finally:
        if os.getpid() == owner:
            _finish_loading(log, loader)


def _finish_loading(log: PredictionLog, loader: LoaderProcess) -> None:
    if not loader.stop(LOADER_STOP_SECONDS):
        logger.error("The prediction log loader was still storing records after %d s: it goes "
                     "on alone, and the next start loads what it leaves", LOADER_STOP_SECONDS)
        return
    if log.pending(count_records=False).bytes and not log.counters().get("database_unavailable"):
        log.flush(timeout=0)  # the loader process ended before its last pass (killed)
    waiting = log.pending()
    if waiting.records:
        logger.warning("Prediction log: %d records wait in %s for the database %s; the next "
                       "start loads them, as does `python -m ml_project.prediction_log.loader`",
                       waiting.records, log.journal_dir, log.url)


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def read_gunicorn_config(path: Path) -> dict[str, Any]:
    """The settings and hooks a gunicorn config file defines (its public names, modules left
    out), as gunicorn's own `-c FILE` reads one: by running it."""
    if not path.is_file():
        raise FileNotFoundError(f"gunicorn config file not found: {path}")
    try:
        names = runpy.run_path(str(path))
    except Exception as err:  # whatever the file's own code raises
        raise ValueError(f"gunicorn config file {path}: {type(err).__name__}: {err}") from err
    return {name: value for name, value in names.items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)}


def serve_on_workers(app: ASGIApp, host: str, port: int, workers: int,
                     settings: Mapping[str, Any]) -> int:
    """gunicorn in this process, master of `workers` uvicorn workers forked from it, until
    SIGINT/SIGTERM; returns its exit status. `settings`: gunicorn's, from its config file."""
    from gunicorn.app.base import BaseApplication

    reserved = _reserve_port(host, port) if settings.get("reuse_port") else None
    if reserved is not None:
        port = reserved.getsockname()[1]  # port 0 is a free port: the same one for every worker
    options = {**settings, "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
               "workers": workers}

    class Service(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
        """gunicorn's custom application, as its documentation shows it: the settings given,
        and the app already loaded in this process (workers import and load nothing)."""

        def load_config(self) -> None:
            for name, value in options.items():
                if name in self.cfg.settings:
                    self.cfg.set(name, value)
                else:
                    logger.warning("gunicorn has no setting %r (its config file names it); "
                                   "ignored", name)

        def load(self) -> ASGIApp:
            return app

    ready_to_serve()
    _hold_stop_signals_across_forks()
    master = os.getpid()
    global _forking
    _forking = True
    try:
        Service().run()
    except SystemExit as stop:
        # gunicorn ends its processes with sys.exit: the master once it has stopped, and each
        # worker, a fork of this process unwinding this same stack. A worker exits with its own
        # status; the master returns its status to `main`, which closes the log.
        if os.getpid() != master:
            raise
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    finally:
        _forking = False
        if reserved is not None and os.getpid() == master:
            reserved.close()
    return 0


def _hold_stop_signals_across_forks() -> None:
    """A stop signal that comes while gunicorn forks a worker is held, and the worker starts
    with the default action for it: the one that comes before the worker class installs its own
    handlers stops the booting worker at once (nothing is in flight yet), never lost. Python's
    documented fork hooks (`os.register_at_fork`), around gunicorn's fork; the master gets a
    signal held during a fork as soon as the fork is done. Registered once; they act only while
    `serve_on_workers` runs."""
    if _fork_hooks:
        return
    held: list[set[int | signal.Signals]] = []

    def before() -> None:
        if _forking:
            held.append(signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS))

    def in_parent() -> None:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, held.pop())

    def in_child() -> None:
        if held:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, held.pop())

    os.register_at_fork(before=before, after_in_parent=in_parent, after_in_child=in_child)
    _fork_hooks.append(None)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the port with SO_REUSEPORT, never listening, so it gets no connection:
    it holds the port for the workers' own sockets while they come and go. A port in use fails
    here, at once; in a worker, gunicorn would replace the worker that cannot bind, forever."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
    except OSError as err:
        reserved.close()
        logger.error("Cannot serve on %s port %d: %s", host, port, err)
        raise SystemExit(1) from err
    return reserved


if __name__ == "__main__":
    raise SystemExit(main())
