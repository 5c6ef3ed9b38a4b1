"""gunicorn's settings for the prediction service on several worker processes (`--workers N`).

A gunicorn config file like any other: every name below is one of gunicorn's documented settings
or server hooks (https://docs.gunicorn.org/en/stable/settings.html). The launcher
(`ml_project/serving/launcher.py`) reads it, then lets its own --host, --port and --workers
override `bind` and `workers`; `--gunicorn-config FILE` reads another file instead. With one
worker the service runs on uvicorn alone, and this file is not read.
"""

import gc
import os
import signal

# The FastAPI app, and the Flask app as ASGI, on uvicorn in each worker, as uvicorn-worker ships it.
worker_class = "uvicorn_worker.UvicornWorker"

# Each worker binds the port itself, with SO_REUSEPORT, and the kernel spreads new connections
# over them: on one shared socket, whichever worker wakes first accepts all the connections
# waiting, so a few keep-alive clients (a proxy's pool) would all land on one worker.
reuse_port = True

# Seconds an idle keep-alive connection stays open (uvicorn's own default too).
keepalive = 5

# A stop (SIGTERM, or Ctrl-C: `when_ready`) lets the requests in flight finish for up to this
# many seconds.
graceful_timeout = 30

# Every prediction request is in the prediction log already.
accesslog = None

# No control socket in $XDG_RUNTIME_DIR or ~/.gunicorn for a service the launcher runs.
control_socket_disable = True


def pre_fork(server, worker):  # type: ignore[no-untyped-def]  # gunicorn's hook signature
    """Freeze what the master created (the model, every module) before each fork: a worker's
    garbage collector then never writes to those pages, so they stay shared (~50 MB each)."""
    gc.freeze()


def when_ready(server):  # type: ignore[no-untyped-def]  # gunicorn's hook signature
    """Ctrl-C (SIGINT) stops the service as SIGTERM does: gracefully, as uvicorn alone does on
    one worker. gunicorn's own answer to SIGINT is a quick shutdown, which sends the workers
    SIGQUIT, and a uvicorn worker does not act on SIGQUIT: a worker forked after the Ctrl-C
    reached the others (one being replaced, or the last of the start) would serve on until
    graceful_timeout. Ctrl-\\ (SIGQUIT) still asks gunicorn for its quick shutdown."""
    signal.signal(signal.SIGINT, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
