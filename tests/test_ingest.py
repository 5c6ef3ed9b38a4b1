"""Readers: CSV, Parquet and SQL give the same frame; chunks and the instance stream."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy

from ml_project.config import Config, database_url, load_config
from ml_project.csv_format import CsvFormatError
from ml_project.ingest import (
    count_rows,
    known_columns,
    load_historic_data,
    read_in_chunks,
    read_table,
    stream_production_instances,
)
from tests.postgres import PostgresServer


def _config(project: Path, **overrides: Any) -> Config:
    return load_config(
        "modelling", "historic", "local",
        config_file=project / "project_config.yaml", root=project, overrides=overrides,
    )


@pytest.fixture
def as_received(project: Path) -> pd.DataFrame:
    """The historic CSV as another system would hold it, with a column the schema lacks."""
    return pd.read_csv(project / "data" / "historic_data.csv").assign(crm_notes="called twice")


def _write_parquet(frame: pd.DataFrame, project: Path) -> dict[str, Any]:
    frame.to_parquet(project / "data" / "historic.parquet", index=False)
    return {"data": {"historic": "data/historic.parquet"}}


def _write_sqlite(frame: pd.DataFrame, project: Path) -> dict[str, Any]:
    engine = sqlalchemy.create_engine(f"sqlite:///{project / 'data' / 'historic.db'}")
    frame.to_sql("customers", engine, index=False)
    engine.dispose()
    return {"data": {"historic": "sqlite:///data/historic.db", "historic_table": "customers"}}


@pytest.mark.parametrize("write", [_write_parquet, _write_sqlite], ids=["parquet", "sqlite"])
def test_load_historic_data_gives_the_same_frame_from_every_source(
    project: Path, config: Config, as_received: pd.DataFrame, write: Any
) -> None:
    from_csv = load_historic_data(config)

    from_source = load_historic_data(_config(project, **write(as_received, project)))

    pd.testing.assert_frame_equal(from_source, from_csv)
    assert set(from_csv.columns) == set(known_columns(config))
    assert from_csv["payment_method"].isna().any()  # missing values are NaN from every source


def test_load_historic_data_reads_a_plain_postgresql_url(
    project: Path, config: Config, as_received: pd.DataFrame, postgres_server: PostgresServer
) -> None:
    """A bare postgresql:// URL (the form every tutorial shows) works with the driver this
    project installs, and gives the frame the CSV gives."""
    url = postgres_server.create_database("historic_ingest")
    assert url.startswith("postgresql://")
    engine = sqlalchemy.create_engine(database_url(url))
    as_received.to_sql("customers", engine, index=False)
    engine.dispose()

    from_database = load_historic_data(
        _config(project, data={"historic": url, "historic_table": "customers"}))

    pd.testing.assert_frame_equal(from_database, load_historic_data(config))


def test_read_table_runs_a_configured_sql_query(project: Path, as_received: pd.DataFrame) -> None:
    overrides = _write_sqlite(as_received, project)
    query = "SELECT * FROM customers LIMIT 7"
    overrides["data"] |= {"historic_table": None, "historic_query": query}
    config = _config(project, **overrides)

    frame = read_table(config.resolve(config.data.historic), config)

    assert len(frame) == 7 and "crm_notes" not in frame.columns


def test_read_table_sql_without_a_table_or_query_says_which_setting(
    project: Path, config: Config
) -> None:
    with pytest.raises(ValueError, match="set data.historic_table or _query"):
        read_table(f"sqlite:///{project / 'data' / 'historic.db'}", config)


def test_read_table_sql_missing_column_is_left_for_validation_to_name(
    project: Path, as_received: pd.DataFrame
) -> None:
    config = _config(project, **_write_sqlite(as_received.drop(columns=["region"]), project))

    frame = read_table(config.resolve(config.data.historic), config)

    assert "region" not in frame.columns and len(frame) == len(as_received)


def test_read_table_drops_and_logs_unknown_columns(
    project: Path, config: Config, as_received: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    path = project / "data" / "with_notes.csv"
    as_received.to_csv(path, index=False)

    with caplog.at_level(logging.INFO, logger="ml_project.ingest"):
        frame = read_table(str(path), config)

    assert "crm_notes" not in frame.columns
    assert "Dropping columns not in the schema" in caplog.text and "crm_notes" in caplog.text


def test_read_table_keeps_identifiers_and_categories_as_text(
    tmp_path: Path, config: Config
) -> None:
    path = tmp_path / "numeric_looking.csv"
    path.write_text("customer_id,region,age\n007,1,30\n")

    frame = read_table(str(path), config)

    assert frame.loc[0, "customer_id"] == "007" and frame.loc[0, "region"] == "1"
    assert frame["customer_id"].dtype == object
    assert frame["region"].dtype == pd.CategoricalDtype(["1"])  # the parser's own categories


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("absent.csv", FileNotFoundError, "data file not found"),
        ("data.xlsx", ValueError, r"unsupported data file .*xlsx: expected \.csv or \.parquet"),
    ],
)
def test_read_table_rejects_missing_and_unsupported_files(
    tmp_path: Path, config: Config, name: str, error: type[Exception], match: str
) -> None:
    if name.endswith(".xlsx"):
        (tmp_path / name).write_bytes(b"not a spreadsheet")

    with pytest.raises(error, match=match):
        read_table(str(tmp_path / name), config)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_read_in_chunks_yields_chunk_size_rows_and_the_whole_file(
    project: Path, as_received: pd.DataFrame, suffix: str
) -> None:
    config = _config(project, prediction={"chunk_size": 400})
    path = project / "data" / f"chunked{suffix}"
    if suffix == ".csv":
        as_received.to_csv(path, index=False)
    else:
        as_received.to_parquet(path, index=False)

    chunks = list(read_in_chunks(path, config))

    assert [len(chunk) for chunk in chunks] == [400, 400, 400, 300]
    whole = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(whole, read_table(str(path), config))


def test_read_in_chunks_rejects_a_missing_file(tmp_path: Path, config: Config) -> None:
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        next(read_in_chunks(tmp_path / "absent.csv", config))


def test_count_rows_counts_without_loading(project: Path, as_received: pd.DataFrame) -> None:
    parquet = project / "data" / "rows.parquet"
    as_received.to_parquet(parquet, index=False)

    assert count_rows(project / "data" / "historic_data.csv") == len(as_received)
    assert count_rows(parquet) == len(as_received)
    assert count_rows(project / "data" / "rows.json") is None


@pytest.mark.parametrize("limit", [0, 1, 7])
def test_stream_production_instances_stops_at_the_limit(
    project: Path, config: Config, limit: int
) -> None:
    path = project / "data" / "production_data.csv"

    records = list(stream_production_instances(path, config, limit=limit))

    assert len(records) == limit


def test_stream_production_instances_sends_json_like_records(
    project: Path, config: Config
) -> None:
    path = project / "data" / "historic_data.csv"  # has a target column and missing values
    corrupted = pd.read_csv(path).astype({"age": object})
    corrupted.loc[1, "age"] = "unknown"
    corrupted.to_csv(path, index=False)

    records = list(stream_production_instances(path, config))

    assert len(records) == len(corrupted)
    assert all(config.columns.target not in record for record in records)
    assert records[0]["age"] == corrupted.loc[0, "age"] and records[1]["age"] == "unknown"
    values = [value for record in records for value in record.values()]
    assert None in values
    assert not any(isinstance(value, float) and math.isnan(value) for value in values)


def test_read_table_keeps_unknown_columns_for_validation_to_refuse_when_rejecting(
    project: Path, as_received: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(project, validation={"unknown_fields": "reject"})
    path = project / "data" / "with_notes.csv"
    as_received.to_csv(path, index=False)

    frame = read_table(str(path), config)

    assert "crm_notes" in frame.columns


def test_stream_production_instances_sends_timestamps_as_iso_text(
    project: Path, config: Config
) -> None:
    """A Parquet file holds datetimes; a JSON client sends text, which every path accepts."""
    path = project / "data" / "production.parquet"
    frame = pd.read_csv(project / "data" / "production_data.csv")
    frame.assign(event_time=pd.to_datetime(frame["event_time"])).to_parquet(path, index=False)

    records = list(stream_production_instances(path, config, limit=3))

    assert [record["event_time"] for record in records] == frame["event_time"].head(3).tolist()


def test_a_csv_out_of_the_format_is_refused_before_a_row_is_read(
    project: Path, config: Config
) -> None:
    """By every reader of files: the modelling run's, the batch's chunks, the stream."""
    lines = (project / "data" / "historic_data.csv").read_text().splitlines()
    path = project / "data" / "late_extra_field.csv"
    path.write_text("\n".join([*lines[:-1], lines[-1] + ",extra"]) + "\n")
    width = len(lines[0].split(","))
    message = f"a row has {width + 1} fields where the header has {width}: "

    with pytest.raises(CsvFormatError, match=message):
        read_table(str(path), config)
    with pytest.raises(CsvFormatError, match=message):
        next(read_in_chunks(path, _config(project, prediction={"chunk_size": 10})))
    with pytest.raises(CsvFormatError, match=message):
        next(stream_production_instances(path, config))
