"""The journal: each process's records durable in a file of its own before its answer.

Real files, real locks, real processes (killed with SIGKILL, forked, limited by the kernel's
file-size limit to cause a failed write).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT
from ml_project.prediction_log import journal
from ml_project.prediction_log.table import check_row


def lines(*names: str) -> bytes:
    return b"".join(journal.encode_line({"name": name}) for name in names)


def contents(directory: Path) -> list[str]:
    return [json.loads(line)["name"] for path in journal.journal_files(directory)
            for line in path.read_bytes().splitlines()]


def is_complete(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return journal.try_lock(fd)
    finally:
        os.close(fd)


def test_storable_escapes_only_what_no_store_can_hold() -> None:
    assert journal.storable("plain é ✓") == "plain é ✓"
    assert journal.storable("a\x00b") == "a\\x00b"
    assert journal.storable("\ud800x") == "\\ud800x"


def test_appended_lines_are_in_one_locked_file_of_this_process_until_it_closes(
    tmp_path: Path,
) -> None:
    log = journal.Journal(tmp_path)
    log.append(lines("a", "b"))
    log.append(lines("c"))
    [path] = journal.journal_files(tmp_path)
    assert str(os.getpid()) in path.name
    assert contents(tmp_path) == ["a", "b", "c"]
    assert not is_complete(path)  # its writer holds it
    log.close()
    assert is_complete(path)
    log.append(lines("d"))  # a later append opens a new file
    assert len(journal.journal_files(tmp_path)) == 2
    log.close()


def test_a_file_past_its_size_is_closed_and_the_next_lines_start_a_new_one(
    tmp_path: Path,
) -> None:
    log = journal.Journal(tmp_path, segment_bytes=40)
    for name in "abcde":  # 22 bytes a line: two lines a file
        log.append(lines(name * 10))
    files = journal.journal_files(tmp_path)
    assert len(files) == 3
    assert all(is_complete(path) for path in files[:-1]) and not is_complete(files[-1])
    assert contents(tmp_path) == [name * 10 for name in "abcde"]  # in order, by file name
    log.close()


def test_a_file_deleted_while_open_gets_the_lines_again_in_a_new_file(tmp_path: Path) -> None:
    """`clear_outputs.sh` while serving, or a hand: the lines written to the deleted file are
    written again where the loader looks (the loader stores each record once)."""
    log = journal.Journal(tmp_path / "journal")
    log.append(lines("before"))
    for path in journal.journal_files(tmp_path / "journal"):
        path.unlink()
    log.append(lines("after"))
    assert contents(tmp_path / "journal") == ["after"]
    (tmp_path / "journal").rename(tmp_path / "moved")  # the whole folder this time
    log.append(lines("later"))
    assert contents(tmp_path / "journal") == ["later"]
    log.close()


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from ml_project.prediction_log.journal import Journal, encode_line
journal = Journal(Path(sys.argv[1]))
for i in range(50):
    journal.append(encode_line({"name": str(i)}))
print("written", flush=True)
time.sleep(60)
"""


def test_lines_survive_a_killed_writer_whose_file_is_then_complete(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    assert writer.stdout is not None and writer.stdout.readline() == "written\n"
    [path] = journal.journal_files(tmp_path)
    assert not is_complete(path)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    assert is_complete(path)  # the kernel dropped the dead writer's lock
    assert contents(tmp_path) == [str(i) for i in range(50)]


def test_a_forked_child_writes_a_file_of_its_own_and_leaves_the_parents_locked(
    tmp_path: Path,
) -> None:
    log = journal.Journal(tmp_path)
    log.append(lines("parent"))
    [parent_file] = journal.journal_files(tmp_path)
    child = os.fork()
    if child == 0:  # never returns into pytest
        code = 1
        try:
            log.append(lines("child"))
            log.close()  # the child's file only: the parent's stays locked by the parent
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    files = journal.journal_files(tmp_path)
    assert len(files) == 2
    assert not is_complete(parent_file)
    assert sorted(contents(tmp_path)) == ["child", "parent"]
    log.close()


LIMITED_WRITER = """
import resource, signal, sys
from pathlib import Path
from ml_project.prediction_log.journal import Journal, encode_line
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 50 + 20, 4 * 50 + 20))  # lines of 50 bytes
journal = Journal(Path(sys.argv[1]))
outcomes = []
for i in range(8):
    try:
        journal.append(encode_line({"name": str(i), "pad": "x" * 30}))
        outcomes.append("ok")
    except OSError as err:
        outcomes.append(type(err).__name__)
print(" ".join(outcomes))
"""


def test_a_failed_write_raises_and_ends_the_file_so_no_line_is_merged_into_a_torn_one(
    tmp_path: Path,
) -> None:
    """A full disk, caused for real with the kernel's per-process file-size limit: the append
    that cannot write raises, and nothing is written after the torn line it may leave."""
    result = subprocess.run([sys.executable, "-c", LIMITED_WRITER, str(tmp_path)], text=True,
                            capture_output=True, cwd=PROJECT_ROOT, timeout=60, check=True)
    outcomes = result.stdout.split()
    assert outcomes[:4] == ["ok"] * 4 and "OSError" in outcomes
    for path in journal.journal_files(tmp_path):
        good = list(journal.parse_lines(path.open("rb"), lambda value: value))
        torn = [reason for row, reason, _ in good if row is None]
        assert all("torn line" in (reason or "") for reason in torn)  # only ever the last line
        assert all(row is not None for row, _, _ in good[:-1])
    written = [json.loads(line)["name"] for path in journal.journal_files(tmp_path)
               for line in path.read_bytes().splitlines() if line.endswith(b"}")]
    assert written[:4] == ["0", "1", "2", "3"]


def test_pending_counts_the_lines_past_each_files_loaded_mark(tmp_path: Path) -> None:
    log = journal.Journal(tmp_path)
    log.append(lines("a", "b", "c"))
    [path] = journal.journal_files(tmp_path)
    assert journal.pending(tmp_path) == journal.Pending(records=3, bytes=path.stat().st_size,
                                                        files=1)
    first = len(lines("a"))
    journal.mark_loaded(path, first)
    assert journal.loaded_offset(path) == first
    assert journal.pending(tmp_path).records == 2
    journal.mark_loaded(path, path.stat().st_size)
    assert journal.pending(tmp_path) == journal.Pending(0, 0, 0)
    log.close()
    journal.forget(path)
    assert not list(tmp_path.glob("journal-*"))


@pytest.mark.parametrize(("line", "reason"), [
    (b"\xff\xfe\n", "UnicodeDecodeError"),
    (b"not json\n", "JSONDecodeError"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"record_key": 7}\n', "field 'record_key' is int"),
    (b'{"record_key": "k"', "torn line"),
])
def test_a_line_that_is_not_a_record_is_reported_with_its_reason(line: bytes,
                                                                  reason: str) -> None:
    [(row, said, _)] = list(journal.parse_lines([line], check_row))
    assert row is None and said is not None and reason in said


def test_rejected_lines_are_moved_aside_with_their_file_and_reason(tmp_path: Path) -> None:
    journal.reject_lines(tmp_path, "journal-1.jsonl", [("torn line: x", b'{"a"')])
    [entry] = (tmp_path / journal.REJECTED_FILE).read_text().splitlines()
    assert json.loads(entry) == {"file": "journal-1.jsonl", "reason": "torn line: x",
                                 "line": '{"a"'}


def test_sweep_removes_marks_of_deleted_files_and_abandoned_openings_only(
    tmp_path: Path,
) -> None:
    log = journal.Journal(tmp_path)
    log.append(lines("a"))
    [path] = journal.journal_files(tmp_path)
    journal.mark_loaded(path, 1)
    orphan = tmp_path / f"journal-0-1-dead.jsonl{journal.LOADED_SUFFIX}"
    orphan.write_text("5")
    abandoned = tmp_path / f"{journal.OPENING}journal-0-2-dead.jsonl"
    abandoned.write_bytes(b"")
    os.utime(abandoned, (time.time() - 120, time.time() - 120))
    journal.sweep(tmp_path)
    assert not orphan.exists() and not abandoned.exists()
    assert journal.loaded_offset(path) == 1 and path.exists()
    log.close()
