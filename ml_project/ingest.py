"""Read production data as received: historic files or SQL, in chunks, or as an instance stream.

Readers never validate (that is `validate.py`'s job) and never mutate what they read. A CSV
is read only once it is in the format every path reads (`csv_format.check_csv`: else a
`CsvFormatError` refuses it whole, before a row is read), and gives identifiers as text; every source gives categorical features as pandas categoricals.
Columns the schema does not know are dropped with a log line (`validation.unknown_fields:
ignore`) or kept, for validation to refuse the file (`reject`). Text becomes numbers only
through `schemas.parse_numbers`, the parser the per-record check uses too.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ml_project.config import Config, database_url
from ml_project.csv_format import CSV_MISSING, check_csv
from ml_project.schemas import known_fields, parse_numbers

logger = logging.getLogger(__name__)


def known_columns(config: Config, *, with_target: bool = True) -> list[str]:
    """Identifier, timestamp, features and (optionally) target, in schema order."""
    names = list(known_fields(config))
    return names if with_target else names[:-1]


def _reader_dtypes(config: Config) -> dict[str, Any]:
    """Identifiers as text and categorical features as pandas categoricals of their text, even
    when they look like numbers. The CSV parser builds a categorical from its bytes: faster than
    a Python string per value, half the memory, and validation checks each distinct value once."""
    return {config.columns.id: object} | dict.fromkeys(config.columns.categorical, "category")


def _as_read(frame: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Parquet and SQL columns typed as the CSV reader types them: identifiers as text with
    NaN for missing (these give None), categorical features as categoricals. Absent columns
    are left to validation, which names them."""
    typed: dict[str, Any] = {}
    for name, dtype in _reader_dtypes(config).items():
        if name in frame.columns:
            values = frame[name].astype(object)
            if name in config.columns.categorical:  # the text a CSV holds: True -> "True"
                values = values.map(str, na_action="ignore")
            typed[name] = values.where(values.notna(), np.nan).astype(dtype)
    return frame.assign(**typed)


def _keep_known(frame: pd.DataFrame, config: Config, source: str) -> pd.DataFrame:
    """Without the columns the schema does not know (`validation.unknown_fields: ignore`), or
    with them, for validation to refuse the file (`reject`)."""
    if config.validation.unknown_fields == "reject":
        return frame
    keep = known_columns(config)
    dropped = [column for column in frame.columns if column not in keep]
    if dropped:
        logger.info("Dropping columns not in the schema from %s: %r", source, dropped)
    return frame[[column for column in frame.columns if column in keep]]


def as_read(frame: pd.DataFrame, config: Config, *, text: bool) -> pd.DataFrame:
    """Rows another reader gave (a Spark partition) typed as `read_in_chunks` types them, so
    validation sees what it sees locally: `text` cells (a CSV read as strings; None for empty)
    go through the same CSV parser (its missing-value spellings, its number inference), typed
    columns (Parquet) are typed as for a Parquet file; unknown columns as configured."""
    if text:
        frame = pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype=_reader_dtypes(config),
                            **CSV_MISSING)
    else:
        frame = _as_read(frame.reset_index(drop=True), config)
    return _keep_known(frame, config, "a partition")


def read_table(source: str, config: Config) -> pd.DataFrame:
    """One whole table from a CSV or Parquet file or a SQLAlchemy URL, known columns only."""
    if "://" in source:
        import sqlalchemy

        table, query = config.data.historic_table, config.data.historic_query
        if not (table or query):
            raise ValueError(f"{source} is a database URL: set data.historic_table or _query")
        with sqlalchemy.create_engine(database_url(source)).connect() as connection:
            if query:  # from the project's own config, never from request data
                frame = pd.read_sql(sqlalchemy.text(query), connection)
            else:
                frame = pd.read_sql_table(str(table), connection)
        return _keep_known(_as_read(frame, config), config, source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        return _keep_known(_as_read(pd.read_parquet(path), config), config, str(path))
    if path.suffix == ".csv":
        check_csv(path)
        return _keep_known(pd.read_csv(path, dtype=_reader_dtypes(config), **CSV_MISSING), config,
                           str(path))
    raise ValueError(f"unsupported data file {path}: expected .csv or .parquet")


def load_historic_data(config: Config) -> pd.DataFrame:
    """The historic production data the modelling run learns from."""
    frame = read_table(config.resolve(config.data.historic), config)
    logger.info("Loaded %d historic rows with %d columns", len(frame), frame.shape[1])
    return frame


def read_in_chunks(path: Path, config: Config) -> Iterator[pd.DataFrame]:
    """Chunks of at most `prediction.chunk_size` rows, so a file larger than memory streams."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    size = config.prediction.chunk_size
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            yield _keep_known(_as_read(batch.to_pandas(), config), config, str(path))
    elif path.suffix == ".csv":
        check_csv(path)
        with pd.read_csv(path, dtype=_reader_dtypes(config), chunksize=size,
                         **CSV_MISSING) as reader:
            for chunk in reader:
                yield _keep_known(chunk, config, str(path))
    else:
        raise ValueError(f"unsupported data file {path}: expected .csv or .parquet")


def count_rows(path: Path) -> int | None:
    """Rows in a file without loading it (for progress bars); None when unknown."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if path.suffix == ".csv":
        with path.open("rb") as handle:
            return max(sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1, 0)
    return None


def stream_production_instances(
    path: Path, config: Config, *, limit: int | None = None, rate_per_second: float | None = None
) -> Iterator[dict[str, Any]]:
    """Production instances one by one, as JSON-like records, optionally rate-limited.

    Records keep every field as received (missing values become None, as in JSON), so the
    stream exercises the same validation as a real client would.
    """
    interval = 1 / rate_per_second if rate_per_second else 0.0
    sent = 0
    for chunk in read_in_chunks(path, config):
        records = _as_json_records(chunk.drop(columns=[config.columns.target], errors="ignore"), config)
        for record in records:
            if limit is not None and sent >= limit:
                return
            started = time.perf_counter()
            yield record
            sent += 1
            if interval:
                time.sleep(max(0.0, interval - (time.perf_counter() - started)))


def _as_json_records(frame: pd.DataFrame, config: Config) -> list[dict[str, Any]]:
    """Rows as a JSON client would send them: numbers as numbers where they parse, text kept
    as text where it does not (so validation, not the reader, rejects it), timestamps as ISO
    8601 text, None for missing."""
    converted: dict[str, pd.Series] = {}
    for column in config.columns.numerical:
        if column in frame.columns and frame[column].dtype == object:
            parsed = pd.Series(parse_numbers(frame[column].to_numpy()), index=frame.index)
            converted[column] = parsed.astype(object).where(parsed.notna(), frame[column])
    timestamp = config.columns.timestamp
    if timestamp and timestamp in frame.columns and pd.api.types.is_datetime64_any_dtype(
        frame[timestamp]
    ):
        moments = frame[timestamp]
        converted[timestamp] = moments.map(pd.Timestamp.isoformat, na_action="ignore")
    typed = frame.assign(**converted).astype(object)
    records = typed.where(typed.notna(), None).to_dict("records")
    return [{str(key): value for key, value in record.items()} for record in records]
