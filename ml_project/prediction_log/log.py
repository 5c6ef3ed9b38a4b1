"""The durable log of prediction requests and their outcomes; monitoring reads it later.

An embedded SQLite database under output/ by default (WAL: several processes write one file),
any SQLAlchemy URL by config (PostgreSQL for replicas on several machines: `postgresql://` is
served by psycopg 3, the driver the Pipfile installs). The request path never waits on it:
`append` puts records on a bounded in-process queue that one writer thread drains in batches.
While the database is slow, locked or down, requests are answered at full speed and the writer
spills the records to this process's spill file (`log_spill`), replayed once the database
answers again. Every record has a unique key (request id + instance index) and replays insert
or ignore, so a record replayed twice, by two processes, is stored once. A full queue, a full
disk or an unwritable spill folder are counted (`stats`, reported by /health) and logged, never
raised to the request.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from ml_project.config import Config, database_url
from ml_project.prediction_log import spill
from ml_project.prediction_log.records import LogRecord
from ml_project.prediction_log.table import (
    METADATA,
    PREDICTIONS,
    SCHEMA_LOCK_KEY,
    UNAVAILABLE,
    check_row,
    insert_or_ignore,
    sqlite_pragmas,
)

logger = logging.getLogger(__name__)

# How long the writer gathers records before it stores them. One transaction per request would
# cost ~0.2-0.5 ms of CPU each (SQLAlchemy and SQLite), taken from the requests; gathered, a
# record costs a fraction of that. Records reach the database this much later.
BATCH_WAIT_SECONDS = 0.1
_FLUSH = object()
_STOP = object()


class PredictionLog:
    """Append-only prediction log behind a queue and one writer thread; share it between threads.

    Args:
        url: any SQLAlchemy URL (the attribute `url` shows it without its password).
        spill_dir: the folder of the spill files (shared by every process writing this log).
        queue_size: records held in memory at most; past it a record is dropped and counted.
    """

    def __init__(self, url: str, spill_dir: Path, *, lock_timeout_seconds: float = 5.0,
                 queue_size: int = 10_000, batch_size: int = 500,
                 retry_seconds: float = 1.0) -> None:
        parsed = database_url(url)
        self.url = parsed.render_as_string(hide_password=True)  # fit for messages
        self.spill_dir = spill_dir
        self.lock_timeout_seconds = lock_timeout_seconds
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.retry_seconds = retry_seconds
        if parsed.get_backend_name() == "sqlite":
            self.engine = sqlalchemy.create_engine(parsed, connect_args={
                "timeout": lock_timeout_seconds, "check_same_thread": False})
            sqlalchemy.event.listen(self.engine, "connect", sqlite_pragmas)
        else:
            # A server that is down or unreachable must fail a connection in seconds (the
            # records then spill), not after the operating system's TCP timeout; pre_ping
            # replaces the connections a database restart has closed before they are used.
            connect_args: dict[str, Any] = (
                {"connect_timeout": max(1, round(lock_timeout_seconds))}
                if parsed.get_backend_name() == "postgresql"
                and "connect_timeout" not in parsed.query else {})
            self.engine = sqlalchemy.create_engine(parsed, connect_args=connect_args,
                                                   pool_pre_ping=True)
        self.stats: Counter[str] = Counter()
        self._counting = threading.Lock()
        self._ready = False
        self._start_process_state()
        atexit.register(self.close)

    def _start_process_state(self) -> None:
        """What belongs to one process: the queue, the writer, the spill file."""
        self._pid = os.getpid()
        self._queue: queue.Queue[Any] = queue.Queue(self.queue_size)
        self._writer: threading.Thread | None = None
        self._starting = threading.Lock()
        self._spill = spill.SpillFile(self.spill_dir)
        self._held: list[dict[str, Any]] = []  # spilled nowhere yet (the spill folder failed)
        self._retry_at = 0.0
        self._replay_due = True  # a previous run (or a dead process) may have left spill files
        self._outage = False

    def _count(self, name: str, amount: int) -> None:
        with self._counting:
            self.stats[name] += amount

    def counters(self) -> dict[str, int]:
        """A copy of `stats`, safe to take while the writer counts."""
        with self._counting:
            return dict(self.stats)

    @classmethod
    def from_config(cls, config: Config) -> PredictionLog:
        return cls(config.prediction_log_url,
                   config.output_dir / "prediction_log_spill")

    # The request side -------------------------------------------------------------------------

    def append(self, records: Iterable[LogRecord]) -> None:
        """Queue records for the writer; never blocks, never raises on a storage problem."""
        if self._pid != os.getpid():  # a forked child that did not call after_fork
            self.after_fork()
        try:
            self._ensure_writer()
        except RuntimeError:  # no new thread at interpreter shutdown: the records wait queued
            logger.error("Prediction log writer cannot start (interpreter shutting down)")
        for record in records:
            try:
                row = record.to_row()
            except Exception as err:  # a record that cannot become a row: counted, not raised
                self._count("unloggable", 1)
                logger.error("Prediction log: record %s not loggable (%s)",
                             record.request_id, type(err).__name__)
                continue
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._count("dropped_queue_full", 1)
                if self.stats["dropped_queue_full"] % 1000 == 1:  # the first, then 1 in 1000
                    logger.error("Prediction log queue full (%d records): record %s dropped",
                                 self.queue_size, record.request_id)

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._starting:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._run, name="prediction-log-writer",
                                                daemon=True)
                self._writer.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record queued so far is stored or spilled; False on timeout."""
        if self._pid != os.getpid() or (
            self._queue.empty() and (self._writer is None or not self._writer.is_alive())
        ):
            return True
        done = threading.Event()
        try:
            self._queue.put((_FLUSH, done), timeout=timeout)
        except queue.Full:
            return False
        self._ensure_writer()
        return done.wait(timeout)

    # The writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                items = [self._queue.get(timeout=self.retry_seconds)]
            except queue.Empty:
                items = []
            # Records arriving within BATCH_WAIT_SECONDS share one transaction; a flush or a
            # close ends the wait at once.
            deadline = time.monotonic() + BATCH_WAIT_SECONDS
            while items and len(items) < self.batch_size and isinstance(items[-1], dict):
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            rows = [item for item in items if isinstance(item, dict)]
            if any(isinstance(item, tuple) for item in items):
                self._retry_at = 0.0  # a flush (a reader, a close) tries the database now
            try:
                if rows or self._held or self._replay_due:
                    self._store(rows)
            except Exception:  # the writer must outlive any surprise; its records are counted
                logger.exception("Prediction log writer failed on %d records", len(rows))
                self._count("lost", len(rows))
            for item in items:
                if isinstance(item, tuple) and item[0] is _FLUSH:
                    item[1].set()
                stop = stop or item is _STOP
        if self._held:  # neither the database nor the spill folder took them, to the end
            self._count("lost", len(self._held))
            logger.error("Prediction log closed with %d records it could store nowhere",
                         len(self._held))
            self._held = []

    def _store(self, rows: list[dict[str, Any]]) -> None:
        """Into the database (spill files first, so the order holds), else into the spill."""
        rows = [*self._held, *rows]
        self._held = []
        if time.monotonic() < self._retry_at:
            self._spill_rows(rows)
            return
        try:
            self._ensure_table()
            if self._replay_due:
                self._replay_spills()
            if rows:
                self._insert(rows)
                self._count("written", len(rows))
        except UNAVAILABLE as err:
            if not self._outage:
                logger.error("Prediction log %s unavailable (%s); records wait in %s: %s",
                             self.url, type(err).__name__, self.spill_dir,
                             str(err).splitlines()[0])
            self._outage = True
            self._retry_at = time.monotonic() + self.retry_seconds
            self._spill_rows(rows)
            return
        if self._outage:
            logger.info("Prediction log %s available again", self.url)
        self._outage = False

    def _spill_rows(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            self._spill.append(rows)
        except OSError as err:
            keep = max(0, self.queue_size - len(self._held))
            self._held.extend(rows[:keep])
            lost = len(rows) - keep if len(rows) > keep else 0
            self._count("lost", lost)
            self._count("spill_failures", 1)
            logger.error("Prediction log spill folder %s unwritable (%s); %d records held in "
                         "memory, %d lost", self.spill_dir, err, len(self._held), lost)
            return
        self._count("spilled", len(rows))
        self._replay_due = True

    def _replay_spills(self) -> None:
        """Store every waiting spill file (any process's) once, then delete it."""
        self._replay_due = False
        for path in spill.spill_files(self.spill_dir):
            claimed = spill.claim(path)
            if claimed is None:
                continue
            stored = 0
            rejects: list[tuple[str, bytes]] = []
            try:
                with spill.open_claimed(claimed) as handle:
                    rows: list[dict[str, Any]] = []
                    for row, reason, line in spill.parse_lines(handle, check_row):
                        if row is None:
                            rejects.append((reason or "unreadable", line))
                        else:
                            rows.append(row)
                        if len(rows) >= self.batch_size:
                            self._insert(rows)
                            stored, rows = stored + len(rows), []
                    self._insert(rows)
                    stored += len(rows)
                spill.reject_lines(self.spill_dir, claimed, rejects)
            except UNAVAILABLE:
                self._replay_due = True  # the claimed file stays; the next replay takes it
                raise
            self._count("replayed", stored)
            self._count("rejected_lines", len(rejects))
            claimed.unlink(missing_ok=True)
            logger.info("Replayed %d prediction records from %s", stored, path.name)

    def _insert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or ignore (the record key is unique); a row the database refuses alone is
        moved aside, the others stored."""
        if not rows:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(insert_or_ignore(self.engine.dialect.name), list(rows))
        except UNAVAILABLE:
            raise
        except (SQLAlchemyError, ValueError) as err:
            if len(rows) == 1:
                spill.reject_lines(self.spill_dir, Path("database"), [
                    (f"{type(err).__name__}: {str(err).splitlines()[0]}",
                     spill.encode_line(rows[0])[:-1])])
                self._count("rejected_rows", 1)
                return
            for row in rows:
                self._insert([row])

    def _ensure_table(self) -> None:
        if not self._ready:
            database = self.engine.url.database
            if self.engine.dialect.name == "sqlite" and database:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            with self.engine.begin() as connection:
                if self.engine.dialect.name == "postgresql":
                    # Replicas starting at once would both see no table and both create it
                    # (one then fails on a duplicate type); the lock lets one create it in its
                    # transaction while the others wait, then find it.
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": SCHEMA_LOCK_KEY})
                METADATA.create_all(connection)
            self._ready = True

    # Reading ----------------------------------------------------------------------------------

    def count(self) -> int:
        self.flush()
        self._ensure_table()
        with self.engine.connect() as connection:
            total = connection.execute(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(PREDICTIONS)
            ).scalar_one()
        return int(total)

    def read(self, *, last: int | None = None, since: str | None = None,
             until: str | None = None, model_sha256: str | None = None,
             model_version: str | None = None) -> list[dict[str, Any]]:
        """Records in logging order, with input/prediction/probabilities decoded from JSON;
        only those of the model with `model_sha256` / `model_version` when given."""
        self.flush()
        self._ensure_table()
        query = sqlalchemy.select(PREDICTIONS).order_by(PREDICTIONS.c.record_id.desc())
        if since:
            query = query.where(PREDICTIONS.c.logged_at >= since)
        if until:
            query = query.where(PREDICTIONS.c.logged_at < until)
        if model_sha256:
            query = query.where(PREDICTIONS.c.model_sha256 == model_sha256)
        if model_version:
            query = query.where(PREDICTIONS.c.model_version == model_version)
        if last:
            query = query.limit(last)
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        for row in rows:
            for key in ("input", "prediction", "probabilities"):
                row[key] = None if row[key] is None else json.loads(row[key])
        return rows[::-1]

    def spill_files(self) -> list[Path]:
        """The spill files waiting for a replay (any process's)."""
        return spill.spill_files(self.spill_dir)

    # Life cycle -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the table now, in a server's master: workers forked later would otherwise race
        to create it (the loser's records wait a retry in its spill file). A database that is
        not available yet is no reason to refuse requests: the writers create it later."""
        try:
            self._ensure_table()
        except UNAVAILABLE as err:
            logger.warning("Prediction log %s not available at start (%s); records will wait "
                           "in %s until it is", self.url, type(err).__name__, self.spill_dir)

    def after_fork(self) -> None:
        """Call in a forked child (a gunicorn worker) before it writes. The writer thread does
        not survive a fork, and a SQLite connection must never be used on both sides of one: the
        child gets a queue, writer, spill file and pool of its own (the parent's connections are
        left open, for the parent)."""
        self.engine.dispose(close=False)
        self._start_process_state()

    def close(self, timeout: float = 30.0) -> None:
        """Store or spill what is queued and stop the writer, then release the database (at
        exit too). A later append starts a new writer."""
        if self._pid == os.getpid() and self._writer is not None and self._writer.is_alive():
            if not self.flush(timeout):
                logger.error("Prediction log: %d records still queued at close",
                             self._queue.qsize())
            try:
                self._queue.put(_STOP, timeout=1)
                self._writer.join(timeout)
            except queue.Full:
                pass
        atexit.unregister(self.close)
        self.engine.dispose()
