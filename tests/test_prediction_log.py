"""The prediction log: every record kept, even when the database is unavailable."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

from sqlalchemy.pool import QueuePool

from ml_project.prediction_log import LogRecord, PredictionLog, new_request_id


def _record(i: int, error: str | None = None) -> LogRecord:
    return LogRecord(
        request_id=new_request_id(),
        source="test",
        input={"age": 40 + i, "payment_method": math.nan},
        model_version="3",
        prediction=None if error else 1,
        probabilities=None if error else {"0": 0.25, "1": 0.75},
        latency_ms=0.5,
        error=error,
        instance_id=f"C{i}",
    )


def test_append_and_read_round_trip_in_order(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "fallback.jsonl")
    log.append([_record(i) for i in range(3)])
    log.append([_record(3, error="age: must be a number")])
    rows = log.read()
    assert [row["instance_id"] for row in rows] == ["C0", "C1", "C2", "C3"]
    assert rows[0]["input"] == {"age": 40, "payment_method": None}  # NaN logged as null
    assert rows[0]["probabilities"] == {"0": 0.25, "1": 0.75}
    assert rows[3]["prediction"] is None and rows[3]["error"] == "age: must be a number"
    assert [row["instance_id"] for row in log.read(last=2)] == ["C2", "C3"]
    assert log.count() == 4


def test_locked_database_keeps_records_in_the_fallback_and_replays_them(tmp_path: Path) -> None:
    database = tmp_path / "log.db"
    log = PredictionLog(f"sqlite:///{database}", tmp_path / "fallback.jsonl", lock_timeout_seconds=0.1)
    log.append([_record(0)])
    blocker = sqlite3.connect(database, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        log.append([_record(1), _record(2)])
        assert (tmp_path / "fallback.jsonl").read_text().count("\n") == 2
    finally:
        blocker.rollback()
        blocker.close()
    log.append([_record(3)])
    assert not (tmp_path / "fallback.jsonl").exists()
    assert [row["instance_id"] for row in log.read()] == ["C0", "C1", "C2", "C3"]


def test_unwritable_database_location_falls_back_to_the_file(tmp_path: Path) -> None:
    log = PredictionLog("sqlite:////proc/no-such-dir/log.db", tmp_path / "fallback.jsonl")
    log.append([_record(0)])
    assert "C0" in (tmp_path / "fallback.jsonl").read_text()


def test_a_forked_child_writes_through_connections_of_its_own_and_the_parent_keeps_its_own(
    tmp_path: Path,
) -> None:
    """As in the Flask server: gunicorn forks its worker from the process that created the log."""

    def idle_connections(log: PredictionLog) -> int:
        pool = log.engine.pool
        assert isinstance(pool, QueuePool)
        return pool.checkedin()

    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "fallback.jsonl")
    log.append([_record(0)])  # the parent now holds an open SQLite connection in its pool
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
    pooled = idle_connections(log)
    rows = log.read()
    log.close()

    assert os.waitstatus_to_exitcode(status) == 0
    assert pooled == 1
    assert [row["instance_id"] for row in rows] == ["C0", "C1", "C2", "C3"]
    assert not (tmp_path / "fallback.jsonl").exists()
