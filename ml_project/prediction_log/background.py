"""Where the loader runs: a process of its own beside the service's workers, or a thread.

The service forks one loader process before its workers start (`start_loader_process`), so a
worker's request path never touches the database; the cloud handlers and the use cases, which
live in one process, run the loader in a background thread (`LoaderThread`). `fork_beside`
forks any other process beside the service the same way (the challenger's shadow,
`serving/shadow.py`).
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

from ml_project.config import ConfigError
from ml_project.prediction_log import journal

if TYPE_CHECKING:  # the loader's module imports the database library: its process only
    from ml_project.prediction_log.loader import Loader

logger = logging.getLogger(__name__)

# Held (flock) by a loader process for its whole life: free once it has exited, however it died.
ALIVE_FILE = "loader.alive"
# A service's loader process makes a pass every PASS_SECONDS. A pass that finds records stores
# what the journal held when it began in one transaction a file, on a connection kept between
# passes: ~20-30 us of CPU a record all in, 1% of a core at 400 requests/s
# (`executables/benchmark_log_cost.py`), taken from the cores that answer requests; once a
# second, a pass's fixed cost falls on a request's tail a fifth as often as every 0.2 s did.
# Records wait no longer to be durable (the journal is), and a reader (`PredictionLog.read`,
# monitoring) loads what waits first.
PASS_SECONDS = 1.0
# The loader's scheduling priority below the service's (`os.nice`): when both want a core, a
# request runs first, and the loader still gets ~10% of a core, ~8x what it needs at 500 req/s.
NICENESS = 10


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
    """A process forked beside the service, alive while it holds its lock on `alive_path`."""

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


class LoaderProcess(ProcessBeside):
    """A loader in a process of its own, forked beside the service (`start_loader_process`);
    `url`: the log's database URL as the loader shows it (secrets masked), None if it ended
    before it could say."""

    def __init__(self, lifeline: int, directory: Path, url: str | None) -> None:
        super().__init__(lifeline, directory / ALIVE_FILE)
        self.directory = directory
        self.url = url

    def service_ready(self) -> None:
        """The service has its model: the loader creates the table now (never for a start
        refused before, which leaves no log behind), not at a first record mid-serving."""
        if self._lifeline >= 0:
            os.write(self._lifeline, b"r")


def _fork_detached(run: Callable[[], None], what: str) -> None:
    """`run` in a process of its own session (a Ctrl-C meant for the service does not cut its
    work short), not the service's child (gunicorn's master reaps its children as workers):
    a grandchild, whose parent has exited when this returns."""
    child = os.fork()
    if child == 0:  # pragma: no cover  (runs in the forked processes; tested by its effects)
        status = 0
        try:
            if os.fork() == 0:
                os.setsid()
                run()
        except BaseException:
            logger.exception("The %s failed", what)
            status = 1
        finally:
            logging.shutdown()
            os._exit(status)
    os.waitpid(child, 0)


# What a process beside runs: given its lifeline (readable at EOF once it must finish) and a
# callable that keeps its lock on the alive file held (to call on every pass).
BesideWork = Callable[[int, Callable[[], None]], None]


def fork_beside(alive_path: Path, work: BesideWork, what: str) -> ProcessBeside:
    """Fork `work` away from the service (`_fork_detached`), holding the lock on `alive_path`
    for its whole life (watchers tell it is alive by that lock), until its lifeline, a pipe from
    this process, closes: at `ProcessBeside.stop`, or when this process and every worker forked
    from it are gone, however they ended. Call it before any thread starts (a fork copies one
    thread)."""
    lifeline, keep_alive = os.pipe()

    def run() -> None:  # pragma: no cover  (a forked process)
        os.close(keep_alive)
        held = [_hold_alive_file(alive_path)]  # released at its exit

        def keep_alive_file() -> None:
            try:
                held[0] = _hold_alive_file(alive_path, held[0])
            except OSError as err:  # the folder cannot be made now: the next pass tries again
                logger.warning("The %s cannot hold %s (%s)", what, alive_path.name, err)

        # What the parent created is never scanned here (its pages stay shared); this
        # process's own garbage is collected, whether or not the parent collects.
        gc.freeze()
        gc.enable()
        work(lifeline, keep_alive_file)

    _fork_detached(run, what)
    os.close(lifeline)
    deadline = time.monotonic() + 10  # until it holds its lock: `stop` and watchers rely on it
    while not journal.lock_held(alive_path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return ProcessBeside(keep_alive, alive_path)


def lifeline_closed(lifeline: int, wait: float,
                    on_word: Callable[[], None] | None = None) -> bool:
    """Wait up to `wait` seconds for the lifeline; True once it is closed (time to finish). A
    byte the service wrote on it (`LoaderProcess.service_ready`) calls `on_word`."""
    readable, _, _ = select.select([lifeline], [], [], wait)
    if not readable:
        return False
    if not os.read(lifeline, 1):
        return True
    if on_word is not None:
        on_word()
    return False


def start_loader_process(make_loader: Callable[[], Loader], directory: Path, *,
                         interval: float = PASS_SECONDS, retry: float = 1.0) -> LoaderProcess:
    """Fork the loader of `directory` away from the service: a process of its own session (a
    Ctrl-C meant for the service does not cut a transaction short), not the service's child
    (gunicorn's master reaps its children as workers), that runs until its lifeline, a pipe
    from this process, closes: at `LoaderProcess.stop`, or when this process and every worker
    forked from it are gone, however they ended. Call it before any thread starts (a fork
    copies one thread).

    `make_loader` runs in that process: the database library is imported there only, never in
    the service. It checks the URL (the table comes once the service has its model:
    `LoaderProcess.service_ready`) and reports before this returns: a URL that is no database URL raises its ConfigError here, as `Loader` raises it.
    Then it takes the folder's ALIVE_FILE lock (another service's loader of the folder may hold
    it: this one then waits for it, and this returns once either holds it, or after 10 s).
    """
    lifeline, keep_alive = os.pipe()
    report, reporting = os.pipe()

    def run() -> None:  # pragma: no cover  (a forked process)
        os.close(keep_alive)
        os.close(report)
        _run_loader(make_loader, directory, lifeline, reporting, interval, retry)

    _fork_detached(run, "prediction log loader process")
    os.close(lifeline)
    os.close(reporting)
    with os.fdopen(report, "rb") as said:  # until the loader reports, or ends without a word
        answer = json.loads(said.read() or b"{}")
    if "error" in answer:
        os.close(keep_alive)  # it has ended already
        raise ConfigError(answer["error"])
    deadline = time.monotonic() + 10  # a loader holds the lock: `stop` and watchers rely on it
    while not loader_process_alive(directory) and time.monotonic() < deadline:
        time.sleep(0.005)
    return LoaderProcess(keep_alive, directory, answer.get("url"))


def _run_loader(make_loader: Callable[[], Loader], directory: Path, lifeline: int,
                reporting: int, interval: float, retry: float
                ) -> None:  # pragma: no cover  (a forked process)
    os.nice(NICENESS)
    with os.fdopen(reporting, "wb") as report:
        try:
            loader = make_loader()
        except ConfigError as err:
            report.write(json.dumps({"error": str(err)}).encode())
            return
        # The table comes at the service's word, once its model has loaded (`service_ready`,
        # `Loader.prepare`): a start refused for its model leaves no log behind, and workers
        # never touch the database.
        report.write(json.dumps({"url": loader.url}).encode())
    # Then the lock, released at its exit: it waits here while another service's loader of the
    # same folder holds it, and takes over when that one ends.
    alive = _hold_alive_file(directory / ALIVE_FILE)
    # What the parent created, and the database library, are never scanned here (their pages
    # stay shared, or unchanged); the loader's own garbage is collected, whether or not the
    # parent collects.
    gc.freeze()
    gc.enable()
    _run_until_lifeline_closes(loader, lifeline, interval, retry, alive)


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


def _run_until_lifeline_closes(loader: Loader, lifeline: int, interval: float, retry: float,
                               alive: IO[bytes]) -> None:  # pragma: no cover  (a forked process)
    logger.info("Prediction log loader started (pid %d): %s into %s", os.getpid(),
                loader.directory, loader.url)
    while True:
        try:
            alive = _hold_alive_file(loader.directory / ALIVE_FILE, alive)
        except OSError as err:  # the folder cannot be made now: the next pass tries again
            logger.warning("Prediction log loader cannot hold %s (%s)", ALIVE_FILE, err)
        loader.load_safely()
        if lifeline_closed(lifeline, retry if loader.status.error else interval,
                           on_word=loader.prepare):
            break
    loader.load_safely()
