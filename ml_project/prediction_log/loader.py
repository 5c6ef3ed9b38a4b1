"""The loader: moves the journal's records into the prediction log's database, exactly once.

    python -m ml_project.prediction_log.loader [--config FILE]   # load what waits, then exit

Each pass takes the loader lock (one loader per journal folder at a time), then, file by file,
reads the whole lines past the file's loaded mark, inserts them (a record already stored, by its
unique key, is skipped), and only then moves the mark: a kill between the two stores nothing
twice. A complete file (its writer's lock is free) that is stored to its end is deleted; no line
is ever deleted before it is stored or moved aside (`prediction_log.rejected`, with its reason).

While the database is locked, slow, down, deleted or without its table, the lines wait where
they are and the pass ends (lock and statement timeouts bound each wait); a missing table is
created again; a table missing a column is reported, and its records wait until it is
repaired. Where a loader runs (a process beside the service's workers, a thread elsewhere) is
`background.py`'s concern.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from ml_project.config import sqlite_file
from ml_project.prediction_log import journal
from ml_project.prediction_log.status import LOCK_FILE, STATUS_FILE, Status
from ml_project.prediction_log.table import (
    PREDICTIONS,
    SchemaMismatch,
    check_row,
    ensure_table,
    insert_or_ignore,
    make_engine,
    new_rows,
    prepare_sqlite_file,
    redacted,
    scrub,
    sqlite_file_unchanged,
)

logger = logging.getLogger(__name__)

# Errors that say the database is unavailable now (down, locked, timed out): never a row's fault.
UNAVAILABLE = (OperationalError, InterfaceError, OSError)
# Spill files an earlier version of this log left (its fallback while the database was down):
# loaded as complete journal files, from the folder beside the journal's.
LEGACY_FOLDER, LEGACY_PATTERNS = "prediction_log_spill", ("spill-*.jsonl", "claimed-*.jsonl")


class LoadBlocked(RuntimeError):
    """The database takes no record now; the lines wait in the journal."""


class Loader:
    """One journal folder's loader into one database; share it between threads."""

    def __init__(self, url: str, directory: Path, *, lock_timeout_seconds: float = 5.0,
                 statement_timeout_seconds: float = 30.0, batch_size: int = 1000) -> None:
        self.url = redacted(url)
        self._secret_url = url
        self.directory = directory
        self.batch_size = batch_size
        self.engine = make_engine(url, lock_timeout_seconds=lock_timeout_seconds,
                                  statement_timeout_seconds=statement_timeout_seconds)
        self.status = Status()
        self._table_ready = False
        self._blocked = False
        self._written: tuple[int, int, int, str | None] | None = None  # the status on file
        self._status_failing = False

    # One pass -------------------------------------------------------------------------------

    def load(self, *, wait: float = 0.0) -> Status | None:
        """One pass over every journal file, under the loader lock; None if another loader held
        the lock for `wait` seconds (it is loading the same files)."""
        lock = self._take_lock(wait)
        if lock is None:
            return None
        try:
            self._pass()
        finally:
            lock.close()
        return self.status

    def _take_lock(self, wait: float) -> IO[bytes] | None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = (self.directory / LOCK_FILE).open("ab")
        deadline = time.monotonic() + wait
        while not journal.try_lock(handle.fileno()):
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.02)
        return handle

    def _pass(self) -> None:
        error = None
        try:
            for path in [*self._legacy_files(), *journal.journal_files(self.directory)]:
                self._load_file(path)
            journal.sweep(self.directory)
        except (LoadBlocked, SchemaMismatch, *UNAVAILABLE, SQLAlchemyError) as err:
            self._table_ready = False  # checked again at the next pass
            error = scrub(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                          self._secret_url)
        self.status.pending_bytes = journal.pending(self.directory, count_records=False).bytes
        if error and not self._blocked:
            logger.error("Prediction log %s takes no records now (%s); they wait in %s and are "
                         "loaded once it does", self.url, error, self.directory)
        elif not error and self._blocked:
            logger.info("Prediction log %s takes records again", self.url)
        self._blocked = error is not None
        self.status.error = error
        self._write_status()

    def _legacy_files(self) -> list[Path]:
        folder = self.directory.parent / LEGACY_FOLDER
        return sorted(path for pattern in LEGACY_PATTERNS for path in folder.glob(pattern))

    def _load_file(self, path: Path) -> None:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            complete = journal.try_lock(handle.fileno())  # no writer: nothing more will come
            # What the file holds now, not what its writer adds while this pass stores it:
            # chasing the writer made a pass of many small transactions, each a commit.
            end = os.fstat(handle.fileno()).st_size
            offset = journal.loaded_offset(path)
            handle.seek(offset)
            while True:
                lines = _whole_lines(handle, self.batch_size, complete, end)
                if not lines:
                    break
                rows, rejects = [], []
                for row, reason, line in journal.parse_lines(lines, check_row):
                    if row is None:
                        rejects.append((reason or "unreadable", line))
                    else:
                        rows.append(row)
                refused = self._store(rows)
                journal.reject_lines(self.directory, path.name, [*rejects, *refused])
                offset += sum(len(line) for line in lines)
                journal.mark_loaded(path, offset)
                self.status.loaded += len(rows) - len(refused)
                self.status.rejected += len(rejects) + len(refused)
            if complete:
                journal.forget(path)

    def _store(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, bytes]]:
        """Insert the rows, each once; returns those the database refuses one by one while it
        takes the others. Raises LoadBlocked (or an UNAVAILABLE error) when it takes none."""
        if not rows:
            return []
        try:
            self._insert(rows)
            return []
        except SQLAlchemyError as err:  # SQLite says "no such table" as an OperationalError
            first = err
        self._table_ready = False
        # PostgreSQL says a missing column with a ProgrammingError; an OperationalError there
        # is the database (down, locked, timed out), whose table may be locked: no column check.
        locked = isinstance(first, UNAVAILABLE) and self.engine.dialect.name != "sqlite"
        if not self._insert_table(check_columns=not locked) and isinstance(first, UNAVAILABLE):
            raise first  # the table is there: the database is down, locked or timed out
        try:
            self._insert(rows)  # the table was missing, or the error was a row's
            return []
        except UNAVAILABLE:
            raise
        except SQLAlchemyError:
            pass
        refused: list[tuple[str, bytes]] = []
        for row in rows:  # one by one: which rows does it refuse?
            try:
                self._insert([row])
            except UNAVAILABLE:
                raise
            except SQLAlchemyError as err:
                reason = f"database refused: {type(err).__name__}: {str(err).splitlines()[0]}"
                refused.append((scrub(reason, self._secret_url),
                                journal.encode_line(row)[:-1]))
        if len(refused) == len(rows):
            raise LoadBlocked(f"the database refuses every record ({first.__class__.__name__}: "
                              f"{str(first).splitlines()[0]})")
        return refused

    def _insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._insert_table()
        statement = insert_or_ignore(self.engine.dialect.name)
        with self.engine.begin() as connection:
            if statement is None:
                fresh = new_rows(connection, rows)
                if fresh:
                    connection.execute(PREDICTIONS.insert(), fresh)
            else:
                connection.execute(statement, list(rows))
            if not sqlite_file_unchanged(connection):  # rolled back: the lines wait
                raise FileNotFoundError(f"{self.url} was deleted or replaced while storing")

    def _insert_table(self, *, check_columns: bool = True) -> bool:
        """Make sure the table is there; True if it had to be created."""
        prepare_sqlite_file(self.engine)
        path = sqlite_file(self.engine.url)
        if self._table_ready and (path is None or path.exists()):
            return False
        with self.engine.begin() as connection:
            created = ensure_table(connection, check_columns=check_columns)
        self._table_ready = check_columns
        if created:
            logger.info("Prediction log table %s created in %s", PREDICTIONS.name, self.url)
        return created

    def prepare(self) -> None:
        """Create the table now (a service's loader process does, before the workers answer); a
        database not available yet is no reason to refuse requests: a later pass creates it."""
        try:
            self._insert_table()
        except (SchemaMismatch, *UNAVAILABLE, SQLAlchemyError) as err:
            logger.warning("Prediction log %s not ready at start (%s); records wait in %s "
                           "until it is", self.url, scrub(str(err).splitlines()[0] if str(err)
                                                          else type(err).__name__,
                                                          self._secret_url), self.directory)

    def _write_status(self) -> None:
        """Written when it changed (or its file is gone), not at every pass: an idle loader
        writes nothing, and a folder being cleared is not refilled under `rm -rf`."""
        status = self.status
        state = (status.loaded, status.rejected, status.pending_bytes, status.error)
        target = self.directory / STATUS_FILE
        if state == self._written and target.exists():
            return
        status.updated_at = datetime.now(timezone.utc).isoformat()
        status.pid = os.getpid()
        temporary = target.with_name(f"{journal.OPENING}{STATUS_FILE}.{os.getpid()}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(asdict(status)))
            os.replace(temporary, target)
        except OSError as err:
            if not self._status_failing:  # said once, until a write succeeds again
                logger.warning("Prediction log loader cannot write its status (%s)", err)
            self._status_failing, self._written = True, None
            return
        self._status_failing, self._written = False, state

    def run(self, stop: threading.Event, *, interval: float = 0.2, retry: float = 1.0) -> None:
        """Pass after pass until `stop` is set, then one last pass."""
        while not stop.is_set():
            self.load_safely()
            stop.wait(retry if self.status.error else interval)
        self.load_safely()

    def load_safely(self) -> None:
        try:
            self.load(wait=0.0)
        except Exception:  # the loader outlives any surprise: the lines wait in the journal
            logger.exception("Prediction log loader failed; retrying")

    def dispose(self) -> None:
        self.engine.dispose()


def _whole_lines(handle: IO[bytes], limit: int, complete: bool, end: int) -> list[bytes]:
    """Up to `limit` whole lines from the handle's position, each starting before byte `end`;
    a last line without its newline is left unread (its writer may be writing it), unless the
    file is complete (it is torn)."""
    lines: list[bytes] = []
    while len(lines) < limit:
        start = handle.tell()
        if start >= end:
            break
        line = handle.readline()
        if not line:
            break
        if not line.endswith(b"\n") and not complete:
            handle.seek(start)
            break
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Load what waits in the journal now, and exit: 0 once it is all stored, 1 if some waits."""
    from ml_project.cli import base_parser, start_run

    parser = base_parser("Load the prediction journal's waiting records into the database.")
    args = parser.parse_args(argv)
    config, _ = start_run(parser, args, "prediction", "production", "local", "prediction_log")
    loader = Loader(config.prediction_log_url, config.output_dir / journal.FOLDER)
    try:
        status = loader.load(wait=60.0)
    finally:
        loader.dispose()
    if status is None:
        logger.error("Another loader held %s for 60 s", loader.directory / LOCK_FILE)
        return 1
    waiting = journal.pending(loader.directory)
    logger.info("Loaded %d records; %d rejected; %d still waiting in %s", status.loaded,
                status.rejected, waiting.records, loader.directory)
    return 0 if waiting.records == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
