"""What each column of a data file holds, for `draft_config.py`: its rule, task and roles.

A draft is read from one file, often a month of data, and used on every month after it: a rule
is drafted for what production will send, not only for what the file happened to hold. A month
or an hour gets its whole calendar range, a year no upper bound; a text column whose values repeat is a category however many values it has.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ml_project.csv_format import CSV_MISSING, check_csv
from ml_project.schemas import parse_numbers

MARGIN = 0.1  # ranges are widened by this share of the span seen
MAX_CLASSES = 20  # an integer target with more distinct values is a quantity: regression
FEW_VALUES = 10  # an integer column with at most this many values may hold codes
MIN_NUMBERS = 0.95  # this share of a column's values are numbers: a numeric column with typos
SINGLES = 0.5  # more of the rows than this hold a text seen once: an identifier or free text
CODE_NAME = re.compile(r"(code|type|class|category|group|kind|level|segment|status)s?$", re.I)
ID_WORDS = {"id", "uuid", "guid", "key"}  # the last word of an identifier's name
BOOLEAN_TEXTS = {"True", "False", "true", "false", "TRUE", "FALSE"}
FLOAT_MAX = sys.float_info.max
SMALLEST_STEP = 1e-300  # a margin below it is widened by, not rounded to, a power of ten
# A calendar part's conventions (1-12, or 0-11 as some libraries count months): its range is
# every convention the values fit, a 0-based one only when it is the unit's first or a 0 is seen.
CALENDAR: dict[str, tuple[tuple[int, int], ...]] = {
    "month": ((1, 12), (0, 11)), "day of the month": ((1, 31),),
    "day of the week": ((0, 6), (1, 7)), "day of the year": ((1, 366),),
    "week of the year": ((1, 53), (0, 53)), "quarter": ((1, 4),), "hour": ((0, 23),),
    "minute": ((0, 59),), "second": ((0, 59),)}
CALENDAR_NAMES = {  # a name's calendar words (`pickup_hour`: hour) -> the unit
    frozenset({"month"}): "month", frozenset({"mnth"}): "month",
    frozenset({"monthofyear"}): "month", frozenset({"month", "year"}): "month",
    frozenset({"day"}): "day of the month",
    frozenset({"dayofmonth"}): "day of the month", frozenset({"dom"}): "day of the month",
    frozenset({"day", "month"}): "day of the month", frozenset({"weekday"}): "day of the week",
    frozenset({"dayofweek"}): "day of the week", frozenset({"dow"}): "day of the week",
    frozenset({"wday"}): "day of the week", frozenset({"day", "week"}): "day of the week",
    frozenset({"dayofyear"}): "day of the year", frozenset({"doy"}): "day of the year",
    frozenset({"yday"}): "day of the year", frozenset({"day", "year"}): "day of the year",
    frozenset({"week"}): "week of the year", frozenset({"weekofyear"}): "week of the year",
    frozenset({"isoweek"}): "week of the year", frozenset({"week", "year"}): "week of the year",
    frozenset({"quarter"}): "quarter", frozenset({"qtr"}): "quarter", frozenset({"hour"}): "hour",
    frozenset({"hr"}): "hour", frozenset({"hourofday"}): "hour", frozenset({"hour", "day"}): "hour",
    frozenset({"minute"}): "minute", frozenset({"second"}): "second"}
YEAR_NAMES = {"year", "yr", "yyyy"}
CALENDAR_TEXTS = {  # English names, in full and in three letters
    "months": ["January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December"],
    "weekdays": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]}
CALENDAR_WORDS = frozenset().union(*CALENDAR_NAMES)


@dataclass
class Guess:
    """One feature's drafted rule (None: left out) and the reason to review it."""

    kind: str  # numerical | categorical | excluded | dates
    rule: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def read_as_received(path: Path) -> pd.DataFrame:
    """The file as ingest sees it before typing: CSV cells as text (NaN for missing), so the
    categories drafted are the very strings validation will compare; Parquet as stored. A CSV
    out of the format every path reads (`csv_format`) is refused here in the same words."""
    if path.suffix == ".csv":
        check_csv(path)
        frame: pd.DataFrame = pd.read_csv(path, dtype=str, **CSV_MISSING)
        return frame
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"unsupported data file {path}: expected .csv or .parquet")


def lacking(path: Path, columns: list[str]) -> list[str] | None:
    """Which of `columns` the file's header lacks (all, if it is unreadable); None: no file."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".parquet":
            header = pq.read_schema(path).names
        else:
            header = list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except (ValueError, OSError):  # an empty, broken or foreign file has none of them
        header = []
    return [column for column in columns if column not in header]


def _numbers(values: pd.Series) -> tuple[np.ndarray, list[Any]] | None:
    """The column as floats (as validation parses it) and the present values that are not
    numbers, when nearly all are numbers (a few typos do not make a numeric column text)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=float, na_value=np.nan), []
    present = values.notna().to_numpy()
    parsed = parse_numbers(values.to_numpy(dtype=object))
    not_numbers = present & np.isnan(parsed)
    if not_numbers.sum() > (1 - MIN_NUMBERS) * present.sum():
        return None
    return parsed, list(dict.fromkeys(values[not_numbers]))


def is_dates(values: pd.Series) -> bool:
    """Every present value an ISO 8601 time, parsed as validation parses timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    present = values.dropna()
    if present.empty or not all(isinstance(value, str) for value in present):
        return False
    if _numbers(values) is not None:  # years and other plain numbers are numbers
        return False
    parsed = pd.to_datetime(present, errors="coerce", format="ISO8601", utc=True)
    return bool(parsed.notna().all())


def padded_range(low: float, high: float, *, integral: bool = False) -> tuple[float, float]:
    """[low, high] widened by MARGIN of the span and rounded outward to a readable step (whole
    numbers for integer columns); never below 0 when nothing seen was negative (counts, ages).
    Any finite floats: the sums never overflow (bounds stay within the largest float) and a
    span too small to step through (subnormals) is widened without rounding."""
    half_span = high / 2 - low / 2  # (high - low) / 2, which cannot overflow
    margin = 2 * MARGIN * half_span or MARGIN * abs(high) or MARGIN
    lower, upper = max(low - margin, -FLOAT_MAX), min(high + margin, FLOAT_MAX)
    step = 10.0 ** math.floor(math.log10(margin)) if margin >= SMALLEST_STEP else 0.0
    step = max(step, 1.0) if integral else step
    if step > 0:
        digits = max(0, -math.floor(math.log10(step)))
        # The tolerance keeps float noise (0.8 + 0.06 = 0.8600000000000001) from adding a step.
        lower = round(math.floor(lower / step + 1e-9) * step, digits)
        upper = round(math.ceil(upper / step - 1e-9) * step, digits)
    lower = min(max(lower, -FLOAT_MAX), low)  # rounding never narrows what was seen
    upper = max(min(upper, FLOAT_MAX), high)
    return (max(lower, 0.0) if low >= 0 else lower), upper


def _words(name: str) -> list[str]:
    """A column name's words in order: `DayOfWeek`, `day_of_week` and `day-of-week` alike."""
    return [word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


def name_words(name: str) -> frozenset[str]:
    return frozenset(_words(name))


def is_id_name(name: str) -> bool:
    """Named like an identifier: `PassengerId`, `customer_id`, `RowID`, `uuid` (not `valid`)."""
    return _words(name)[-1:] in ([word] for word in ID_WORDS)


def calendar_range(name: str, low: float, high: float) -> tuple[str, int, int] | None:
    """The unit and whole range of a calendar part named so (`month`, `pickup_hour`, ...), if
    the values seen are whole numbers within one of its conventions. Other words may qualify a
    unit but a second, which is also an ordinal (`second_purchase`)."""
    words = name_words(name)
    unit = CALENDAR_NAMES.get(words & CALENDAR_WORDS)
    if unit == "second" and len(words) > 1:
        return None
    if unit is None or low != math.floor(low) or high != math.floor(high):
        return None
    fits = [(first, last) for index, (first, last) in enumerate(CALENDAR[unit])
            if first <= low and high <= last and (first or not index or low == 0)]
    if not fits:
        return None
    return unit, min(first for first, _ in fits), max(last for _, last in fits)


def _number(value: float) -> int | float:
    """A whole number as an int (`10`, not `10.0`) while it reads as one; floats otherwise."""
    return int(value) if float(value).is_integer() and abs(value) < 1e16 else float(value)


def _missing_note(missing: int, rows: int) -> str:
    return f"; {missing:,} of {rows:,} missing" if missing else "; never missing"


def _numerical(name: str, seen: np.ndarray,
               integral: bool) -> tuple[dict[str, Any], str, bool]:
    """The range production will be held to, how it was chosen, and whether it is a calendar
    part or a year (whose few values are no codes)."""
    low, high = float(seen.min()), float(seen.max())
    note = f"seen {low:.6g} .. {high:.6g}"
    calendar = calendar_range(name, low, high)
    if calendar:
        unit, first, last = calendar
        article = "an" if unit[0] in "aeiouh" else "a"
        return {"min": first, "max": last}, f"{note}: {article} {unit}, its whole range", True
    lower, upper = padded_range(low, high, integral=integral)
    median = float(np.median(seen))
    if low >= 0 and len(np.unique(seen)) > FEW_VALUES and high - median > 3 * (median - low):
        # Amounts, counts, durations: the next month's largest is often past this one's.
        upper = padded_range(low, min(2 * high, FLOAT_MAX), integral=integral)[1]
        note += ", a long tail: max twice the largest seen"
    if integral and name_words(name) & YEAR_NAMES and 1000 <= low and high <= 9999:
        return {"min": _number(lower)}, f"{note}: a year, no max (production comes later)", True
    return {"min": _number(lower), "max": _number(upper)}, note, False


def _calendar_names(seen: set[str]) -> tuple[str, list[str]] | None:
    """Names of months or weekdays (`Jan`, `january`, `MONDAY`...) and all of their kind and
    spelling, in calendar order: a file from spring still names December."""
    for unit, names in CALENDAR_TEXTS.items():
        for spelling in (names, [name[:3] for name in names]):
            for case in (str.title, str.lower, str.upper):
                every = [case(name) for name in spelling]
                if seen <= set(every):
                    return unit, every
    return None


def _texts(name: str, present: pd.Series, nullable: dict[str, bool], note: str) -> Guess:
    """A text column: months or weekdays by name, a category (values repeat, however many)
    or an identifier/free text."""
    calendar = _calendar_names(set(present.astype(str)))
    if calendar:
        unit, every = calendar
        return Guess("categorical", {"categories": every, **nullable},
                     f"{present.nunique()} {unit} seen, all {len(every)} listed" + note)
    counts = present.astype(str).value_counts()
    once = int((counts == 1).sum())
    named = is_id_name(name)
    if named or once > SINGLES * len(present):
        why = "named like an identifier" if named else "an identifier or free text?"
        return Guess("excluded", note=f"{len(counts):,} distinct texts in {len(present):,} "
                                      f"rows, {once:,} seen once: {why}")
    rare = f"; {once:,} seen once: production may hold others, add them" if once else ""
    return Guess("categorical", {"categories": sorted(counts.index), **nullable},
                 f"{len(counts):,} values seen, others will be rejected{rare}{note}")


def guess_feature(name: str, values: pd.Series, *, from_csv: bool) -> Guess:
    """The rule for one feature column, or why it is left out."""
    present = values.dropna()
    missing, rows = len(values) - len(present), len(values)
    nullable = {"nullable": True} if missing else {}
    if present.empty:
        return Guess("excluded", note="every value is missing")
    distinct = present.astype(str).unique()
    if len(distinct) == 1:
        return Guess("excluded", note=f"constant ({distinct[0]!r}): carries no information")
    if pd.api.types.is_bool_dtype(values) or set(map(type, present)) == {bool} or (
        from_csv and set(distinct) <= BOOLEAN_TEXTS
    ):  # the readers give a categorical feature's values as text, a Parquet bool too
        return Guess("categorical", {"categories": sorted(distinct), **nullable},
                     "true/false flag, read as text" + _missing_note(missing, rows))
    numbers = _numbers(values)
    if numbers is not None:
        parsed, not_numbers = numbers
        seen = parsed[np.isfinite(parsed)]
        infinite = int(np.isinf(parsed).sum())
        if not len(seen):
            return Guess("excluded", note=f"no finite value ({infinite:,} infinite): validation "
                                          "would refuse every row")
        integral = bool(np.all(seen == np.round(seen)))
        n_values = len(np.unique(seen))
        if (from_csv and integral and n_values <= FEW_VALUES and CODE_NAME.search(name)
                and not not_numbers):
            return Guess("categorical", {"categories": sorted(distinct, key=float), **nullable},
                         "integer-looking codes (by the name), read as text"
                         + _missing_note(missing, rows))
        rule, note, natural = _numerical(name, seen, integral)
        p01, p99 = np.percentile(seen, [1, 99])
        with np.errstate(over="ignore"):  # spans past the largest float are infinite: fine
            if seen.max() > p99 + 3 * (p99 - p01) or seen.min() < p01 - 3 * (p99 - p01):
                note += f"; 98% within {p01:.6g} .. {p99:.6g}: outliers?"
        if infinite:
            note += f"; {infinite:,} infinite: their rows will be quarantined"
        if integral and n_values <= FEW_VALUES and not natural:
            note += f"; only {n_values} integer values: codes? then make it categorical"
        if not_numbers:
            note += (f"; not numbers: {not_numbers[:3]!r}"[:-1] + (", ...]" if len(not_numbers) > 3
                     else "]") + ": their rows will be quarantined")
        return Guess("numerical", {**rule, **nullable}, note + _missing_note(missing, rows))
    if is_dates(values):
        return Guess("dates", note="dates: derive features from them in a FeatureStep")
    return _texts(name, present, nullable, _missing_note(missing, rows))


def guess_task(target: pd.Series) -> tuple[str, dict[int | str, int], str]:
    """Task, the rows of each target class (sorted; none for regression) and the reason, from
    the target as the CSV/Parquet reader types it."""
    present = target.dropna()
    if present.nunique() < 2:
        raise ValueError(f"target {target.name!r} has fewer than 2 distinct values")
    if pd.api.types.is_bool_dtype(present):
        return "binary_classification", _counts(present.astype(str)), "true/false target, as text"
    if pd.api.types.is_numeric_dtype(present):
        values, rows = np.unique(present.to_numpy(dtype=float), return_counts=True)
        integral = bool(np.all(values == np.round(values)))
        if integral and len(values) <= MAX_CLASSES:
            counts: dict[int | str, int] = {int(value): int(n) for value, n in zip(values, rows)}
            if len(values) == 2:
                return "binary_classification", counts, "2 values seen"
            return ("multiclass_classification", counts,
                    f"{len(values)} integer values seen; regression if they are quantities")
        return "regression", {}, f"numbers, {len(values):,} distinct values"
    counts = _counts(present.astype(str))
    task = "binary_classification" if len(counts) == 2 else "multiclass_classification"
    return task, counts, f"{len(counts)} labels seen"


TASKS = ("binary_classification", "multiclass_classification", "regression")


def given_task(target: pd.Series, task: str) -> tuple[str, dict[int | str, int], str]:
    """The task the user chose, with the classes it implies: refused, saying why, where the
    target cannot be that task (a binary task of three labels, a regression on text)."""
    guessed, counts, reason = guess_task(target)
    if task == guessed:
        return task, counts, "given"
    present = target.dropna()
    if task == "regression":
        if pd.api.types.is_bool_dtype(present) or not pd.api.types.is_numeric_dtype(present):
            raise ValueError(f"--task regression: target {target.name!r} is not numeric")
        return task, {}, "given"
    if guessed == "regression":  # integers with many values, or numbers with fractions
        values = present.to_numpy(dtype=float)
        if not np.all(values == np.round(values)):
            raise ValueError(f"--task {task}: target {target.name!r} holds fractions, not classes")
        unique, rows = np.unique(values, return_counts=True)
        counts = {int(value): int(n) for value, n in zip(unique, rows)}
    wanted = "exactly 2" if task == "binary_classification" else "3 or more"
    if (len(counts) == 2) != (task == "binary_classification"):
        raise ValueError(f"--task {task} needs {wanted} classes; target {target.name!r} has "
                         f"{len(counts)}")
    return task, counts, "given"


def _counts(labels: pd.Series) -> dict[int | str, int]:
    """The rows of each label (text), in the labels' order."""
    return {str(label): int(count) for label, count in labels.value_counts().sort_index().items()}


def guess_id(frame: pd.DataFrame, skip: set[str]) -> str | None:
    """A column unique in every row and never missing; one named like an id first."""
    candidates = [name for name in frame.columns if name not in skip
                  and frame[name].notna().all() and frame[name].is_unique
                  and not pd.api.types.is_float_dtype(frame[name])]
    named = [name for name in candidates if is_id_name(str(name))]
    return str((named or candidates)[0]) if named or candidates else None


def guess_timestamp(frame: pd.DataFrame, skip: set[str]) -> str | None:
    """The first column of ISO 8601 times with none missing."""
    for name in frame.columns:
        if name not in skip and frame[name].notna().all() and is_dates(frame[name]):
            return str(name)
    return None
