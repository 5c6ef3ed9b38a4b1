"""Where the loader runs: a forked process beside a service, a thread beside a handler.

Real processes: a service that forks its loader and stops it, or is SIGKILLed and leaves the
loader to store what it wrote; a thread that stores lines as they come and stops when asked.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT
from ml_project.prediction_log import journal
from ml_project.prediction_log.background import LoaderThread, loader_process_alive
from ml_project.prediction_log.loader import Loader
from tests.test_prediction_log_loader import record_line, stored


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "log.db", tmp_path / "journal"


def loader_alive(directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loader_process_alive(directory):
            return True
        time.sleep(0.05)
    return False


SERVICE = """
import sys, time
from pathlib import Path
from ml_project.prediction_log.journal import Journal
from ml_project.prediction_log.background import start_loader_process
from ml_project.prediction_log.loader import Loader
from tests.test_prediction_log_loader import record_line
database, directory = sys.argv[1], Path(sys.argv[2])
process = start_loader_process(lambda: Loader(f"sqlite:///{database}", directory), directory,
                               interval=0.05)
journal = Journal(directory)
for i in range(20):
    journal.append(record_line(f"r{i}", i))
print("answered", flush=True)
if sys.argv[3] == "stop":
    journal.close()
    print("stopped" if process.stop(30) else "still running", flush=True)
else:
    time.sleep(120)
"""


def test_a_loader_process_loads_beside_its_service_and_stops_when_told(
    paths: tuple[Path, Path],
) -> None:
    database, directory = paths
    result = subprocess.run([sys.executable, "-c", SERVICE, str(database), str(directory),
                             "stop"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.split() == ["answered", "stopped"]
    assert sorted(stored(database)) == sorted(f"r{i}" for i in range(20))
    assert not loader_process_alive(directory)
    assert journal.journal_files(directory) == []


def test_a_loader_process_outlives_a_killed_service_only_to_store_what_it_left(
    paths: tuple[Path, Path],
) -> None:
    database, directory = paths
    service = subprocess.Popen([sys.executable, "-c", SERVICE, str(database), str(directory),
                                "kill"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None and service.stdout.readline() == "answered\n"
    assert loader_alive(directory, 10)
    service.send_signal(signal.SIGKILL)
    service.wait(timeout=10)
    deadline = time.monotonic() + 20
    while loader_process_alive(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not loader_process_alive(directory)  # its lifeline closed with the service
    assert sorted(stored(database)) == sorted(f"r{i}" for i in range(20))


def test_a_loader_thread_stores_lines_as_they_come_and_stops_when_asked(
    paths: tuple[Path, Path],
) -> None:
    database, directory = paths
    loader = Loader(f"sqlite:///{database}", directory)
    thread = LoaderThread(loader)
    thread.ensure_started()
    thread.ensure_started()  # a second call starts no second thread
    log = journal.Journal(directory)
    for i in range(5):
        log.append(record_line(f"t{i}", i))
    deadline = time.monotonic() + 20
    while len(stored(database)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(stored(database)) == [f"t{i}" for i in range(5)]
    thread.stop(timeout=10)
    log.append(record_line("after", 5))
    time.sleep(0.5)
    assert "after" not in stored(database)  # stopped: nothing loads until it starts again
    thread.ensure_started()
    deadline = time.monotonic() + 20
    while "after" not in stored(database) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "after" in stored(database)
    thread.stop(timeout=10)
    log.close()
    loader.dispose()
