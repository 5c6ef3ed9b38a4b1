"""The prediction log's journal: where a record is durable before its request is answered.

Each process appends the records of a request to a file of its own
(`journal-<time>-<pid>-<random>.jsonl`, one JSON line per record) in one write(2). Once the write
returns, the lines belong to the kernel: they survive the process, however it ends (SIGKILL
included), and no database is involved. Only a crash of the machine itself can lose the lines
the kernel had not yet written to disk. The loader (`loader.py`: a process of its own beside the
service, or a background thread) moves the lines into the database and deletes a file once it
is complete and stored.

A writer holds an exclusive lock (flock) on its file from creation to close, and the kernel
drops the lock when the process ends: a file whose lock is free is complete. A writer moves to a
new file past SEGMENT_BYTES, after a failed write (whose torn line then ends the file), and when
its file was deleted or moved while open (the lines are then written again, to the new file:
the loader stores each record once, by its key).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

FOLDER = "prediction_log_journal"  # under the output folder
SEGMENT_BYTES = 16 * 1024 * 1024
PATTERN = "journal-*.jsonl"
OPENING = ".opening-"  # a file being created: locked, then renamed to its journal name
LOADED_SUFFIX = ".loaded"  # beside a journal file: how many of its bytes are stored
REJECTED_FILE = "prediction_log.rejected"
TORN = "the file ends without a newline (a write was cut short)"

_journals: weakref.WeakSet[Journal] = weakref.WeakSet()
_fork_hook: list[None] = []  # one entry once the fork hook is registered


def storable(text: str) -> str:
    """Text any database and file can hold: a lone surrogate ("\\ud800", which no UTF-8
    encoder accepts) and NUL (which PostgreSQL's text refuses) are written as their escape
    sequences, the rest kept as is."""
    if "\x00" not in text and text.isascii():  # most text: two scans in C, no copy
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# json.dumps with any argument builds an encoder at each call (~1 us); one, made once, is what
# json.dumps itself keeps for its defaults (it holds settings only: threads may share it).
LINE_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_line(row: Mapping[str, Any]) -> bytes:
    return LINE_ENCODER.encode(row).encode("ascii") + b"\n"


@dataclass
class _File:
    fd: int
    path: Path
    identity: tuple[int, int]  # (device, inode): the file the path must still name
    size: int = 0

    def still_named(self) -> bool:
        return file_identity(self.path) == self.identity


def file_identity(path: Path) -> tuple[int, int] | None:
    """The file `path` names now, as (device, inode); None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class Journal:
    """This process's journal file in `directory`; one per process, shared by its threads."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._file: _File | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _journals.add(self)
        if not _fork_hook:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook.append(None)

    def append(self, lines: bytes) -> None:
        """Write whole lines; once this returns they survive the process. Raises OSError when
        they cannot be written (full disk, read-only folder), after which the file is left."""
        with self._lock:
            if self._pid != os.getpid():  # forked without the hook (a fork of a fork)
                self._forget()
            current = self._file or self._open()
            self._write(current, lines)
            if not current.still_named():  # deleted or moved: the loader would never see them
                logger.warning("Prediction journal file %s was deleted or moved while open; "
                               "writing to a new one", current.path.name)
                self._close()
                current = self._open()
                self._write(current, lines)
            if current.size >= self.segment_bytes:
                self._close()

    def close(self) -> None:
        """Close this process's file: complete, the loader may delete it once stored."""
        with self._lock:
            if self._pid == os.getpid():
                self._close()
            else:
                self._forget()

    def _open(self) -> _File:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"journal-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        opening = self.directory / f"{OPENING}{name}"
        fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = self.directory / name
            os.rename(opening, path)  # only a locked file ever has a journal name
        except OSError:
            os.close(fd)
            raise
        found = os.fstat(fd)
        self._file = _File(fd, path, (found.st_dev, found.st_ino))
        return self._file

    def _write(self, current: _File, lines: bytes) -> None:
        view = memoryview(lines)
        try:
            while view:
                written = os.write(current.fd, view)
                current.size += written
                view = view[written:]
        except OSError:
            self._close()  # a torn line may end the file now: nothing is written after it
            raise

    def _close(self) -> None:
        if self._file is not None:
            os.close(self._file.fd)  # releases the lock: the file is complete
            self._file = None

    def _forget(self) -> None:
        """In a forked child: the parent's file is the parent's. Closing the inherited
        descriptor leaves the parent's lock in place (it holds its own)."""
        if self._file is not None:
            os.close(self._file.fd)
            self._file = None
        self._lock = threading.Lock()
        self._pid = os.getpid()


def _after_fork_in_child() -> None:
    for journal in list(_journals):
        journal._forget()


# The loader's side ----------------------------------------------------------------------------

def journal_files(directory: Path) -> list[Path]:
    """The journal files in `directory`, oldest first (their names start with their time)."""
    return sorted(directory.glob(PATTERN))


def try_lock(fd: int) -> bool:
    """Take the file's lock if its writer has let go of it: True means the file is complete."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_held(path: Path) -> bool:
    """Whether some process holds the flock of `path` now (False if there is no such file)."""
    try:
        handle = path.open("rb")
    except OSError:
        return False
    with handle:
        if try_lock(handle.fileno()):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
    return True


def loaded_offset(path: Path) -> int:
    """How many bytes of the journal file `path` are stored (0 if none yet)."""
    try:
        return int(path.with_name(path.name + LOADED_SUFFIX).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def mark_loaded(path: Path, offset: int) -> None:
    """Record that the first `offset` bytes of `path` are stored (atomic: the old or new mark)."""
    mark = path.with_name(path.name + LOADED_SUFFIX)
    temporary = mark.with_name(f"{OPENING}{mark.name}")
    temporary.write_text(str(offset))
    os.replace(temporary, mark)


def forget(path: Path) -> None:
    """Delete a complete, stored journal file and its mark."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + LOADED_SUFFIX).unlink(missing_ok=True)


def sweep(directory: Path) -> None:
    """Remove what no writer or loader needs: marks of deleted files, and files a process left
    while creating them (unlocked, never named, so empty of records)."""
    for mark in directory.glob(f"journal-*{LOADED_SUFFIX}"):
        if not mark.with_name(mark.name.removesuffix(LOADED_SUFFIX)).exists():
            mark.unlink(missing_ok=True)
    for opening in directory.glob(f"{OPENING}*"):
        try:
            fd = os.open(opening, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if try_lock(fd) and time.time() - os.fstat(fd).st_mtime > 60:
                opening.unlink(missing_ok=True)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Pending:
    """What the journal holds that the database does not have yet."""

    records: int
    bytes: int
    files: int


def pending(directory: Path, *, count_records: bool = True) -> Pending:
    """The records (lines) and bytes past each file's loaded mark. Counting records reads
    those bytes; without it, only sizes are looked at (cheap enough for every /health)."""
    records = total = files = 0
    for path in journal_files(directory):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        offset = loaded_offset(path)
        if size <= offset:
            continue
        files += 1
        total += size - offset
        if count_records:
            records += _count_lines(path, offset)
    return Pending(records, total, files)


def _count_lines(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def parse_lines(
    lines: Iterable[bytes], check: Callable[[Any], dict[str, Any]]
) -> Iterator[tuple[dict[str, Any] | None, str | None, bytes]]:
    """(row, None, line) for each good line and (None, reason, line) for each bad one.

    `check` turns a decoded JSON value into a row or raises ValueError saying why it is not one.
    A last line without its newline (given only for a complete file) was torn by a failed write.
    """
    for line in lines:
        if not line.endswith(b"\n"):
            if line.strip():
                yield None, f"torn line: {TORN}", line
            continue
        line = line[:-1]
        if not line.strip():
            continue
        try:
            yield check(json.loads(line.decode("utf-8"))), None, line
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as err:
            yield None, f"{type(err).__name__}: {err}", line


def reject_lines(directory: Path, source: str, rejects: Sequence[tuple[str, bytes]]) -> None:
    """Move lines no database can take aside, with their reason (OSError if that fails)."""
    if not rejects:
        return
    data = b"".join(
        encode_line({"file": source, "reason": reason,
                     "line": line.decode("utf-8", "backslashreplace")})
        for reason, line in rejects
    )
    with (directory / REJECTED_FILE).open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(data)
    logger.error("Moved %d prediction log lines from %s to %s (first: %s)",
                 len(rejects), source, REJECTED_FILE, rejects[0][0])
