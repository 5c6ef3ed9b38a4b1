"""Split a frame into valid rows and quarantined rows with their reasons; nothing is dropped.

The pandera schemas are built from the same `field_rules` as the per-instance check in
`schemas.py`: production data (as received) must satisfy the production schema; raw data
(for modelling) additionally carries a valid target.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from ml_project.config import Config
from ml_project.schemas import field_rules

logger = logging.getLogger(__name__)

REASON_COLUMN = "quarantine_reason"


class DataValidationError(ValueError):
    """Data that cannot be used at all (a missing column), or any invalid row when fatal."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # the rows as received, plus REASON_COLUMN


def _is_finite(values: pd.Series) -> pd.Series:
    """Infinity parses as a number but measures nothing (the per-instance check agrees)."""
    return values.abs() != np.inf  # NaN passes: nullability is its own rule


FINITE = pa.Check(_is_finite, name="finite")


def build_production_schema(config: Config) -> pa.DataFrameSchema:
    """Production data as received: identifiers plus every feature, each with its rule."""
    columns: dict[str, pa.Column] = {config.columns.id: pa.Column(nullable=False)}
    if config.columns.timestamp:
        columns[config.columns.timestamp] = pa.Column("datetime64[ns]", nullable=False)
    for rule in field_rules(config):
        if rule.kind == "numerical":
            checks = [FINITE]
            if rule.min is not None:
                checks.append(pa.Check.ge(rule.min))
            if rule.max is not None:
                checks.append(pa.Check.le(rule.max))
            columns[rule.name] = pa.Column(float, checks, nullable=rule.nullable)
        else:
            checks = [pa.Check.isin(sorted(rule.categories))]
            columns[rule.name] = pa.Column(object, checks, nullable=rule.nullable)
    return pa.DataFrameSchema(columns, name="ProductionSchema", strict=False)


def build_raw_schema(config: Config) -> pa.DataFrameSchema:
    """Raw (validated) modelling data: the production schema plus a valid target."""
    target = config.columns.target
    if config.is_classification:
        column = pa.Column(checks=pa.Check.isin(list(config.columns.target_classes)), nullable=False)
    else:
        column = pa.Column(float, FINITE, nullable=False)
    return build_production_schema(config).add_columns({target: column}).set_name("RawSchema")


def _coerce(production: pd.DataFrame, config: Config, *, with_target: bool) -> tuple[
    pd.DataFrame, dict[int, list[str]]
]:
    """Parse numbers and timestamps; a value that does not parse is a reason, not a crash."""
    numerical = list(config.columns.numerical)
    if with_target and not config.is_classification:
        numerical.append(config.columns.target)
    reasons: dict[int, list[str]] = {}
    converted: dict[str, pd.Series] = {}
    for column in numerical:
        parsed = pd.to_numeric(production[column], errors="coerce").astype(float)
        converted[column] = parsed
        for index in production.index[production[column].notna() & parsed.isna()]:
            value = production.at[index, column]
            reasons.setdefault(index, []).append(f"{column}: must be a number, got {value!r}")
    timestamp = config.columns.timestamp
    if timestamp:
        # utc=True: offsets that differ between rows (daylight saving) become one naive UTC scale
        moments = pd.to_datetime(production[timestamp], errors="coerce", format="ISO8601", utc=True)
        converted[timestamp] = moments.dt.tz_localize(None)
        for index in production.index[production[timestamp].notna() & moments.isna()]:
            value = production.at[index, timestamp]
            reasons.setdefault(index, []).append(f"{timestamp}: not a timestamp: {value!r}")
    for column in config.columns.categorical:
        series = production[column]
        converted[column] = series.astype(object).where(series.notna(), float("nan"))
    return production.assign(**converted), reasons


def validate_production_data(
    production: pd.DataFrame, config: Config, *, with_target: bool
) -> ValidationResult:
    """Validate lazily (every failure of every row at once) and quarantine the invalid rows.

    Args:
        with_target: validate as raw modelling data (the target must be present and valid).
    Raises:
        DataValidationError: a required column is missing, or any row is invalid while
            `validation.fail_on_invalid` is set.
    """
    schema = build_raw_schema(config) if with_target else build_production_schema(config)
    missing = [column for column in schema.columns if column not in production.columns]
    if missing:
        raise DataValidationError(f"missing required columns: {missing}")
    production = production.reset_index(drop=True)
    coerced, reasons = _coerce(production, config, with_target=with_target)
    try:
        with warnings.catch_warnings():  # pandera's own concat of failure cases warns in pandas 2
            warnings.simplefilter("ignore", FutureWarning)
            schema.validate(coerced, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        unattributed = cases[cases["index"].isna()]
        if not unattributed.empty:
            raise DataValidationError(
                "data fails the schema as a whole: "
                + "; ".join(f"{c.column}: {c.check}" for c in unattributed.itertuples())
            ) from err
        for case in cases.itertuples():
            if not str(case.check).startswith(("coerce_dtype", "dtype")):
                reason = f"{case.column}: failed {case.check}, got {case.failure_case!r}"
                reasons.setdefault(int(case.index), []).append(reason)
    bad = sorted(reasons)
    quarantined = production.loc[bad].assign(
        **{REASON_COLUMN: ["; ".join(dict.fromkeys(reasons[i])) for i in bad]}
    )
    valid = coerced.drop(index=bad).reset_index(drop=True)
    logger.info("Validation: %d valid rows, %d quarantined", len(valid), len(quarantined))
    if bad and config.validation.fail_on_invalid:
        raise DataValidationError(
            f"{len(bad)} invalid rows and validation.fail_on_invalid is set; first: "
            f"{quarantined[REASON_COLUMN].iloc[0]}"
        )
    return ValidationResult(valid=valid, quarantined=quarantined)


def write_quarantine(
    quarantined: pd.DataFrame, config: Config, name: str, *, append: bool = False
) -> Path:
    """Write quarantined rows with reasons to output/quarantine/<name>.csv (even when empty).

    Args:
        append: add to the file (chunked scoring); the header is written once.
    """
    directory = config.output_dir / "quarantine"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.csv"
    header = not (append and path.is_file())
    quarantined.to_csv(path, index=False, mode="a" if append else "w", header=header)
    if len(quarantined):
        logger.warning("%d invalid rows quarantined with reasons in %s", len(quarantined), path)
    return path
