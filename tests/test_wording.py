"""How values read in messages: one spelling, whatever type or path brought the value."""

from __future__ import annotations

import numpy as np
import pytest

from ml_project.wording import listed, shown, shown_number, text_of


@pytest.mark.parametrize(("value", "spelled"), [
    (True, "True"), (np.bool_(False), "False"), (4, "4"), (np.int64(4), "4"),
    (4.5, "4.5"), (np.float32(0.5), "0.5"), ("red", "'red'"), (None, "None"),
    ([1, 2], "[1, 2]"), ("x" * 100, "'" + "x" * 76 + "..."),
])
def test_a_value_reads_as_python_spells_it_whatever_numpy_type_it_came_as(
    value: object, spelled: str
) -> None:
    assert shown(value) == spelled


def test_an_int_past_pythons_digit_limit_reads_as_its_type_never_raising() -> None:
    huge = 10 ** 5000  # past int-to-str's 4300 digits: str() raises ValueError
    assert text_of(huge) == "<int too long to show>"
    assert shown(huge) == "<int too long to show>"
    assert text_of(42) == "42"


def test_a_parsed_number_reads_the_same_however_it_was_written() -> None:
    assert [shown_number(x) for x in (600, 600.0, float("600"))] == ["600"] * 3
    assert shown_number(0.25) == "0.25"
    assert shown_number(float("inf")) == "inf"
    assert shown_number(1e20) == "1e+20"


def test_categories_are_listed_numbers_first_then_texts_each_sorted() -> None:
    assert listed(frozenset({"b", 2, "a", 1})) == [1, 2, "a", "b"]
