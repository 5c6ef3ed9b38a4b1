"""The data contract for single records: field rules, the compiled InstanceValidator and the
request model, plus the promise that the serving modules stay free of modelling libraries."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_project.config import Config
from ml_project.config_sections import ValidationConfig
from ml_project.schemas import (
    InstanceValidator,
    InvalidInstance,
    field_rules,
    parse_number,
    parse_numbers,
)
from ml_project.serving.request_model import build_request_model

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


def _rejecting(config: Config) -> Config:
    """The same config with `validation.unknown_fields: reject`."""
    return config.model_copy(update={"validation": ValidationConfig(unknown_fields="reject")})


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
        ("age", "unknown", "must be a number, got 'unknown'"),
        ("age", "4 2", "must be a number, got '4 2'"),
        ("support_calls", True, "must be a number, got True"),
        ("tenure_months", -3, "must be >= 0, got -3"),
        ("monthly_charges", 9999.0, "must be <= 500, got 9999"),
        ("monthly_charges", "9999.0", "must be <= 500, got 9999"),
        ("monthly_charges", math.inf, "must be a finite number, got inf"),
        ("contract", "weekly", "must be one of ['month-to-month', 'one-year', 'two-year']"),
        ("contract", "One-Year", "got 'One-Year'"),
        ("region", 3, "must be one of ['east', 'north', 'south', 'west'], got '3'"),
        ("region", None, "must not be null"),
        ("age", math.nan, "must not be null"),
        ("agee", 40, "is not a known field"),
    ],
)
def test_instance_validator_rejects_each_bad_field_class(
    config: Config, field: str, value: Any, expected: str
) -> None:
    with pytest.raises(InvalidInstance, match=field) as caught:
        InstanceValidator(_rejecting(config)).validate({**VALID_RECORD, field: value})

    assert expected in caught.value.errors[field]
    assert list(caught.value.errors) == [field]


def test_instance_validator_requires_non_nullable_fields(config: Config) -> None:
    record = {key: value for key, value in VALID_RECORD.items() if key != "region"}

    with pytest.raises(InvalidInstance, match="region: is required"):
        InstanceValidator(config).validate(record)


def test_instance_validator_reports_every_bad_field_at_once(config: Config) -> None:
    record = {**VALID_RECORD, "age": 5, "contract": "weekly", "colour": "red"}

    with pytest.raises(InvalidInstance) as caught:
        InstanceValidator(_rejecting(config)).validate(record)

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

    config = _rejecting(config)
    with pytest.raises(pydantic.ValidationError, match=field):
        build_request_model(config).model_validate(record)
    with pytest.raises(InvalidInstance, match=field):
        InstanceValidator(config).validate(record)


@pytest.mark.parametrize(
    ("field", "value"),
    [("age", "42"), ("age", " 42.5 "), ("age", "4e1"), ("total_charges", None),
     ("colour", "red"), ("churned", 1)],
)
def test_build_request_model_accepts_what_the_validator_accepts(
    config: Config, field: str, value: Any
) -> None:
    """Numbers as text, and (by default) fields the schema does not know: the docs agree."""
    record = {**VALID_RECORD, field: value}

    build_request_model(config).model_validate(record)
    InstanceValidator(config).validate(record)


def test_instance_validator_ignores_unknown_fields_by_default_and_logs_them(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    record = {**VALID_RECORD, "colour\n": "red", "churned": 1}

    with caplog.at_level(logging.DEBUG, logger="ml_project.schemas"):
        values = InstanceValidator(config).validate(record)

    assert values == InstanceValidator(config).validate(VALID_RECORD)
    assert "'colour\\n'" in caplog.text and "churned" not in caplog.text  # escaped; target known


@pytest.mark.parametrize(
    ("text", "number"),
    [("42", 42.0), (" 42", 42.0), ("42\t", 42.0), ("4e1", 40.0), ("+5", 5.0), (".5", 0.5),
     ("5.", 5.0), ("-0", 0.0), ("inf", math.inf), ("-Infinity", -math.inf), ("1e999", math.inf),
     ("nan", None), ("1_000", None), ("0x10", None), ("1,5", None), ("", None), ("4 2", None),
     ("\u0661\u0662", None), (True, None), (7, 7.0), (2.5, 2.5), ([1], None)],
)
def test_parse_number_reads_what_the_csv_reader_reads_as_a_number(
    tmp_path: Path, text: Any, number: float | None
) -> None:
    """One grammar for text: the CSV reader's (except that it keeps text beyond float range as
    text; JSON's parser and Python's float() make that infinity, and so does the rule)."""
    assert parse_number(text) == number
    parsed = parse_numbers(np.array([text, "1"], dtype=object))[0]
    assert (math.isnan(parsed) and number is None) or parsed == number
    if isinstance(text, str) and text and text != "1e999" and text != "nan":
        path = tmp_path / "one.csv"
        path.write_text(f'a\n"{text}"\n1\n')
        read = pd.read_csv(path)["a"]
        assert (read.dtype == object) == (number is None)


@pytest.mark.parametrize(("value", "number"), [
    (10**400, math.inf), (-(10**400), -math.inf), (2**1024, math.inf), (10**308, 1e308),
    (10**5000, math.inf),  # past Python's int-to-str limit too: never written as text
], ids=["400-digits", "negative", "2**1024", "10**308", "5001-digits"])
def test_an_integer_past_float_range_is_an_infinity_as_its_text(value: int, number: float
                                                                  ) -> None:
    assert parse_number(value) == number
    assert parse_numbers(np.array([value, 1], dtype=object))[0] == number
    if abs(value) < 10**4000:
        assert parse_number(str(value)) == number


def test_the_validator_names_any_integer_python_holds_never_raising_otherwise(
    config: Config
) -> None:
    """JSON cannot bring an integer past Python's int-to-str limit (4300 digits: the API refuses
    the body, 400); Python code can. Each field still gets its verdict; none is written out."""
    huge = 10**5000
    fields = ["age", "contract", "customer_id", "event_time", "churned", "agee"]
    record = {**VALID_RECORD, **dict.fromkeys(fields, huge), "region": [huge]}
    with pytest.raises(InvalidInstance) as caught:
        InstanceValidator(_rejecting(config)).validate(record)

    assert caught.value.errors == {
        "age": "must be a finite number, got inf",
        "contract": "must be one of ['month-to-month', 'one-year', 'two-year'], got "
                    "'<int too long to show>'",
        "region": "must be one of ['east', 'north', 'south', 'west'], got <list too long to show>",
        "event_time": "must be a year-first timestamp (ISO 8601, e.g. 2024-05-31T14:00:00Z), "
                      "got <int too long to show>",
        "churned": "label '<int too long to show>' is not one of [0, 1]",
        "agee": "is not a known field",
    }  # the id takes any integer


_decimal_text = st.floats(allow_nan=False).map(repr) | st.integers(-10**20, 10**20).map(
    str) | st.from_regex(r"[+-]?[0-9]{1,25}(\.[0-9]{0,25})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
_any_text = _decimal_text | st.text(max_size=8) | st.sampled_from(
    ["inf", "-INF", "+Infinity", "nan", " 12", "12 ", "1_000", "0x10", "1e999", "", ".", "+.5",
     "5.", "\t7\n", "\x1c7"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_text | st.none() | st.just(math.nan), min_size=1, max_size=40))
def test_parse_numbers_is_parse_number_over_a_column(texts: list[Any]) -> None:
    """The vectorised parser (Arrow) and the per-value one (Python) are one parser."""
    parsed = parse_numbers(np.array(texts, dtype=object))
    for text, number in zip(texts, parsed):
        expected = None if text is None or text != text else parse_number(text)
        assert (math.isnan(number) and expected is None) or number == expected, text


@settings(max_examples=200, deadline=None)
@given(st.lists(_decimal_text, min_size=1, max_size=40))
def test_parse_numbers_gives_pythons_float_for_decimals(texts: list[str]) -> None:
    """The same double as Python's float(): what the API's JSON parser gives for the number."""
    parsed = parse_numbers(np.array(texts, dtype=object))
    np.testing.assert_array_equal(parsed, np.array([float(text) for text in texts]))


def test_parse_numbers_takes_columns_that_are_not_all_text() -> None:
    mixed = np.array([1, "2.5", None, 3.0, "x", True], dtype=object)
    np.testing.assert_array_equal(parse_numbers(mixed), [1.0, 2.5, math.nan, 3.0, math.nan,
                                                         math.nan])
    np.testing.assert_array_equal(parse_numbers(np.array([None, math.nan], dtype=object)),
                                  [math.nan, math.nan])
    np.testing.assert_array_equal(parse_numbers(np.array([True, False])), [math.nan, math.nan])


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
