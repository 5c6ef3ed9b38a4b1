"""Split a frame into valid rows and quarantined rows with their reasons; nothing is dropped.

The pandera schemas are built from the same `field_rules` as the per-instance check in
`schemas.py`: production data (as received) must satisfy the production schema; raw data
(for modelling) additionally carries a valid target.

Each schema is built once per configuration and compiled: its own checks (nullability, ranges,
categories, finiteness) run as numpy operations over whole columns, giving the same failures as
`schema.validate` at a tenth of the cost per chunk (pandera runs every check through its backend
and assembles a report even for valid data). A schema holding anything the compiler does not
know, or a frame whose dtypes differ from the schema's, is validated by pandera itself.

Valid rows come back typed: numbers as float64, the timestamp as datetime64, and each
categorical feature as a pandas Categorical of exactly its allowed categories, so a validated
frame cannot hold an unknown category, takes a byte per value, and hands the prediction core
ready-made category codes (the lookup that checked a value is the one that encodes it).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api.extensions import ExtensionDtype
from pandera.errors import SchemaErrors

from ml_project.config import Config
from ml_project.ingest import parse_numbers
from ml_project.schemas import field_rules

logger = logging.getLogger(__name__)

REASON_COLUMN = "quarantine_reason"


class DataValidationError(ValueError):
    """Data that cannot be used at all (a missing column), or any invalid row when fatal."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # the rows as received, plus REASON_COLUMN


def _is_finite(values: Any) -> Any:
    """Infinity parses as a number but measures nothing (the per-instance check agrees)."""
    return np.abs(values) != np.inf  # NaN passes: nullability is its own rule


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


Failure = tuple[int, str]  # row index, reason
Values = Any  # a column's values: a numpy array or a pandas extension array (a Categorical)
ColumnTest = Callable[[np.ndarray], np.ndarray]  # a column's values -> the mask of those passing


def _at_least(min_value: float) -> ColumnTest:
    return lambda values: values >= min_value


def _at_most(max_value: float) -> ColumnTest:
    return lambda values: values <= max_value


def _finite() -> ColumnTest:
    return _is_finite


# The checks our schemas use, by pandera's name, built from the check's statistics as numpy
# operations over a whole column. What a test says about a missing value is ignored: that is
# the nullable rule's business (pandera's ignore_na). `isin` is compiled apart (`_allowed`):
# its lookup also gives each value's category code.
VECTORISED_CHECKS: dict[str, Callable[..., ColumnTest]] = {
    "greater_than_or_equal_to": _at_least,
    "less_than_or_equal_to": _at_most,
    "finite": _finite,
}


class UnsupportedSchema(ValueError):
    """The schema holds something the compiler cannot reproduce exactly; pandera runs it."""


@dataclass(frozen=True)
class _CompiledColumn:
    name: str
    dtype: str | None
    nullable: bool
    checks: tuple[tuple[str, ColumnTest], ...]  # (pandera's name for the check, its test)
    allowed: tuple[str, pd.Index] | None  # an isin check: (its name, the allowed values)


def _compile_check(check: pa.Check) -> tuple[str, ColumnTest]:
    if check.element_wise or not check.ignore_na or check.groupby is not None or (
        check.name not in VECTORISED_CHECKS
    ):
        raise UnsupportedSchema(f"check {check.name!r}")
    return check.error or check.name, VECTORISED_CHECKS[check.name](**(check.statistics or {}))


def _allowed(check: pa.Check) -> tuple[str, pd.Index]:
    """An isin check as the sorted index of its values: position in it = category code."""
    if check.element_wise or not check.ignore_na or check.groupby is not None:
        raise UnsupportedSchema(f"check {check.name!r}")
    values = list(dict.fromkeys((check.statistics or {})["allowed_values"]))
    if any(pd.isna(value) for value in values):
        raise UnsupportedSchema("isin allowing a missing value")  # would hide a null
    try:
        values = sorted(values)
    except TypeError:  # values of mixed types keep their given order
        pass
    return str(check.error or check.name), pd.Index(values)


@dataclass(frozen=True)
class CheckedFrame:
    """What a compiled schema found: the failures and, per isin column, each value's position
    among the allowed values (-1 for a missing or failing value) and those allowed values."""

    failures: list[Failure]
    codes: dict[str, np.ndarray]
    categories: dict[str, pd.Index]


class CompiledSchema:
    """A pandera schema's column rules as numpy operations; the failures `schema.validate`
    reports, in the same words (`<column>: failed <check>, got <value>`), in schema order."""

    def __init__(self, schema: pa.DataFrameSchema) -> None:
        if schema.checks or schema.index is not None or schema.unique or schema.coerce:
            raise UnsupportedSchema("schema-wide checks, index, unique or coerce")
        self.columns = []
        for name, column in schema.columns.items():
            if column.regex or column.unique or column.coerce:
                raise UnsupportedSchema(f"column {name!r} with regex, unique or coerce")
            dtype = None if column.dtype is None else str(column.dtype)
            isin = [check for check in column.checks if check.name == "isin"]
            if len(isin) > 1 or (isin and column.checks[-1] is not isin[0]):
                raise UnsupportedSchema(f"column {name!r}: isin must be its last check")
            checks = tuple(_compile_check(check) for check in column.checks if check.name != "isin")
            allowed = _allowed(isin[0]) if isin else None
            self.columns.append(_CompiledColumn(name, dtype, column.nullable, checks, allowed))

    def check(self, columns: Mapping[Any, Values]) -> CheckedFrame | None:
        """Every failing value with its reason; None if a dtype differs (pandera reports it).

        `columns` holds each column's values (see `column_values`), rows keyed by position.
        A text column may come as a pandas Categorical (as the readers give categorical
        features): its distinct values are checked once each, not once per row.
        """
        found: list[Failure] = []
        codes: dict[str, np.ndarray] = {}
        for column in self.columns:
            values: Any = columns[column.name]
            as_categories = isinstance(values, pd.Categorical)
            if column.dtype is not None and str(values.dtype) != column.dtype and not (
                as_categories and column.dtype == "object"
            ):
                return None
            values = values if as_categories else np.asarray(values)
            if as_categories:
                missing = values.codes < 0
                if column.allowed is not None:  # -1 (missing) takes the appended -1
                    table = column.allowed[1].get_indexer(values.categories)
                    codes[column.name] = np.append(table, -1)[values.codes]
            elif column.allowed is None:
                missing = _missing(values)
            else:  # a value found among the allowed ones is not missing: test only the others
                code = codes[column.name] = column.allowed[1].get_indexer(pd.Index(values))
                unmatched = np.flatnonzero(code < 0)
                missing = np.zeros(len(values), dtype=bool)
                missing[unmatched] = pd.isna(values[unmatched])
            if not column.nullable and missing.any():
                # pandera shows a missing number or timestamp as nan, a missing object as is
                shown = values[missing].tolist() if values.dtype == object else (
                    [float("nan")] * int(missing.sum()))
                found += _reasons(column.name, "not_nullable", np.flatnonzero(missing), shown)
            failing = [(error, ~passes(np.asarray(values)) & ~missing)
                       for error, passes in column.checks]
            if column.allowed is not None:
                failing.append((column.allowed[0], (codes[column.name] < 0) & ~missing))
            for error, failed in failing:
                if failed.any():
                    found += _reasons(column.name, error, np.flatnonzero(failed),
                                      np.asarray(values[failed]).tolist())
        categories = {column.name: column.allowed[1] for column in self.columns
                      if column.allowed is not None}
        return CheckedFrame(found, codes, categories)


def _missing(values: np.ndarray) -> np.ndarray:
    """pd.isna, with a shortcut for text: identifiers are all strings, as a rule, and telling
    so takes a quarter of the time of testing each value for every kind of missing."""
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return np.zeros(len(values), dtype=bool)
    missing: np.ndarray = pd.isna(values)
    return missing


def _reasons(column: str, check: str, rows: np.ndarray, values: list[Any]) -> list[Failure]:
    return [(int(i), f"{column}: failed {check}, got {value!r}") for i, value in zip(rows, values)]


_SCHEMAS: dict[tuple[str, str, bool], tuple[pa.DataFrameSchema, CompiledSchema | None]] = {}


def _schema(
    config: Config, *, with_target: bool
) -> tuple[pa.DataFrameSchema, CompiledSchema | None]:
    """The schema for this configuration and its compiled form, built once (per chunk it would
    cost more than validating the chunk)."""
    key = (config.columns.model_dump_json(), config.task, with_target)
    if key not in _SCHEMAS:
        schema = build_raw_schema(config) if with_target else build_production_schema(config)
        try:
            compiled: CompiledSchema | None = CompiledSchema(schema)
        except UnsupportedSchema as err:
            logger.info("Validating with pandera itself: %s", err)
            compiled = None
        _SCHEMAS[key] = (schema, compiled)
    return _SCHEMAS[key]


def _pandera_failures(schema: pa.DataFrameSchema, coerced: pd.DataFrame) -> list[Failure]:
    """What `schema.validate` reports per row; a failure of the frame as a whole is fatal.

    Text read as a Categorical is checked as the text it holds.
    """
    as_text = [name for name, dtype in schema.dtypes.items() if str(dtype) == "object"
               and isinstance(coerced.dtypes.get(name), pd.CategoricalDtype)]
    coerced = coerced.astype(dict.fromkeys(as_text, object))
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
        return [
            (int(case.index), f"{case.column}: failed {case.check}, got {case.failure_case!r}")
            for case in cases.itertuples()
            if not str(case.check).startswith(("coerce_dtype", "dtype"))
        ]
    return []


def _unparsed(received: pd.Series, parsed: np.ndarray, message: str,
              reasons: dict[int, list[str]]) -> None:
    """Add `message` for each value present in `received` but missing after parsing."""
    values = received.to_numpy()
    empty = np.flatnonzero(pd.isna(parsed))  # few, usually: look only at those
    for position in empty[pd.notna(values[empty])]:
        reasons.setdefault(int(position), []).append(message.format(values[position]))


def _shallow(frame: pd.DataFrame) -> pd.DataFrame:
    """A new frame over the same column data with the index 0..n-1: no data copied, and the
    caller's frame is never changed."""
    result = frame.copy(deep=False)
    result.index = pd.RangeIndex(len(result))
    return result


def column_values(frame: pd.DataFrame) -> dict[Any, Values]:
    """Each column's values, in order, without a copy: a numpy array, or the column's own
    extension array (a Categorical, say). Validation works on these rather than on a frame:
    replacing and filtering a frame's columns one by one costs more than checking them."""
    return {name: frame[name].array if isinstance(frame[name].dtype, ExtensionDtype)
            else frame[name].to_numpy() for name in frame.columns}


def _coerce(production: pd.DataFrame, config: Config, *, with_target: bool) -> tuple[
    dict[Any, Values], dict[int, list[str]]
]:
    """Every column's values (see `column_values`), with numbers and timestamps parsed; a value
    that does not parse is a reason, not a crash. Rows are keyed by position."""
    numerical = list(config.columns.numerical)
    if with_target and not config.is_classification:
        numerical.append(config.columns.target)
    reasons: dict[int, list[str]] = {}
    coerced = column_values(production)
    for column in numerical:
        received = production[column]
        if pd.api.types.is_numeric_dtype(received):  # nothing to parse, nothing can fail
            coerced[column] = received.to_numpy(dtype=float, na_value=np.nan)
            continue
        coerced[column] = parsed = parse_numbers(received.to_numpy(dtype=object))
        _unparsed(received, parsed, f"{column}: must be a number, got {{!r}}", reasons)
    timestamp = config.columns.timestamp
    if timestamp:
        # utc=True: offsets that differ between rows (daylight saving) become one naive UTC scale
        moments = pd.to_datetime(production[timestamp], errors="coerce", format="ISO8601", utc=True)
        coerced[timestamp] = moments.dt.tz_localize(None).to_numpy()
        _unparsed(production[timestamp], coerced[timestamp],
                  f"{timestamp}: not a timestamp: {{!r}}", reasons)
    return coerced, reasons


def _categorical(name: str, values: Values, categories: list[str], checked: CheckedFrame | None,
                 keep: np.ndarray | None) -> pd.Categorical:
    """A categorical feature's valid values (`keep`: which rows, None: all) as a Categorical of
    exactly its (sorted) categories: from the codes the compiled check found, else the values."""
    if checked is not None and name in checked.codes:
        codes = checked.codes[name]  # positions among the same sorted values as `categories`
        return pd.Categorical.from_codes(codes if keep is None else codes[keep],
                                         categories=checked.categories[name])
    text = np.asarray(values, dtype=object)
    return pd.Categorical(text if keep is None else text[keep], categories=categories)


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
        DataValidationError: a required column is missing, or any row is invalid while
            `validation.fail_on_invalid` is set.
    """
    schema, compiled = _schema(config, with_target=with_target)
    missing = [column for column in schema.columns if column not in production.columns]
    if missing:
        raise DataValidationError(f"missing required columns: {missing}")
    production = _shallow(production)
    coerced, reasons = _coerce(production, config, with_target=with_target)
    checked = compiled.check(coerced) if compiled else None
    if checked is None:
        failures = _pandera_failures(schema, pd.DataFrame(coerced, copy=False))
    else:
        failures = checked.failures
    for index, reason in failures:
        reasons.setdefault(index, []).append(reason)
    bad = sorted(reasons)
    quarantined = production.iloc[bad].assign(
        **{REASON_COLUMN: ["; ".join(dict.fromkeys(reasons[i])) for i in bad]}
    )
    keep: np.ndarray | None = None
    if bad:
        keep = np.ones(len(production), dtype=bool)
        keep[bad] = False
    categorical = {rule.name: sorted(rule.categories) for rule in field_rules(config)
                   if rule.kind == "categorical"}
    valid_columns: dict[Any, Values] = {}
    for name, values in coerced.items():
        if name in categorical:
            valid_columns[name] = _categorical(name, values, categorical[name], checked, keep)
        else:
            valid_columns[name] = values if keep is None else values[keep]
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
