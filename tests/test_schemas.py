"""The data contract for single records: field rules, the compiled InstanceValidator and the
request model, plus the promise that the serving modules stay free of modelling libraries."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pydantic
import pytest

from ml_project.config import Config
from ml_project.schemas import InstanceValidator, InvalidInstance, build_request_model, field_rules

VALID_RECORD: dict[str, Any] = {
    "customer_id": "C1",
    "event_time": "2024-03-01T10:00:00",
    "tenure_months": 12,
    "monthly_charges": 70.5,
    "total_charges": 846.0,
    "support_calls": 2,
    "data_usage_gb": 20.0,
    "age": 40,
    "contract": "one-year",
    "payment_method": "credit-card",
    "internet_service": "dsl",
    "region": "north",
}


def test_field_rules_follow_the_pipeline_column_order(config: Config) -> None:
    rules = field_rules(config)

    assert tuple(rule.name for rule in rules) == config.columns.features
    age = next(rule for rule in rules if rule.name == "age")
    assert (age.kind, age.min, age.max, age.nullable) == ("numerical", 18, 110, False)
    region = next(rule for rule in rules if rule.name == "region")
    assert region.categories == {"north", "south", "east", "west"}


def test_instance_validator_returns_features_in_pipeline_order_as_floats(config: Config) -> None:
    values = InstanceValidator(config).validate(VALID_RECORD)

    assert values == [VALID_RECORD[name] for name in config.columns.features]
    numbers = values[: len(config.columns.numerical)]
    assert all(type(value) is float for value in numbers)


@pytest.mark.parametrize("field", ["payment_method", "total_charges"])
def test_instance_validator_turns_none_and_absent_nullable_fields_into_nan(
    config: Config, field: str
) -> None:
    validator = InstanceValidator(config)
    position = validator.features.index(field)
    absent = {key: value for key, value in VALID_RECORD.items() if key != field}

    for record in ({**VALID_RECORD, field: None}, absent):
        value = validator.validate(record)[position]
        assert isinstance(value, float) and math.isnan(value)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("age", "unknown", "must be a number, got str 'unknown'"),
        ("age", "42", "must be a number, got str '42'"),
        ("support_calls", True, "must be a number, got bool True"),
        ("tenure_months", -3, "must be >= 0, got -3"),
        ("monthly_charges", 9999.0, "must be <= 500, got 9999.0"),
        ("monthly_charges", math.inf, "must be a finite number, got inf"),
        ("contract", "weekly", "must be one of ['month-to-month', 'one-year', 'two-year']"),
        ("contract", "One-Year", "got 'One-Year'"),
        ("region", 3, "must be a string, got int 3"),
        ("region", None, "must not be null"),
        ("age", math.nan, "must not be null"),
        ("agee", 40, "is not a known field"),
    ],
)
def test_instance_validator_rejects_each_bad_field_class(
    config: Config, field: str, value: Any, expected: str
) -> None:
    with pytest.raises(InvalidInstance, match=field) as caught:
        InstanceValidator(config).validate({**VALID_RECORD, field: value})

    assert expected in caught.value.errors[field]
    assert list(caught.value.errors) == [field]


def test_instance_validator_requires_non_nullable_fields(config: Config) -> None:
    record = {key: value for key, value in VALID_RECORD.items() if key != "region"}

    with pytest.raises(InvalidInstance, match="region: is required"):
        InstanceValidator(config).validate(record)


def test_instance_validator_reports_every_bad_field_at_once(config: Config) -> None:
    record = {**VALID_RECORD, "age": 5, "contract": "weekly", "colour": "red"}

    with pytest.raises(InvalidInstance) as caught:
        InstanceValidator(config).validate(record)

    assert set(caught.value.errors) == {"age", "contract", "colour"}
    assert "age: must be >= 18" in str(caught.value)


def test_instance_validator_passes_identifiers_through(config: Config) -> None:
    bare = {k: v for k, v in VALID_RECORD.items() if k not in ("customer_id", "event_time")}

    assert InstanceValidator(config).validate(bare) == InstanceValidator(config).validate(
        VALID_RECORD
    )


def test_build_request_model_accepts_a_valid_record_and_its_own_example(config: Config) -> None:
    model = build_request_model(config)

    parsed = model.model_validate(VALID_RECORD)
    example = model.model_json_schema()["examples"][0]

    assert parsed.model_dump()["contract"] == "one-year"
    assert model.model_validate(example).model_dump()["region"] == example["region"]
    nullable = model.model_validate({k: v for k, v in VALID_RECORD.items() if k != "total_charges"})
    assert nullable.model_dump()["total_charges"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("age", 5), ("contract", "weekly"), ("region", None), ("colour", "red"), ("age", "old")],
)
def test_build_request_model_rejects_what_the_validator_rejects(
    config: Config, field: str, value: Any
) -> None:
    record = {**VALID_RECORD, field: value}

    with pytest.raises(pydantic.ValidationError, match=field):
        build_request_model(config).model_validate(record)
    with pytest.raises(InvalidInstance, match=field):
        InstanceValidator(config).validate(record)


@pytest.mark.parametrize(
    "module", ["ml_project.schemas", "ml_project.export", "ml_project.engineer"]
)
def test_serving_modules_import_no_modelling_libraries(module: str) -> None:
    forbidden = ("mlflow", "evidently", "pandera", "matplotlib")
    code = f"import sys, {module}; print(','.join(m for m in {forbidden!r} if m in sys.modules))"

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == ""
