"""The drafted config validates the very file it was drafted from, for tables of several shapes.

Each table is generated here, written as CSV and as Parquet, drafted, merged into the shipped
config in place of its columns, and read and validated by the real ingest and validation code.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
import yaml

from executables.draft_columns import padded_range
from executables.draft_config import draft_config, main
from ml_project.config import Config, load_config
from ml_project.csv_format import BROKEN_HEADER
from ml_project.ingest import read_table
from ml_project.validate import validate_production_data
from tests.conftest import FIXTURE_CONFIG

ROWS = 400


def _with_nulls(values: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    result = values.astype(object)
    result[rng.random(len(values)) < share] = None
    return result


def binary_table(rng: np.random.Generator) -> pd.DataFrame:
    """Churn-like: categorical features with nulls, a flag, codes, free text, a constant, dates."""
    return pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(ROWS)],
        "event_time": pd.date_range("2024-01-01", periods=ROWS, freq="h").strftime(
            "%Y-%m-%dT%H:%M:%S"),
        "tenure_months": rng.integers(0, 73, ROWS),
        "monthly_charges": _with_nulls(rng.uniform(20, 120, ROWS).round(2), rng, 0.1),
        "contract": _with_nulls(rng.choice(["monthly", "yearly", "two-year"], ROWS), rng, 0.05),
        "is_senior": rng.choice([True, False], ROWS),
        "plan_code": rng.choice([1, 2, 3], ROWS),
        "support_calls": rng.poisson(2, ROWS),
        "notes": [f"called about invoice {i}" for i in range(ROWS)],
        "country": "NL",
        "legacy_score": np.full(ROWS, np.nan),
        "signup_date": pd.date_range("2020-01-01", periods=ROWS, freq="D").strftime("%Y-%m-%d"),
        "churned": rng.choice([0, 1], ROWS),
    })


def multiclass_table(rng: np.random.Generator) -> pd.DataFrame:
    """Text labels, an id named in another style, no timestamp."""
    return pd.DataFrame({
        "RowID": rng.permutation(ROWS) + 1000,
        "petal_length": rng.normal(4, 1.5, ROWS).round(1),
        "petal_width": _with_nulls(rng.normal(1.2, 0.5, ROWS).round(2), rng, 0.02),
        "colour": rng.choice(["blue", "white", "violet", "1"], ROWS),
        "species": rng.choice(["setosa", "versicolor", "virginica"], ROWS),
    })


def regression_table(rng: np.random.Generator) -> pd.DataFrame:
    """Numeric features only, negative values, a float target."""
    return pd.DataFrame({
        "listing": [f"L-{i}" for i in range(ROWS)],
        "temperature": rng.normal(-5, 10, ROWS),
        "floor_area_m2": rng.uniform(20, 250, ROWS),
        "rooms": rng.integers(1, 9, ROWS),
        "price": rng.lognormal(12, 0.5, ROWS),
    })


def other_names_table(rng: np.random.Generator) -> pd.DataFrame:
    """Unusual column names, yes/no text labels, true/false texts, integer-looking categories."""
    return pd.DataFrame({
        "Order Ref": [f"{i:08d}" for i in range(ROWS)],
        "Created At": pd.date_range("2025-03-01", periods=ROWS, freq="min").strftime(
            "%Y-%m-%d %H:%M:%S+01:00"),
        "Amount (EUR)": rng.exponential(80, ROWS).round(2),
        "Store": rng.choice(["001", "002", "017"], ROWS),
        "Gift?": rng.choice(["true", "false"], ROWS),
        "Returned": rng.choice(["yes", "no"], ROWS),
    })


def flag_target_table(rng: np.random.Generator) -> pd.DataFrame:
    """A True/False target (read as bools from a CSV as from Parquet), a flag feature."""
    return pd.DataFrame({
        "PassengerId": [f"{i:04d}_01" for i in range(ROWS)],
        "Age": _with_nulls(rng.integers(0, 80, ROWS).astype(float), rng, 0.05),
        "VIP": rng.choice([True, False], ROWS),
        "Transported": rng.choice([True, False], ROWS),
    })


SHAPES: dict[str, tuple[Callable[[np.random.Generator], pd.DataFrame], dict[str, Any]]] = {
    "binary": (binary_table, {"target": "churned"}),
    "multiclass": (multiclass_table, {"target": "species"}),
    "regression": (regression_table, {"target": "price", "id_column": "listing"}),
    "other_names": (other_names_table, {"target": "Returned", "id_column": "Order Ref",
                                        "timestamp": "Created At"}),
    "flag_target": (flag_target_table, {"target": "Transported", "id_column": "PassengerId"}),
}


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def config_from_draft(draft: dict[str, Any], data_file: Path, root: Path) -> Config:
    """The tests' churn config with the drafted sections in place of its columns and task."""
    base = yaml.safe_load(FIXTURE_CONFIG.read_text())
    del base["columns"]
    base["data"]["historic"] = str(data_file)
    config_file = root / "project_config.yaml"
    config_file.write_text(yaml.safe_dump(base, sort_keys=False))
    return load_config("modelling", "historic", "local", config_file=config_file, root=root,
                       overrides=draft)


def drafted(shape: str, suffix: str, tmp_path: Path) -> tuple[pd.DataFrame, Path, str]:
    make, options = SHAPES[shape]
    frame = make(np.random.default_rng(7))
    path = write_table(frame, tmp_path / f"{shape}{suffix}")
    return frame, path, draft_config(path, **options)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_draft_validates_the_file_it_was_drafted_from(shape: str, suffix: str,
                                                      tmp_path: Path) -> None:
    frame, path, text = drafted(shape, suffix, tmp_path)
    config = config_from_draft(yaml.safe_load(text), path, tmp_path)

    result = validate_production_data(read_table(str(path), config), config, with_target=True)

    assert result.quarantined.empty, result.quarantined.iloc[:3].to_dict("records")
    assert len(result.valid) == len(frame)
    rules = [line for line in text.splitlines() if line.startswith("    ")]
    assert rules and all("# REVIEW" in line for line in rules)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_draft_guesses_id_timestamp_task_and_leaves_out_what_is_no_feature(
    suffix: str, tmp_path: Path
) -> None:
    _, path, text = drafted("binary", suffix, tmp_path)
    columns = yaml.safe_load(text)["columns"]

    assert (columns["id"], columns["timestamp"]) == ("customer_id", "event_time")
    assert yaml.safe_load(text)["task"] == "binary_classification"
    assert columns["target_classes"] == [0, 1]
    features = {**columns["numerical"], **columns["categorical"]}
    assert not {"notes", "country", "legacy_score", "signup_date"} & set(features)
    for name, why in [("notes", "identifier or free text"), ("country", "constant"),
                      ("legacy_score", "every value is missing"), ("signup_date", "dates")]:
        assert f"#   {name}: " in text and why in text
    assert columns["categorical"]["contract"] == {
        "categories": ["monthly", "two-year", "yearly"], "nullable": True}
    assert columns["numerical"]["monthly_charges"]["nullable"] is True
    assert list(columns["numerical"]["monthly_charges"]) == ["min", "max", "nullable"]
    assert "nullable" not in columns["numerical"]["tenure_months"]
    # a flag is a category whatever the file: validation refuses a bool for a number, and the
    # readers give a categorical feature's values as the text a CSV holds
    assert columns["categorical"]["is_senior"] == {"categories": ["False", "True"]}
    if suffix == ".csv":  # codes read as text; Parquet keeps them numbers, flagged for review
        assert columns["categorical"]["plan_code"] == {"categories": ["1", "2", "3"]}
    else:
        assert "plan_code" in columns["numerical"] and "codes?" in text


@pytest.mark.parametrize(("shape", "task", "classes", "metric"), [
    ("multiclass", "multiclass_classification", ["setosa", "versicolor", "virginica"],
     "f1_macro"),
    ("regression", "regression", [], "neg_root_mean_squared_error"),
    ("other_names", "binary_classification", ["no", "yes"], "roc_auc"),
    ("flag_target", "binary_classification", ["False", "True"], "roc_auc"),
])
def test_draft_task_follows_the_target(shape: str, task: str, classes: list[str], metric: str,
                                       tmp_path: Path) -> None:
    _, _, text = drafted(shape, ".csv", tmp_path)
    draft = yaml.safe_load(text)

    assert draft["task"] == task and draft["columns"]["target_classes"] == classes
    assert draft["training"]["metric"] == metric


def test_a_few_texts_in_a_numeric_column_keep_it_numeric_and_are_named(tmp_path: Path) -> None:
    frame = regression_table(np.random.default_rng(3)).astype({"rooms": object})
    frame.loc[[5, 9], "rooms"] = ["unknown", "3 rooms"]
    path = write_table(frame, tmp_path / "typos.csv")
    text = draft_config(path, "price")
    config = config_from_draft(yaml.safe_load(text), path, tmp_path)

    result = validate_production_data(read_table(str(path), config), config, with_target=True)

    assert "rooms" in config.columns.numerical and "'unknown', '3 rooms'" in text
    assert list(result.quarantined.index) == [5, 9]


def test_drafted_rules_reject_what_the_file_never_showed(tmp_path: Path) -> None:
    frame, path, text = drafted("binary", ".csv", tmp_path)
    config = config_from_draft(yaml.safe_load(text), path, tmp_path)
    unseen = frame.head(3).assign(tenure_months=[-1, 10_000, 5],
                                  contract=["monthly", "yearly", "weekly"])
    unseen_path = write_table(unseen, tmp_path / "unseen.csv")

    result = validate_production_data(read_table(str(unseen_path), config), config,
                                      with_target=True)

    assert len(result.quarantined) == 3
    assert "weekly" in result.quarantined["quarantine_reason"].iloc[2]


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


def test_main_writes_the_draft_and_names_a_missing_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, text = drafted("regression", ".parquet", tmp_path)
    output = tmp_path / "draft.yaml"

    code = main([str(path), "--target", "price", "--id", "listing", "--output", str(output)])
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--target", "cost"])

    assert code == 0 and output.read_text() == text
    assert exit_info.value.code == 2 and "'cost' not in" in capsys.readouterr().err


def test_one_column_given_as_two_roles_is_refused_and_times_as_the_id_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daily table without an id (weather, prices): its only unique column is its date."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=ROWS, freq="D").strftime(
        "%Y-%m-%d"), "rain_mm": rng.uniform(0, 20, ROWS).round(1),
        "weather": rng.choice(["rain", "sun", "fog"], ROWS)})
    path = write_table(frame, tmp_path / "weather.csv")

    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--target", "weather", "--id", "date", "--timestamp", "date"])
    text = draft_config(path, "weather")

    assert exit_info.value.code == 2
    assert "--id and --timestamp both name 'date'" in capsys.readouterr().err
    columns = yaml.safe_load(text)["columns"]
    assert (columns["id"], columns["timestamp"]) == ("date", None)
    assert "date, a column of times, is the id: add an id column" in text
    config_from_draft(yaml.safe_load(text), path, tmp_path)  # loads: no column used twice


# Names YAML would read as something else, or that would end a line: each must come back as
# itself, and none may add a key of its own to the draft.
AWKWARD_NAMES = ["a\nevil: 1", "b\r\nalso: 2", "c\u2028evil: 3", "d\x85e", "tab\there",
                 "x # not a comment", "k: v", "it's \"quoted\"", "café ☕", "<<", "yes", "1",
                 "~", "- item", "[list", "&anchor", "*alias", "!tag", "%directive", "@at",
                 "`tick", "back\\slash", "\x01start\x1bescape\x7f", "n" * 20_000]
EXTREMES = [1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 0.0,
            sys.float_info.max, -sys.float_info.max]


def awkward_table(rng: np.random.Generator) -> pd.DataFrame:
    """Awkward names for features, id and target, awkward categories and labels, the extreme
    floats in one column, one of infinities only, one of subnormals only, free text."""
    numbers = rng.normal(0, 1, ROWS)
    numbers[: len(EXTREMES)] = EXTREMES
    columns: dict[str, Any] = {"id\nevil: 1": [f"r{i}" for i in range(ROWS)]}
    columns |= {name: rng.normal(0, 1, ROWS).round(3) for name in AWKWARD_NAMES}
    columns |= {
        "extremes": numbers,
        "only infinite": rng.choice([math.inf, -math.inf], ROWS),
        "only subnormal": rng.choice([5e-324, 1e-323, 2.5e-322], ROWS),
        "colour\n#: 1": rng.choice(["red\nevil: 1", "green # not a comment", "<<", "yes"],
                                   ROWS),
        "free\ntext: 1": [f"note {i}\nx: y" for i in range(ROWS)],
        "label\n: 1": rng.choice(["churn: yes", "no # really"], ROWS),
    }
    return pd.DataFrame(columns)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_awkward_names_and_extreme_values_give_a_draft_that_loads_back_as_the_table(
    suffix: str, tmp_path: Path
) -> None:
    """No name, category or label can inject YAML (each is written by the YAML library's safe
    dumper, comments escaped), and any finite or infinite value is drafted: the draft loads
    with the project's Config loader, names exactly the table's columns, and validates every
    row but those holding an infinite value."""
    # A CSV's header holds no line break (the CSV format of every path, `csv_format`): there the
    # names keep everything else; values keep their line breaks in both formats.
    def name(text: str) -> str:
        return text.replace("\r\n", " ").replace("\n", " ") if suffix == ".csv" else text

    frame = awkward_table(np.random.default_rng(5))
    frame.columns = [name(column) for column in frame.columns]
    path = write_table(frame, tmp_path / f"awkward{suffix}")

    text = draft_config(path, name("label\n: 1"), id_column=name("id\nevil: 1"))
    draft = yaml.safe_load(text)
    config = config_from_draft(draft, path, tmp_path)
    result = validate_production_data(read_table(str(path), config), config, with_target=True)

    assert text.splitlines() == text.removesuffix("\n").split("\n")  # no break inside a line
    assert all(line.isprintable() for line in text.split("\n"))
    assert set(draft) == {"data", "columns", "task", "training", "engineering"}
    assert draft["data"]["historic"] == str(path.resolve())  # outside the project: absolute
    columns = config.columns
    assert (columns.id, columns.target, columns.timestamp) == (
        name("id\nevil: 1"), name("label\n: 1"), None)
    assert set(columns.target_classes) == {"churn: yes", "no # really"}
    assert set(columns.numerical) == {*map(name, AWKWARD_NAMES), "extremes", "only subnormal"}
    assert set(columns.categorical[name("colour\n#: 1")].categories) == {
        "red\nevil: 1", "green # not a comment", "<<", "yes"}
    left_out = text.split("left out")[1].split("\n\n")[0].splitlines()[1:]
    assert len(left_out) == 2 and "no finite value" in text and "free text?" in text
    extremes = columns.numerical["extremes"]
    assert extremes.min == -sys.float_info.max and extremes.max == sys.float_info.max
    assert columns.numerical["only subnormal"].min == 0
    assert 2.5e-322 <= (columns.numerical["only subnormal"].max or 0) <= 1
    assert list(result.quarantined.index) == [2, 3]  # the infinite extremes, nothing else
    assert "must be a finite number" in result.quarantined["quarantine_reason"].iloc[0]


def test_a_csv_out_of_the_format_every_path_reads_is_refused_in_its_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The drafter reads a CSV as every path does: a header with a line break in a name (or
    any other break of the format) is the format's one-line refusal, exit 2, nothing drafted."""
    path = tmp_path / "broken.csv"
    path.write_text('id,"first\nname",churned\n1,2,yes\n2,3,no\n')
    output = tmp_path / "drafted.yaml"

    with pytest.raises(SystemExit) as exited:
        main([str(path), "--target", "churned", "--output", str(output)])

    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {BROKEN_HEADER}\n"
    assert not output.exists()


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


@pytest.mark.parametrize(("values", "drafted"), [
    ([1e308, -1e308], {"min": -1.2e308, "max": 1.2e308}),
    ([math.inf, -math.inf], None),  # no finite value: left out, said why
    ([5e-324, 0.0], {"min": 0, "max": 0.1}),
    ([-5e-324, 1e-323], {"min": -0.1, "max": 0.1}),
    ([math.nan, math.inf, 2.5, 3.5], {"min": 2.4, "max": 3.6, "nullable": True}),
], ids=["plus-minus-1e308", "only-infinite", "subnormal", "negative-subnormal", "nan-and-inf"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_column_of_extreme_values_is_drafted_and_the_draft_loads(
    values: list[float], drafted: dict[str, Any] | None, suffix: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"key": [f"k{i}" for i in range(ROWS)],
                          "size": rng.uniform(0, 10, ROWS).round(1),
                          "extreme": np.resize(np.asarray(values, dtype=float), ROWS),
                          "label": rng.choice(["a", "b"], ROWS)})
    path = write_table(frame, tmp_path / f"extreme{suffix}")

    text = draft_config(path, "label", id_column="key")
    config = config_from_draft(yaml.safe_load(text), path, tmp_path)

    if drafted is None:
        assert "extreme" not in config.columns.numerical
        assert "#   extreme: no finite value" in text
    else:
        assert config.columns.numerical["extreme"].model_dump(exclude_defaults=True) == (
            pytest.approx(drafted))
