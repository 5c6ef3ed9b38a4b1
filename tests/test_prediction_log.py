"""The prediction log: durable before the answer, off the request path, every record stored
once, whatever the database does.

Real SQLite files, real locks (a second connection holding a write transaction), real
processes appending and loading at once, a real fork.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ml_project.config import PROJECT_ROOT
from ml_project.prediction_log import journal
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord, new_request_id


def _record(i: int, error: str | None = None, request_id: str | None = None,
            index: int = 0, sha: str = "a" * 64) -> LogRecord:
    return LogRecord(
        request_id=request_id or new_request_id(),
        source="test",
        input={"age": 40 + i, "payment_method": math.nan},
        model_version="3",
        prediction=None if error else 1,
        probabilities=None if error else {"0": 0.25, "1": 0.75},
        latency_ms=0.5,
        error=error,
        instance_id=f"C{i}",
        instance_index=index,
        model_name="churn",
        model_sha256=sha,
    )


def _log(tmp_path: Path, **options: float) -> PredictionLog:
    return PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "journal",
                         **options)  # type: ignore[arg-type]


def _ids(log: PredictionLog) -> list[str]:
    return [row["instance_id"] for row in log.read()]


def test_append_and_read_round_trip_in_order_with_the_model_identity(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.append([_record(i) for i in range(3)])
    log.append([_record(3, error="age: must be a number", sha="b" * 64)])
    rows = log.read()
    assert _ids(log) == ["C0", "C1", "C2", "C3"]
    assert rows[0]["input"] == {"age": 40, "payment_method": None}  # NaN logged as null
    assert rows[0]["probabilities"] == {"0": 0.25, "1": 0.75}
    assert (rows[0]["model_name"], rows[0]["model_version"], rows[0]["model_sha256"]) == (
        "churn", "3", "a" * 64)
    assert rows[3]["prediction"] is None and rows[3]["error"] == "age: must be a number"
    assert [row["instance_id"] for row in log.read(last=2)] == ["C2", "C3"]
    assert [row["instance_id"] for row in log.read(model_sha256="b" * 64)] == ["C3"]
    assert log.count() == 4
    log.close()


def test_a_batch_logs_one_row_per_instance_under_one_request_id(tmp_path: Path) -> None:
    log = _log(tmp_path)
    request_id = new_request_id()
    batch = [_record(i, request_id=request_id, index=i) for i in range(3)]
    log.append(batch)
    log.append(batch)  # the same records again (a replay): stored once
    assert _ids(log) == ["C0", "C1", "C2"]
    log.close()


def test_append_never_waits_for_a_locked_database_and_every_record_lands_once(
    tmp_path: Path,
) -> None:
    database = tmp_path / "log.db"
    log = _log(tmp_path, lock_timeout_seconds=0.3)
    log.append([_record(0)])
    log.flush()
    blocker = sqlite3.connect(database, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    blocker.execute("INSERT INTO prediction_records (record_key, request_id, instance_index, "
                    "logged_at, source, input) VALUES ('x', 'x', 0, '', 'other', '{}')")
    try:
        started = time.perf_counter()
        for i in range(1, 201):
            assert log.append([_record(i)])
        elapsed = time.perf_counter() - started
        assert not log.flush(5)  # the database takes none now: they wait in the journal
        assert log.pending().records == 200
        assert log.counters()["database_unavailable"] == 1
    finally:
        blocker.rollback()
        blocker.close()
    assert elapsed < 0.5  # 200 appends while the database was locked: never waited for it
    log.append([_record(201)])
    assert _ids(log) == [f"C{i}" for i in range(202)]  # every record, in order, none twice
    assert log.pending().records == 0
    assert log.counters()["database_unavailable"] == 0
    log.close()


def test_a_database_out_of_reach_keeps_the_records_for_the_next_loader(tmp_path: Path) -> None:
    log = PredictionLog("sqlite:////proc/no-such-dir/log.db", tmp_path / "journal")
    assert log.append([_record(0)])
    assert not log.flush(5)
    log.close()
    later = _log(tmp_path)  # the same journal, a database within reach
    assert _ids(later) == ["C0"]
    later.close()


def test_an_unwritable_journal_is_reported_to_the_caller_and_counted(tmp_path: Path) -> None:
    """A full or read-only disk (here a file where the folder should be): `append` says the
    records are not durable, so that no answer pretends they were logged."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", blocker / "journal")
    assert not log.append([_record(0)])
    assert not log.append([_record(1)])
    assert log.counters()["journal_failures"] == 2
    log.close()


def test_text_no_database_can_store_is_escaped_and_never_poisons_the_log(tmp_path: Path) -> None:
    """A lone surrogate in a value and in a key, while the log is locked and then after a
    restart: stored escaped, and the records after it stored too."""
    database = tmp_path / "log.db"
    log = _log(tmp_path, lock_timeout_seconds=0.2)
    log.append([_record(0)])
    log.flush()
    poison = LogRecord(request_id=new_request_id(), source="api", model_version="3",
                       input={"customer_id": "\ud800", "\udfff key": [["\ud800"]]},
                       instance_id="\ud800", error="422: \udfff key: is not a known field")
    blocker = sqlite3.connect(database, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        log.append([poison, _record(1)])
        assert not log.flush(1)
    finally:
        blocker.rollback()
        blocker.close()
    log.close()  # a restart: the journal is loaded by the next process's log

    restarted = _log(tmp_path)
    restarted.append([_record(2)])
    rows = restarted.read()
    assert [row["instance_id"] for row in rows] == ["C0", "\\ud800", "C1", "C2"]
    assert rows[1]["input"] == {"customer_id": "\\ud800", "\\udfff key": [["\\ud800"]]}
    assert restarted.pending().records == 0
    restarted.close()


def test_deep_nesting_is_logged_as_a_placeholder(tmp_path: Path) -> None:
    value: list[object] = []
    for _ in range(5000):
        value = [value]
    log = _log(tmp_path)
    log.append([LogRecord(request_id=new_request_id(), source="api", model_version="3",
                          input={"age": value})])
    assert "nested deeper than" in str(log.read()[0]["input"])
    log.close()


# Several processes, one log ----------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from ml_project.prediction_log.records import LogRecord
from ml_project.prediction_log.log import PredictionLog
database, directory, name, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
log = PredictionLog(f"sqlite:///{database}", directory, lock_timeout_seconds=10)
for i in range(count):
    log.append([LogRecord(request_id=f"{name}-{i}", source=name, input={"i": i},
                          model_version="1", instance_id=f"{name}-{i}")])
# no close: the log stops its loader at exit, after a last pass
"""


def test_several_processes_write_one_log_each_through_its_own_journal_without_loss_or_twice(
    tmp_path: Path,
) -> None:
    """Processes append and load at once, while files dead processes left wait: every record is
    stored exactly once, and no file is left."""
    database, directory = tmp_path / "log.db", tmp_path / "journal"
    directory.mkdir()
    for n in range(3):  # what dead processes left, in several files
        rows = [_record(i, request_id=f"dead{n}-{i}").to_row() for i in range(100)]
        (directory / f"journal-0000000000000000000{n}-9999{n}-dead.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(database), str(directory), f"w{n}",
                          "300"], cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        for n in range(3)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]

    log = PredictionLog(f"sqlite:///{database}", directory)
    keys = [row["request_id"] for row in log.read()]
    assert len(keys) == len(set(keys)) == 3 * 300 + 3 * 100
    assert journal.journal_files(directory) == []
    log.close()


def test_a_forked_child_appends_to_a_journal_file_of_its_own(tmp_path: Path) -> None:
    """As in the service: gunicorn forks its workers from the process that created the log."""
    log = _log(tmp_path, load_in_background=False)
    log.append([_record(0)])
    child = os.fork()
    if child == 0:  # the worker: never returns into pytest
        code = 1
        try:
            code = 0 if log.append([_record(1), _record(2)]) else 2
            log.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    log.append([_record(3)])
    files = journal.journal_files(tmp_path / "journal")
    rows = log.read()
    log.close()

    assert os.waitstatus_to_exitcode(status) == 0
    assert len(files) == 2
    assert sorted(row["instance_id"] for row in rows) == ["C0", "C1", "C2", "C3"]


def test_a_window_is_read_a_chunk_at_a_time_in_logging_order(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.append([_record(i) for i in range(25)])
    chunks = list(log.read_chunks(chunk=10))
    assert [len(chunk) for chunk in chunks] == [10, 10, 5]
    assert [row["instance_id"] for chunk in chunks for row in chunk] == [
        f"C{i}" for i in range(25)]
    last = list(log.read_chunks(last=12, chunk=5))
    assert [row["instance_id"] for chunk in last for row in chunk] == [
        f"C{i}" for i in range(13, 25)]
    log.close()
