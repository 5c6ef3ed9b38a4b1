"""The data contract, derived once from the Config's column specs.

Three views of the same rules, so they can never disagree:
- `field_rules(config)`: the rules themselves (type, range, categories, nullability);
- `InstanceValidator`: a compiled per-instance check for single records (microseconds, no
  DataFrame), used by the stream, the APIs and every cloud handler;
- `build_request_model(config)`: the Pydantic request model the FastAPI docs show.
The pandera DataFrame schemas for whole frames live in `validate.py`, built from the same rules.
This module imports neither pandera nor mlflow: it is on the serving path.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, create_model

from ml_project.config import Config

Kind = Literal["numerical", "categorical"]


@dataclass(frozen=True)
class FieldRule:
    """One production feature: what a valid value looks like."""

    name: str
    kind: Kind
    nullable: bool
    min: float | None = None
    max: float | None = None
    categories: frozenset[str] = frozenset()

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Return the value as the Pipeline expects it (None -> NaN) and an error, if any."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.nan, None if self.nullable else "must not be null"
        if self.kind == "numerical":
            if isinstance(value, bool) or not isinstance(value, (int, float, numbers.Real)):
                return value, f"must be a number, got {type(value).__name__} {value!r}"
            try:
                number = float(value)
            except OverflowError:  # a JSON integer beyond float range
                number = math.inf
            if not math.isfinite(number):
                return value, f"must be a finite number, got {value!r}"
            if self.min is not None and number < self.min:
                return value, f"must be >= {self.min:g}, got {value!r}"
            if self.max is not None and number > self.max:
                return value, f"must be <= {self.max:g}, got {value!r}"
            return number, None
        if not isinstance(value, str):
            return value, f"must be a string, got {type(value).__name__} {value!r}"
        if value not in self.categories:
            return value, f"must be one of {sorted(self.categories)}, got {value!r}"
        return value, None


def field_rules(config: Config) -> tuple[FieldRule, ...]:
    """The feature rules in the Pipeline's column order."""
    columns = config.columns
    numerical = (
        FieldRule(name, "numerical", spec.nullable, spec.min, spec.max)
        for name, spec in columns.numerical.items()
    )
    categorical = (
        FieldRule(name, "categorical", spec.nullable, categories=frozenset(spec.categories))
        for name, spec in columns.categorical.items()
    )
    return (*numerical, *categorical)


class InvalidInstance(ValueError):
    """A record that breaks the schema; `errors` maps each bad field to the rule it broke."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in self.errors.items()))


class InstanceValidator:
    """The compiled per-record check: the same rules as the pandera schema, without a DataFrame.

    Identifier fields (id, timestamp) are optional and passed through to the log, if of the type
    the request model declares; any other unknown field is an error, so a misspelt feature name
    never silently becomes a missing value.
    """

    def __init__(self, config: Config) -> None:
        self.rules = field_rules(config)
        self.features = tuple(rule.name for rule in self.rules)
        # Types as the request model declares them (a Parquet stream gives datetimes).
        self._identifiers: dict[str, tuple[tuple[type, ...], str]] = {
            config.columns.id: ((str, numbers.Integral), "a string or an integer")
        }
        if config.columns.timestamp:
            self._identifiers[config.columns.timestamp] = ((str, datetime), "a string")
        self.passthrough = frozenset(self._identifiers)
        self._known = frozenset(self.features) | self.passthrough

    def validate(self, record: Mapping[str, Any]) -> list[Any]:
        """The feature values in Pipeline order; raises InvalidInstance naming every bad field."""
        errors: dict[str, str] = {}
        values: list[Any] = []
        for rule in self.rules:
            if rule.name not in record:
                if rule.nullable:
                    values.append(math.nan)
                else:
                    errors[rule.name] = "is required"
                continue
            value, error = rule.check(record[rule.name])
            values.append(value)
            if error:
                errors[rule.name] = error
        for field, (types, expected) in self._identifiers.items():
            value = record.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                errors[field] = f"must be {expected}, got {type(value).__name__} {value!r}"
        for field in record.keys() - self._known:
            errors[str(field)] = "is not a known field"
        if errors:
            raise InvalidInstance(errors)
        return values


def build_request_model(config: Config) -> type[BaseModel]:
    """The Pydantic model of one production instance, for API docs and request parsing."""
    fields: dict[str, Any] = {}
    example: dict[str, Any] = {}
    for rule in field_rules(config):
        if rule.kind == "numerical":
            annotation: Any = float | None if rule.nullable else float
            example[rule.name] = rule.min if rule.min is not None else 0.0
        else:
            categories = tuple(sorted(rule.categories))
            annotation = Literal[categories]
            annotation = annotation | None if rule.nullable else annotation
            example[rule.name] = categories[0]
        default = None if rule.nullable else ...
        fields[rule.name] = (annotation, Field(default, ge=rule.min, le=rule.max))
    fields[config.columns.id] = (str | int | None, Field(None, description="Echoed in the log"))
    if config.columns.timestamp:
        fields[config.columns.timestamp] = (str | None, Field(None, description="Event time"))
    return create_model(
        "PredictionRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}),
        **fields,
    )
