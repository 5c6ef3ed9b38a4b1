"""Where the loader runs: a process of its own beside the service's workers, or a thread.

The service forks one loader process before its workers start (`start_loader_process`, on the
generic `fork_beside`, which the challenger's shadow uses too), so a worker's request path never
touches the database; the cloud handlers and the use cases, which
live in one process, run the loader in a background thread (`LoaderThread`).
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import IO, Callable

from ml_project.prediction_log import journal
from ml_project.prediction_log.loader import Loader

logger = logging.getLogger(__name__)

# Held (flock) by a loader process for its whole life: free once it has exited, however it died.
ALIVE_FILE = "loader.alive"


def loader_process_alive(directory: Path) -> bool:
    """Whether a loader process of this journal folder is alive (its lock on ALIVE_FILE)."""
    return journal.lock_held(directory / ALIVE_FILE)


class LoaderThread:
    """A loader in a background thread of this process (never a request's)."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._starting:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self.loader.run, args=(self._stop,),
                                                name="prediction-log-loader", daemon=True)
                self._thread.start()

    def stop(self, timeout: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout)


class ProcessBeside:
    """A process forked beside the service (`fork_beside`): the loader, or the challenger's
    shadow (`serving/shadow.py`)."""

    def __init__(self, lifeline: int, alive_path: Path) -> None:
        self._lifeline = lifeline
        self.alive_path = alive_path

    def alive(self) -> bool:
        return journal.lock_held(self.alive_path)

    def stop(self, timeout: float) -> bool:
        """Tell the process to finish (closing its lifeline) and wait until it has done its
        last work and exited; False if it was still running after `timeout`."""
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


# What a process beside runs: given its lifeline (readable at EOF once it must finish) and a
# callable that keeps its lock on the alive file held (call it on every pass).
BesideWork = Callable[[int, Callable[[], None]], None]


def fork_beside(alive_path: Path, work: BesideWork, what: str) -> ProcessBeside:
    """Fork `work` away from the service: a process of its own session (a Ctrl-C meant for the
    service does not cut its work short), not the service's child (gunicorn's master reaps its
    children as workers), that holds the lock on `alive_path` for its whole life (watchers
    tell it is alive by that lock) and runs until its lifeline, a pipe from this process,
    closes: at `ProcessBeside.stop`, or when this process and every worker forked from it are
    gone, however they ended. Call it before any thread starts (a fork copies one thread)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover  (runs in the forked processes; tested by its effects)
        status = 0
        try:
            os.close(write_end)
            if os.fork() == 0:
                os.setsid()
                held = [_hold_alive_file(alive_path)]  # released at its exit

                def keep_alive_file() -> None:
                    try:
                        held[0] = _hold_alive_file(alive_path, held[0])
                    except OSError as err:  # the folder cannot be made now: the next pass tries
                        logger.warning("The %s cannot hold %s (%s)", what, alive_path.name, err)

                # What the parent created is never scanned here (its pages stay shared); this
                # process's own garbage is collected, whether or not the parent collects.
                gc.freeze()
                gc.enable()
                work(read_end, keep_alive_file)
        except BaseException:
            logger.exception("The %s failed", what)
            status = 1
        finally:
            logging.shutdown()
            os._exit(status)
    os.close(read_end)
    os.waitpid(child, 0)
    deadline = time.monotonic() + 10  # until it holds its lock: `stop` and watchers rely on it
    while not journal.lock_held(alive_path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return ProcessBeside(write_end, alive_path)


def lifeline_closed(lifeline: int, wait: float) -> bool:
    """Wait up to `wait` seconds for the lifeline; True once it is closed (time to finish)."""
    readable, _, _ = select.select([lifeline], [], [], wait)
    return bool(readable) and not os.read(lifeline, 1)


def start_loader_process(loader: Loader, *, interval: float = 0.2,
                         retry: float = 1.0) -> ProcessBeside:
    """The loader in a process beside the service (`fork_beside`), loading every `interval`
    seconds (`retry` while the database is unavailable), and a last pass once told to stop."""

    def work(lifeline: int, keep_alive_file: Callable[[], None]) -> None:  # pragma: no cover
        loader.engine.dispose(close=False)  # the parent's connections stay the parent's
        logger.info("Prediction log loader started (pid %d): %s into %s", os.getpid(),
                    loader.directory, loader.url)
        while True:
            keep_alive_file()
            loader.load_safely()
            if lifeline_closed(lifeline, retry if loader.status.error else interval):
                break
        loader.load_safely()

    return fork_beside(loader.directory / ALIVE_FILE, work, "prediction log loader process")


def _hold_alive_file(path: Path, held: IO[bytes] | None = None) -> IO[bytes]:
    """The lock on the alive file `path`, taken again on a new file if the one held was
    deleted or replaced (`clear_outputs.sh` while serving): watchers must not take it for a
    death."""
    if held is not None:
        try:
            if os.path.samestat(os.stat(path), os.fstat(held.fileno())):
                return held
        except OSError:
            pass
        held.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle
