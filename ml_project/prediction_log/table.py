"""The prediction log's table and its database: the one schema the loader writes and monitoring
reads, the check a journal line must pass to become a row, the insert that stores a record
once, the engines (with lock and statement timeouts) and the URL as it may be shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import sqlalchemy
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from ml_project.config import ConfigError, database_url, sqlite_file
from ml_project.prediction_log.journal import file_identity, storable

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
# The fields of a journal line, by type: a line with any other is moved aside.
FieldType = type | tuple[type, ...]
REQUIRED: dict[str, FieldType] = {
    "record_key": str, "request_id": str, "instance_index": int, "logged_at": str,
    "source": str, "input": str,
}
OPTIONAL: dict[str, FieldType] = {
    "instance_id": str, "model_name": str, "model_version": str, "model_sha256": str,
    "prediction": str, "probabilities": str, "latency_ms": (int, float), "error": str,
}
# What every database takes in an INTEGER column (PostgreSQL's is 32-bit).
INTEGER_RANGE = (-(2**31), 2**31 - 1)
# Serialises schema creation among every process starting on one PostgreSQL database (an
# arbitrary constant: the advisory lock's key).
SCHEMA_LOCK_KEY = 0x6D6C5F6C6F67
# Query parameters of a database URL that are never secret, shown as they are; any other
# parameter's value (password=, sslpassword=, a token) is masked wherever the URL is shown.
SHOWN_QUERY_KEYS = frozenset({
    "sslmode", "connect_timeout", "application_name", "target_session_attrs", "gssencmode",
    "charset", "timeout", "mode", "cache", "uri", "check_same_thread", "options",
})
MASK = "***"
# Where a kept SQLite connection's pool record says which process opened which file.
SQLITE_FILE = "ml_project_sqlite_file"


class SchemaMismatch(RuntimeError):
    """The table exists but lacks columns the log writes: records wait until it is repaired."""


def _fields() -> tuple[tuple[str, FieldType, bool, int | None], ...]:
    """Each field of a row: its name, its type, whether it may be missing, its column's length
    (None when unbounded)."""
    return tuple((name, kind, name in OPTIONAL, getattr(PREDICTIONS.c[name].type, "length", None))
                 for name, kind in (*REQUIRED.items(), *OPTIONAL.items()))


# Looked up once: the loader checks every line it stores, and a column's type, looked up per
# field, was half the loader's time.
FIELDS = _fields()


def check_row(value: Any) -> dict[str, Any]:
    """A journal line as a row, or ValueError naming what makes it none."""
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    row: dict[str, Any] = {}
    for name, kind, optional, length in FIELDS:
        item = value.get(name)
        if item is None and optional:
            row[name] = None
            continue
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ValueError(f"field {name!r} is {type(item).__name__}, not a "
                             f"{getattr(kind, '__name__', 'number')}")
        if isinstance(item, str):
            if length is not None and len(item) > length:
                raise ValueError(f"field {name!r} is longer than {length} characters")
            item = storable(item)
        row[name] = item
    index = row["instance_index"]
    if not INTEGER_RANGE[0] <= index <= INTEGER_RANGE[1]:
        raise ValueError(f"field 'instance_index' is {index}, out of an integer column's range")
    return row


def insert_or_ignore(dialect: str) -> Any:
    """An insert that skips a record whose key is stored already (a replay), per dialect; None
    for a database with no such statement (the loader then leaves out the keys it finds).
    Each dialect's module is imported here, for its own database only (PostgreSQL's alone
    weighs ~2 MB in the loader's process)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["record_key"])
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["record_key"])
    if dialect in ("mysql", "mariadb"):
        return PREDICTIONS.insert().prefix_with("IGNORE")
    return None


def new_rows(connection: sqlalchemy.Connection, rows: Sequence[Mapping[str, Any]]
             ) -> list[Mapping[str, Any]]:
    """The rows whose key is not stored yet (for a database without insert-or-ignore)."""
    keys = [row["record_key"] for row in rows]
    stored = set(connection.execute(
        sqlalchemy.select(PREDICTIONS.c.record_key).where(PREDICTIONS.c.record_key.in_(keys))
    ).scalars())
    return [row for row in rows if row["record_key"] not in stored]


def parse_url(url: str) -> sqlalchemy.URL:
    """The log's database URL, or ConfigError saying what is wrong with it (never showing a
    password)."""
    try:
        parsed = database_url(url)
    except (ArgumentError, ValueError):  # unparsed, its secrets cannot be told apart
        scheme = url.split("://", 1)[0] if "://" in url else None
        shown = f"{scheme}://{MASK}" if scheme and scheme.isprintable() else "(not shown)"
        raise ConfigError(f"the prediction log URL {shown} is not a database URL "
                          "(dialect+driver://user:password@host:port/database)") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError as err:
        raise ConfigError(f"the prediction log URL {redacted(url)} names a database SQLAlchemy "
                          f"cannot open ({scrub(str(err), url)})") from None
    return parsed


def url_secrets(url: str) -> list[str]:
    """Every value of `url` that may be secret: the password and any query value not known to
    be harmless; read even from a URL too malformed to parse."""
    found: list[str] = []
    userinfo = re.match(r"^[^:/?#]+://([^/?#]*)@", url)
    if userinfo and ":" in userinfo.group(1):
        found.append(userinfo.group(1).split(":", 1)[1])
    query = url.partition("?")[2]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if value and key.lower() not in SHOWN_QUERY_KEYS:
            found.append(value)
    try:
        parsed = sqlalchemy.make_url(url)
    except (ArgumentError, ValueError):
        pass
    else:
        if parsed.password:
            found.append(str(parsed.password))
        for key, values in parsed.query.items():
            if key.lower() not in SHOWN_QUERY_KEYS:
                found.extend([values] if isinstance(values, str) else values)
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def redacted(url: str) -> str:
    """`url` fit for a message or a log line: every secret value masked."""
    shown = url
    for secret in url_secrets(url):
        shown = shown.replace(secret, MASK)
    return shown


def scrub(text: str, url: str) -> str:
    """A message (a database error's, say) with any secret of `url` masked."""
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text


def make_engine(url: str, *, lock_timeout_seconds: float,
                statement_timeout_seconds: float | None = None) -> sqlalchemy.Engine:
    """An engine whose waits are bounded: a locked SQLite file or PostgreSQL table, a server
    that does not answer, a statement that runs on, each fails within its timeout instead of
    holding the loader. A SQLite file's connection is kept between transactions
    (`keep_sqlite_connection` says why, and how a file deleted while serving is created again,
    never written unseen); a `file:` URI or a database in memory is opened at each use."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_file(parsed)
        engine = sqlalchemy.create_engine(
            parsed, connect_args={"timeout": lock_timeout_seconds, "check_same_thread": False},
            **({} if path is not None else {"poolclass": NullPool}))
        sqlalchemy.event.listen(engine, "connect", sqlite_pragmas)
        if path is not None:
            keep_sqlite_connection(engine, path)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = max(1, round(lock_timeout_seconds))
        if "options" not in parsed.query:
            options = f"-c lock_timeout={round(lock_timeout_seconds * 1000)}"
            if statement_timeout_seconds:
                options += f" -c statement_timeout={round(statement_timeout_seconds * 1000)}"
            connect_args["options"] = options
    # pre_ping replaces the connections a database restart has closed before they are used.
    return sqlalchemy.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


def keep_sqlite_connection(engine: sqlalchemy.Engine, path: Path) -> None:
    """Keep the SQLite log's connections in the engine's pool. Closing the last one checkpoints
    the write-ahead log and deletes it, so a connection per transaction created, wrote and
    deleted that file at every loader pass (~10 ms of CPU, and work for the disk's journal).

    A pooled connection keeps its file open after the file is deleted or replaced
    (`clear_outputs.sh` while serving). So at each checkout (SQLAlchemy's documented "checkout"
    event), a connection whose file the path no longer names is refused with
    `DisconnectionError`: the pool closes it and connects again, which creates the file.
    `sqlite_file_unchanged` checks again before a commit. A connection inherited by a forked
    process is never used or closed there (SQLAlchemy's own recipe for pools and os.fork)."""

    def connected(dbapi_connection: Any, record: Any) -> None:
        record.info[SQLITE_FILE] = (os.getpid(), path, file_identity(path))

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        pid, _, identity = record.info[SQLITE_FILE]
        if pid != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise DisconnectionError(f"a connection of process {pid}, not this one's")
        if identity != file_identity(path):
            raise DisconnectionError(f"{path} was deleted or replaced since it was opened")

    sqlalchemy.event.listen(engine, "connect", connected)
    sqlalchemy.event.listen(engine, "checkout", checkout)


def sqlite_file_unchanged(connection: sqlalchemy.Connection) -> bool:
    """Whether a kept SQLite connection's file is still the one its path names (True for any
    other connection): checked before a commit, a file deleted in the transaction does not
    take its rows."""
    opened = connection.connection.info.get(SQLITE_FILE)
    return opened is None or bool(opened[2] == file_identity(opened[1]))


def prepare_sqlite_file(engine: sqlalchemy.Engine) -> None:
    """Before connecting to a SQLite log: its folder exists, and if its file is gone (deleted
    while serving), so are the write-ahead files it left: a new file beside an old WAL would
    take the old pages in."""
    path = sqlite_file(engine.url)
    if path is None:  # another database, a `file:` URI, or memory: nothing to prepare
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        for suffix in ("-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def sqlite_pragmas(connection: Any, _: Any) -> None:
    """WAL lets monitoring read while the loader writes; with it, synchronous=NORMAL makes a
    commit cost microseconds instead of an fsync. The journal keeps the records until their
    commit; a power cut can lose the last commits, whose journal lines are then gone too."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


def ensure_table(connection: sqlalchemy.Connection, *, check_columns: bool = True) -> bool:
    """Create the table if it is missing (True then; in one transaction with PostgreSQL's
    advisory lock: replicas starting at once would both see no table and both create it);
    SchemaMismatch if it exists without a column the log writes (dropped or renamed by hand).
    The column check reads the table's definition, which waits on a lock of the table in
    PostgreSQL: `check_columns=False` when the table may be locked."""
    if connection.dialect.name == "postgresql":
        connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": SCHEMA_LOCK_KEY})
    inspector = sqlalchemy.inspect(connection)
    if not inspector.has_table(PREDICTIONS.name):
        METADATA.create_all(connection)
        return True
    if not check_columns:
        return False
    present = {column["name"] for column in inspector.get_columns(PREDICTIONS.name)}
    missing = [column.name for column in PREDICTIONS.columns if column.name not in present]
    if missing:
        raise SchemaMismatch(
            f"table {PREDICTIONS.name} lacks the columns {missing}: restore them, or rename "
            "the table aside (the log then creates a new one)")
    return False
