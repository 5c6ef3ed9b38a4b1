"""The FastAPI service on several uvicorn worker processes, forked by gunicorn's master.

uvicorn's own `--workers` starts each worker as a new interpreter that imports the app and would
load the model again, once per worker; gunicorn forks them from this process instead, after the
model is loaded (`wsgi_server.serve_forked`), and replaces a worker that dies. The worker class
is the `uvicorn-worker` package's (uvicorn's own `uvicorn.workers` is deprecated). Imported only
when FastAPI is served on more than one worker.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Callable

from uvicorn_worker import UvicornWorker

from ml_project.serving.wsgi_server import serve_forked, unblock_stop_signals


def serve_asgi(app: Any, host: str, port: int, post_fork: Callable[[], None],
               workers: int) -> None:
    """Until SIGINT/SIGTERM; each worker then finishes its requests in flight.
    `post_fork` runs in each worker first (to start its own prediction log writer)."""
    serve_forked(UnblockStopSignalsAtStartup(app), host, port, post_fork, workers, _UvicornWorker)


class _UvicornWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """uvicorn in a gunicorn worker, logging and stopping as `uvicorn.run` does in one process:

    - uvicorn's messages (access lines too) go to the handlers configure_logging set up, rather
      than to gunicorn's, which `wsgi_server` leaves empty;
    - after a graceful stop the worker exits normally, so it stores what its prediction log
      still holds: uvicorn re-raises the signal that stopped it once it has finished, and the
      handler it then finds only marks the worker stopped, where the default one would kill it;
    - the stop signals, blocked since the fork (`wsgi_server.STOP_SIGNALS`), are unblocked only
      once uvicorn's own handlers are in place: when it starts the app's lifespan. A stop that
      came while the worker booted then stops uvicorn gracefully, where before it only marked
      the worker stopped, which uvicorn never reads, and the master waited 30 s to kill it.
    """

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "on"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers = []
            uvicorn_logger.setLevel(logging.NOTSET)
            uvicorn_logger.propagate = True

    def init_signals(self) -> None:
        super().init_signals()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_exit)


class UnblockStopSignalsAtStartup:
    """ASGI middleware: unblocks the stop signals when uvicorn starts the app's lifespan, which
    it does after installing its signal handlers; passes everything through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            unblock_stop_signals()
        await self.app(scope, receive, send)
