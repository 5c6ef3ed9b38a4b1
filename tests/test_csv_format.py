"""The one CSV format: `check_csv`'s verdict on every case of tests/csv_cases.py, on a file
and on the same bytes held in memory; the text checks across block boundaries; and `CsvText`'s
verdicts, which the Spark use case gathers otherwise."""

from __future__ import annotations

import codecs
from pathlib import Path

import pandas as pd
import pytest

from ml_project import csv_format
from ml_project.config import Config, load_config
from ml_project.csv_format import (
    CsvFormatError,
    CsvText,
    check_csv,
    csv_columns,
    read_csv_records,
    wrong_width,
)
from tests.csv_cases import CsvCase, csv_cases


@pytest.fixture
def production(project: Path) -> Config:
    return load_config("prediction", "production", "local",
                       config_file=project / "project_config.yaml", root=project)


def _cases(project: Path, config: Config) -> list[CsvCase]:
    return csv_cases(project / "data" / "production_data.csv", config, rows=8)


def test_every_case_gets_its_verdict_from_a_file_and_from_bytes(
    project: Path, production: Config, tmp_path: Path
) -> None:
    header = (project / "data" / "production_data.csv").read_text().splitlines()[0].split(",")
    for case in _cases(project, production):
        path = case.write(tmp_path)
        if case.error is None:
            expected = [*header, "colour"] if case.name == "unknown_header_column" else header
            assert check_csv(path) == check_csv(case.text) == expected, case.name
            read = pd.read_csv(path, dtype=str, keep_default_na=False)
            assert len(read) == case.rows, case.name  # pandas, once the format holds, agrees
            continue
        with pytest.raises(CsvFormatError) as from_file:
            check_csv(path)
        with pytest.raises(CsvFormatError) as from_bytes:
            check_csv(case.text)
        assert str(from_file.value) == str(from_bytes.value), case.name
        assert str(from_file.value).startswith(case.error), (case.name, str(from_file.value))
        assert "\n" not in str(from_file.value), case.name  # one line


def test_a_row_of_the_wrong_width_is_quoted_from_its_start(tmp_path: Path) -> None:
    long = "C1," + "x" * 100 + ",3,4"
    with pytest.raises(CsvFormatError, match=r"^a row has 4 fields where the header has 3: "
                                             r"'C1,x{57}\.\.\.'$"):
        check_csv(f"a,b,c\n1,2,3\n{long}\n5,6,7\n".encode())
    assert str(wrong_width('C2,"x\ny",3\r\n', 2)) == (
        "a row has 3 fields where the header has 2: 'C2,\"x\\ny\",3'")


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7])
def test_the_text_is_judged_the_same_across_block_boundaries(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Quotes and their neighbours, a byte-order mark, and lines that straddle blocks."""
    monkeypatch.setattr(csv_format, "BLOCK_BYTES", block)
    good = codecs.BOM_UTF8 + b'\r\n"id","n"\r\n"a,""b""",1\r\n"x\ny",2\r\n'
    assert check_csv(good) == ["id", "n"]
    misquoted = b'id,n\nfine,1\nab"c",2\n'
    with pytest.raises(CsvFormatError, match="out of place .* in the line 'ab\"c\",2'"):
        check_csv(misquoted)
    with pytest.raises(CsvFormatError, match="never closed"):
        check_csv(b'id,n\n"a,1\n')
    with pytest.raises(CsvFormatError, match="not UTF-8"):
        check_csv("id,n\nré,1\n".encode()[:-4])  # a character cut in two at the end


def test_quotes_at_a_line_s_ends_and_beside_quotes_or_commas_are_in_place() -> None:
    assert check_csv(b'"a","b"\n"",""""\n"x\n""y""\n",2\n') == ["a", "b"]


def test_unnamed_columns_are_named_as_pandas_names_them(tmp_path: Path) -> None:
    path = tmp_path / "unnamed.csv"
    path.write_text("a,,b,\n1,2,3,4\n")
    assert check_csv(path) == list(pd.read_csv(path).columns) == ["a", "Unnamed: 1", "b",
                                                                   "Unnamed: 3"]


def test_a_line_break_in_a_column_name_is_refused() -> None:
    with pytest.raises(CsvFormatError, match="holds a line break"):
        check_csv(b'a,"b\nc"\n1,2\n')


def test_a_row_longer_than_the_parser_reads_is_refused_saying_so(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_format, "ROW_BYTES", 1 << 20)
    with pytest.raises(CsvFormatError, match="a row is read whole, at most 1 MB"):
        check_csv(b"a,b\n1," + b"x" * (3 << 20) + b"\n")


@pytest.mark.parametrize(("text", "message"), [
    (CsvText(utf8=False, quotes=1, header=None, misquoted="x"), "the CSV is not UTF-8 text"),
    (CsvText(utf8=True, quotes=1, header=None, misquoted="x"), "the CSV is empty"),
    (CsvText(utf8=True, quotes=1, header="a", misquoted="x"), "never closed"),
    (CsvText(utf8=True, quotes=2, header="a", misquoted='x"y'), "in the line 'x\"y'"),
    (CsvText(utf8=True, quotes=2, header="a,b,a,b,c", misquoted=None),
     "the header names 'a', 'b' more than once"),
])
def test_the_first_rule_broken_is_the_one_named(text: CsvText, message: str) -> None:
    """In one order on every path: the Spark use case gathers `CsvText` otherwise."""
    with pytest.raises(CsvFormatError, match=message):
        csv_columns(text)


def test_read_csv_records_reads_a_body_as_a_file_is_read() -> None:
    body = b'id,note,n\r\n1,"two\nlines, and ""quotes""",NA\r\n\r\n2,,  \r\n'

    assert read_csv_records(body) == [
        {"id": "1", "note": 'two\nlines, and "quotes"', "n": None},
        {"id": "2", "note": None, "n": "  "},
    ]
    assert read_csv_records(b"id,n\n") == []
    with pytest.raises(CsvFormatError, match="the header names 'n' more than once"):
        read_csv_records(b"id,n,n\n1,2,3\n")
