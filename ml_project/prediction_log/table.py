"""The prediction log's table, and how each database stores a row in it: the one schema every
writer (services, stream, replays of spill files) and reader (monitoring) shares, the check a
replayed line must pass to become a row, and the insert that stores a replayed record once.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError

from ml_project.prediction_log import spill

# A new table name for the schema with record keys and model identity: a log database written
# by an earlier version keeps its old `predictions` table untouched beside it.
METADATA = sqlalchemy.MetaData()
PREDICTIONS = sqlalchemy.Table(
    "prediction_records",
    METADATA,
    sqlalchemy.Column("record_id", sqlalchemy.Integer, primary_key=True, autoincrement=True),
    sqlalchemy.Column("record_key", sqlalchemy.String(96), nullable=False, unique=True),
    sqlalchemy.Column("request_id", sqlalchemy.String(64), nullable=False, index=True),
    sqlalchemy.Column("instance_index", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("logged_at", sqlalchemy.String(40), nullable=False, index=True),
    sqlalchemy.Column("source", sqlalchemy.String(32), nullable=False),
    sqlalchemy.Column("instance_id", sqlalchemy.Text),
    sqlalchemy.Column("model_name", sqlalchemy.Text),
    sqlalchemy.Column("model_version", sqlalchemy.String(64)),
    sqlalchemy.Column("model_sha256", sqlalchemy.String(64), index=True),
    sqlalchemy.Column("input", sqlalchemy.Text, nullable=False),
    sqlalchemy.Column("prediction", sqlalchemy.Text),
    sqlalchemy.Column("probabilities", sqlalchemy.Text),
    sqlalchemy.Column("latency_ms", sqlalchemy.Float),
    sqlalchemy.Column("error", sqlalchemy.Text),
)
# The fields of a replayed line, by type: a line with any other is moved aside.
FieldType = type | tuple[type, ...]
REQUIRED: dict[str, FieldType] = {
    "record_key": str, "request_id": str, "instance_index": int, "logged_at": str,
    "source": str, "input": str,
}
OPTIONAL: dict[str, FieldType] = {
    "instance_id": str, "model_name": str, "model_version": str, "model_sha256": str,
    "prediction": str, "probabilities": str, "latency_ms": (int, float), "error": str,
}
# Errors that say the storage is unavailable (the records wait); any other database error is a
# record the database refuses, moved aside alone.
UNAVAILABLE = (OperationalError, InterfaceError, OSError)
# Serialises schema creation among every process starting on one PostgreSQL database (an
# arbitrary constant: the advisory lock's key).
SCHEMA_LOCK_KEY = 0x6D6C5F6C6F67


def sqlite_pragmas(connection: Any, _: Any) -> None:
    """WAL lets monitoring read and several processes write while the service writes; with it,
    synchronous=NORMAL makes a commit cost microseconds instead of an fsync. A committed record
    survives any crash of a process; only a power cut can lose the last commits."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


def check_row(value: Any) -> dict[str, Any]:
    """A replayed line as a row, or ValueError naming what makes it none."""
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    row: dict[str, Any] = {}
    for name, kind in (*REQUIRED.items(), *OPTIONAL.items()):
        item = value.get(name)
        if item is None and name in OPTIONAL:
            row[name] = None
        elif isinstance(item, kind) and not isinstance(item, bool):
            row[name] = spill.storable(item) if isinstance(item, str) else item
        else:
            raise ValueError(f"field {name!r} is {type(item).__name__}, not a "
                             f"{getattr(kind, '__name__', 'number')}")
    return row


def insert_or_ignore(dialect: str) -> Any:
    """An insert that skips a record whose key is stored already (a replay), per dialect."""
    if dialect == "sqlite":
        return sqlite.insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["record_key"])
    if dialect == "postgresql":
        return postgresql.insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["record_key"])
    if dialect in ("mysql", "mariadb"):
        return PREDICTIONS.insert().prefix_with("IGNORE")
    return PREDICTIONS.insert()  # a duplicate is then refused alone, as any refused row
