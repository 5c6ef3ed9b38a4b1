"""The prediction log: every request's records, durable before the request is answered, then
stored in a database that monitoring reads.

An embedded SQLite database under output/ by default, any SQLAlchemy URL by config (PostgreSQL
for replicas on several machines: `postgresql://` is served by psycopg 3, the driver the
Pipfile installs). The request path never touches it: `append` writes the records to this
process's journal file (`journal.py`: one write, microseconds, survives a killed process) and
returns; a loader (`loader.py`) moves them into the database, exactly once by their unique key,
whether the database is locked, slow, down, deleted or changed meanwhile. The service runs the
loader in a process of its own; elsewhere (the cloud handlers, the use cases) it runs in a
background thread (`load_in_background`). If the journal itself cannot be written (a full
disk), `append` says so and the caller does not answer as if the request were logged.

Guarantee: at least once into the journal before the answer, exactly once into the database.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ml_project.config import Config
from ml_project.prediction_log import journal
from ml_project.prediction_log.background import (
    LoaderProcess,
    LoaderThread,
    loader_process_alive,
    start_loader_process,
)
from ml_project.prediction_log.records import SHADOW_SOURCE, LogRecord
from ml_project.prediction_log.status import loader_running, read_status

if TYPE_CHECKING:  # the database's side imports SQLAlchemy: only where it is used (below)
    import sqlalchemy

    from ml_project.prediction_log.loader import Loader

logger = logging.getLogger(__name__)

READ_CHUNK = 10_000  # rows fetched at a time by `read_chunks`
WATCH_SECONDS = 2.0  # how often a serving process checks that its loader process is alive


class PredictionLog:
    """The journal of this process and the loader of its folder; share it between threads.

    Args:
        url: any SQLAlchemy URL (the attribute `url` shows it with its secrets masked).
        journal_dir: the journal's folder (shared by every process writing this log).
        load_in_background: run the loader in a thread of this process (the default): the URL
            is checked now (ConfigError). False where a loader process runs beside (the
            service's launcher starts one, `start_loader_process`, which checks the URL): this
            process then imports no database library until it reads, flushes or stands in for
            a loader process that is gone, and a serving worker never does.
    """

    def __init__(self, url: str, journal_dir: Path, *, load_in_background: bool = True,
                 lock_timeout_seconds: float = 5.0, statement_timeout_seconds: float = 30.0,
                 segment_bytes: int = journal.SEGMENT_BYTES) -> None:
        self._secret_url = url
        self._timeouts = (lock_timeout_seconds, statement_timeout_seconds)
        self._shown_url: str | None = None  # as a loader process reported it
        self._loader: Loader | None = None
        self._reader_engine: sqlalchemy.Engine | None = None
        self.journal_dir = journal_dir
        self.journal = journal.Journal(journal_dir, segment_bytes)
        self._background = LoaderThread(self.loader) if load_in_background else None
        self.stats: Counter[str] = Counter()
        self._counting = threading.Lock()
        self._watching, self._next_watch = False, 0.0  # see `start_loader_process`
        self._missed = 0  # checks in a row that found no loader process
        atexit.register(self.close)

    @property
    def url(self) -> str:
        """The database URL, secrets masked."""
        return self._shown_url or self.loader.url

    @property
    def loader(self) -> Loader:
        """This log's loader, made at first use (ConfigError for a URL that is no database
        URL, its secrets masked)."""
        if self._loader is None:
            self._loader = self._make_loader()
        return self._loader

    def _make_loader(self) -> Loader:
        from ml_project.prediction_log.loader import Loader

        return Loader(self._secret_url, self.journal_dir, lock_timeout_seconds=self._timeouts[0],
                      statement_timeout_seconds=self._timeouts[1])

    @classmethod
    def from_config(cls, config: Config, *, load_in_background: bool = True) -> PredictionLog:
        """Raises ConfigError for a URL that is no database URL (its secrets masked), at once
        with `load_in_background`, else where the URL is first used."""
        return cls(config.prediction_log_url, config.output_dir / journal.FOLDER,
                   load_in_background=load_in_background)

    # The request side -------------------------------------------------------------------------

    def append(self, records: Iterable[LogRecord]) -> bool:
        """Write the records to the journal; True once they are durable. False if the journal
        cannot be written (counted and logged): the caller must not answer as if logged."""
        lines = []
        for record in records:
            try:
                lines.append(journal.encode_line(record.to_row()))
            except Exception as err:  # a record that cannot become a line: counted, not raised
                self._count("unloggable", 1)
                logger.error("Prediction log: record %s not loggable (%s)",
                             record.request_id, type(err).__name__)
        if not lines:
            return True
        try:
            self.journal.append(b"".join(lines))
        except OSError as err:
            self._count("journal_failures", 1)
            if self.stats["journal_failures"] % 1000 == 1:  # the first, then 1 in 1000
                logger.error("Prediction journal %s cannot be written (%s): requests are "
                             "refused until it can", self.journal_dir, err)
            return False
        self._count("journaled", len(lines))
        if self._background is not None:
            self._background.ensure_started()
        elif self._watching and time.monotonic() >= self._next_watch:
            self._watch_loader_process()
        return True

    def _watch_loader_process(self) -> None:
        """If the loader process is gone (killed: it never stops on its own while the service
        runs) at two checks in a row, this process loads the folder in a thread, so answered
        records keep reaching the database until the service restarts. Every serving process may stand in; one loader
        pass runs at a time (the loader lock)."""
        with self._counting:
            if not self._watching:
                return
            self._next_watch = time.monotonic() + WATCH_SECONDS
            if loader_process_alive(self.journal_dir):
                self._missed = 0
                return
            self._missed += 1
            if self._missed < 2:  # a folder just cleared: the loader takes its lock again
                return
            self._watching = False
            self._background = LoaderThread(self.loader)
        logger.error("The prediction log's loader process is gone: this process (pid %d) loads "
                     "%s in a thread until the service restarts", os.getpid(), self.journal_dir)
        self._count("loader_stand_ins", 1)
        self._background.ensure_started()

    def _count(self, name: str, amount: int) -> None:
        with self._counting:
            self.stats[name] += amount

    def counters(self) -> dict[str, int]:
        """This process's journal counters and the loader's last status (cheap: /health)."""
        with self._counting:
            counters = dict(self.stats)
        status = read_status(self.journal_dir)
        if status is not None:
            counters.update(loaded=status.loaded, rejected=status.rejected,
                            pending_bytes=status.pending_bytes,
                            database_unavailable=int(status.error is not None))
        return counters

    # Loading ----------------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Load what the journal holds now, waiting up to `timeout` for a loader at work; True
        if nothing is left waiting."""
        try:
            self.loader.load(wait=timeout)
        except OSError as err:  # the journal's folder cannot be read or created
            logger.error("Prediction journal %s cannot be loaded (%s)", self.journal_dir, err)
            return False
        return self.pending(count_records=False).bytes == 0

    def pending(self, *, count_records: bool = True) -> journal.Pending:
        """What the journal holds that the database does not have yet."""
        return journal.pending(self.journal_dir, count_records=count_records)

    def prepare(self) -> None:
        """Create the table now, before workers start (a database not available yet is no
        reason to refuse requests: the loader creates it later)."""
        self.loader.prepare()

    def start_loader_process(self) -> LoaderProcess:
        """The service's loader, forked beside it (see `background.start_loader_process`: it
        checks the URL, ConfigError; the table comes at `service_ready`), then watched from
        the request side (`_watch_loader_process`)."""
        process = start_loader_process(self._make_loader, self.journal_dir)
        if process.url is None:  # it ended before it could say: the URL is checked here
            logger.error("The prediction log's loader process ended as it started (its log "
                         "says why); this process stands in for it once it is found gone")
            process.url = self.loader.url
        self._shown_url = process.url
        self._watching, self._next_watch = True, time.monotonic() + WATCH_SECONDS
        return process

    def loader_running(self) -> bool:
        return loader_running(self.journal_dir)

    # Reading ----------------------------------------------------------------------------------

    def count(self) -> int:
        self.flush()
        import sqlalchemy

        from ml_project.prediction_log.table import PREDICTIONS

        with self._reading() as connection:
            total = connection.execute(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(PREDICTIONS)
            ).scalar_one()
        return int(total)

    def read(self, **window: Any) -> list[dict[str, Any]]:
        """Every record of the window (see `read_chunks`), in logging order."""
        return [row for chunk in self.read_chunks(**window) for row in chunk]

    def read_chunks(self, *, last: int | None = None, since: str | None = None,
                    until: str | None = None, model_sha256: str | None = None,
                    model_version: str | None = None, shadow: bool | None = None,
                    chunk: int = READ_CHUNK) -> Iterator[list[dict[str, Any]]]:
        """The records in logging order (`logged_at`), `chunk` at a time so that memory follows
        the window, not the log; input, prediction and probabilities decoded from JSON. Only
        the last `last`, those in [since, until), those of one model, when given; `shadow`:
        only the answers given (False) or only the challenger's answers in shadow (True)."""
        import sqlalchemy

        from ml_project.prediction_log.table import PREDICTIONS

        self.flush()
        newest_first = last is not None
        order = (PREDICTIONS.c.logged_at.desc(), PREDICTIONS.c.record_id.desc()) \
            if newest_first else (PREDICTIONS.c.logged_at, PREDICTIONS.c.record_id)
        query = sqlalchemy.select(PREDICTIONS).order_by(*order)
        if since:
            query = query.where(PREDICTIONS.c.logged_at >= since)
        if until:
            query = query.where(PREDICTIONS.c.logged_at < until)
        if model_sha256:
            query = query.where(PREDICTIONS.c.model_sha256 == model_sha256)
        if model_version:
            query = query.where(PREDICTIONS.c.model_version == model_version)
        if shadow is not None:
            query = query.where((PREDICTIONS.c.source == SHADOW_SOURCE) if shadow
                                else (PREDICTIONS.c.source != SHADOW_SOURCE))
        if last is not None:
            query = query.limit(last)
        chunks: list[list[dict[str, Any]]] = []
        with self._reading() as connection:
            result = connection.execution_options(yield_per=chunk).execute(query).mappings()
            for part in result.partitions():
                rows = [_decoded(dict(row)) for row in part]
                if newest_first:
                    chunks.append(rows[::-1])  # a window of the last N is at most N rows
                else:
                    yield rows
        yield from reversed(chunks)

    def _reading(self) -> sqlalchemy.Connection:
        from ml_project.prediction_log.table import make_engine, prepare_sqlite_file

        if self._reader_engine is None:
            self._reader_engine = make_engine(self._secret_url,
                                              lock_timeout_seconds=self._timeouts[0])
        prepare_sqlite_file(self._reader_engine)
        self.loader.prepare()
        return self._reader_engine.connect()

    # Life cycle -------------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Close this process's journal file and stop its background loader after a last pass
        (at exit too); report what still waits. A later append opens a new file."""
        if self._background is not None:
            self._background.stop(timeout)
        self.journal.close()
        atexit.unregister(self.close)
        waiting = self.pending(count_records=False)
        if waiting.bytes and self._background is not None:
            logger.warning("Prediction log: %d bytes of records wait in %s for the database; "
                           "the next loader stores them", waiting.bytes, self.journal_dir)
        if self._loader is not None:
            self._loader.dispose()
        if self._reader_engine is not None:
            self._reader_engine.dispose()


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("input", "prediction", "probabilities"):
        row[key] = None if row[key] is None else json.loads(row[key])
    return row
