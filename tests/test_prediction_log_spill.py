"""The prediction log's spill files: one per process, claimed by renaming (one claimer wins),
read line by line, and a line that is not a whole record moved aside with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_project.prediction_log.spill import (
    REJECTED_FILE,
    SpillFile,
    claim,
    encode_line,
    open_claimed,
    parse_lines,
    reject_lines,
    spill_files,
    storable,
)
from ml_project.prediction_log.table import check_row


def test_storable_escapes_only_what_no_store_can_hold() -> None:
    assert storable("plain é") == "plain é"
    assert storable("a\ud800b") == "a\\ud800b"
    assert storable("a\x00b") == "a\\x00b"


def test_a_spill_file_is_appended_line_by_line_and_claimed_once(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill")
    spill.append([{"a": 1}, {"a": 2}])
    spill.append([{"a": 3}])
    [waiting] = spill_files(tmp_path / "spill")

    claimed = claim(waiting)
    assert claimed is not None and claim(waiting) is None  # the second claimer loses
    with open_claimed(claimed) as handle:
        assert [json.loads(line) for line in handle] == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_a_writer_never_appends_to_a_file_claimed_by_a_replay(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path)
    spill.append([{"a": 1}])
    claimed = claim(spill.path)
    assert claimed is not None
    spill.append([{"a": 2}])
    assert claimed.read_bytes() == encode_line({"a": 1})
    assert [path.read_bytes() for path in spill_files(tmp_path)
            if path != claimed] == [encode_line({"a": 2})]


@pytest.mark.parametrize(("line", "reason"), [
    (b"\xff\xfe not utf-8\n", "UnicodeDecodeError"),
    (b"not json\n", "JSONDecodeError"),
    (b"[1, 2]\n", "not a JSON object but list"),
    (b'{"record_key": 7}\n', "field 'record_key' is int"),
    (b'{"record_key": "k"', "torn line"),
])
def test_a_line_that_is_not_a_record_is_reported_with_its_reason(line: bytes,
                                                                 reason: str) -> None:
    [(row, why, _)] = list(parse_lines([line], check_row))
    assert row is None and why is not None and reason in why


def test_rejected_lines_are_moved_aside_with_their_file_and_reason(tmp_path: Path) -> None:
    reject_lines(tmp_path, tmp_path / "claimed-1.jsonl", [("torn line", b"{\"a\"")])
    [entry] = (tmp_path / REJECTED_FILE).read_text().splitlines()
    assert json.loads(entry) == {"file": "claimed-1.jsonl", "reason": "torn line",
                                 "line": '{"a"'}
