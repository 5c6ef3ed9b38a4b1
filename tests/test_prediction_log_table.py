"""The prediction log's table: the check a replayed line must pass, the insert that stores a
record once per key on every database, and an old log left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.dialects import postgresql
from sqlalchemy.pool import NullPool

from ml_project.config import sqlite_file
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord, new_request_id
from ml_project.prediction_log.table import (
    METADATA,
    PREDICTIONS,
    check_row,
    insert_or_ignore,
    make_engine,
    parse_url,
    prepare_sqlite_file,
    sqlite_file_unchanged,
)

ROW: dict[str, Any] = {"record_key": "r:0", "request_id": "r", "instance_index": 0,
                       "logged_at": "2026-01-01T00:00:00+00:00", "source": "api",
                       "input": "{}"}


def test_check_row_keeps_a_record_and_fills_what_is_optional() -> None:
    row = check_row(dict(ROW, latency_ms=3))
    assert row["latency_ms"] == 3 and row["prediction"] is None
    assert set(row) == {column.name for column in PREDICTIONS.columns} - {"record_id"}


@pytest.mark.parametrize(("change", "message"), [
    ({"instance_index": "0"}, "'instance_index' is str"),
    ({"instance_index": True}, "'instance_index' is bool"),
    ({"input": None}, "'input' is NoneType"),
    ({"latency_ms": "fast"}, "'latency_ms' is str"),
])
def test_check_row_refuses_a_field_of_the_wrong_type(change: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_row({**ROW, **change})


def test_the_same_record_inserted_twice_is_stored_once(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    METADATA.create_all(engine)
    for _ in range(2):
        with engine.begin() as connection:
            connection.execute(insert_or_ignore("sqlite"), [check_row(ROW)])
    with engine.connect() as connection:
        assert connection.execute(
            sqlalchemy.select(sqlalchemy.func.count()).select_from(PREDICTIONS)).scalar() == 1
    engine.dispose()


def test_a_sqlite_file_keeps_its_connection_and_a_uri_or_memory_opens_at_each_use(
    tmp_path: Path,
) -> None:
    """The loader's SQLite file keeps its connection between passes (see
    `keep_sqlite_connection`); where no file path can be checked, each use connects anew."""
    file_url = f"sqlite:///{tmp_path / 'log.db'}"
    assert sqlite_file(parse_url(file_url)) == tmp_path / "log.db"
    kept = make_engine(file_url, lock_timeout_seconds=1)
    with kept.connect() as first:
        opened = first.connection.dbapi_connection
    with kept.connect() as second:
        assert second.connection.dbapi_connection is opened
        assert sqlite_file_unchanged(second)
    kept.dispose()
    for url in (f"sqlite:///file:{tmp_path / 'uri.db'}?uri=true", "sqlite://",
                "sqlite:///:memory:"):
        assert sqlite_file(parse_url(url)) is None
        engine = make_engine(url, lock_timeout_seconds=1)
        assert isinstance(engine.pool, NullPool)
        prepare_sqlite_file(engine)  # no folder named after a URI's text
        assert not Path(f"file:{tmp_path}").exists()
        with engine.connect() as connection:
            assert sqlite_file_unchanged(connection)
        engine.dispose()


def test_replays_insert_or_ignore_in_postgresql_too() -> None:
    """The statement a PostgreSQL log runs (no server here: its compiled SQL)."""
    dialect: Any = postgresql.dialect
    sql = str(insert_or_ignore("postgresql").compile(dialect=dialect()))
    assert "ON CONFLICT (record_key) DO NOTHING" in sql


def test_an_old_schema_database_is_left_as_is_and_the_log_works_beside_it(tmp_path: Path) -> None:
    database = tmp_path / "log.db"
    with sqlite3.connect(database) as old:
        old.execute("CREATE TABLE predictions (record_id INTEGER PRIMARY KEY, request_id TEXT)")
        old.execute("INSERT INTO predictions (request_id) VALUES ('old')")
    log = PredictionLog(f"sqlite:///{database}", tmp_path / "spill")
    log.append([LogRecord(new_request_id(), "test", {"age": 1}, "3", instance_id="C0")])
    assert [row["instance_id"] for row in log.read()] == ["C0"]
    log.close()
    with sqlite3.connect(database) as old:
        assert old.execute("SELECT count(*) FROM predictions").fetchone() == (1,)
