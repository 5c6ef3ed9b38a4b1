"""The one CSV format every path reads, and its verdict on a CSV that is not in it.

The local batch and modelling runs (`ingest.py`), the Spark use case and SageMaker's `text/csv`
route all read CSV as RFC 4180, and refuse the whole input, with one line saying why, when it
is not:

- UTF-8 text (a leading byte-order mark is skipped); lines end in LF, CRLF or CR; empty lines
  are skipped;
- the first line names the columns, each once, none holding a line break (an empty name is an
  unnamed column, `Unnamed: <position>` as pandas names it: an unknown column);
- a value may be put in double quotes (and must be if it holds a comma, a quote or a line
  break), a quote inside it written twice. A quote never closed (an odd number of quotes), or
  a quote out of place, with neither a comma nor a quote on either side (a line's start and
  end count as such a side: `ab"c`, `"ab"c`), refuses the input;
- every row has as many fields as the header.

Parsers differ exactly where the text breaks these rules (pandas reads `"a"b` as `ab`, Spark's
parser as `"a"b`), so the rules are checked before a parser reads anything: `CsvText` is what
they ask of the text, gathered here in one streaming pass (`check_csv`) and by the Spark use
case over each file's lines; `csv_columns` gives the verdict and the message, the same on every
path. Row widths are checked by pyarrow's CSV parser here and by Spark's own (its malformed
records) there, each row reported by `wrong_width`.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv

from ml_project.config import MISSING_TEXTS

# A quote out of place, as a regular expression over one line (Spark's `rlike`): the same test
# `_misquoted` makes with numpy here.
MISQUOTED_PATTERN = '[^",]"[^",]'

NOT_UTF8 = "the CSV is not UTF-8 text"
# Missing cells are empty or one of the texts every path reads as missing, and no other.
CSV_MISSING: dict[str, Any] = {"keep_default_na": False, "na_values": sorted(MISSING_TEXTS)}
EMPTY = "the CSV is empty: its first line must name the columns"
UNCLOSED = "a quoted value is never closed (the CSV holds an odd number of double quotes)"
BROKEN_HEADER = "a column name in the header holds a line break"

BLOCK_BYTES = 1 << 20
LOOK_BACK = 1 << 16  # how far back a line's start is looked for
ROW_BYTES = 1 << 23  # pyarrow's block: the longest row it reads
EXCERPT_CHARS = 60
_SIDE = np.zeros(256, dtype=bool)  # by byte: what may stand beside a quote
_SIDE[list(b'",\r\n')] = True


class CsvFormatError(ValueError):
    """A CSV that is not in the format every path reads: refused as a whole."""


@dataclass(frozen=True)
class CsvText:
    """What the format asks of a CSV's text, gathered in one pass over it."""

    utf8: bool
    quotes: int  # double quotes in the text
    header: str | None  # the first line that is not empty, without a byte-order mark
    misquoted: str | None  # the first line with a quote out of place


def csv_columns(text: CsvText) -> list[str]:
    """The column names of a CSV whose text is as `text` says; CsvFormatError if the text
    breaks the format (the first rule broken, in the module docstring's order)."""
    if not text.utf8:
        raise CsvFormatError(NOT_UTF8)
    if text.header is None:
        raise CsvFormatError(EMPTY)
    if text.quotes % 2:
        raise CsvFormatError(UNCLOSED)
    if text.misquoted is not None:
        raise CsvFormatError(
            "a double quote out of place (inside a value without quotes, or after the closing "
            f"quote) in the line {excerpt(text.misquoted)}: put such a value in quotes and "
            "write each quote in it twice")
    if text.header.count('"') % 2:  # the header's quotes close on a later line
        raise CsvFormatError(BROKEN_HEADER)
    names = fields(text.header)
    repeated = sorted(name for name, count in Counter(filter(None, names)).items() if count > 1)
    if repeated:
        raise CsvFormatError(f"the header names {', '.join(map(repr, repeated))} more than "
                             "once: name each column once")
    return [name or f"Unnamed: {position}" for position, name in enumerate(names)]


def wrong_width(record: str, expected: int) -> CsvFormatError:
    """The error for a row (its text as read) whose width is not the header's."""
    width = len(fields(record))
    return CsvFormatError(f"a row has {width} field{'s' * (width != 1)} where the header has "
                          f"{expected}: {excerpt(record)}")


def fields(record: str) -> list[str]:
    """The fields of one record's text (a line, or lines joined by quoted line breaks)."""
    return next(csv.reader(io.StringIO(record, newline="")), [])


def excerpt(line: str) -> str:
    """The start of a line, quoted, enough to find it in the file."""
    text = line.rstrip("\r\n")
    return repr(text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "...")


def check_csv(source: Path | bytes) -> list[str]:
    """The column names of a CSV file (or body) in the format; CsvFormatError if it is not.
    Two streaming passes, neither holding the file: its text, then its rows' widths."""
    names = csv_columns(_csv_text(source))
    _check_widths(source, len(names))
    return names


def read_csv_records(data: bytes) -> list[dict[str, str | None]]:
    """A CSV held in memory (a request's body) as records of its cells as text, None for
    missing: read as a file is, once in the format (`check_csv`), by the same parser."""
    check_csv(data)
    frame = pd.read_csv(io.BytesIO(data), dtype=str, **CSV_MISSING)
    cells = frame.astype(object).where(frame.notna(), None)
    return [{str(key): value for key, value in record.items()}
            for record in cells.to_dict("records")]


def _opened(source: Path | bytes) -> IO[bytes]:
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _blocks(source: Path | bytes, start: int = 0) -> Iterator[bytes]:
    with _opened(source) as stream:
        stream.seek(start)
        yield from iter(lambda: stream.read(BLOCK_BYTES), b"")


def _csv_text(source: Path | bytes) -> CsvText:
    """`CsvText` of a file, read block by block: its bytes counted and compared in C (numpy,
    Python's UTF-8 decoder), never a row at a time in Python."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with _opened(source) as stream:  # a byte-order mark is skipped, not judged
        offset = len(codecs.BOM_UTF8) if stream.read(3) == codecs.BOM_UTF8 else 0
    quotes = 0
    content: int | None = None  # where the first line that is not empty starts
    misquoted: int | None = None  # where the first quote out of place is
    tail = b"\n\n"  # the last two bytes before the block: the file starts a line
    for block in itertools.chain(_blocks(source, offset), [b""]):  # b"": the end, judged too
        try:
            decoder.decode(block, final=not block)
        except UnicodeDecodeError:
            return CsvText(utf8=False, quotes=0, header=None, misquoted=None)
        if content is None and block.strip(b"\r\n"):
            content = offset + len(block) - len(block.lstrip(b"\r\n"))
        quotes += block.count(b'"')
        data = tail + (block or b"\n")  # after the last block: the file ends a line
        if misquoted is None and b'"' in data:
            found = _misquoted(data)
            misquoted = None if found is None else offset - len(tail) + found
        tail, offset = data[-2:], offset + len(block)
    return CsvText(utf8=True, quotes=quotes,
                   header=None if content is None else _line_at(source, content, None),
                   misquoted=None if misquoted is None else _line_at(source, misquoted))


def _misquoted(data: bytes) -> int | None:
    """Where in `data` the first quote out of place is, among the bytes whose neighbours are
    both in `data` (all but the first and the last)."""
    values = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(values[1:-1] == ord('"')) + 1
    bad = quotes[~(_SIDE[values[quotes - 1]] | _SIDE[values[quotes + 1]])]
    return int(bad[0]) if len(bad) else None


def _line_at(source: Path | bytes, position: int, limit: int | None = 4 * EXCERPT_CHARS
             ) -> str:
    """The line holding the byte at `position` (its start looked for up to LOOK_BACK bytes
    before), read to its end or to `limit` bytes."""
    with _opened(source) as stream:
        stream.seek(max(position - LOOK_BACK, 0))
        before = stream.read(position - stream.tell())
        begin = position - len(before) + max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        stream.seek(begin)
        line = b""
        while limit is None or len(line) < limit:
            block = stream.read(BLOCK_BYTES)
            ends = [at for at in (block.find(b"\n"), block.find(b"\r")) if at >= 0]
            line += block[:min(ends)] if ends else block
            if ends or not block:
                break
    line = line.removeprefix(codecs.BOM_UTF8) if begin == 0 else line
    return line[:limit].decode("utf-8", errors="replace")


def _check_widths(source: Path | bytes, expected: int) -> None:
    """Every row as wide as the header, by pyarrow's CSV parser (streaming, in C++): the
    header's line is read as a row too, so a name's quoting is checked like a value's."""
    invalid: list[str] = []

    def refuse(row: pyarrow.csv.InvalidRow) -> str:
        invalid.append(row.text)
        return "error"

    generated = [f"f{position}" for position in range(expected)]
    options = {
        "read_options": pyarrow.csv.ReadOptions(column_names=generated, block_size=ROW_BYTES,
                                                use_threads=False),
        "parse_options": pyarrow.csv.ParseOptions(newlines_in_values=True,
                                                  invalid_row_handler=refuse),
        "convert_options": pyarrow.csv.ConvertOptions(include_columns=generated[:1],
                                                      column_types={"f0": pa.string()}),
    }
    try:
        with _opened(source) as stream, pyarrow.csv.open_csv(stream, **options) as reader:
            for _ in reader:
                pass
    except pa.ArrowInvalid as err:
        if invalid:
            raise wrong_width(invalid[0], expected) from err
        raise CsvFormatError(f"pyarrow cannot read the CSV (a row is read whole, at most "
                             f"{ROW_BYTES >> 20} MB): {str(err).splitlines()[0]}") from err
