"""Frame validation: every bad-row class is quarantined with its reason, nothing is dropped, and
the pandera path agrees with the per-instance check on which rows are invalid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_project.config import Config, load_config
from ml_project.ingest import read_table, stream_production_instances
from ml_project.schemas import InstanceValidator, InvalidInstance
from ml_project.validate import (
    REASON_COLUMN,
    DataValidationError,
    validate_production_data,
    write_quarantine,
)

N_ROWS = 8


def _production(n_rows: int = N_ROWS) -> pd.DataFrame:
    """A small, valid frame of production data as a CSV reader returns it."""
    rows = range(n_rows)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:03d}" for i in rows],
            "event_time": [f"2024-01-{i + 1:02d}T10:00:00" for i in rows],
            "tenure_months": [3 * i for i in rows],
            "monthly_charges": [20.0 + 5 * i for i in rows],
            "total_charges": [100.0 * i for i in rows],
            "support_calls": [i % 4 for i in rows],
            "data_usage_gb": [10.0 + i for i in rows],
            "age": [20 + 5 * i for i in rows],
            "contract": [("month-to-month", "one-year", "two-year")[i % 3] for i in rows],
            "payment_method": ["credit-card"] * n_rows,
            "internet_service": [("dsl", "fiber", "none")[i % 3] for i in rows],
            "region": [("north", "south", "east", "west")[i % 4] for i in rows],
            "churned": [i % 2 for i in rows],
        }
    )


def _with(frame: pd.DataFrame, row: int, column: str, value: Any) -> pd.DataFrame:
    """A copy of `frame` with one cell replaced, the column widened to object if needed."""
    changed = frame.copy()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        changed[column] = changed[column].astype(object)
    changed.loc[row, column] = value
    return changed


def test_validate_production_data_keeps_valid_rows_and_parses_types(config: Config) -> None:
    result = validate_production_data(_production(), config, with_target=True)

    assert len(result.valid) == N_ROWS and result.quarantined.empty
    assert result.valid["event_time"].dtype == "datetime64[ns]"
    assert all(result.valid[column].dtype == float for column in config.columns.numerical)
    for column, spec in config.columns.categorical.items():
        assert result.valid[column].dtype == pd.CategoricalDtype(sorted(spec.categories))
        assert result.valid[column].astype(object).tolist() == _production()[column].tolist()


def test_validated_categoricals_are_the_same_from_pandera_and_the_compiled_check(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codes from the compiled check, or the values after pandera: one valid frame."""
    from ml_project import validate

    production = _with(_with(_production(), 2, "payment_method", None), 3, "region", "mars")
    production = _with(production, 4, "internet_service", math.nan)
    compiled = validate_production_data(production, config, with_target=True)
    monkeypatch.setattr(validate.CompiledSchema, "check", lambda self, frame: None)
    by_pandera = validate_production_data(production, config, with_target=True)

    pd.testing.assert_frame_equal(compiled.valid, by_pandera.valid)
    pd.testing.assert_frame_equal(compiled.quarantined, by_pandera.quarantined)
    assert compiled.quarantined["customer_id"].tolist() == ["C003"]
    assert compiled.valid["payment_method"].isna().tolist() == [i == 2 for i in range(7)]
    assert compiled.valid["internet_service"].isna().sum() == 1


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("age", "unknown", "age: must be a number, got 'unknown'"),
        ("monthly_charges", "12,50", "monthly_charges: must be a number, got '12,50'"),
        ("tenure_months", -3, "tenure_months: failed greater_than_or_equal_to(0.0), got -3.0"),
        ("monthly_charges", 9999.0, "monthly_charges: failed less_than_or_equal_to(500.0)"),
        ("total_charges", np.inf, "total_charges: failed finite, got inf"),
        ("total_charges", "-inf", "total_charges: failed finite, got -inf"),
        ("contract", "weekly", "contract: failed isin(['month-to-month', 'one-year', 'two-year'])"),
        ("region", 7, "region: failed isin"),
        ("region", np.nan, "region: failed not_nullable"),
        ("age", None, "age: failed not_nullable"),
        ("event_time", "yesterday", "event_time: not a timestamp: 'yesterday'"),
        ("customer_id", None, "customer_id: failed not_nullable"),
        ("churned", 2, "churned: failed isin([0, 1]), got 2"),
    ],
)
def test_validate_production_data_quarantines_each_bad_row_class(
    config: Config, column: str, value: Any, reason: str
) -> None:
    production = _with(_production(), 3, column, value)

    result = validate_production_data(production, config, with_target=True)

    assert result.quarantined.index.tolist() == [3]
    assert result.quarantined[REASON_COLUMN].iloc[0].startswith(reason)
    assert len(result.valid) == N_ROWS - 1
    assert "C003" not in result.valid["customer_id"].tolist()


@pytest.mark.parametrize(
    ("column", "with_target"),
    [("age", False), ("region", False), ("customer_id", False), ("event_time", True),
     ("churned", True)],
)
def test_validate_production_data_missing_column_is_fatal_and_named(
    config: Config, column: str, with_target: bool
) -> None:
    production = _production().drop(columns=[column])

    with pytest.raises(DataValidationError, match=rf"missing required columns: \['{column}'\]"):
        validate_production_data(production, config, with_target=with_target)


def test_validate_production_data_rejects_infinity_where_no_bounds_are_set(project: Path) -> None:
    """The per-instance check refuses infinity everywhere; frames must agree."""
    config = load_config(
        "modelling", "historic", "local", config_file=project / "project_config.yaml",
        root=project, overrides={"columns": {"numerical": {"data_usage_gb": {"max": None}}}},
    )
    production = _with(_production(), 2, "data_usage_gb", np.inf)

    result = validate_production_data(production, config, with_target=True)

    assert result.quarantined.index.tolist() == [2]
    assert result.quarantined[REASON_COLUMN].iloc[0] == "data_usage_gb: failed finite, got inf"
    row = production.drop(columns=["churned"]).iloc[2]
    record = {str(key): value for key, value in row.items()}
    with pytest.raises(InvalidInstance, match="data_usage_gb: must be a finite number"):
        InstanceValidator(config).validate(record)


def test_validate_production_data_rejects_an_infinite_regression_target(project: Path) -> None:
    config = load_config(
        "modelling", "historic", "local", config_file=project / "project_config.yaml",
        root=project, overrides={"task": "regression", "columns": {"target_classes": []},
                                 "training": {"split": "random", "metric": "r2"}},
    )
    production = _with(_production().astype({"churned": float}), 4, "churned", np.inf)

    result = validate_production_data(production, config, with_target=True)

    assert result.quarantined.index.tolist() == [4]
    assert result.quarantined[REASON_COLUMN].iloc[0] == "churned: failed finite, got inf"


def test_validate_production_data_needs_no_target_for_production(config: Config) -> None:
    production = _production().drop(columns=["churned"])

    result = validate_production_data(production, config, with_target=False)

    assert len(result.valid) == N_ROWS


def test_validate_production_data_tolerates_extra_columns(config: Config) -> None:
    production = _production().assign(notes="called twice", score=1.5)

    result = validate_production_data(production, config, with_target=True)

    assert len(result.valid) == N_ROWS and result.quarantined.empty


def test_validate_production_data_quarantines_every_bad_row_with_all_its_reasons(
    config: Config,
) -> None:
    production = _with(_with(_production(), 1, "age", "unknown"), 1, "region", "mars")
    production = _with(_with(production, 4, "tenure_months", -1), 6, "contract", None)
    before = production.copy()

    result = validate_production_data(production, config, with_target=True)

    assert result.quarantined["customer_id"].tolist() == ["C001", "C004", "C006"]
    assert len(result.valid) + len(result.quarantined) == len(production)
    reasons = result.quarantined.set_index("customer_id")[REASON_COLUMN]
    assert "age: must be a number" in reasons["C001"] and "region: failed isin" in reasons["C001"]
    assert reasons["C004"].startswith("tenure_months:")
    assert reasons["C006"].startswith("contract: failed not_nullable")
    assert result.quarantined.loc[1, "age"] == "unknown"  # kept as received, for the owner
    pd.testing.assert_frame_equal(production, before)


def test_validate_production_data_fail_on_invalid_makes_any_bad_row_fatal(
    project: Path,
) -> None:
    config = load_config(
        "modelling", "historic", "local", config_file=project / "project_config.yaml",
        root=project, overrides={"validation": {"fail_on_invalid": True}},
    )
    production = _with(_production(), 5, "region", "mars")

    with pytest.raises(DataValidationError, match="1 invalid rows .*fail_on_invalid.*region"):
        validate_production_data(production, config, with_target=True)
    assert len(validate_production_data(_production(), config, with_target=True).valid) == N_ROWS


def test_validate_production_data_turns_none_in_categorical_into_nan(config: Config) -> None:
    production = _with(_production(), 2, "payment_method", None)

    result = validate_production_data(production, config, with_target=True)

    value = result.valid.loc[2, "payment_method"]
    assert value is not None and isinstance(value, float) and math.isnan(value)
    assert result.valid["payment_method"].astype(object).loc[2] is not None


def test_validate_production_data_converts_mixed_utc_offsets(config: Config) -> None:
    """Timestamps with daylight-saving offsets (+01:00 and +02:00) are one instant scale."""
    production = _production(2).assign(
        event_time=["2024-01-01T12:00:00+01:00", "2024-07-01T12:00:00+02:00"]
    )

    result = validate_production_data(production, config, with_target=True)

    assert result.valid["event_time"].tolist() == [
        pd.Timestamp("2024-01-01T11:00:00"), pd.Timestamp("2024-07-01T10:00:00")
    ]


def test_validate_production_data_agrees_with_instance_validator_on_shipped_sample() -> None:
    config = load_config("prediction", "production", "local")
    path = Path(config.resolve(config.data.production))
    production = read_table(str(path), config)
    validator = InstanceValidator(config)

    invalid_instances = set()
    for record in stream_production_instances(path, config):
        try:
            validator.validate(record)
        except InvalidInstance:
            invalid_instances.add(record["customer_id"])
    quarantined = validate_production_data(production, config, with_target=False).quarantined

    assert invalid_instances  # the sample ships with bad rows on purpose
    assert set(quarantined["customer_id"]) == invalid_instances


def test_write_quarantine_writes_rows_with_reasons_even_when_empty(config: Config) -> None:
    result = validate_production_data(_with(_production(), 0, "age", 7), config, with_target=True)

    path = write_quarantine(result.quarantined, config, "batch")
    empty = write_quarantine(result.quarantined.head(0), config, "nothing")

    assert path == config.output_dir / "quarantine" / "batch.csv"
    written = pd.read_csv(path)
    assert written["customer_id"].tolist() == ["C000"]
    assert written[REASON_COLUMN].str.startswith("age:").all()
    assert pd.read_csv(empty).columns.tolist() == written.columns.tolist()


@pytest.mark.parametrize("with_target", [True, False])
def test_compiled_checks_report_exactly_what_pandera_reports(
    config: Config, with_target: bool
) -> None:
    """The numpy-compiled schema is an optimisation of pandera, never a second opinion."""
    from ml_project.validate import _coerce, _pandera_failures, _schema, column_values

    rng = np.random.default_rng(11)
    frame = pd.read_csv(config.resolve(config.data.historic), dtype={"customer_id": object})
    frame = frame.head(600).astype({"age": object, "tenure_months": object}).copy()
    faults: list[tuple[str, Any]] = [
        ("tenure_months", -5), ("tenure_months", 500), ("age", "old"), ("age", None),
        ("monthly_charges", math.inf), ("monthly_charges", -1.0), ("contract", "weekly"),
        ("contract", None), ("payment_method", "cash"), ("region", 7), ("churned", 3),
        ("churned", None), ("total_charges", None), ("data_usage_gb", -0.1),
    ]
    for row in rng.choice(len(frame), size=300, replace=False):
        for column, value in [faults[i] for i in rng.choice(len(faults), size=2, replace=False)]:
            frame.loc[row, column] = value
    schema, compiled = _schema(config, with_target=with_target)
    assert compiled is not None, "the shipped schema must compile"
    columns, _ = _coerce(frame, config, with_target=with_target)
    checked = compiled.check(columns)
    assert checked is not None
    compiled_failures = checked.failures
    assert compiled_failures is not None
    coerced = pd.DataFrame(columns)
    assert sorted(compiled_failures) == sorted(_pandera_failures(schema, coerced))
    assert len(compiled_failures) > 300
    # the same text as categoricals, as the readers give it (a missing value is NaN there,
    # never None): the same failures and codes
    categorical = list(config.columns.categorical)
    text = coerced.assign(**{name: coerced[name].where(coerced[name].notna(), np.nan)
                             for name in categorical})
    as_read = text.astype(dict.fromkeys(categorical, "category"))
    from_categories = compiled.check(column_values(as_read))
    assert from_categories is not None
    expected = sorted(_pandera_failures(schema, text))
    assert sorted(from_categories.failures) == expected
    assert sorted(_pandera_failures(schema, as_read)) == expected
    assert from_categories.codes.keys() == checked.codes.keys()
    for name, codes in checked.codes.items():
        np.testing.assert_array_equal(from_categories.codes[name], codes)


@pytest.mark.parametrize("other", [None, math.nan, pd.NA, pd.NaT, np.datetime64("NaT"), "", 7])
def test_missing_text_shortcut_agrees_with_isna(other: Any) -> None:
    """All-text columns skip the per-value test; anything else among the text is tested."""
    from ml_project.validate import _missing

    values = np.array(["C001", other, "C003"], dtype=object)
    np.testing.assert_array_equal(_missing(values), pd.isna(values))
    np.testing.assert_array_equal(_missing(np.array([], dtype=object)), [])
