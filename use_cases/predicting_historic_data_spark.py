"""Prediction run on historic data with Apache Spark: score a dataset of any size, partition by
partition, with the exported champion.

    pipenv sync --categories spark    # once: PySpark (needs Java 17)
    pipenv run python use_cases/predicting_historic_data_spark.py [--input PATH_OR_URI] [--master URL]

Reads a CSV or Parquet file or folder (a local path or any URI Spark reads, e.g. s3a://...),
and validates and scores every batch of every partition with the local batch use case's own
core (`ml_project.batch.score_chunk`): for the same rows, the same predictions and the same
quarantine reasons. A CSV is held to the format every path reads (`ml_project.csv_format`),
with the same verdict and message as the local use case: first over the text of each of its
files (one pass over their lines, no CSV parsing), then, as Spark's parser reads it (a record
may span lines, as a quoted line break makes it), row by row for the header's width; its cells
are read as text and parsed by the local reader's parser, so validation sees what it sees
locally. A CSV file is read by one task (a quoted line break forbids splitting it): an input
of fewer files than the cluster has cores is spread over them before scoring. The artifact is
loaded and checksum-verified once on the driver and broadcast to the executors; each Python
worker builds its
PredictionService once. Writes two Parquet datasets, each with Spark's `_SUCCESS` marker once
complete: <output>/predictions/<input>_predictions.parquet (id, prediction, probabilities,
model version) and <output>/quarantine/<input>_predictions.parquet (the rows as read plus
their reason). Row order follows Spark's partitions: join on the id. The master comes from
`spark.master` in the config (`local[*]` by default), or --master.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ml_project.batch import PartitionScorer, prediction_columns
from ml_project.cli import base_parser, start_run
from ml_project.config import PREDICTION_COLUMN, REASON_COLUMN, Config
from ml_project.csv_format import (
    EMPTY,
    MISQUOTED_PATTERN,
    CsvFormatError,
    CsvText,
    csv_columns,
    wrong_width,
)
from ml_project.export import ArtifactError
from ml_project.ingest import as_read
from ml_project.predict import PredictionService
from ml_project.validate import DataValidationError, validate_production_data

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType

logger = logging.getLogger("predicting_historic_spark")

FORMATS = ("csv", "parquet")
# Columns Spark adds to a CSV's: its text of a row of the wrong width, and the rows' order
MALFORMED, ORDER = "_malformed_record", "_row_order"


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--input", default=None,
                        help="CSV or Parquet file or folder, a path or any URI Spark reads "
                             "(default: data.historic)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="the input's format (default: from its name or its files)")
    parser.add_argument("--output", default=None,
                        help="folder or URI for predictions/ and quarantine/ (default: paths.output)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: spark.master)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per batch handed to the core (default: prediction.chunk_size)")
    args = parser.parse_args(argv)
    overrides = {"prediction": {"chunk_size": args.chunk_size}} if args.chunk_size else {}
    config, _ = start_run(parser, args, "prediction", "historic", "local",
                          "predicting_historic_spark", overrides=overrides)
    source = args.input or config.resolve(config.data.historic)
    if "://" not in source:
        source = str(Path(source).resolve())
    try:
        data_format = input_format(source, args.format)
        service = PredictionService.from_config(config)
    except (ValueError, FileNotFoundError, ArtifactError) as err:
        logger.error("%s", err)
        return 2
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
    except ImportError:
        logger.error("PySpark is not installed: run `pipenv sync --categories spark` (and install "
                     "Java 17)")
        return 2

    stem = _name(source)
    for suffix in FORMATS:
        stem = stem.removesuffix(f".{suffix}")
    output = (args.output or str(config.output_dir)).rstrip("/")
    targets = {kind: f"{output}/{kind}/{stem}_predictions.parquet"
               for kind in ("predictions", "quarantine")}
    spark, started_here = start_spark(config, args.master)
    try:
        started = time.perf_counter()
        counts = score(spark, source, data_format, service, config, targets)
        elapsed = time.perf_counter() - started
    except (CsvFormatError, DataValidationError, PySparkException) as err:
        logger.error("Cannot score %s: %s", source, err)
        return 2
    except Py4JJavaError as err:  # a failure in the JVM, e.g. its CSV parser's
        logger.debug("Spark failed", exc_info=True)
        logger.error("Cannot score %s: %s", source, _java_message(str(err)))
        return 2
    finally:
        if started_here:
            spark.stop()
    rows_in = counts["predictions"] + counts["quarantine"]
    rate = rows_in / max(elapsed, 1e-9)
    logger.info("Scored %d rows in %.1f s (%.0f rows/s); %d quarantined",
                rows_in, elapsed, rate, counts["quarantine"])
    print(f"\nScored {counts['predictions']} of {rows_in} rows with "
          f"{service.metadata.get('model_name')} version {service.model_version} on Spark "
          f"({rate:,.0f} rows/s)")
    print(f"  predictions: {targets['predictions']}")
    print(f"  quarantine:  {targets['quarantine']} ({counts['quarantine']} rows)")
    return 0


def _name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def input_format(source: str, given: str | None) -> str:
    """csv or parquet: as given, else from the input's name, else from the files in a folder."""
    if given:
        return given
    for data_format in FORMATS:
        if _name(source).endswith(f".{data_format}"):
            return data_format
    if "://" not in source:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"data not found: {path}")
        found = {p.suffix.lstrip(".") for p in path.iterdir() if not p.name.startswith(("_", "."))
                 } if path.is_dir() else set()
        if len(found & set(FORMATS)) == 1:
            return (found & set(FORMATS)).pop()
    raise ValueError(f"cannot tell whether {source} is CSV or Parquet: pass --format")


def start_spark(config: Config, master: str | None) -> tuple[SparkSession, bool]:
    """The active session if there is one (a notebook's, a test's), else a new one on the
    configured master; and whether it was started here (then the caller stops it)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        logger.info("Using the active Spark session (master %s)", active.sparkContext.master)
        return active, False
    master = master or config.spark.master
    if master.startswith("local"):  # workers run this interpreter, with its packages
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(f"{config.project_name} scoring")
    for key, value in config.spark.conf.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    logger.info("Starting Spark on %s", master)
    return builder.getOrCreate(), True


def csv_header(spark: SparkSession, source: str) -> list[str]:
    """The column names of a CSV file or folder, once each file's text is in the format every
    path reads (`csv_format.csv_columns` on what one pass over its lines finds) and every file
    has the same header. Files without a header line (empty) are skipped, unless all are."""
    from pyspark.sql import functions

    raw, line, at = functions.col("value"), functions.col("line"), functions.col("at")
    lines = spark.read.text(source).select(
        functions.input_file_name().alias("file"), raw,
        functions.ltrim(raw, functions.lit("\ufeff")).alias("line"),  # a file's byte-order mark
        functions.struct(functions.input_file_block_start(),  # a line's place in its file
                         functions.monotonically_increasing_id()).alias("at"))
    files = lines.groupBy("file").agg(
        functions.bool_and(functions.is_valid_utf8(raw)).alias("utf8"),
        functions.sum(functions.length(line) - functions.length(functions.translate(line, '"', "")))
        .alias("quotes"),
        functions.min_by(line, functions.when(line != "", at)).alias("header"),
        functions.min_by(line, functions.when(line.rlike(MISQUOTED_PATTERN), at))
        .alias("misquoted"),
    ).collect()
    texts = {str(row["file"]): CsvText(utf8=bool(row["utf8"]), quotes=int(row["quotes"]),
                                        header=row["header"], misquoted=row["misquoted"])
             for row in files}
    named = {file: text for file, text in texts.items() if text.header is not None} or texts
    headers: dict[str, list[str]] = {}
    for file in sorted(named):
        try:
            headers[file] = csv_columns(named[file])
        except CsvFormatError as err:
            raise CsvFormatError(f"{_name(file)}: {err}" if len(named) > 1 else str(err)) from err
    if not headers:
        raise CsvFormatError(EMPTY)
    first, *others = headers
    for file in others:
        if headers[file] != headers[first]:
            raise CsvFormatError(f"the files' headers differ: {_name(first)} names "
                                 f"{headers[first]}, {_name(file)} {headers[file]}")
    return headers[first]


def read_csv(spark: SparkSession, source: str, names: list[str], kept: list[str]) -> DataFrame:
    """The kept columns of a CSV as text, a row of the wrong width's text in MALFORMED, and
    each row's order in ORDER. Read by Spark's parser as pandas reads a file: a record may span
    lines (`multiLine`), a quote inside a quoted value is doubled (`escape`), one out of place
    refuses the file (`unescapedQuoteHandling`); the header, checked by `csv_header`, skipped."""
    from pyspark.sql import functions
    from pyspark.sql.types import StringType, StructField, StructType

    # Unknown columns (not read) under a name of their own: Spark would take `Age` for `age`.
    schema = StructType([StructField(name if name in kept else f"_column_{position}",
                                     StringType()) for position, name in enumerate(names)]
                        + [StructField(MALFORMED, StringType())])
    frame = spark.read.csv(source, schema=schema, header=True, multiLine=True, escape='"',
                           mode="PERMISSIVE", columnNameOfCorruptRecord=MALFORMED,
                           unescapedQuoteHandling="RAISE_ERROR")
    return frame.select(*[functions.col(_quoted(column)) for column in [*kept, MALFORMED]],
                        functions.monotonically_increasing_id().alias(ORDER))


def _java_message(text: str) -> str:
    """A JVM failure in one line: what failed, and its deepest cause."""
    lines = [line.strip().lstrip(": ") for line in text.splitlines()]
    failed = next((line for line in lines[1:] if line), lines[0] if lines else "")
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by:")]
    return f"{failed} ({causes[-1]})" if causes else failed


def score(spark: SparkSession, source: str, data_format: str, service: PredictionService,
          config: Config, targets: dict[str, str]) -> dict[str, int]:
    """Score every partition, write both datasets; the number of rows each got."""
    from pyspark import StorageLevel
    from pyspark.sql import functions
    from pyspark.sql.types import StructField, StructType

    text = data_format == "csv"
    # Per session, not per cluster: batches of the configured chunk size, timestamps in UTC
    # (how the local reader hands them to validation).
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", config.prediction.chunk_size)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    parquet = None if text else spark.read.parquet(source)
    names = csv_header(spark, source) if parquet is None else parquet.columns
    # The header, checked on the driver as the local use case checks it: a missing (or, with
    # unknown_fields: reject, an unknown) column refuses the whole input before any work.
    header = as_read(pd.DataFrame(columns=names), config, text=text)
    validate_production_data(header, config, with_target=False)
    kept = [str(column) for column in header.columns]
    outputs = prediction_columns(service)
    clashes = sorted(set(kept) & {REASON_COLUMN, MALFORMED, ORDER, *outputs[1:]})
    if clashes:
        raise DataValidationError(f"input columns {clashes} clash with the output's columns")
    frame = read_csv(spark, source, names, kept) if parquet is None else parquet.select(
        *[functions.col(_quoted(column)) for column in kept])
    partitions, cores = frame.rdd.getNumPartitions(), spark.sparkContext.defaultParallelism
    if partitions < cores:  # a CSV file is one task's to read, not to score
        frame = frame.repartition(cores)
    fields = [StructField(field.name, field.dataType, nullable=True) for field in frame.schema]
    schema = StructType([*fields, StructField(REASON_COLUMN, _spark_type("text")),
                         *[StructField(name, _spark_type(kind))
                           for name, kind in _output_kinds(service, outputs).items()]])
    artifact = spark.sparkContext.broadcast((service.pipeline, service.metadata, service.reference))
    scorer = PartitionScorer(artifact, config, text=text, carried=(MALFORMED, ORDER) if text else (),
                             malformed=MALFORMED if text else None)
    logger.info("Scoring %s (%s, %d partitions, scored in %d)", source, data_format, partitions,
                max(partitions, cores))
    scored = frame.mapInPandas(scorer, schema).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        reason = functions.col(REASON_COLUMN)
        outcome = functions.when(reason.isNull(), "predictions").otherwise("quarantine")
        if text:
            outcome = functions.when(functions.col(MALFORMED).isNotNull(), "malformed") \
                .otherwise(outcome)
        counts = {str(row[0]): int(row[1]) for row in scored.groupBy(outcome).count().collect()}
        if counts.get("malformed"):  # the first row of the wrong width, as the local check
            [record] = scored.where(functions.col(MALFORMED).isNotNull()).orderBy(ORDER).head(1)
            raise wrong_width(str(record[MALFORMED]), len(names))
        scored.where(reason.isNull()).select(*[functions.col(_quoted(c)) for c in outputs]) \
            .write.mode("overwrite").parquet(targets["predictions"])
        scored.where(reason.isNotNull()).select(
            *[functions.col(_quoted(c)) for c in [*kept, REASON_COLUMN]]
        ).write.mode("overwrite").parquet(targets["quarantine"])
    finally:
        scored.unpersist()
        artifact.destroy()
    return {kind: counts.get(kind, 0) for kind in targets}


def _quoted(column: str) -> str:
    """A column name as Spark reads it literally (dots and spaces included)."""
    return "`" + column.replace("`", "``") + "`"


def _output_kinds(service: PredictionService, outputs: list[str]) -> dict[str, str]:
    """The type of each output column after the id: the prediction's (a number for
    regression, else the classes' type), probabilities as numbers, the version as text."""
    if not service.is_classification:
        label = "number"
    elif all(isinstance(c, int) and not isinstance(c, bool) for c in service.classes):
        label = "integer"
    else:
        label = "text"
    kinds = {name: "number" for name in outputs[1:]}
    return kinds | {PREDICTION_COLUMN: label, "model_version": "text"}


def _spark_type(kind: str) -> DataType:
    from pyspark.sql.types import DoubleType, LongType, StringType

    types: dict[str, Any] = {"number": DoubleType, "integer": LongType, "text": StringType}
    data_type: DataType = types[kind]()
    return data_type


if __name__ == "__main__":
    raise SystemExit(main())
