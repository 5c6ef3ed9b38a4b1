"""The prediction log's spill files: where records wait while the log's database is unavailable.

Each process appends to a file of its own (`spill-<pid>-<random>.jsonl`), so no two writers
share a file. Any process may replay any spill file, its own or one a dead process left: it
claims the file by renaming it (atomic: exactly one claimer wins), then takes the file's lock,
which waits for a write in progress to end. A writer takes the same lock and checks, under it,
that its path still names the file it opened, so it never writes into a claimed file.

A line that is not a whole JSON record (torn by a kill, undecodable, hand-edited) is moved to
`prediction_log.rejected` with its reason, and never blocks the lines after it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

REJECTED_FILE = "prediction_log.rejected"
SPILL_PATTERNS = ("spill-*.jsonl", "claimed-*.jsonl")
TORN = "the file ends without a newline (a write was cut short)"


def storable(text: str) -> str:
    """Text any database and file can hold: a lone surrogate ("\\ud800", which no UTF-8
    encoder accepts) and NUL (which PostgreSQL's text refuses) are written as their escape
    sequences, the rest kept as is."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def encode_line(row: Mapping[str, Any]) -> bytes:
    return json.dumps(row, separators=(",", ":")).encode("ascii") + b"\n"


def _locked_append(path: Path, data: bytes) -> bool:
    """Append `data` under the file's lock; False if `path` was claimed (renamed) meanwhile."""
    with path.open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.fstat(handle.fileno()).st_ino != os.stat(path).st_ino:
                return False
        except FileNotFoundError:
            return False
        handle.write(data)
        handle.flush()
        return True


class SpillFile:
    """This process's spill file in `directory`; a new name after each fork or claim."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = self._new_path()

    def _new_path(self) -> Path:
        return self.directory / f"spill-{os.getpid()}-{secrets.token_hex(4)}.jsonl"

    def renew(self) -> None:
        """A fresh name: call in a forked child so it never appends to its parent's file."""
        self.path = self._new_path()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Raises OSError when the file cannot be written (full disk, read-only folder)."""
        data = b"".join(encode_line(row) for row in rows)
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if _locked_append(self.path, data):
                return
            self.path = self._new_path()  # claimed by a replay meanwhile: start a new file
        raise OSError(f"could not append to a spill file in {self.directory}")


def spill_files(directory: Path) -> list[Path]:
    """Spill files waiting in `directory` (any process's), oldest first."""
    found = [path for pattern in SPILL_PATTERNS for path in directory.glob(pattern)]
    return sorted(found, key=lambda path: (_mtime(path), path.name))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def claim(path: Path) -> Path | None:
    """Rename a spill file to a name of this process's; None if another process claimed it."""
    claimed = path.with_name(f"claimed-{os.getpid()}-{secrets.token_hex(4)}.jsonl")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    return claimed


@contextmanager
def open_claimed(path: Path) -> Iterator[BinaryIO]:
    """The claimed file, to read line by line once no writer is inside it."""
    with path.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle


def parse_lines(
    lines: Iterable[bytes], check: Callable[[Any], dict[str, Any]]
) -> Iterator[tuple[dict[str, Any] | None, str | None, bytes]]:
    """(row, None, line) for each good line and (None, reason, line) for each bad one, read
    as they come (a spill file can be larger than memory).

    `check` turns a decoded JSON value into a row or raises ValueError saying why it is not one.
    A last line without its newline was torn by a kill in the middle of a write.
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


def reject_lines(directory: Path, source: Path, rejects: Sequence[tuple[str, bytes]]) -> None:
    """Move bad lines aside with their reason (raises OSError if the file cannot be written)."""
    if not rejects:
        return
    data = b"".join(
        encode_line({"file": source.name, "reason": reason,
                     "line": line.decode("utf-8", "backslashreplace")})
        for reason, line in rejects
    )
    with (directory / REJECTED_FILE).open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(data)
    logger.error("Moved %d unreadable prediction log lines from %s to %s (first: %s)",
                 len(rejects), source.name, REJECTED_FILE, rejects[0][0])
