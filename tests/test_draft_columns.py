"""What the drafter makes of one column: the rule production will be held to.

A draft is read from one file, often a month or a season of data, and used on every month after
it: a calendar part gets its whole range, a year no upper bound, a long-tailed quantity room
above its largest value, a text column whose values repeat a category however many values it
has; an identifier or free text is left out. Ranges widen outward for any finite floats.
"""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest

from executables.draft_columns import (
    calendar_range,
    given_task,
    guess_feature,
    guess_task,
    is_id_name,
    padded_range,
)

ROWS = 1000


@pytest.mark.parametrize(("name", "low", "high", "expected"), [
    ("month", 1, 11, ("month", 1, 12)),  # January to November: December is still a month
    ("Month", 3, 6, ("month", 1, 12)),
    ("birth_month", 0, 10, ("month", 0, 11)),  # a 0 seen: months counted from 0
    ("mnth", 1, 12, ("month", 1, 12)),
    ("MonthOfYear", 2, 2, ("month", 1, 12)),
    ("day", 1, 28, ("day of the month", 1, 31)),
    ("day_of_month", 3, 30, ("day of the month", 1, 31)),
    ("day_of_week", 1, 5, ("day of the week", 0, 7)),  # Mon-Fri as 1-5: 0-6 or 1-7?
    ("DayOfWeek", 0, 4, ("day of the week", 0, 6)),
    ("weekday", 2, 7, ("day of the week", 1, 7)),
    ("dow", 0, 6, ("day of the week", 0, 6)),
    ("day_of_year", 1, 334, ("day of the year", 1, 366)),
    ("week", 1, 48, ("week of the year", 1, 53)),
    ("week_of_year", 0, 40, ("week of the year", 0, 53)),
    ("quarter", 1, 3, ("quarter", 1, 4)),
    ("hour", 8, 18, ("hour", 0, 23)),
    ("pickup_hour", 0, 12, ("hour", 0, 23)),
    ("hr", 5, 20, ("hour", 0, 23)),
    ("minute", 0, 30, ("minute", 0, 59)),
    ("second", 0, 20, ("second", 0, 59)),
])
def test_calendar_range_is_the_units_whole_range(
    name: str, low: float, high: float, expected: tuple[str, int, int]
) -> None:
    assert calendar_range(name, low, high) == expected


@pytest.mark.parametrize(("name", "low", "high"), [
    ("tenure_months", 0, 11),  # a quantity of months, not a month
    ("monthly_charges", 1, 12),
    ("hours_worked", 0, 20),
    ("days", 1, 5),
    ("month", 1, 13),  # out of every convention: not a month
    ("month", 1.5, 3),
    ("hour", -1, 5),
    ("score", 1, 12),
    ("second_purchase", 0, 40),  # an ordinal, not the second of a minute
    ("year", 2001, 2023),  # a year has its own rule
])
def test_calendar_range_needs_the_name_and_values_of_a_calendar_part(
    name: str, low: float, high: float
) -> None:
    assert calendar_range(name, low, high) is None


@pytest.mark.parametrize("from_csv", [True, False])
def test_a_month_column_seen_in_part_accepts_the_whole_year(from_csv: bool) -> None:
    values = pd.Series(np.random.default_rng(1).integers(1, 12, ROWS))  # no December
    guess = guess_feature("month", values.astype(str) if from_csv else values,
                          from_csv=from_csv)

    assert (guess.kind, guess.rule) == ("numerical", {"min": 1, "max": 12})
    assert "a month, its whole range" in guess.note and "codes?" not in guess.note


def test_a_year_has_no_upper_bound_and_a_long_tail_room_above_its_largest() -> None:
    rng = np.random.default_rng(2)
    year = guess_feature("model_year", pd.Series(rng.integers(2015, 2024, ROWS)),
                         from_csv=False)
    amounts = pd.Series(rng.exponential(50, ROWS).round(2))
    amount = guess_feature("amount", amounts, from_csv=False)
    even = guess_feature("share", pd.Series(rng.uniform(10, 90, ROWS)), from_csv=False)

    assert year.rule == {"min": 2014} and "a year, no max" in year.note
    assert amount.rule["min"] == 0 and amount.rule["max"] >= 2 * amounts.max()
    assert "long tail" in amount.note
    assert even.rule["max"] < 100 and "long tail" not in even.note  # no tail: the margin only


@pytest.mark.parametrize("from_csv", [True, False])
def test_a_text_column_whose_values_repeat_is_a_category_however_many_it_has(
    from_csv: bool,
) -> None:
    rng = np.random.default_rng(3)
    destinations = [f"airport {i:03d}" for i in range(103)]
    values = pd.Series(rng.choice(destinations, ROWS))

    guess = guess_feature("destination", values, from_csv=from_csv)

    assert guess.kind == "categorical"
    assert guess.rule == {"categories": sorted(set(values))}
    assert len(guess.rule["categories"]) == 103


@pytest.mark.parametrize(("name", "values", "why"), [
    ("passenger", [f"P{i}" for i in range(ROWS)], "an identifier or free text?"),
    ("comment", [f"called about invoice {i}" for i in range(ROWS)],
     "an identifier or free text?"),
    ("customer_id", [f"C{i % 300}" for i in range(ROWS)], "named like an identifier"),
    ("SessionKey", [f"s{i % 200}" for i in range(ROWS)], "named like an identifier"),
])
def test_an_identifier_or_free_text_is_left_out_saying_why(
    name: str, values: list[str], why: str
) -> None:
    guess = guess_feature(name, pd.Series(values), from_csv=True)

    assert guess.kind == "excluded" and why in guess.note


@pytest.mark.parametrize(("seen", "every"), [
    (["Jan", "Feb", "Mar", "Nov"], ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                    "Sep", "Oct", "Nov", "Dec"]),
    (["march", "may"], ["january", "february", "march", "april", "may", "june", "july",
                        "august", "september", "october", "november", "december"]),
    (["MONDAY", "FRIDAY"], ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY",
                            "SUNDAY"]),
    (["Mon", "Tue", "Wed", "Thu", "Fri"], ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]),
])
def test_months_and_weekdays_by_name_are_all_listed(seen: list[str], every: list[str]) -> None:
    values = pd.Series(np.resize(seen, ROWS))

    guess = guess_feature("period", values, from_csv=True)

    assert guess.kind == "categorical" and guess.rule == {"categories": every}


@pytest.mark.parametrize(("name", "named"), [
    ("PassengerId", True), ("customer_id", True), ("RowID", True), ("ID", True),
    ("session key", True), ("uuid", True), ("valid", False), ("paid", False),
    ("monkey", False), ("id_type", False), ("Idle", False),
])
def test_is_id_name_by_the_last_word(name: str, named: bool) -> None:
    assert is_id_name(name) is named


@pytest.mark.parametrize(("target", "task", "counts"), [
    (pd.Series(["ok"] * 97 + ["fraud"] * 3), "binary_classification", {"fraud": 3, "ok": 97}),
    (pd.Series([0] * 80 + [1] * 20), "binary_classification", {0: 80, 1: 20}),
    (pd.Series([True] * 60 + [False] * 40), "binary_classification",
     {"False": 40, "True": 60}),
    (pd.Series(["a", "b", "c", "a"]), "multiclass_classification", {"a": 2, "b": 1, "c": 1}),
    (pd.Series(np.linspace(0, 1, 100)), "regression", {}),
])
def test_guess_task_counts_the_rows_of_each_class(
    target: pd.Series, task: str, counts: dict[int | str, int]
) -> None:
    guessed, classes, _ = guess_task(target.rename("label"))

    assert (guessed, classes) == (task, counts)


@pytest.mark.parametrize(("values", "task", "expected"), [
    ([1, 2, 3, 4, 5] * 5, "regression", ("regression", {})),  # ratings as a quantity
    (list(range(30)) * 2, "multiclass_classification",  # 30 integer codes as classes
     ("multiclass_classification", {code: 2 for code in range(30)})),
    ([0, 1] * 5, "binary_classification", ("binary_classification", {0: 5, 1: 5})),
])
def test_a_given_task_takes_the_classes_it_implies(values: list[int], task: str,
                                                   expected: tuple[str, dict[int, int]]) -> None:
    assert given_task(pd.Series(values, name="y"), task) == (*expected, "given")


@pytest.mark.parametrize(("values", "task", "message"), [
    (["a", "b", "c"], "binary_classification", "needs exactly 2 classes; target 'y' has 3"),
    (["a", "b"], "multiclass_classification", "needs 3 or more classes; target 'y' has 2"),
    (["a", "b"], "regression", "target 'y' is not numeric"),
    ([0.5, 1.5, 2.25], "multiclass_classification", "holds fractions, not classes"),
])
def test_a_given_task_the_target_cannot_be_is_refused_saying_why(values: list[object], task: str,
                                                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        given_task(pd.Series(values * 10, name="y"), task)


@pytest.mark.parametrize(("low", "high", "integral", "expected"), [
    (0, 118.7, False, (0, 140)),
    (18, 95, True, (10, 103)),
    (-25.3, 31.2, False, (-31, 37)),
    (0.2, 0.8, False, (0.14, 0.86)),
    (1000, 1000, True, (900, 1100)),
    (0, 8, True, (0, 9)),
    (0, 8, False, (0, 8.8)),
])
def test_padded_range_widens_outward_and_stays_non_negative(
    low: float, high: float, integral: bool, expected: tuple[float, float]
) -> None:
    assert padded_range(low, high, integral=integral) == pytest.approx(expected)


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.floats(allow_nan=False, allow_infinity=False),
                  st.floats(allow_nan=False, allow_infinity=False), st.booleans())
def test_padded_range_holds_what_was_seen_for_any_finite_floats(
    first: float, second: float, integral: bool
) -> None:
    low, high = sorted((first, second))
    if integral:
        low, high = float(math.floor(low)), float(math.ceil(high))

    lower, upper = padded_range(low, high, integral=integral)

    assert math.isfinite(lower) and math.isfinite(upper)
    assert lower <= low and upper >= high
    assert lower >= 0 or low < 0
