"""The durable log of every prediction request and its outcome; monitoring reads it later.

An embedded SQLite database under output/ by default, any SQLAlchemy URL by config. A write that
fails (database locked, disk read-only, server down) never fails the request: the record goes
to a JSON-lines fallback file beside the output folder and is replayed into the database at the
next successful write. Nothing sent is ever missing from the log.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from ml_project.config import Config
from ml_project.predict import Prediction, PredictionService
from ml_project.schemas import InvalidInstance

logger = logging.getLogger(__name__)

METADATA = sqlalchemy.MetaData()
PREDICTIONS = sqlalchemy.Table(
    "predictions",
    METADATA,
    sqlalchemy.Column("record_id", sqlalchemy.Integer, primary_key=True, autoincrement=True),
    sqlalchemy.Column("request_id", sqlalchemy.String(64), nullable=False, index=True),
    sqlalchemy.Column("logged_at", sqlalchemy.String(32), nullable=False, index=True),
    sqlalchemy.Column("source", sqlalchemy.String(32), nullable=False),
    sqlalchemy.Column("instance_id", sqlalchemy.String(128)),
    sqlalchemy.Column("model_version", sqlalchemy.String(64)),
    sqlalchemy.Column("input", sqlalchemy.Text, nullable=False),
    sqlalchemy.Column("prediction", sqlalchemy.Text),
    sqlalchemy.Column("probabilities", sqlalchemy.Text),
    sqlalchemy.Column("latency_ms", sqlalchemy.Float),
    sqlalchemy.Column("error", sqlalchemy.Text),
)


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    """WAL lets monitoring read while the service writes; with it, synchronous=NORMAL makes a
    commit cost microseconds instead of an fsync. A committed record survives any crash of this
    process; only a power cut before the next checkpoint can lose the last commits. The log is
    on the request path, so that is the trade we make."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: log a missing value as null, as a client would have sent it."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class LogRecord:
    """One request and its outcome (prediction, or the error that rejected it)."""

    request_id: str
    source: str
    input: Mapping[str, Any]
    model_version: str | None
    prediction: Any = None
    probabilities: Mapping[str, float] | None = None
    latency_ms: float | None = None
    error: str | None = None
    instance_id: str | None = None
    logged_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["input"] = json.dumps(_json_safe(dict(self.input)), default=str)
        row["prediction"] = None if self.prediction is None else json.dumps(_json_safe(self.prediction))
        row["probabilities"] = (
            None if self.probabilities is None else json.dumps(_json_safe(dict(self.probabilities)))
        )
        return row


class PredictionLog:
    """Append-only prediction log with a file fallback; safe to share between threads."""

    def __init__(self, url: str, fallback_file: Path, *, lock_timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.fallback_file = fallback_file
        is_sqlite = url.startswith("sqlite")
        connect_args = {"timeout": lock_timeout_seconds, "check_same_thread": False} if is_sqlite else {}
        self.engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        if is_sqlite:
            sqlalchemy.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._lock = threading.Lock()
        self._ready = False

    @classmethod
    def from_config(cls, config: Config) -> PredictionLog:
        return cls(
            config.resolve(config.prediction.prediction_log_url),
            config.output_dir / "prediction_log_fallback.jsonl",
        )

    def _ensure_table(self) -> None:
        if not self._ready:
            if self.url.startswith("sqlite:///"):
                Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            METADATA.create_all(self.engine)
            self._ready = True

    def append(self, records: Iterable[LogRecord]) -> None:
        """Write records; on a database failure keep them in the fallback file instead."""
        rows = [record.to_row() for record in records]
        if not rows:
            return
        with self._lock:
            try:
                self._ensure_table()
                with self.engine.begin() as connection:
                    pending = self._read_fallback()
                    connection.execute(PREDICTIONS.insert(), pending + rows)
                if pending:
                    self.fallback_file.unlink()
                    logger.info("Replayed %d prediction records from %s", len(pending),
                                self.fallback_file)
            except (SQLAlchemyError, OSError) as err:
                logger.error(
                    "Prediction log %s unavailable (%s); keeping %d records in %s",
                    self.url, err.__class__.__name__, len(rows), self.fallback_file,
                )
                self.fallback_file.parent.mkdir(parents=True, exist_ok=True)
                with self.fallback_file.open("a") as handle:
                    for row in rows:
                        handle.write(json.dumps(row) + "\n")

    def _read_fallback(self) -> list[dict[str, Any]]:
        if not self.fallback_file.is_file():
            return []
        with self.fallback_file.open() as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def count(self) -> int:
        self._ensure_table()
        with self.engine.connect() as connection:
            total = connection.execute(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(PREDICTIONS)
            ).scalar_one()
        return int(total)

    def read(self, *, last: int | None = None, since: str | None = None,
             until: str | None = None) -> list[dict[str, Any]]:
        """Records in logging order, with input/prediction/probabilities decoded from JSON."""
        self._ensure_table()
        query = sqlalchemy.select(PREDICTIONS).order_by(PREDICTIONS.c.record_id.desc())
        if since:
            query = query.where(PREDICTIONS.c.logged_at >= since)
        if until:
            query = query.where(PREDICTIONS.c.logged_at < until)
        if last:
            query = query.limit(last)
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            for key in ("input", "prediction", "probabilities"):
                row[key] = None if row[key] is None else json.loads(row[key])
        return rows[::-1]

    def after_fork(self) -> None:
        """Call in a forked child (a gunicorn worker) before it writes. Connections are opened
        lazily, but any the parent already had are in the inherited pool, and a SQLite
        connection must never be used on both sides of a fork: the child gets a pool of its own
        (the parent's connections are left open, for the parent) and a lock of its own."""
        self.engine.dispose(close=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()


def log_record(
    service: PredictionService | None,
    record: Mapping[str, Any],
    *,
    request_id: str,
    source: str,
    latency_ms: float,
    prediction: Prediction | None = None,
    error: str | None = None,
) -> LogRecord:
    """The log entry of one instance and its outcome: every entry point builds it here."""
    instance_id = record.get(service.config.columns.id) if service else None
    return LogRecord(
        request_id=request_id,
        source=source,
        input=record,
        model_version=service.model_version if service else None,
        prediction=prediction.prediction if prediction else None,
        probabilities=prediction.probabilities if prediction else None,
        latency_ms=latency_ms,
        error=error,
        instance_id=None if instance_id is None else str(instance_id),
    )


def predict_and_log(
    service: PredictionService, log: PredictionLog, record: Mapping[str, Any], *, source: str
) -> tuple[Prediction | None, LogRecord]:
    """Predict one instance and log the request with its outcome, valid or not.

    Returns the prediction (None if the instance was rejected) and the record logged; the
    rejection reason is in `LogRecord.error`.
    """
    started = time.perf_counter()
    prediction: Prediction | None = None
    error = None
    try:
        prediction = service.predict_instance(record)
    except InvalidInstance as err:
        error = str(err)
    entry = log_record(
        service, record, request_id=new_request_id(), source=source,
        latency_ms=(time.perf_counter() - started) * 1000, prediction=prediction, error=error,
    )
    log.append([entry])
    return prediction, entry
