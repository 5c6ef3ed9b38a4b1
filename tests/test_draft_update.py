"""`draft_config.py --update-config`: the drafted sections written into a project's config in
place, every other line kept, only once the result loads and its data file validates.

Each test builds its own project (the tests' config and a generated table under tmp_path); the
script runs as a user runs it, in-process through `main` or as a real subprocess, at a real
pseudo-terminal where it asks.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess  # nosec B404: runs the drafter as a user does
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml

from executables.draft_config import main
from executables.draft_update import merge_sections
from ml_project.config import PROJECT_ROOT, load_config
from tests.conftest import FIXTURE_CONFIG
from tests.draft_tables import bookings, write_table

SCRIPT = PROJECT_ROOT / "executables" / "draft_config.py"
DRAFTED = {"data", "columns", "task"}  # whole; engineering.steps and three of training's keys


def project(tmp_path: Path, frame: pd.DataFrame, name: str = "bookings.parquet") -> Path:
    """A project folder: the tests' config and a data file under data/."""
    (tmp_path / "data").mkdir()
    write_table(frame, tmp_path / "data" / name)
    shutil.copy(FIXTURE_CONFIG, tmp_path / "project_config.yaml")
    return tmp_path / "project_config.yaml"


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_update_config_replaces_the_drafted_sections_only_and_again_gives_the_same_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = bookings(np.random.default_rng(8), 1000, True)
    config_file = project(tmp_path, frame)
    # The files the config names: the template's example for production (another table's),
    # this table's labels.
    (tmp_path / "data" / "production_data.csv").write_text("customer_id,tenure_months\nC1,3\n")
    write_table(frame[["booking_ref", "status"]], tmp_path / "data" / "production_labels.csv")
    before = config_file.read_text()
    argv = ["data/bookings.parquet", "--target", "status", "--no-input",
            "--update-config", str(config_file)]
    monkeypatch.chdir(tmp_path)  # the data file named as a user does, from where they are

    first = main(argv)
    after = config_file.read_text()
    second = main(argv)

    assert first == second == 0 and config_file.read_text() == after  # a re-run changes nothing
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    assert {key: value for key, value in new.items() if key not in DRAFTED | {"training",
            "engineering"}} == {key: value for key, value in old.items()
                                if key not in DRAFTED | {"training", "engineering"}}
    kept = {"holdout_fraction", "cv_folds", "random_seed", "n_jobs"}
    assert {key: new["training"][key] for key in kept} == {
        key: old["training"][key] for key in kept}
    assert new["engineering"] == {"steps": []}
    assert new["data"]["historic"] == "data/bookings.parquet"
    assert new["data"]["production"] == "data/production_data.parquet"  # not the example's
    assert new["data"]["production_labels"] == "data/production_labels.csv"  # this table's
    assert "production_labels: data/production_labels.csv  # kept: there, with the" in after
    assert new["columns"]["target_classes"] == ["ok", "fraud"]
    def outside_columns(text: str) -> list[str]:
        inside = comments(text.split("\ncolumns:")[1].split("\ntask:")[0])
        return [line for line in comments(text) if line not in inside]

    assert outside_columns(before) == outside_columns(after)  # every other comment kept
    config = load_config("modelling", "historic", "local", config_file=config_file,
                         root=tmp_path)
    assert config.positive_class == "fraud" and "destination" in config.columns.categorical
    out = capsys.readouterr().out
    assert f"Updated {config_file}: data, columns, task, engineering (steps), training " in out
    assert "1,000 of 1,000 rows valid" in out
    assert "\nREVIEW FIRST, the positive class: fraud (" in out and "id:" not in out


def test_a_re_run_keeps_the_positive_class_the_config_chose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = project(tmp_path, bookings(np.random.default_rng(8), 500, True))
    data = str(tmp_path / "data" / "bookings.parquet")

    main([data, "--target", "status", "--positive-class", "ok", "--no-input",
          "--update-config", str(config_file)])
    main([data, "--target", "status", "--no-input", "--update-config", str(config_file)])

    assert "ok (" in config_file.read_text() and "as the config had it" in config_file.read_text()
    assert yaml.safe_load(config_file.read_text())["columns"]["target_classes"] == ["fraud", "ok"]
    capsys.readouterr()
    main([data, "--target", "passengers", "--no-input", "--update-config", str(config_file)])
    out = capsys.readouterr().out  # multiclass: nothing flagged, the summary alone
    assert len(out.splitlines()) == 1 and out.startswith(f"Updated {config_file}: ")


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda frame, text: (frame.drop(columns=["booking_ref", "notes"]), text),
     "no column of the data file is unique in every row"),
    (lambda frame, text: (frame, text.replace("fail_on_invalid: false", "fail_on_invalid: "
                                              "false\n  unknown_fields: reject")),
     "notes: is not a known field"),
    (lambda frame, text: (frame, text + "training: [\n"), "not valid YAML"),
    (lambda frame, text: (frame, text.replace("cv_folds: 5", "cv_folds: 1")), "cv_folds"),
], ids=["no-id", "rejected-columns", "not-yaml", "invalid-kept-section"])
def test_update_config_refuses_with_the_reason_and_leaves_the_file_as_it_was(
    spoil: Callable[[pd.DataFrame, str], tuple[pd.DataFrame, str]], message: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = bookings(np.random.default_rng(9), 300, True).assign(
        notes=[f"free text {i}" for i in range(300)])  # a column the draft leaves out
    frame, text = spoil(frame, FIXTURE_CONFIG.read_text())
    config_file = project(tmp_path, frame)
    config_file.write_text(text)
    files = sorted(tmp_path.rglob("*"))

    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "data" / "bookings.parquet"), "--target", "status", "--no-input",
              "--update-config", str(config_file)])

    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "is unchanged" in err
    assert config_file.read_text() == text and sorted(tmp_path.rglob("*")) == files


def test_merge_sections_keeps_a_flow_training_section_and_adds_missing_ones() -> None:
    existing = ("# mine\nproject_name: x\ntraining: {cv_folds: 3, metric: accuracy}\n"
                "tracking:\n    experiment_name: x  # kept\n")
    draft = ("columns:\n  id: a\ntask: regression\ndata:\n  historic: h.csv\n"
             "training:\n  split: random\n  metric: r2\n  candidates:\n  - {name: r}\n"
             "engineering:\n  steps: []\n")

    merged = merge_sections(existing, draft)

    assert merged.startswith("# mine\nproject_name: x\ntraining:\n")
    assert "    experiment_name: x  # kept\n" in merged
    assert yaml.safe_load(merged) == {
        "project_name": "x", "tracking": {"experiment_name": "x"}, "columns": {"id": "a"},
        "task": "regression", "data": {"historic": "h.csv"}, "engineering": {"steps": []},
        "training": {"cv_folds": 3, "metric": "r2", "split": "random",
                     "candidates": [{"name": "r"}]}}


def test_merge_sections_writes_training_keys_at_the_files_own_indentation() -> None:
    existing = ("training:\n    # how much to hold out\n    holdout_fraction: 0.3\n"
                "    metric: accuracy  # old\n")
    draft = ("training:\n  split: random\n  metric: r2  # REVIEW\n  candidates:\n"
             "  - {name: r}\n")

    merged = merge_sections(existing, draft)

    assert merged == ("training:\n    # how much to hold out\n    holdout_fraction: 0.3\n"
                      "    metric: r2  # REVIEW\n    split: random\n    candidates:\n"
                      "    - {name: r}\n")


def test_the_script_asks_at_a_terminal_and_takes_the_default_without_one(
    tmp_path: Path,
) -> None:
    """Run as a user runs it (`python executables/draft_config.py`, from another folder): at a
    real pseudo-terminal it shows the class counts and asks; with stdin no terminal it asks
    nothing and the rarer class is positive."""
    path = write_table(bookings(np.random.default_rng(10), 400, True), tmp_path / "b.csv")
    command = [sys.executable, str(SCRIPT), str(path), "--target", "status", "--output"]
    controller, terminal = pty.openpty()
    os.write(controller, b"ok\n")  # typed ahead: the terminal holds it until the script reads
    try:
        asked = subprocess.run([*command, str(tmp_path / "asked.yaml")], stdin=terminal,
                               capture_output=True, text=True, timeout=120, check=False,
                               cwd=tmp_path)
    finally:
        os.close(terminal)
        os.close(controller)
    quiet = subprocess.run([*command, str(tmp_path / "quiet.yaml")], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)

    assert asked.returncode == 0, asked.stderr
    assert "The target's classes: fraud: " in asked.stderr
    assert asked.stderr.endswith("Positive class [fraud]: ")
    assert "the positive class: ok (" in (tmp_path / "asked.yaml").read_text()
    assert yaml.safe_load((tmp_path / "asked.yaml").read_text())["columns"][
        "target_classes"] == ["fraud", "ok"]
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert yaml.safe_load((tmp_path / "quiet.yaml").read_text())["columns"][
        "target_classes"] == ["ok", "fraud"]
