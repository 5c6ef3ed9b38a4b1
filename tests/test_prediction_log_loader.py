"""The loader: every journal line into the database exactly once, whatever the database does.

Real SQLite files and real faults: a second connection holding the write lock, the database
file deleted, its table dropped or changed by hand, a loader killed between its insert and its
mark, loader processes forked and their parent killed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from ml_project.config import PROJECT_ROOT, ConfigError
from ml_project.prediction_log import journal
from ml_project.prediction_log.loader import LEGACY_FOLDER, Loader
from ml_project.prediction_log.records import LogRecord
from ml_project.prediction_log.status import LOCK_FILE, STATUS_FILE, loader_running, read_status
from ml_project.prediction_log.table import parse_url, redacted
from tests.conftest import prediction_config, write_project


def record_line(name: str, index: int = 0) -> bytes:
    return journal.encode_line(LogRecord(request_id=name, source="test", input={"i": index},
                                         model_version="1", instance_id=name,
                                         instance_index=index).to_row())


def write_journal(directory: Path, *names: str) -> journal.Journal:
    log = journal.Journal(directory)
    for name in names:
        log.append(record_line(name))
    return log


def stored(database: Path) -> list[str]:
    """The ids stored, in order; none while the database or its table is yet to be made (a
    loader in another thread or process may be making them)."""
    if not database.exists():
        return []
    with closing(sqlite3.connect(database, timeout=10)) as connection:
        try:
            return [row[0] for row in connection.execute(
                "SELECT instance_id FROM prediction_records ORDER BY record_id")]
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "log.db", tmp_path / "journal"


def loader_of(paths: tuple[Path, Path], **options: float) -> Loader:
    database, directory = paths
    return Loader(f"sqlite:///{database}", directory, **options)  # type: ignore[arg-type]


def test_lines_are_stored_in_order_and_a_complete_file_is_deleted_once_stored(
    paths: tuple[Path, Path],
) -> None:
    database, directory = paths
    writer = write_journal(directory, "a", "b")
    loader = loader_of(paths)
    loader.load()
    assert stored(database) == ["a", "b"]
    assert len(journal.journal_files(directory)) == 1  # still open: its writer lives
    writer.append(record_line("c"))
    writer.close()
    status = loader.load()
    assert status is not None and status.loaded == 3 and status.error is None
    assert stored(database) == ["a", "b", "c"]
    assert journal.journal_files(directory) == []  # complete and stored: deleted
    assert read_status(directory) == status


def test_a_loader_killed_between_insert_and_mark_stores_nothing_twice(
    paths: tuple[Path, Path],
) -> None:
    """The insert committed, the mark never moved (as if the loader died in between): the next
    pass reads the same lines again and the database keeps one row each."""
    database, directory = paths
    writer = write_journal(directory, "a", "b", "c")
    loader_of(paths).load()
    for mark in directory.glob(f"*{journal.LOADED_SUFFIX}"):
        mark.unlink()
    writer.close()
    loader_of(paths).load()
    assert stored(database) == ["a", "b", "c"]


def test_a_line_being_written_is_left_until_it_is_whole(paths: tuple[Path, Path]) -> None:
    database, directory = paths
    writer = write_journal(directory, "a")
    [path] = journal.journal_files(directory)
    half = record_line("b")
    with path.open("ab") as handle:  # what a reader may see in the middle of a write
        handle.write(half[:20])
    loader_of(paths).load()
    assert stored(database) == ["a"]
    with path.open("ab") as handle:
        handle.write(half[20:])
    loader_of(paths).load()
    assert stored(database) == ["a", "b"]
    writer.close()


def test_bad_lines_and_a_torn_last_line_are_moved_aside_and_never_block_the_rest(
    paths: tuple[Path, Path],
) -> None:
    database, directory = paths
    directory.mkdir()
    (directory / "journal-00000000000000000001-1-dead.jsonl").write_bytes(b"".join([
        record_line("a"), b"\xff not utf-8\n", b"not json\n", b'{"record_key": 7}\n',
        record_line("b"), record_line("c")[:30],
    ]))
    status = loader_of(paths).load()
    assert stored(database) == ["a", "b"]
    assert status is not None and status.rejected == 4
    rejected = (directory / journal.REJECTED_FILE).read_text().splitlines()
    assert "UnicodeDecodeError" in rejected[0] and "torn line" in rejected[-1]
    assert journal.journal_files(directory) == []


def test_a_locked_database_holds_the_lines_for_the_lock_timeout_then_they_wait_and_land_once(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    database, directory = paths
    write_journal(directory, "a").close()
    loader = loader_of(paths, lock_timeout_seconds=0.3)
    loader.load()
    holder = sqlite3.connect(database, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        write_journal(directory, "b", "c").close()
        started = time.monotonic()
        status = loader.load()
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert status is not None and status.error is not None and "locked" in status.error
    assert waited < 3  # bounded by the lock timeout, never the lock's holder
    assert journal.pending(directory).records == 2
    assert "takes no records now" in caplog.text
    loader.load()
    assert stored(database) == ["a", "b", "c"]
    assert journal.pending(directory).records == 0


def test_a_database_file_deleted_while_serving_is_created_again_for_the_records_after_it(
    paths: tuple[Path, Path],
) -> None:
    """What `clear_outputs.sh` does to a running service: the records after it are stored in
    a new file, never into the deleted one (its leftover write-ahead files are removed first)."""
    database, directory = paths
    writer = write_journal(directory, "a")
    loader = loader_of(paths)
    loader.load()
    reader = sqlite3.connect(database)  # keeps the WAL files in place, as monitoring would
    reader.execute("SELECT count(*) FROM prediction_records").fetchall()
    database.unlink()
    writer.append(record_line("b"))
    loader.load()
    reader.close()
    assert stored(database) == ["b"]
    writer.close()


def test_a_database_file_deleted_during_a_transaction_does_not_take_its_records(
    paths: tuple[Path, Path],
) -> None:
    """The loader keeps its SQLite connection between passes; a file deleted between the
    insert and its commit (the connection would commit into the deleted file) keeps the lines
    waiting, and the next pass stores them in the new file."""
    database, directory = paths
    loader = loader_of(paths)
    loader.prepare()
    writer = write_journal(directory, "a")

    def delete_after_the_insert(connection: Any, cursor: Any, statement: str,
                                *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT") and database.exists():
            database.unlink()

    sqlalchemy.event.listen(loader.engine, "after_cursor_execute", delete_after_the_insert)
    loader.load()
    sqlalchemy.event.remove(loader.engine, "after_cursor_execute", delete_after_the_insert)
    assert loader.status.error is not None and journal.pending(directory).records == 1

    loader.load()
    assert stored(database) == ["a"] and loader.status.error is None
    writer.close()
    loader.dispose()


def test_a_pass_stores_what_the_file_held_when_it_began_not_what_comes_during_it(
    paths: tuple[Path, Path],
) -> None:
    """A writer that keeps appending while the pass stores cannot hold a pass in many small
    transactions: what it adds waits for the next pass."""
    database, directory = paths
    writer = write_journal(directory, "a", "b", "c")
    loader = loader_of(paths, batch_size=1)
    store = loader._store
    added = iter(range(100))

    def store_while_the_writer_appends(rows: Any) -> Any:
        writer.append(record_line(f"during-{next(added)}"))
        return store(rows)

    loader._store = store_while_the_writer_appends  # type: ignore[method-assign]
    loader.load()
    assert stored(database) == ["a", "b", "c"]
    assert journal.pending(directory).records == 3  # one line added per batch stored
    loader._store = store  # type: ignore[method-assign]
    loader.load()
    assert stored(database) == ["a", "b", "c", "during-0", "during-1", "during-2"]
    writer.close()
    loader.dispose()


def test_a_forked_process_connects_anew_and_leaves_the_parents_connection_working(
    paths: tuple[Path, Path],
) -> None:
    """SQLAlchemy's recipe for pools and os.fork: a pooled SQLite connection inherited by a
    child is neither used nor closed there."""
    database, directory = paths
    writer = write_journal(directory, "a")
    loader = loader_of(paths)
    connected_in: list[int] = []
    sqlalchemy.event.listen(loader.engine, "connect",
                            lambda *args: connected_in.append(os.getpid()))
    loader.load()
    writer.close()
    child = os.fork()
    if child == 0:  # pragma: no cover  (the child)
        code = 1
        try:
            write_journal(directory, "b").close()
            loader.load()
            code = 0 if stored(database) == ["a", "b"] and os.getpid() in connected_in else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    write_journal(directory, "c").close()
    loader.load()
    assert stored(database) == ["a", "b", "c"]
    loader.dispose()


def test_a_dropped_table_is_created_again(paths: tuple[Path, Path]) -> None:
    database, directory = paths
    writer = write_journal(directory, "a")
    loader = loader_of(paths)
    loader.load()
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TABLE prediction_records")
    writer.append(record_line("b"))
    loader.load()
    assert stored(database) == ["b"]
    writer.close()


def test_a_table_without_a_column_keeps_the_records_waiting_until_it_is_repaired(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    database, directory = paths
    writer = write_journal(directory, "a")
    loader = loader_of(paths)
    loader.load()
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE prediction_records RENAME COLUMN latency_ms TO latency")
    writer.append(record_line("b"))
    status = loader.load()
    assert status is not None and status.error is not None
    assert "lacks the columns ['latency_ms']" in status.error
    assert "lacks the columns ['latency_ms']" in caplog.text
    assert journal.pending(directory).records == 1
    assert not (directory / journal.REJECTED_FILE).exists()  # waiting, not rejected
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE prediction_records RENAME COLUMN latency TO latency_ms")
    loader.load()
    assert stored(database) == ["a", "b"]
    writer.close()


def test_a_row_the_database_refuses_alone_is_moved_aside_and_the_others_are_stored(
    paths: tuple[Path, Path],
) -> None:
    """A rule added by hand refuses one record: it goes to the rejected file with the
    database's reason; a database that refuses every record keeps them all waiting."""
    database, directory = paths
    loader = loader_of(paths)
    loader.prepare()
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TRIGGER refuse BEFORE INSERT ON prediction_records "
                           "WHEN NEW.instance_id = 'poison' "
                           "BEGIN SELECT RAISE(ABORT, 'poison refused'); END")
    write_journal(directory, "a", "poison", "b").close()
    loader.load()
    assert stored(database) == ["a", "b"]
    [entry] = (directory / journal.REJECTED_FILE).read_text().splitlines()
    assert "poison refused" in json.loads(entry)["reason"]

    write_journal(directory, "poison").close()  # alone: the database takes none of it
    status = loader.load()
    assert status is not None and status.error is not None
    assert journal.pending(directory).records == 1


def test_spill_files_of_the_earlier_log_are_loaded_once(paths: tuple[Path, Path]) -> None:
    database, directory = paths
    legacy = directory.parent / LEGACY_FOLDER
    legacy.mkdir()
    (legacy / "spill-123-abcd.jsonl").write_bytes(record_line("old") + record_line("older"))
    loader_of(paths).load()
    assert stored(database) == ["old", "older"]
    assert not list(legacy.glob("*.jsonl"))


def test_one_loader_at_a_time_and_a_reader_waits_for_it(paths: tuple[Path, Path]) -> None:
    _, directory = paths
    directory.mkdir()
    with (directory / LOCK_FILE).open("ab") as held:
        assert journal.try_lock(held.fileno())
        assert loader_running(directory)
        assert loader_of(paths).load(wait=0.2) is None
    assert not loader_running(directory)
    assert loader_of(paths).load(wait=0.2) is not None


def test_a_url_that_is_no_database_url_is_a_config_error_that_shows_no_secret() -> None:
    with pytest.raises(ConfigError) as error:
        parse_url("nosuchdb://user:hunter2@host/db?password=s3cret")
    assert "hunter2" not in str(error.value) and "s3cret" not in str(error.value)
    with pytest.raises(ConfigError) as error:
        parse_url("postgresql://user:hunter2@host:notaport/db")
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize("url", [
    "postgresql://user:hunter2@host/db",
    "postgresql://user@host/db?password=hunter2",
    "postgresql://user@host/db?sslmode=require&sslpassword=hunter2",
    "postgresql+psycopg://user:hunter2@host/db?password=hunter2&application_name=x",
])
def test_no_password_of_any_url_form_is_ever_shown(url: str) -> None:
    shown = redacted(url)
    assert "hunter2" not in shown and "***" in shown
    assert "user" in shown and "host" in shown


def test_the_loader_command_loads_what_waits_and_says_what_is_left(tmp_path: Path) -> None:
    config_file = write_project(tmp_path, n_historic=50, n_production=10)
    config = prediction_config(tmp_path)
    write_journal(config.output_dir / journal.FOLDER, "a", "b").close()
    command = [sys.executable, "-m", "ml_project.prediction_log.loader", "--config",
               str(config_file), "--root", str(tmp_path)]
    environment = {key: value for key, value in os.environ.items()
                   if key != "ML_PROJECT_PREDICTION_LOG_URL"}
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, env=environment)
    assert result.returncode == 0, result.stderr
    assert "Loaded 2 records; 0 rejected; 0 still waiting" in result.stderr
    database = Path(config.prediction_log_url.removeprefix("sqlite:///"))
    assert stored(database) == ["a", "b"]


def test_an_idle_loader_writes_no_status_and_a_deleted_status_is_written_again(
    paths: tuple[Path, Path],
) -> None:
    """The status is written when it changes, not at every pass (a folder being cleared by
    `clear_outputs.sh` is not refilled under `rm -rf`), and again if its file is gone."""
    database, directory = paths
    write_journal(directory, "a").close()
    loader = loader_of(paths)
    loader.load()
    status_file = directory / STATUS_FILE
    written = status_file.stat().st_mtime_ns, status_file.read_text()
    for _ in range(3):
        time.sleep(0.02)
        loader.load()
    assert (status_file.stat().st_mtime_ns, status_file.read_text()) == written
    status_file.unlink()
    loader.load()
    again = read_status(directory)
    assert again is not None and again.loaded == 1
    write_journal(directory, "b").close()
    loader.load()
    after = read_status(directory)
    assert after is not None and after.loaded == 2 and stored(database) == ["a", "b"]
    loader.dispose()
