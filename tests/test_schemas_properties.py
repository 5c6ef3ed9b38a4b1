"""Property-based tests of the per-instance check: any JSON object either validates, or is
rejected with a reason for each bad field, and never raises anything else."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_project.config import Config, load_config
from ml_project.schemas import (
    FieldRule,
    InstanceValidator,
    InvalidInstance,
    field_rules,
    parse_number,
)
from tests.conftest import FIXTURE_CONFIG

CONFIG: Config = load_config(
    "prediction", "production", "local", config_file=FIXTURE_CONFIG,
    overrides={"validation": {"unknown_fields": "reject"}},
)
RULES = field_rules(CONFIG)
VALIDATOR = InstanceValidator(CONFIG)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


def valid_value(rule: FieldRule) -> st.SearchStrategy[Any]:
    if rule.kind == "numerical":
        low = rule.min if rule.min is not None else -1e9
        high = rule.max if rule.max is not None else 1e9
        numbers = st.floats(low, high) | st.integers(math.ceil(low), math.floor(high))
        values: st.SearchStrategy[Any] = numbers | numbers.map(str)  # numbers as text too
    else:
        values = st.sampled_from(sorted(rule.categories))
    return values | st.none() if rule.nullable else values


def any_value(rule: FieldRule) -> st.SearchStrategy[Any]:
    return valid_value(rule) | json_values


valid_records = st.fixed_dictionaries({rule.name: valid_value(rule) for rule in RULES})
arbitrary_records = st.fixed_dictionaries(
    {},
    optional={rule.name: any_value(rule) for rule in RULES}
    | {"customer_id": json_scalars, "unexpected": json_values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_records)
def test_any_json_object_validates_or_is_rejected_field_by_field(record: dict[str, Any]) -> None:
    try:
        values = VALIDATOR.validate(record)
    except InvalidInstance as err:
        assert err.errors, "a rejection must name at least one field"
        known = {rule.name for rule in RULES} | {"customer_id", "unexpected"}
        assert set(err.errors) <= known
        for field, reason in err.errors.items():
            assert reason and field in str(err)
        if "unexpected" in record:
            assert err.errors["unexpected"] == "is not a known field"
        return
    assert "unexpected" not in record
    assert len(values) == len(RULES)
    for rule, value in zip(RULES, values):
        given_value = record.get(rule.name)
        if given_value is None:
            assert rule.nullable and isinstance(value, float) and math.isnan(value)
        elif rule.kind == "numerical":
            assert isinstance(value, float) and value == parse_number(given_value)
        else:
            assert value == given_value


@settings(max_examples=200, deadline=None)
@given(valid_records)
def test_every_record_within_the_rules_is_accepted(record: dict[str, Any]) -> None:
    assert len(VALIDATOR.validate(record)) == len(RULES)


@pytest.mark.parametrize("rule", [r for r in RULES if not r.nullable], ids=lambda r: r.name)
def test_a_missing_required_field_is_named(rule: FieldRule) -> None:
    record = {r.name: (r.min if r.kind == "numerical" else sorted(r.categories)[0]) for r in RULES}
    del record[rule.name]
    with pytest.raises(InvalidInstance, match=f"{rule.name}: is required"):
        VALIDATOR.validate(record)
