"""The prediction log: off the request path, every record kept once, whatever the storage does.

Real SQLite files, real locks (a second connection holding a write transaction), real
processes writing and replaying at once.
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

import sqlalchemy
from sqlalchemy.pool import QueuePool

from ml_project.config import PROJECT_ROOT
from ml_project.prediction_log.log import BATCH_WAIT_SECONDS, PredictionLog
from ml_project.prediction_log.records import LogRecord, new_request_id
from ml_project.prediction_log.spill import REJECTED_FILE


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
    return PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spill",
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


def test_records_of_requests_arriving_close_together_share_a_transaction(tmp_path: Path) -> None:
    """One transaction per request would cost every request a fraction of a millisecond of
    CPU; the writer gathers what arrives within BATCH_WAIT_SECONDS, and a flush ends the wait."""
    log = _log(tmp_path)
    log.read()  # the table exists: from here on, transactions are inserts
    commits = [0]
    sqlalchemy.event.listen(log.engine, "commit", lambda connection: commits.__setitem__(
        0, commits[0] + 1))
    started = time.monotonic()
    for i in range(10):  # requests a few milliseconds apart, as a busy server gets them
        log.append([_record(i)])
        time.sleep(0.003)
    assert log.flush()

    assert _ids(log) == [f"C{i}" for i in range(10)]
    assert commits[0] < 10
    assert time.monotonic() - started < 5 * BATCH_WAIT_SECONDS + 1  # the flush did not wait


def test_locked_database_never_slows_append_and_every_record_is_replayed_once(
    tmp_path: Path,
) -> None:
    database = tmp_path / "log.db"
    log = _log(tmp_path, lock_timeout_seconds=0.3, retry_seconds=0.1)
    log.append([_record(0)])
    log.flush()
    blocker = sqlite3.connect(database, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    blocker.execute("INSERT INTO prediction_records (record_key, request_id, instance_index, "
                    "logged_at, source, input) VALUES ('x', 'x', 0, '', 'other', '{}')")
    try:
        started = time.perf_counter()
        for i in range(1, 201):
            log.append([_record(i)])
        elapsed = time.perf_counter() - started
        assert log.flush(10)
        spilled = log.spill_files()
        assert spilled and all(str(os.getpid()) in path.name for path in spilled)
    finally:
        blocker.rollback()
        blocker.close()
    assert elapsed < 0.5  # 200 appends while the database was locked: never waited for it
    log.append([_record(201)])
    assert _ids(log) == [f"C{i}" for i in range(202)]  # every record, in order, none twice
    assert not log.spill_files()
    assert log.counters()["spilled"] >= 200 and log.counters()["replayed"] >= 200
    log.close()


def test_unwritable_database_location_spills_to_the_file(tmp_path: Path) -> None:
    log = PredictionLog("sqlite:////proc/no-such-dir/log.db", tmp_path / "spill",
                        retry_seconds=0.1)
    log.append([_record(0)])
    assert log.flush(10)
    assert "C0" in "".join(path.read_text() for path in log.spill_files())
    log.close()


def test_text_no_database_can_store_is_escaped_and_never_poisons_the_log(tmp_path: Path) -> None:
    """A lone surrogate in a value and in a key, while the log is locked and then after a
    restart: stored escaped, and the records after it stored too."""
    database = tmp_path / "log.db"
    log = _log(tmp_path, lock_timeout_seconds=0.2, retry_seconds=0.1)
    log.append([_record(0)])
    log.flush()
    poison = LogRecord(request_id=new_request_id(), source="api", model_version="3",
                       input={"customer_id": "\ud800", "\udfff key": [["\ud800"]]},
                       instance_id="\ud800", error="422: \udfff key: is not a known field")
    blocker = sqlite3.connect(database, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        log.append([poison, _record(1)])
        assert log.flush(10)
    finally:
        blocker.rollback()
        blocker.close()
    log.close()  # a restart: the spill file is replayed by the next process's log

    restarted = _log(tmp_path)
    restarted.append([_record(2)])
    rows = restarted.read()
    assert [row["instance_id"] for row in rows] == ["C0", "\\ud800", "C1", "C2"]
    assert rows[1]["input"] == {"customer_id": "\\ud800", "\\udfff key": [["\\ud800"]]}
    assert not restarted.spill_files()
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


def test_torn_undecodable_and_foreign_lines_are_moved_aside_and_never_block_the_rest(
    tmp_path: Path,
) -> None:
    writer = _log(tmp_path / "first")
    good = [_record(i).to_row() for i in range(3)]
    spill = tmp_path / "spill"
    spill.mkdir()
    lines = [
        f"{json.dumps(good[0])}\n".encode(),
        b"\xff\xfe not utf-8\n",
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'{"record_key": 7}\n',
        f"{json.dumps(good[1])}\n".encode(),
        f"{json.dumps(good[2])}"[:40].encode(),  # torn: no newline
    ]
    (spill / "spill-1-dead.jsonl").write_bytes(b"".join(lines))
    writer.close()

    log = _log(tmp_path)
    log.append([_record(9)])
    assert _ids(log) == ["C0", "C1", "C9"]
    rejected = (spill / REJECTED_FILE).read_text().splitlines()
    assert len(rejected) == 5
    assert "torn line" in rejected[-1] and "UnicodeDecodeError" in rejected[0]
    assert not log.spill_files()
    log.close()





def test_a_full_queue_and_an_unwritable_spill_folder_are_counted_never_raised(
    tmp_path: Path,
) -> None:
    """The writer waits on a database another connection locks, so the appends fill the queue
    (whatever the threads' timing); then it can spill nowhere."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    database = tmp_path / "log.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    log = PredictionLog(f"sqlite:///{database}", blocker / "spill", queue_size=5,
                        retry_seconds=0.1, lock_timeout_seconds=2)
    try:
        for i in range(50):
            log.append([_record(i)])  # never raises, never waits
        log.flush(30)
        counters = log.counters()
    finally:
        holder.rollback()
        holder.close()
        log.close()
    assert counters["dropped_queue_full"] > 0
    assert counters["spill_failures"] > 0


# Several processes, one log ----------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from ml_project.prediction_log.records import LogRecord
from ml_project.prediction_log.log import PredictionLog
database, spill, name, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
log = PredictionLog(f"sqlite:///{database}", spill, lock_timeout_seconds=10)
for i in range(count):
    log.append([LogRecord(request_id=f"{name}-{i}", source=name, input={"i": i},
                          model_version="1", instance_id=f"{name}-{i}")])
# no close: the log is flushed at exit
"""


def test_several_processes_write_one_sqlite_log_and_replay_one_spill_without_loss_or_duplicates(
    tmp_path: Path,
) -> None:
    """Processes write the same file at once while spill files of a dead process wait: each
    process replays what it claims, and every record is stored exactly once."""
    database, spill = tmp_path / "log.db", tmp_path / "spill"
    spill.mkdir()
    for n in range(3):  # what dead processes left, in several files
        rows = [_record(i, request_id=f"dead{n}-{i}").to_row() for i in range(100)]
        (spill / f"spill-9999{n}-dead.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(database), str(spill), f"w{n}", "300"],
                         cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        for n in range(3)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]

    log = PredictionLog(f"sqlite:///{database}", spill)
    keys = [row["request_id"] for row in log.read()]
    assert len(keys) == len(set(keys)) == 3 * 300 + 3 * 100
    assert not log.spill_files()
    log.close()


def test_a_forked_child_writes_through_connections_of_its_own_and_the_parent_keeps_its_own(
    tmp_path: Path,
) -> None:
    """As in the Flask server: gunicorn forks its worker from the process that created the log."""

    def idle_connections(log: PredictionLog) -> int:
        pool = log.engine.pool
        assert isinstance(pool, QueuePool)
        return pool.checkedin()

    log = _log(tmp_path)
    log.append([_record(0)])
    log.flush()  # the parent now holds an open SQLite connection in its pool
    assert idle_connections(log) == 1
    child = os.fork()
    if child == 0:  # the worker: never returns into pytest
        code = 1
        try:
            log.after_fork()
            inherited = idle_connections(log)  # the parent's connection must not be reused
            log.append([_record(1), _record(2)])
            log.close()
            code = 3 if inherited else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    log.append([_record(3)])  # through the parent's own connection, still open and still good
    log.flush()
    pooled = idle_connections(log)
    rows = log.read()
    log.close()

    assert os.waitstatus_to_exitcode(status) == 0
    assert pooled == 1
    assert [row["instance_id"] for row in rows] == ["C0", "C1", "C2", "C3"]
    assert not log.spill_files()
