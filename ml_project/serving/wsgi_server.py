"""gunicorn serving an app created in this process: the master of the service's workers.

`serve_wsgi(app, host, port, post_fork, workers)` makes the calling process gunicorn's master;
it forks `workers` gthread workers, which serve the app created before the fork with a pool of
threads each, so the model the caller loaded is shared with them, never loaded again (the pages
stay shared until written: `gc.freeze`). `serve_forked` does the same for any worker class (the
FastAPI service's uvicorn workers: `asgi_workers`). Imported only when gunicorn serves.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from typing import Any, Callable

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.gthread import ThreadWorker

logger = logging.getLogger(__name__)

# Threads of each gunicorn worker, so requests are served concurrently: a connection holds a
# thread only while its request is read and runs (idle keep-alive connections wait in the
# worker's poller). Predictions run one at a time per worker anyway (`PredictionEndpoints`), so
# threads beyond the 8 busy clients of the benchmark cost only a stack each: they are what keeps
# the service answering while clients that stall mid-request hold theirs (up to READ_TIMEOUT).
THREADS = 32
# A client that sends nothing for this long while its request is read is dropped (its body:
# 408), so a stalled connection holds a worker thread for seconds, never for good.
READ_TIMEOUT_SECONDS = 10.0
# How long an idle keep-alive connection stays open (uvicorn's default too).
KEEPALIVE_SECONDS = 5
# The signals that stop the service gracefully. A worker holds them blocked from its fork until
# its own handlers are in place (`unblock_stop_signals`): until then it still has the master's
# handlers, which only queue the signal in the master's copy of its state: the worker would boot
# and serve on, and the master would wait its graceful_timeout (30 s) before killing it.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def serve_wsgi(app: Any, host: str, port: int, post_fork: Callable[[], None],
               workers: int = 1) -> None:
    """Until SIGINT/SIGTERM; the requests in flight then finish.

    Each worker process runs one prediction at a time (the GIL), so throughput grows with
    workers up to the cores; within a worker, concurrency comes from its threads.
    `post_fork` runs in each worker first (to start its own prediction log writer).
    """
    serve_forked(app, host, port, post_fork, workers, _GthreadWorker, threads=THREADS)


def serve_forked(app: Any, host: str, port: int, post_fork: Callable[[], None], workers: int,
                 worker_class: type, **settings: Any) -> None:
    """`app` on `workers` processes of `worker_class`, forked from this one (gunicorn's master,
    which replaces a worker that dies), until SIGINT/SIGTERM. One worker serves the master's
    socket; several bind one each (`reuse_port`), on the port the master holds for them."""
    reserved = _reserve_port(host, port) if workers > 1 else None
    if reserved is not None:
        port = reserved.getsockname()[1]  # port 0 is a free port: the same one for every worker
    server = _EmbeddedGunicorn(app, {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": worker_class,
        "keepalive": KEEPALIVE_SECONDS,
        "accesslog": None,  # every prediction request is in the prediction log already
        "logger_class": _GunicornLogging,
        "control_socket_disable": True,  # else a socket in $XDG_RUNTIME_DIR or ~/.gunicorn
        # Each worker binds its own socket (SO_REUSEPORT), and the kernel spreads new
        # connections over them. On one shared socket, whichever worker wakes first accepts every
        # connection waiting: a few keep-alive clients (a proxy's pool, say) then all land on
        # one worker, and the others idle.
        "reuse_port": workers > 1,
        # The workers' garbage collectors must not touch the objects they inherit (the model,
        # every module): marking them would copy each page they sit on, unsharing ~50 MB each.
        "pre_fork": lambda arbiter, worker: gc.freeze(),
        "post_fork": lambda arbiter, worker: post_fork(),
        **settings,
    })
    master = os.getpid()
    try:
        server.run()
    except SystemExit as stop:
        # gunicorn ends its processes with sys.exit: the master once it has stopped, and each
        # worker, a fork of this process unwinding this same stack. Only the master's clean stop
        # returns; a worker, or a master that failed, exits with its own status.
        if os.getpid() != master or stop.code not in (0, None):
            raise
    finally:
        if reserved is not None and os.getpid() == master:
            reserved.close()


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


class _EmbeddedGunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn serving an app already created in this process: `load()` returns it, so a
    worker imports and loads nothing (no app module path, no preload)."""

    def __init__(self, app: Any, settings: dict[str, Any]) -> None:
        self._app = app
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._settings.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return self._app

    def run(self) -> None:
        _GracefulArbiter(self).run()


def unblock_stop_signals() -> None:
    """In a worker, once its own stop handlers are in place: a stop signal that came while it
    was booting is delivered now, to them."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class _GracefulArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, but

    - SIGINT (Ctrl-C) stops as gracefully as SIGTERM, as uvicorn does: the requests in flight
      finish. A second SIGINT during the stop still forces it;
    - a worker is forked with STOP_SIGNALS blocked, so a stop that comes while it boots (the
      service just started, or a dead worker being replaced) waits for its handlers, not lost.
    """

    def handle_int(self) -> None:
        self.handle_term()

    def spawn_worker(self) -> int:
        master = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return int(super().spawn_worker())
        finally:
            if os.getpid() == master:  # the worker leaves through here too, blocked, exiting
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _GthreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, stopping as uvicorn does: the requests in flight finish, and

    - a client stalled mid-request holds a thread for READ_TIMEOUT_SECONDS at most;
    - SIGINT stops it as gracefully as SIGTERM (Ctrl-C reaches the whole process group, the
      workers too), rather than with gunicorn's quick exit;
    - idle keep-alive connections are closed at once. gunicorn 26 leaves them open and then
      waits in select() for the rest of graceful_timeout (30 s) before it notices they expired.
    """

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.siginterrupt(signal.SIGINT, False)
        unblock_stop_signals()  # a stop while booting ends the worker before it serves

    def enqueue_req(self, conn: Any) -> None:
        """Before a thread reads the connection: its socket times out (`_TimedSocket`)."""
        if not isinstance(conn.sock, _TimedSocket):
            raw = conn.sock
            conn.sock = _TimedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        super().enqueue_req(conn)

    def murder_keepalived(self) -> None:
        if not self.alive:  # stopping: no connection waiting here has a request in flight
            for connection in (*self.keepalived_conns, *self.pending_conns):
                connection.timeout = 0.0
        super().murder_keepalived()


class _TimedSocket(socket.socket):
    """A client socket that, when made blocking to be read by a worker thread, waits at most
    READ_TIMEOUT_SECONDS for each read instead of for ever."""

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(READ_TIMEOUT_SECONDS)
        else:
            super().setblocking(False)


class _GunicornLogging(GunicornLogger):  # type: ignore[misc]
    """gunicorn's messages go to the handlers configure_logging set up, at the root logger's
    level (as uvicorn's with log_config=None), instead of gunicorn's own stderr handler."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self.error_log.propagate = True
        self.error_log.setLevel(logging.NOTSET)
