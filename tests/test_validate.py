"""Frame validation: every bad-row class is quarantined with its reason, nothing is dropped, and
the pandera path agrees with the per-instance check on which rows are invalid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_project.config import REASON_COLUMN, Config, load_config
from ml_project.schemas import InstanceValidator, InvalidInstance
from ml_project.validate import DataValidationError, validate_production_data, write_quarantine

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
    # the reasons are text even when there is none (tests/test_contract.py reads them as text)
    assert result.quarantined["quarantine_reason"].str.len().tolist() == []
    assert result.valid["event_time"].dtype == "datetime64[ns]"
    assert all(result.valid[column].dtype == float for column in config.columns.numerical)
    for column, spec in config.columns.categorical.items():
        assert result.valid[column].dtype == pd.CategoricalDtype(sorted(spec.categories))
        assert result.valid[column].astype(object).tolist() == _production()[column].tolist()


def test_validated_categoricals_hold_exactly_the_allowed_categories(config: Config) -> None:
    """From text or from the readers' Categoricals: one valid frame, nulls as missing values."""
    production = _with(_with(_production(), 2, "payment_method", None), 3, "region", "mars")
    production = _with(production, 4, "internet_service", math.nan)
    as_text = validate_production_data(production, config, with_target=True)
    categorical = list(config.columns.categorical)
    as_read = production.assign(**{name: production[name].where(production[name].notna(), np.nan)
                                   for name in categorical}).astype(
        dict.fromkeys(categorical, "category"))
    from_categories = validate_production_data(as_read, config, with_target=True)

    pd.testing.assert_frame_equal(as_text.valid, from_categories.valid)
    assert as_text.quarantined[REASON_COLUMN].tolist() == from_categories.quarantined[
        REASON_COLUMN].tolist()
    assert as_text.quarantined["customer_id"].tolist() == ["C003"]
    assert as_text.valid["payment_method"].isna().tolist() == [i == 2 for i in range(7)]
    assert as_text.valid["internet_service"].isna().sum() == 1
    for name in categorical:
        expected = sorted(config.columns.categorical[name].categories)
        assert as_text.valid[name].dtype == pd.CategoricalDtype(expected)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("age", "unknown", "age: must be a number, got 'unknown'"),
        ("monthly_charges", "12,50", "monthly_charges: must be a number, got '12,50'"),
        ("tenure_months", -3, "tenure_months: must be >= 0, got -3"),
        ("monthly_charges", 9999.0, "monthly_charges: must be <= 500, got 9999"),
        ("total_charges", np.inf, "total_charges: must be a finite number, got inf"),
        ("total_charges", "-inf", "total_charges: must be a finite number, got -inf"),
        ("contract", "weekly",
         "contract: must be one of ['month-to-month', 'one-year', 'two-year'], got 'weekly'"),
        ("age", "600", "age: must be <= 110, got 600"),
        ("age", True, "age: must be a number, got True"),
        ("region", 7, "region: must be one of ['east', 'north', 'south', 'west'], got '7'"),
        ("region", np.nan, "region: must not be null"),
        ("age", None, "age: must not be null"),
        ("event_time", "yesterday", "event_time: must be a year-first timestamp (ISO 8601, e.g. "
                                    "2024-05-31T14:00:00Z), got 'yesterday'"),
        ("customer_id", None, "customer_id: must not be null"),
        ("customer_id", 1.5, "customer_id: must be text or an integer, got 1.5"),
        ("churned", 2, "churned: must be one of [0, 1], got 2"),
        ("churned", True, "churned: must be one of [0, 1], got True"),
    ],
)
def test_validate_production_data_quarantines_each_bad_row_class(
    config: Config, column: str, value: Any, reason: str
) -> None:
    production = _with(_production(), 3, column, value)

    result = validate_production_data(production, config, with_target=True)

    assert result.quarantined.index.tolist() == [3]
    assert result.quarantined[REASON_COLUMN].iloc[0] == reason  # one reason, the rule's words
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
    assert result.quarantined[REASON_COLUMN].iloc[0] == (
        "data_usage_gb: must be a finite number, got inf")
    row = production.drop(columns=["churned"]).iloc[2]
    record = {str(key): value for key, value in row.items()}
    with pytest.raises(InvalidInstance, match="data_usage_gb: must be a finite number"):
        InstanceValidator(config).validate(record)


def test_validate_production_data_rejects_an_infinite_regression_target(project: Path) -> None:
    config = load_config(
        "modelling", "historic", "local", config_file=project / "project_config.yaml",
        root=project, overrides={"task": "regression", "columns": {"target_classes": [], "positive_class": None},
                                 "training": {"split": "random", "metric": "r2", "candidates": [
                                     {"name": "ridge", "estimator": "sklearn.linear_model.Ridge"}]}},
    )
    production = _with(_production().astype({"churned": float}), 4, "churned", np.inf)

    result = validate_production_data(production, config, with_target=True)

    assert result.quarantined.index.tolist() == [4]
    assert result.quarantined[REASON_COLUMN].iloc[0] == "churned: must be a finite number, got inf"


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
    assert reasons["C001"] == ("age: must be a number, got 'unknown'; region: must be one of "
                               "['east', 'north', 'south', 'west'], got 'mars'")
    assert reasons["C004"] == "tenure_months: must be >= 0, got -1"
    assert reasons["C006"] == "contract: must not be null"
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
def test_every_quarantine_reason_is_what_the_instance_validator_says(
    config: Config, with_target: bool
) -> None:
    """Hundreds of faults, two per row: each quarantined row carries exactly the per-record
    errors (one per bad field, the same words), and every other row is valid."""
    rng = np.random.default_rng(11)
    frame = _production(600).astype({"age": object, "tenure_months": object, "churned": object})
    faults: list[tuple[str, Any]] = [
        ("tenure_months", -5), ("tenure_months", "500"), ("age", "old"), ("age", None),
        ("monthly_charges", math.inf), ("monthly_charges", -1.0), ("contract", "weekly"),
        ("contract", None), ("payment_method", "cash"), ("region", 7), ("churned", 3),
        ("churned", None), ("total_charges", None), ("data_usage_gb", -0.1), ("age", True),
        ("event_time", "soon"), ("customer_id", 2.5),
    ]
    for row in rng.choice(len(frame), size=300, replace=False):
        for column, value in [faults[i] for i in rng.choice(len(faults), size=2, replace=False)]:
            frame = _with(frame, int(row), column, value)
    validator = InstanceValidator(config)
    target = config.columns.target
    target_reasons = {3: "must be one of [0, 1], got 3", None: "must not be null"}

    result = validate_production_data(frame, config, with_target=with_target)

    reasons = result.quarantined[REASON_COLUMN]
    assert len(result.valid) + len(result.quarantined) == len(frame) and len(reasons) > 250
    for row, row_values in enumerate(frame.to_dict("records")):
        record = {str(key): value for key, value in row_values.items()}
        label = record.pop(target)
        expected = []
        try:
            validator.validate(record)
        except InvalidInstance as err:
            expected = [f"{field}: {reason}" for field, reason in err.errors.items()]
        if with_target and label not in (0, 1):
            expected.append(f"{target}: {target_reasons[label]}")
        schema_order = list(frame.columns)
        expected.sort(key=lambda reason: schema_order.index(reason.split(":")[0]))
        assert reasons.get(row, "") == "; ".join(expected), row
