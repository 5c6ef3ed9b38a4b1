"""Split a frame into valid rows and quarantined rows with their reasons; nothing is dropped.

The pandera schemas are built from the rules of `schemas.py` (`identifier_rules`, `field_rules`,
`target_rule`): production data (as received) must satisfy the production schema; raw data (for
modelling) additionally carries a valid target. A frame goes through two steps:

1. Coerce: numbers (text included, by `schemas.parse_numbers`) become float64, timestamps
   datetime64; a value that does not coerce (text that is no number, a bool for a number, an id
   of the wrong type) is a failure of its cell.
2. pandera checks the typed columns lazily (nullability, finiteness, ranges, categories).

Every failing cell, whichever step found it, gets ONE reason: `FieldRule.check` on the value as
received, so the quarantine says what the stream and the APIs say about the same value
(`age: must be <= 110, got 600`). Each schema is built once per configuration.

Valid rows come back typed: numbers as float64, the timestamp as datetime64, and each
categorical feature as a pandas Categorical of exactly its allowed categories, so a validated
frame cannot hold an unknown category, takes a byte per value, and hands the prediction core
ready-made category codes. Columns the schema does not know pass through unchecked
(`validation.unknown_fields: ignore`) or make the whole frame fail (`reject`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from ml_project.config import MISSING_TEXTS, REASON_COLUMN, Config
from ml_project.schemas import (
    UNKNOWN_FIELD,
    FieldRule,
    field_rules,
    identifier_rules,
    is_missing,
    is_scalar_not_text,
    known_fields,
    parse_numbers,
    target_rule,
)

logger = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """Data that cannot be used at all (a missing or unknown column), or any invalid row when
    `validation.fail_on_invalid` is set."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # the rows as received, plus REASON_COLUMN


def _is_finite(values: Any) -> Any:
    """Infinity parses as a number but measures nothing."""
    return np.abs(values) != np.inf  # NaN passes: nullability is its own rule


FINITE = pa.Check(_is_finite, name="finite")


def _column(rule: FieldRule) -> pa.Column:
    """The pandera column of a rule, over the coerced values (types are settled by then)."""
    if rule.kind == "numerical":
        checks = [FINITE]
        if rule.min is not None:
            checks.append(pa.Check.ge(rule.min))
        if rule.max is not None:
            checks.append(pa.Check.le(rule.max))
        return pa.Column(float, checks, nullable=rule.nullable)
    if rule.kind == "categorical":
        return pa.Column(checks=pa.Check.isin(list(rule.categories)), nullable=rule.nullable)
    if rule.kind == "timestamp":
        return pa.Column("datetime64[ns]", nullable=rule.nullable)
    return pa.Column(nullable=rule.nullable)


def build_production_schema(config: Config) -> pa.DataFrameSchema:
    """Production data as received: identifiers plus every feature, each with its rule."""
    rules = (*identifier_rules(config), *field_rules(config))
    return pa.DataFrameSchema({rule.name: _column(rule) for rule in rules},
                              name="ProductionSchema", strict=False)


def build_raw_schema(config: Config) -> pa.DataFrameSchema:
    """Raw (validated) modelling data: the production schema plus a valid target."""
    target = target_rule(config)
    return build_production_schema(config).add_columns({target.name: _column(target)}).set_name(
        "RawSchema")


@dataclass(frozen=True)
class _Schema:
    pandera: pa.DataFrameSchema
    rules: dict[str, FieldRule]  # by column, in schema order


_SCHEMAS: dict[tuple[str, str, bool], _Schema] = {}


def _schema(config: Config, *, with_target: bool) -> _Schema:
    """The schema for this configuration and its rules, built once (per chunk it would cost
    more than validating the chunk)."""
    key = (config.columns.model_dump_json(), config.task, with_target)
    if key not in _SCHEMAS:
        rules = (*identifier_rules(config), *field_rules(config))
        rules += (target_rule(config),) if with_target else ()
        schema = build_raw_schema(config) if with_target else build_production_schema(config)
        _SCHEMAS[key] = _Schema(schema, {rule.name: rule for rule in rules})
    return _SCHEMAS[key]


Cells = set[tuple[int, str]]  # (row position, column) of failing values


def _coerce(production: pd.DataFrame, rules: dict[str, FieldRule]) -> tuple[dict[str, Any], Cells]:
    """Each rule's column with numbers and timestamps parsed (other columns as they are), and
    the cells whose value could not be coerced to the rule's type."""
    typed: dict[str, Any] = {}
    failed: Cells = set()
    for name, rule in rules.items():
        received = _missing_texts_as_nan(production[name])
        if rule.kind == "numerical":
            if pd.api.types.is_numeric_dtype(received) and not pd.api.types.is_bool_dtype(
                received
            ):
                typed[name] = received.to_numpy(dtype=float, na_value=np.nan)
                continue
            typed[name] = parse_numbers(received.to_numpy())
            failed |= _unparsed(name, received, typed[name])
        elif rule.kind == "timestamp":
            typed[name], unparsed = _timestamps(received, rule)
            failed |= {(int(row), name) for row in unparsed}
        elif isinstance(received.dtype, pd.CategoricalDtype):
            typed[name] = received.array
            failed |= _wrongly_typed(name, received, rule)
        else:
            typed[name] = _as_text(received, rule)
            failed |= _wrongly_typed(name, received, rule)
    return typed, failed


def _missing_texts_as_nan(received: pd.Series) -> pd.Series:
    """The texts every path reads as missing (`MISSING_TEXTS`) as NaN: the CSV reader has made
    them so already, a Parquet file or a frame built in memory may hold them as text."""
    if isinstance(received.dtype, pd.CategoricalDtype):
        texts = [c for c in received.cat.categories if isinstance(c, str) and c in MISSING_TEXTS]
        return received.cat.remove_categories(texts) if texts else received
    if received.dtype != object and not pd.api.types.is_string_dtype(received):
        return received
    marked = received.isin(list(MISSING_TEXTS))
    return received.mask(marked) if marked.any() else received


def _as_text(received: pd.Series, rule: FieldRule) -> np.ndarray:
    """A categorical feature's bools and numbers as their text (`FieldRule.as_text`): a frame
    built in memory holds them so, where a file would hold text."""
    values = received.to_numpy()
    if not rule.as_text or pd.api.types.infer_dtype(received, skipna=True) in ("string", "empty"):
        return values
    return np.array([str(value) if is_scalar_not_text(value) and not is_missing(value) else value
                     for value in values], dtype=object)


def _unparsed(name: str, received: pd.Series, parsed: np.ndarray) -> Cells:
    """The cells present as received and missing once parsed."""
    empty = np.flatnonzero(np.isnan(parsed))  # few, usually: look only at those
    present = empty[pd.notna(received.to_numpy()[empty])]
    return {(int(row), name) for row in present}


def _timestamps(received: pd.Series, rule: FieldRule) -> tuple[np.ndarray, list[int]]:
    """A timestamp column as naive UTC datetime64[ns], and the rows that do not parse. Text is
    parsed as a whole column by pandas; what it refuses is asked of the rule (which also reads
    what Python's `fromisoformat` reads)."""
    if pd.api.types.is_datetime64_any_dtype(received):
        moments = pd.to_datetime(received, utc=True).dt.tz_localize(None)
        return moments.to_numpy(dtype="datetime64[ns]"), []
    values = received.to_numpy(dtype=object)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty"):
        # utc=True: offsets that differ between rows (daylight saving) become one naive scale
        parsed = np.asarray(
            pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True).tz_localize(None),
            dtype="datetime64[ns]").copy()
        retry = np.flatnonzero(np.isnat(parsed))
    else:  # anything but text: value by value
        parsed = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
        retry = np.arange(len(values))
    unparsed = []
    for row in retry[pd.notna(values[retry])]:
        moment, error = rule.check(values[row])
        if error:
            unparsed.append(int(row))
        else:
            parsed[row] = np.datetime64(moment, "ns")
    return parsed, unparsed


def _wrongly_typed(name: str, received: pd.Series, rule: FieldRule) -> Cells:
    """Ids that are neither text nor integers, and bools among categories (a bool is no
    category, though pandera's `isin` takes True for a class 1)."""
    if rule.kind == "identifier":
        fine: tuple[str, ...] = ("string", "integer", "empty")

        def suspect(value: Any) -> bool:
            return rule.check(value)[1] is not None
    else:
        fine = ("string", "integer", "floating", "mixed-integer-float", "decimal", "empty")

        def suspect(value: Any) -> bool:  # a feature compares a bool as its text
            return not rule.as_text and isinstance(value, (bool, np.bool_))
    if isinstance(received.dtype, pd.CategoricalDtype):
        if not any(suspect(category) for category in received.cat.categories):
            return set()
    elif pd.api.types.infer_dtype(received, skipna=True) in fine:
        return set()
    values = received.to_numpy(dtype=object)
    return {(row, name) for row, value in enumerate(values)
            if not is_missing(value) and suspect(value)}


def _pandera_failures(schema: pa.DataFrameSchema, typed: pd.DataFrame) -> Cells:
    """The cells `schema.validate` reports; a failure of the frame as a whole is fatal."""
    try:
        with warnings.catch_warnings():  # pandera's own concat of failure cases warns in pandas 2
            warnings.simplefilter("ignore", FutureWarning)
            schema.validate(typed, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        unattributed = cases[cases["index"].isna()]
        if not unattributed.empty:
            raise DataValidationError(
                "data fails the schema as a whole: "
                + "; ".join(f"{c.column}: {c.check}" for c in unattributed.itertuples())
            ) from err
        return {(int(case.index), str(case.column)) for case in cases.itertuples()}
    return set()


def _reasons(production: pd.DataFrame, rules: dict[str, FieldRule], cells: Cells
             ) -> dict[int, str]:
    """One reason per failing cell, from its rule, on the value as received; a row's reasons in
    schema order."""
    by_row: dict[int, set[str]] = {}
    for row, column in cells:
        by_row.setdefault(row, set()).add(column)
    reasons = {}
    for row, columns in by_row.items():
        said = []
        for name in (name for name in rules if name in columns):
            value = production[name].iat[row]
            error = rules[name].check(value)[1]
            if error is None:  # the rule and pandera disagree: a defect, never silent
                logger.error("pandera refused %s=%r that its rule accepts", name, value)
                error = "fails the schema"
            said.append(f"{name}: {error}")
        reasons[row] = "; ".join(said)
    return reasons


def _shallow(frame: pd.DataFrame) -> pd.DataFrame:
    """A new frame over the same column data with the index 0..n-1: no data copied, and the
    caller's frame is never changed."""
    result = frame.copy(deep=False)
    result.index = pd.RangeIndex(len(result))
    return result


def _check_columns(production: pd.DataFrame, config: Config, schema: _Schema) -> None:
    missing = [column for column in schema.rules if column not in production.columns]
    if missing:
        raise DataValidationError(f"missing required columns: {missing}")
    known = set(known_fields(config))
    unknown = [str(column) for column in production.columns if column not in known]
    if unknown and config.validation.unknown_fields == "reject":
        raise DataValidationError(
            "; ".join(f"{column}: {UNKNOWN_FIELD}" for column in unknown)
            + " (validation.unknown_fields: reject)"
        )
    if unknown:
        logger.debug("Columns not in the schema, passed through unchecked: %r", unknown)


def validate_production_data(
    production: pd.DataFrame, config: Config, *, with_target: bool
) -> ValidationResult:
    """Validate lazily (every failure of every row at once) and quarantine the invalid rows.

    Args:
        with_target: validate as raw modelling data (the target must be present and valid).
    Returns:
        The valid rows, typed (categorical features as Categoricals of their categories), with
        the index 0..n-1, and the invalid rows as received with their reasons, indexed by their
        position in `production`.
    Raises:
        DataValidationError: a required column is missing, an unknown column is present while
            `validation.unknown_fields` is `reject`, or any row is invalid while
            `validation.fail_on_invalid` is set.
    """
    schema = _schema(config, with_target=with_target)
    _check_columns(production, config, schema)
    production = _shallow(production)
    typed, failed = _coerce(production, schema.rules)
    failed |= _pandera_failures(schema.pandera, pd.DataFrame(typed, copy=False))
    reasons = _reasons(production, schema.rules, failed)
    bad = sorted(reasons)
    # text even when empty (an empty list would make it a float column, without `.str`)
    quarantined = production.iloc[bad].assign(
        **{REASON_COLUMN: np.array([reasons[i] for i in bad], dtype=object)})
    keep: np.ndarray | None = None
    if bad:
        keep = np.ones(len(production), dtype=bool)
        keep[bad] = False
    valid_columns: dict[Any, Any] = {}
    for name in production.columns:
        values = typed[name] if name in typed else production[name].to_numpy()
        rule = schema.rules.get(name)
        kept = values if keep is None else values[keep]
        if rule is not None and rule.kind == "categorical" and name != config.columns.target:
            kept = pd.Categorical(kept, categories=sorted(rule.categories, key=str))
        valid_columns[name] = kept
    valid = pd.DataFrame(valid_columns, copy=False)  # built once, from the kept values
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
