"""The prediction log's faults under a serving app, each caused for real: every answered request
is in the log exactly once after the fault, and no request is answered unlogged.

- the database locked by another writer, out of reach, its file deleted (all outputs cleared,
  as `clear_outputs.sh` does) while serving;
- the journal unwritable (503, never an answer whose record is lost);
- a worker SIGKILLed while the database is locked; the whole server SIGKILLed with a torn
  journal line left; SIGTERM while the database is locked (a prompt stop, the records loaded
  later, once).

PostgreSQL's own faults (a table locked, its schema changed, a password in the URL) are in
tests/test_prediction_log_postgresql.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests

from ml_project.config import PROJECT_ROOT, Config
from ml_project.predict import PredictionService
from ml_project.prediction_log import journal
from ml_project.prediction_log.background import loader_process_alive
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.status import read_status
from ml_project.serving.fastapi_app import create_app
from tests.conftest import prediction_config
from tests.serving import (
    INSTANCE,
    instance,
    launch_server,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
)


@pytest.fixture(scope="module")
def service(trained_project: Path) -> PredictionService:
    return PredictionService.from_config(prediction_config(trained_project))


def predict_all(base_url: str, count: int) -> Counter[str]:
    """`count` single predictions, one invalid instance (422: logged too) and one batch of two;
    the records each answered request id must have in the log."""
    answers = [requests.post(f"{base_url}/predict", json=instance(customer_id=f"C{i}"),
                             timeout=30) for i in range(count)]
    invalid = requests.post(f"{base_url}/predict", json=instance(age="old"), timeout=30)
    batch = requests.post(f"{base_url}/predict/batch",
                          json={"instances": [INSTANCE, instance(age=70)]}, timeout=30)
    assert [answer.status_code for answer in [*answers, invalid, batch]] == \
        [200] * count + [422, 200]
    expected = Counter(answer.json()["request_id"] for answer in [*answers, invalid])
    expected[batch.json()["request_id"]] += 2
    return expected


def logged(log: PredictionLog) -> Counter[str]:
    return Counter(record["request_id"] for record in log.read())


def wait_until_loaded(log: PredictionLog, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while log.pending(count_records=False).bytes and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_locked_database_never_slows_an_answer_and_every_record_lands_once_after(
    service: PredictionService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer holds the database far longer than the loader waits: every request is
    answered at full speed, its records wait in the journal, and are stored once it is free."""
    database = tmp_path / "prediction_log.db"
    log = PredictionLog(f"sqlite:///{database}", tmp_path / "journal", lock_timeout_seconds=0.5)
    with serve_in_thread(create_app(service, log)) as base_url:
        before = predict_all(base_url, 2)
        assert log.flush(30)
        holder = sqlite3.connect(database, timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.perf_counter()
            during = predict_all(base_url, 8)
            answered_in = time.perf_counter() - started
            time.sleep(1)  # the loader has met the lock
            waiting = log.pending().records
            health = requests.get(f"{base_url}/health", timeout=10).json()["counters"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        after = predict_all(base_url, 1)
        assert log.flush(30)
    stored = logged(log)
    log.close()

    assert answered_in < 3  # 10 requests in a few loader lock waits: never waited for them
    assert waiting == sum(during.values())
    assert health["log_database_unavailable"] == 1 and health["log_pending_bytes"] > 0
    assert "takes no records now" in caplog.text and "locked" in caplog.text
    assert stored == before + during + after  # each once, none lost


def test_a_database_out_of_reach_keeps_answering_and_stores_everything_once_in_reach(
    service: PredictionService, tmp_path: Path
) -> None:
    """The database's folder cannot be created (a file stands in its place, as an unmounted
    volume or a wrong path would), then is fixed while the service keeps serving."""
    blocker = tmp_path / "logs"
    blocker.write_text("not a folder")
    log = PredictionLog(f"sqlite:///{blocker / 'prediction_log.db'}", tmp_path / "journal")
    with serve_in_thread(create_app(service, log)) as base_url:
        during = predict_all(base_url, 3)
        assert not log.flush(5)
        blocker.unlink()
        after = predict_all(base_url, 1)
        assert log.flush(30)
    stored = logged(log)
    log.close()
    assert stored == during + after


def test_an_unwritable_journal_answers_503_and_never_a_prediction_it_cannot_log(
    service: PredictionService, tmp_path: Path
) -> None:
    """A full or read-only disk under the journal (here a file where its folder should be):
    the prediction is withheld (503, retry), so no answered request is missing from the log."""
    blocker = tmp_path / "journal"
    blocker.write_text("")
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", blocker)
    with serve_in_thread(create_app(service, log)) as base_url:
        refused = [requests.post(f"{base_url}/predict", json=INSTANCE, timeout=30),
                   requests.post(f"{base_url}/predict/batch", json={"instances": [INSTANCE]},
                                 timeout=30),
                   requests.post(f"{base_url}/predict", json=instance(age="old"), timeout=30)]
        health = requests.get(f"{base_url}/health", timeout=10).json()["counters"]
        blocker.unlink()
        after = predict_all(base_url, 2)
        assert log.flush(30)
    stored = logged(log)
    log.close()

    assert [answer.status_code for answer in refused] == [503, 503, 503]
    assert all("cannot record this request" in answer.json()["detail"] for answer in refused)
    assert health["log_journal_failures"] == 3 and health["refused_503"] == 3
    assert stored == after  # the refused requests were never answered as predicted


# The service as launched, killed and stopped ------------------------------------------------------


def database_of(config: Config) -> Path:
    return Path(config.prediction_log_url.removeprefix("sqlite:///"))


@contextmanager
def opened_log(config: Config) -> Iterator[PredictionLog]:
    log = PredictionLog.from_config(config)
    try:
        yield log
    finally:
        log.close()


class Client(threading.Thread):
    """Sends requests one after another until stopped, and keeps the records each answered
    request must have in the log; a request the server never answered (a killed worker) is
    counted apart."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.answered, self.unanswered = base_url, Counter[str](), 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        with requests.Session() as session:
            while not self.stop.is_set():
                i += 1
                body = {"instances": [INSTANCE, instance(age=70)]} if i % 5 == 0 else \
                    instance(customer_id=f"K{i}", age="old" if i % 7 == 0 else 42)
                route = "/predict/batch" if i % 5 == 0 else "/predict"
                try:
                    answer = session.post(f"{self.base_url}{route}", json=body, timeout=30)
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                    # refused, reset, or an answer cut mid-body by the kill: not answered
                    self.unanswered += 1
                    continue
                if answer.status_code in (200, 422):
                    self.answered[answer.json()["request_id"]] += 2 if i % 5 == 0 else 1


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_a_worker_killed_while_the_log_is_locked_loses_no_answered_request(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """As found: two workers, the log locked by another connection, one worker SIGKILLed with
    the client still sending. Every request answered (200 or 422), and only those, is stored
    once the lock is gone."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    with launch_server(config_file, tmp_path / "server.out", framework, workers=2) as (
            url, server):
        predict_all(url, 1)
        time.sleep(1)  # the table exists
        holder = sqlite3.connect(database_of(config), timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        client = Client(url)
        client.start()
        try:
            time.sleep(2)
            server.children()[0].kill()  # a worker (the loader is no child: it is detached)
            time.sleep(2)
        finally:
            client.stop.set()
            client.join(60)
            holder.execute("ROLLBACK")
            holder.close()
        with opened_log(config) as log:
            wait_until_loaded(log)
            stored = logged(log)
    answered = client.answered
    assert sum(answered.values()) > 20
    assert {key: stored[key] for key in answered} == dict(answered)


@pytest.mark.slow
def test_the_log_deleted_while_serving_stores_every_later_request(
    trained_project: Path, tmp_path: Path
) -> None:
    """Every output cleared while the service runs (its database, journal and logs, as
    `clear_outputs.sh --yes` removes them): the requests answered after are all stored, in a
    database created again."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    with launch_server(config_file, tmp_path / "server.out", workers=2) as (url, _):
        predict_all(url, 3)
        time.sleep(1)
        for entry in config.output_dir.iterdir():
            if entry.is_dir():  # once more a moment later, as clear_outputs.sh does: the
                try:            # loader may write into a folder as it is removed
                    shutil.rmtree(entry)
                except OSError:
                    time.sleep(1)
                    shutil.rmtree(entry)
            else:
                entry.unlink()
        after = predict_all(url, 10)
        for _ in range(12):  # over 6 s: the workers look at the loader (recreated, not dead)
            after += predict_all(url, 1)
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while not database_of(config).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with opened_log(config) as log:
            wait_until_loaded(log)
            stored = logged(log)
        health = requests.get(f"{url}/health", timeout=10).json()["counters"]
    assert stored == after
    assert health["log_database_unavailable"] == 0
    # The loader process lives on and takes its lock again: no serving process stands in.
    assert "loader process is gone" not in (tmp_path / "server.out").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_while_the_log_is_locked_stops_promptly_and_loses_nothing(
    workers: int, trained_project: Path, tmp_path: Path
) -> None:
    """The stop does not wait on the database: the records stay in the journal, the stop says
    how many, and the loader command stores each once when the lock is gone."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    output = tmp_path / "server.out"
    with launch_server(config_file, output, workers=workers) as (url, server):
        before = predict_all(url, 1)
        time.sleep(1)
        holder = sqlite3.connect(database_of(config), timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            answered = predict_all(url, 20)
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            stopped_in = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert stopped_in < 20
    assert "records wait in" in output.read_text()
    loading = subprocess.run(
        [sys.executable, "-m", "ml_project.prediction_log.loader", "--config", str(config_file),
         "--root", str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert loading.returncode == 0, loading.stderr
    with opened_log(config) as log:
        stored = logged(log)
    assert stored == before + answered


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_a_server_killed_while_the_log_is_locked_loses_nothing_after_a_restart(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """As found: while another writer locks the log, a batch whose id and a key hold lone
    surrogates is answered; the server is SIGKILLed; a torn line is left at the end of a journal
    file. After the lock and a restart, every record of the first server is stored once (the
    torn line moved aside)."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    poisoned = json.dumps({"instances": [{**instance(customer_id="X"), "Y": 1}]}).encode()
    poisoned = poisoned.replace(b'"X"', b'"\\ud800"').replace(b'"Y"', b'"\\udfff"')
    folder = config.output_dir / journal.FOLDER
    with launch_server(config_file, tmp_path / "first.out", framework) as (url, server):
        assert requests.post(f"{url}/predict", json=INSTANCE, timeout=10).status_code == 200
        time.sleep(1.5)  # the loader has stored it (and created the table)
        holder = sqlite3.connect(database_of(config), timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            answers = [requests.post(f"{url}/predict/batch", data=poisoned, timeout=10,
                                     headers={"Content-Type": "application/json"}),
                       *[requests.post(f"{url}/predict", json=instance(customer_id=f"K{i}"),
                                       timeout=10) for i in range(5)]]
            for child in server.children(recursive=True):
                child.kill()
            server.kill()
            # The loader, detached, stops once it sees the service gone; its last pass meets
            # the lock, so the records stay in the journal.
            deadline = time.monotonic() + 30
            while loader_process_alive(folder) and time.monotonic() < deadline:
                time.sleep(0.1)
            with journal.journal_files(folder)[-1].open("ab") as handle:
                handle.write(b'{"record_key": "torn-by-a-kil')
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    with launch_server(config_file, tmp_path / "second.out", framework) as (url, _):
        after = requests.post(f"{url}/predict", json=INSTANCE, timeout=10)
        with opened_log(config) as log:
            wait_until_loaded(log)
            records = log.read()

    # the unknown key is ignored (validation.unknown_fields: ignore), the surrogate id is text
    assert [answer.status_code for answer in answers] == [200] * 6
    assert after.status_code == 200
    ids = [record["request_id"] for record in records]
    assert len(ids) == 1 + 1 + 5 + 1 and len(set(ids)) == 1 + 1 + 5 + 1
    assert {answer.json()["request_id"] for answer in [*answers, after]} <= set(ids)
    assert "torn line" in (folder / journal.REJECTED_FILE).read_text()


@pytest.mark.parametrize("url", [
    "nosuchdb://user:hunter2@host/db",
    "postgresql://user:hunter2@host:port/db?password=hunter2",
    "not a url at all hunter2",
])
def test_a_log_url_that_is_no_database_url_stops_the_start_with_one_line_and_no_secret(
    url: str, trained_project: Path, tmp_path: Path
) -> None:
    """Before the model loads, as a config error: never a traceback after it, never the
    password."""
    config_file = write_serving_config(trained_project, tmp_path)
    started = subprocess.run(
        [sys.executable, "-m", "ml_project.serving.launcher", "--port", "0", "--config",
         str(config_file), "--root", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ML_PROJECT_PREDICTION_LOG_URL": url})
    assert started.returncode == 2
    assert "Cannot start the prediction service: the prediction log URL" in started.stderr
    assert "Traceback" not in started.stderr and "hunter2" not in started.stderr
    assert "Serving" not in started.stderr  # stopped before the model was loaded


def stored_request_ids(database: Path) -> Counter[str]:
    """The request ids the database holds, read without loading anything (no loader here)."""
    if not database.exists():
        return Counter()
    with closing(sqlite3.connect(database, timeout=10)) as connection:
        try:
            return Counter(row[0] for row in connection.execute(
                "SELECT request_id FROM prediction_records"))
        except sqlite3.OperationalError:  # no table yet
            return Counter()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_loader_process_is_stood_in_for_while_serving_and_stores_every_answer(
    workers: int, trained_project: Path, tmp_path: Path
) -> None:
    """The loader process SIGKILLed while the service runs: a serving process notices (two
    checks 2 s apart, on requests), loads in a thread of its own, and every answered request reaches the
    database while the service still runs, not only at its next start."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    folder = config.output_dir / journal.FOLDER
    output = tmp_path / "server.out"
    with launch_server(config_file, output, workers=workers) as (url, server):
        answered = predict_all(url, 3)
        deadline = time.monotonic() + 20
        while (status := read_status(folder)) is None or status.pid is None:
            assert time.monotonic() < deadline, "no loader status"
            time.sleep(0.1)
        os.kill(status.pid, signal.SIGKILL)
        while loader_process_alive(folder):
            assert time.monotonic() < deadline + 20, "the loader did not die"
            time.sleep(0.05)
        for _ in range(16):  # over 8 s: every worker serves some and looks at its loader
            answered += predict_all(url, 2)
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while stored_request_ids(database_of(config)) != answered:
            assert time.monotonic() < deadline, "answered requests never reached the database"
            time.sleep(0.2)
        assert server.is_running()
    assert "loader process is gone" in output.read_text()

