"""The data contract, derived once from the Config's column specs: one rule per column, holding
both its check and its wording.

- `FieldRule.check(value)`: the verdict on one value and, if it is bad, the reason, in the words
  every path reports (the stream, both APIs, every cloud handler, and the batch quarantine);
- `field_rules(config)`, `identifier_rules(config)`, `target_rule(config)`: the rules;
- `parse_number` / `parse_numbers`: the one way text becomes a number (one value or a column);
- `InstanceValidator`: the per-record check (microseconds, no DataFrame).
`request_model.py` shows the same rules as the FastAPI docs' Pydantic model; `validate.py`
builds the pandera schema for frames from them, with each failing cell's reason from
`FieldRule.check`; values read in messages as `wording.py` spells them. No pandera, no
mlflow here: this module is on the serving path.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ml_project.config import MISSING_TEXTS, Config
from ml_project.wording import listed, shown, shown_number, text_of

logger = logging.getLogger(__name__)

Kind = Literal["numerical", "categorical", "identifier", "timestamp"]

UNKNOWN_FIELD = "is not a known field"
REQUIRED = "is required"

# A number as text, as the CSV reader reads one: a plain decimal (sign, point and exponent
# optional) or an infinity, with blanks around it allowed. Not "nan" (JSON has null for that),
# not "1_000", "0x10" or "1,5". Python's float() gives the value, the same double Arrow gives.
BLANKS = " \t\n\r\f\v"
NUMBER_TEXT = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?i:inf(?:inity)?)"
_NUMBER = re.compile(NUMBER_TEXT)


def parse_number(value: Any) -> float | None:
    """A number, or a number as text, as a float; None if it is not one (a bool is not)."""
    if type(value) is float:
        return float(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return as_float(value)
    if isinstance(value, str):
        text = value.strip(BLANKS)
        return float(text) if _NUMBER.fullmatch(text) else None
    return None


def as_float(number: Any) -> float:
    try:
        return float(number)
    except OverflowError:  # an int past float range is infinite, as a number text past it reads
        return math.inf if number > 0 else -math.inf


def parse_numbers(values: np.ndarray) -> np.ndarray:
    """`parse_number` over a column: float64, NaN where a value is missing or not a number.

    Text goes through Arrow (vectorised, correctly rounded: the same double as Python's
    `float()`, so a number read from a file equals the same number sent to the API as JSON);
    a column of anything else goes value by value.
    """
    if values.dtype.kind in "iuf":
        return np.asarray(values, dtype=float)
    if values.dtype.kind == "b":
        return np.full(len(values), math.nan)
    objects = np.asarray(values, dtype=object)
    kind = pd.api.types.infer_dtype(objects, skipna=True)
    if kind not in ("string", "empty"):
        return np.array([_number_or_nan(v) for v in objects], dtype=float)
    text = pc.utf8_trim(pa.array(objects, type=pa.string(), from_pandas=True), characters=BLANKS)
    numeric = pc.match_substring_regex(text, f"^(?:{NUMBER_TEXT})$").fill_null(False)
    only_numbers = pc.if_else(numeric, text, pa.scalar(None, pa.string()))
    try:
        parsed = pc.cast(only_numbers, pa.float64())
    except pa.ArrowInvalid:  # a text Arrow reads otherwise than Python: Python decides
        return np.array([_number_or_nan(v) for v in objects], dtype=float)
    return np.array(parsed.to_numpy(zero_copy_only=False), dtype=float)  # nulls become NaN


def _number_or_nan(value: Any) -> float:
    number = None if is_missing(value) else parse_number(value)
    return math.nan if number is None else number


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time (text or a datetime) as a naive UTC datetime; else None.

    Text is read by `datetime.fromisoformat` or else pandas' ISO 8601 parser (which reads
    frames, a column at once): a text either accepts is a timestamp on every path."""
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            parsed = pd.to_datetime(value, errors="coerce", format="ISO8601", utc=True)
            if pd.isna(parsed):
                return None
            moment = parsed.tz_localize(None).to_pydatetime()
    elif isinstance(value, datetime):
        moment = value
    else:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


_NA, _NAT = pd.NA, pd.NaT


def is_missing(value: Any) -> bool:
    """None, NaN, pandas' NA, a not-a-time or a text that marks a missing value in a file
    (`MISSING_TEXTS`: "NA", "", "null", ...): what a JSON null means."""
    kind = type(value)
    if kind is float:  # the common cases first: this runs for every field of every request
        return bool(value != value)
    if kind is str:
        return value in MISSING_TEXTS
    if kind is int or kind is bool:
        return False
    if value is None or value is _NA or value is _NAT:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(value != value)
    return isinstance(value, np.datetime64) and bool(np.isnat(value))


def is_scalar_not_text(value: Any) -> bool:
    """A bool or a number (Python's or numpy's): what a categorical feature compares as text."""
    return isinstance(value, (bool, np.bool_, numbers.Number))


def integer_forms(categories: frozenset[int | str]) -> list[int]:
    """The text categories that are whole numbers written plainly ("4", not "04" or "4.0"):
    codes, which a client may send as JSON integers (`FieldRule.as_text`)."""
    return sorted(int(c) for c in categories
                  if isinstance(c, str) and re.fullmatch(r"-?[0-9]+", c) and str(int(c)) == c)


@dataclass(frozen=True)
class FieldRule:
    """One column: what a valid value looks like, and what to say about one that is not."""

    name: str
    kind: Kind
    nullable: bool
    min: float | None = None
    max: float | None = None
    categories: frozenset[int | str] = frozenset()
    # A feature's categories are text, as a file holds them: another scalar (JSON's true, 4,
    # 4.0; numpy's) is compared and named as its text, as a CSV writes it ("True", "4", "4.0").
    # So are a target's classes when all are text; numeric classes keep their type.
    as_text: bool = False

    def check(self, value: Any) -> tuple[Any, str | None]:
        """The value as the Pipeline expects it (a number as float, None -> NaN) and the reason
        it is bad, or None."""
        kind = type(value)
        if kind is int or kind is float:  # what JSON gives most: straight to the range checks
            number = value if kind is float else as_float(value)
            if number != number:
                return math.nan, None if self.nullable else "must not be null"
        elif is_missing(value):
            return math.nan, None if self.nullable else "must not be null"
        elif kind is str and self.kind == "categorical" and value in self.categories:
            return value, None
        if self.kind == "numerical":
            if not (kind is int or kind is float):
                parsed = parse_number(value)
                if parsed is None:
                    return value, f"must be a number, got {shown(value)}"
                number = parsed
            if number - number != 0.0:  # infinite (NaN was missing)
                return value, f"must be a finite number, got {shown_number(number)}"
            if self.min is not None and number < self.min:
                return value, f"must be >= {shown_number(self.min)}, got {shown_number(number)}"
            if self.max is not None and number > self.max:
                return value, f"must be <= {shown_number(self.max)}, got {shown_number(number)}"
            return number, None
        if self.kind == "categorical":
            if self.as_text and is_scalar_not_text(value):
                value = text_of(value)
                if value in self.categories:
                    return value, None
            elif self.allows(value):
                return value, None
            return value, f"must be one of {listed(self.categories)}, got {shown(value)}"
        if self.kind == "identifier":
            if isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool):
                return value, None
            return value, f"must be text or an integer, got {shown(value)}"
        moment = parse_timestamp(value)
        if moment is None:
            return value, (f"must be a year-first timestamp (ISO 8601, e.g. 2024-05-31T14:00:00Z), "
                           f"got {shown(value)}")
        return moment, None

    def allows(self, value: Any) -> bool:
        """A categorical value among the allowed ones (a bool never is, whatever it equals)."""
        if type(value) is str:
            return value in self.categories
        if isinstance(value, (bool, np.bool_)):
            return False
        try:
            return value in self.categories
        except TypeError:  # unhashable: a JSON list or object
            return False


def field_rules(config: Config) -> tuple[FieldRule, ...]:
    """The feature rules in the Pipeline's column order."""
    columns = config.columns
    numerical = (
        FieldRule(name, "numerical", spec.nullable, spec.min, spec.max)
        for name, spec in columns.numerical.items()
    )
    categorical = (
        FieldRule(name, "categorical", spec.nullable, categories=frozenset(spec.categories),
                  as_text=True)
        for name, spec in columns.categorical.items()
    )
    return (*numerical, *categorical)


def identifier_rules(config: Config) -> tuple[FieldRule, ...]:
    """The id (text or an integer) and the timestamp (ISO 8601), if configured. A record may
    leave them out; when given (and in every row of a frame) they must be valid."""
    rules = [FieldRule(config.columns.id, "identifier", nullable=False)]
    if config.columns.timestamp:
        rules.append(FieldRule(config.columns.timestamp, "timestamp", nullable=False))
    return tuple(rules)


def target_rule(config: Config) -> FieldRule:
    """A label of modelling data: one of `target_classes` (numbers or text), or a finite number
    for regression."""
    target = config.columns.target
    classes = config.columns.target_classes
    if config.is_classification:
        return FieldRule(target, "categorical", False, categories=frozenset(classes),
                         as_text=all(isinstance(label, str) for label in classes))
    return FieldRule(target, "numerical", False)


def label_key(value: Any) -> str:
    """A label as text, so 1, 1.0 and "1" (a CSV's spellings of one class) are one class, and
    a bool is its text, as for a text class."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return text_of(value)


class LabelRule:
    """A label that comes with a row to score (a labelled batch file, a request, the stream,
    monitoring's labels file): not used to predict, but when given it must be usable, on every
    path with the same words: a class (1, 1.0 and "1" are one class; True is "True") or, for
    regression, a finite number. A missing label is no label."""

    def __init__(self, config: Config) -> None:
        self.classes: dict[str, Any] | None = None
        self.expected = "a finite number"
        if config.is_classification:
            self.classes = {label_key(label): label for label in config.columns.target_classes}
            self.expected = f"one of {list(config.columns.target_classes)}"

    def check(self, value: Any) -> tuple[Any, str | None]:
        """The label as its class's own value (regression: a float; None if missing), and why
        it is unusable or None."""
        if is_missing(value):
            return None, None
        if self.classes is None:
            number = parse_number(value)
            if number is not None and math.isfinite(number):
                return number, None
        elif (key := label_key(value)) in self.classes:
            return self.classes[key], None
        return value, f"label {shown(label_key(value))} is not {self.expected}"

    def typed(self, labels: pd.Series) -> tuple[pd.Series, np.ndarray]:
        """A column of labels checked: their values (NaN or None where missing or unusable) and
        which are usable."""
        checked = [self.check(label) for label in labels]
        usable = np.array([error is None for _, error in checked], dtype=bool)
        values = [value if error is None else None for value, error in checked]
        # regression: floats; classes: their own values (1, never 1.0 beside a gap)
        dtype = float if self.classes is None else object
        return pd.Series(values, index=labels.index, dtype=dtype), usable


def known_fields(config: Config) -> tuple[str, ...]:
    """Identifier, timestamp, features and target: every field any path knows, in schema order."""
    columns = config.columns
    names = [columns.id] + ([columns.timestamp] if columns.timestamp else [])
    return (*names, *columns.features, columns.target)


class InvalidInstance(ValueError):
    """A record that breaks the schema; `errors` maps each bad field to the rule it broke."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in self.errors.items()))


class InstanceValidator:
    """The per-record check: the rules pandera checks frames by, without a DataFrame.

    The id and timestamp are optional and passed to the log, but must be valid when given; the
    target is welcome, unused, and checked as a labelled file's labels are (`LabelRule`). Any
    other field is ignored (`validation.unknown_fields: ignore`, logged at debug) or an error
    (`reject`), so a misspelt feature name can be made to fail loudly.
    """

    def __init__(self, config: Config) -> None:
        self.rules = field_rules(config)
        self.features = tuple(rule.name for rule in self.rules)
        self.identifiers = identifier_rules(config)
        self.passthrough = frozenset(rule.name for rule in self.identifiers)
        self._known = frozenset(known_fields(config))
        self.target = config.columns.target
        self.label = LabelRule(config)
        self.reject_unknown = config.validation.unknown_fields == "reject"

    def validate(self, record: Mapping[str, Any]) -> list[Any]:
        """The feature values in Pipeline order; raises InvalidInstance naming every bad field."""
        errors: dict[str, str] = {}
        values: list[Any] = []
        known = 0  # fields of the record that the schema knows
        for rule in self.rules:
            if rule.name not in record:
                if rule.nullable:
                    values.append(math.nan)
                else:
                    errors[rule.name] = REQUIRED
                continue
            known += 1
            value, error = rule.check(record[rule.name])
            values.append(value)
            if error:
                errors[rule.name] = error
        for rule in self.identifiers:
            if rule.name in record:
                known += 1
                error = rule.check(record[rule.name])[1]
                if error:
                    errors[rule.name] = error
        labelled = self.target in record
        if labelled:
            error = self.label.check(record[self.target])[1]
            if error:
                errors[self.target] = error
        if len(record) > known + labelled:
            unknown = [str(field) for field in record if field not in self._known]
            if self.reject_unknown:
                errors.update(dict.fromkeys(unknown, UNKNOWN_FIELD))
            else:
                logger.debug("Ignoring fields not in the schema: %r", unknown[:20])
        if errors:
            raise InvalidInstance(errors)
        return values
