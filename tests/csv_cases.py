"""One table of CSV cases, well-formed and malformed, for every path that reads CSV (the local
batch, Spark, SageMaker's text/csv): each case's text is built from rows of a project's own
file, with the verdict every path must give (`ml_project.csv_format`'s rule).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path

from ml_project.config import Config

CASE_NAMES = (
    "too_many_fields", "too_few_fields", "every_row_one_field_more", "whitespace_line",
    "line_break_in_quoted_id", "line_break_in_quoted_category", "line_break_in_quoted_number",
    "unclosed_quote", "unclosed_quote_in_the_last_value", "text_after_a_closing_quote",
    "quotes_inside_a_value_without_quotes", "duplicate_header_column", "unknown_header_column",
    "header_only", "empty", "byte_order_mark", "crlf_line_ends", "cr_line_ends", "blank_lines",
    "not_utf8",
)


@dataclass(frozen=True)
class CsvCase:
    name: str
    text: bytes
    error: str | None  # the start of the one-line refusal every path gives; None: read
    rows: int = 0  # rows read (predicted + quarantined), when read
    quarantined: int = 0  # of which quarantined, naming `column`
    column: str | None = None

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.csv"
        path.write_bytes(self.text)
        return path


def csv_cases(source: Path, config: Config, rows: int) -> list[CsvCase]:
    """The cases, from the header and the first `rows` rows (>= 3, all valid) of `source`, a
    CSV file of the project's columns as pandas writes it (no quotes, no missing region...)."""
    lines = source.read_text().splitlines()
    header, body = lines[0], lines[1:rows + 1]
    names = header.split(",")
    width = len(names)
    category, number = next(iter(config.columns.categorical)), next(iter(config.columns.numerical))

    def changed(row: int, column: str, value: str) -> list[str]:
        cells = body[row].split(",")
        cells[names.index(column)] = value
        return [*body[:row], ",".join(cells), *body[row + 1:]]

    def text(*parts: str, end: str = "\n") -> bytes:
        return (end.join(parts) + end).encode()

    allowed = config.columns.categorical[category].categories
    good = str(allowed[0])
    first_id = body[1].split(",")[names.index(config.columns.id)]
    width_error = "a row has {} field{} where the header has " + str(width) + ": "
    cases = [
        CsvCase("too_many_fields", text(header, *body[:1], body[1] + ",extra", *body[2:]),
                width_error.format(width + 1, "s")),
        CsvCase("too_few_fields", text(header, *body[:1], body[1].rsplit(",", 1)[0], *body[2:]),
                width_error.format(width - 1, "s")),
        CsvCase("every_row_one_field_more", text(header, *[line + ",x" for line in body]),
                width_error.format(width + 1, "s")),
        CsvCase("whitespace_line", text(header, body[0], "   ", *body[1:]),
                width_error.format(1, "")),
        CsvCase("line_break_in_quoted_id",
                text(header, *changed(1, config.columns.id, f'"{first_id}\nX"')), None, rows),
        CsvCase("line_break_in_quoted_category",
                text(header, *changed(1, category, f'"{good[:3]}\n{good[3:]}"')), None, rows,
                quarantined=1, column=category),
        CsvCase("line_break_in_quoted_number", text(header, *changed(1, number, '"3\n1"')),
                None, rows, quarantined=1, column=number),
        CsvCase("unclosed_quote", text(header, body[0], '"' + body[1], *body[2:]),
                "a quoted value is never closed"),
        CsvCase("unclosed_quote_in_the_last_value",
                text(header, *body[:-1], body[-1].rsplit(",", 1)[0] + ',"'
                     + body[-1].rsplit(",", 1)[1]), "a quoted value is never closed"),
        CsvCase("text_after_a_closing_quote",
                text(header, *changed(1, category, f'"{good[:2]}"{good[2:]}')),
                "a double quote out of place"),
        CsvCase("quotes_inside_a_value_without_quotes",
                text(header, *changed(1, category, f'{good[:2]}"{good[2:]}"')),
                "a double quote out of place"),
        CsvCase("duplicate_header_column",
                text(f"{header},{number}", *[line + ",99" for line in body]),
                f"the header names {number!r} more than once"),
        CsvCase("unknown_header_column", text(f"{header},colour", *[f"{line},red" for line in body]),
                None, rows),
        CsvCase("header_only", text(header), None, 0),
        CsvCase("empty", b"", "the CSV is empty"),
        CsvCase("byte_order_mark", codecs.BOM_UTF8 + text(header, *body), None, rows),
        CsvCase("crlf_line_ends", text(header, *body, end="\r\n"), None, rows),
        CsvCase("cr_line_ends", text(header, *body, end="\r"), None, rows),
        CsvCase("blank_lines", text("", header, body[0], "", *body[1:], ""), None, rows),
        CsvCase("not_utf8", re.sub(rb"\n", b"\xff\n", text(header, *body), count=2),
                "the CSV is not UTF-8 text"),
    ]
    assert tuple(case.name for case in cases) == CASE_NAMES
    return cases
