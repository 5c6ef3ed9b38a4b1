"""The drafted config validates the very file it was drafted from, for tables of several shapes,
and rows from the whole year when it was drafted from part of it; it flags the positive class
first, names the data files, and says plainly what the table lacks.

Each table is generated (tests/draft_tables.py), written as CSV and as Parquet, drafted, merged
into the tests' config in place of its columns, and read and validated by the real ingest and
validation code.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from executables.draft_config import choose_positive, draft_config, main
from ml_project.config import REASON_COLUMN
from ml_project.csv_format import BROKEN_HEADER
from ml_project.ingest import read_table
from ml_project.validate import validate_production_data
from tests.draft_tables import (
    AWKWARD_NAMES,
    ROWS,
    SEASONAL,
    SHAPES,
    awkward_table,
    bookings,
    config_from_draft,
    drafted,
    orders,
    regression_table,
    write_table,
)


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
    assert set(draft) == {"data", "columns", "task", "training", "engineering", "model_card"}
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


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("shape", list(SEASONAL))
def test_a_draft_from_part_of_the_year_accepts_rows_from_all_of_it(
    shape: str, suffix: str, tmp_path: Path
) -> None:
    """Zero edits: drafted with the defaults (no id, no positive class, nothing asked) from a
    season, a working day, January to November, the draft loads and accepts every row of a
    later sample over every month, hour, weekday and quarter, and a later year."""
    make, target = SEASONAL[shape]
    seen = write_table(make(np.random.default_rng(11), 1000, False), tmp_path / f"seen{suffix}")
    later = write_table(make(np.random.default_rng(12), 1000, True), tmp_path / f"all{suffix}")

    config = config_from_draft(yaml.safe_load(draft_config(seen, target)), seen, tmp_path)

    for path in (seen, later):
        result = validate_production_data(read_table(str(path), config), config,
                                          with_target=True)
        assert result.quarantined.empty, list(result.quarantined[REASON_COLUMN].head(3))
    if config.task == "binary_classification":  # the rare class, as F1 and recall ask about
        assert config.positive_class in {"fraud", 1}


def test_a_rare_positive_class_is_drafted_last_and_flagged_before_any_other_guess(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_table(bookings(np.random.default_rng(4), 1000, True), tmp_path / "b.csv")
    frauds = int((pd.read_csv(path)["status"] == "fraud").sum())

    text = draft_config(path, "status")
    reviews = [line for line in text.splitlines() if "REVIEW" in line]
    code = main([str(path), "--target", "status", "--positive-class", "ok", "--no-input",
                 "--output", str(tmp_path / "ok.yaml")])

    assert yaml.safe_load(text)["columns"]["target_classes"] == ["ok", "fraud"]
    assert reviews[0].startswith("# REVIEW FIRST the positive class")
    assert reviews[2] == (f"  # REVIEW FIRST, the positive class: fraud ({frauds:,} of 1,000 "
                          f"rows, {frauds / 1000:.1%}), the rarer class; ok: {1000 - frauds:,} "
                          "rows.")
    assert "F1, precision, recall and ROC AUC score it" in text
    assert code == 0 and capsys.readouterr().err == ""
    given = yaml.safe_load((tmp_path / "ok.yaml").read_text())["columns"]["target_classes"]
    assert given == ["fraud", "ok"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "status", "--positive-class", "Fraud"],
     "--positive-class 'Fraud' is not a class of the target: fraud: "),
    (["--target", "priority", "--positive-class", "high"],
     "the task is multiclass_classification (3 labels seen); only a binary target has a "
     "positive class"),
])
def test_a_positive_class_that_cannot_be_is_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = bookings(np.random.default_rng(4), 300, True).assign(
        priority=orders(np.random.default_rng(4), 300, True)["priority"])
    path = write_table(frame, tmp_path / "b.parquet")

    with pytest.raises(SystemExit) as exited:
        main([str(path), *argv, "--no-input"])

    assert exited.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("counts", "positive", "why"), [
    ({0: 30, 1: 70}, 1, "by convention"),
    ({"False": 80, "True": 20}, "True", "by convention"),
    ({"no": 10, "yes": 90}, "yes", "by convention"),
    ({"fraud": 3, "ok": 97}, "fraud", "the rarer class"),
    ({2: 60, 5: 40}, 5, "the rarer class"),
    ({1: 70, 2: 30}, 2, "the rarer class"),  # 1/2 codes: 1 is no positive label here
    ({"Y": 5, "N": 95}, "Y", "by convention (y against n)"),
    ({"blue": 5, "red": 5}, "red", "as common as the other"),
])
def test_choose_positive_by_default_a_conventional_label_else_the_rarer(
    counts: dict[int | str, int], positive: int | str, why: str
) -> None:
    chosen, reason = choose_positive(counts)

    assert chosen == positive and why in reason


def test_choose_positive_asks_until_a_class_is_answered_and_keeps_the_configs_own() -> None:
    counts: dict[int | str, int] = {"fraud": 3, "ok": 97}
    answers = iter(["maybe", " ok\n"])
    questions: list[str] = []

    def ask(question: str) -> str:
        questions.append(question)
        return next(answers)

    def no_answer(question: str) -> str:
        raise EOFError

    assert choose_positive(counts, ask=ask) == ("ok", "answered")
    assert len(questions) == 2 and "fraud: 3 rows (3.0%), ok: 97 rows (97.0%)" in questions[0]
    assert questions[1] == "maybe is not a class. Positive class [fraud]: "
    assert questions[0].endswith("Positive class [fraud]: ")
    assert choose_positive(counts, ask=lambda _: "") == ("fraud", "the rarer class")
    assert choose_positive(counts, ask=no_answer) == ("fraud", "the rarer class")
    assert choose_positive(counts, kept="ok") == ("ok", "as the config had it")
    assert choose_positive(counts, kept="gone")[0] == "fraud"


def test_data_names_the_files_from_the_project_root_and_says_which_are_there(
    tmp_path: Path,
) -> None:
    (tmp_path / "data").mkdir()
    frame = bookings(np.random.default_rng(5), 300, True)
    path = write_table(frame, tmp_path / "data" / "trips.parquet")
    labels = write_table(frame[["booking_ref", "status"]], tmp_path / "data" / "labels.parquet")
    write_table(pd.DataFrame({"customer_id": ["C1"]}),  # another table's, e.g. an example's
                tmp_path / "data" / "production_data.parquet")

    text = draft_config(path, "status", root=tmp_path, production={"production_labels": labels})

    assert yaml.safe_load(text)["data"] == {
        "historic": "data/trips.parquet", "historic_table": None, "historic_query": None,
        "production": "data/production_data.parquet", "production_labels": "data/labels.parquet"}
    assert ("  production: data/production_data.parquet  # REVIEW: the file there lacks "
            "[booking_ref, month, departure_hour, ...]: not this table's?; ") in text
    assert "  production_labels: data/labels.parquet  # given: there, with the columns" in text


def test_a_table_without_id_or_timestamp_is_said_so_in_plain_words(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"colour": rng.choice(["red", "blue"], ROWS),
                          "size": rng.integers(1, 4, ROWS), "label": rng.choice(["a", "b"], ROWS)})
    path = write_table(frame, tmp_path / "plain.csv")

    text = draft_config(path, "label")

    assert "None" not in text and "a column of times" not in text
    assert "  id: null  # REVIEW no column is unique in every row and never missing: add one" in text
    assert "  timestamp: null  # no column of ISO 8601 times found: none is needed" in text


def test_a_draft_holds_the_model_cards_review_placeholders_and_loads_with_them(
    tmp_path: Path
) -> None:
    _, path, text = drafted(next(iter(SHAPES)), ".csv", tmp_path)
    draft = yaml.safe_load(text)
    config = config_from_draft(draft, path, tmp_path)

    written = {key: value for key, value in draft["model_card"].items()}
    assert set(written) == {"purpose", "owner", "intended_use", "out_of_scope"}
    assert all(value.startswith("REVIEW") for value in written.values())
    assert {key: getattr(config.model_card, key) for key in written} == written
