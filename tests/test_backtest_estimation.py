"""The backtest of estimated performance (executables/backtest_estimation.py) on a miniature
churn project: the project's training stages on the earliest rows, then estimated vs realised
per later window, a table, a JSON and a figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from executables.backtest_estimation import main
from tests.conftest import write_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Historic data and a labelled production sample whose labels arrive in a separate file;
    the config trains logistic regression only (the fixture's second candidate is named off
    by --candidate in one test)."""
    return write_project(tmp_path, n_historic=900, n_production=300, drift=0.0)


def run(project: Path, *args: str) -> int:
    root = project.parent
    return main([str(root / "data/historic_data.csv"), str(root / "data/production_data.csv"),
                 "--labels", str(root / "data/production_labels.csv"), "--config", str(project),
                 "--candidate", "logistic_regression", "--output", str(root / "backtest"),
                 *args])


@pytest.mark.slow
def test_backtest_reports_estimated_and_realised_per_window(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(project, "--windows", "3", "--train-fraction", "0.6")

    assert code == 0
    result = json.loads((project.parent / "backtest/backtest.json").read_text())
    assert result["metric"] == "roc_auc" and result["candidate"] == "logistic_regression"
    windows = result["windows"]
    assert len(windows) == 3 and [w["window"] for w in windows] == [1, 2, 3]
    assert windows[0]["first"] < windows[-1]["last"]  # in time order
    assert result["training_rows"] + sum(w["rows"] for w in windows) > 1100  # labels joined
    for window in windows:
        error = window["absolute_error"]["roc_auc"]
        assert error == pytest.approx(abs(window["estimated"]["roc_auc"]
                                          - window["realised"]["roc_auc"]))
        assert error < 0.15  # a few hundred rows per window: the estimate is in the right place
    errors = result["errors"]["roc_auc"]
    assert errors["max_absolute_error"] >= errors["mean_absolute_error"] > 0
    assert (project.parent / "backtest/backtest.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "window  1" in out and "realised" in out and "mean |error|" in out


def test_backtest_refuses_regression_an_unknown_candidate_and_a_missing_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_project(tmp_path, n_historic=60, n_production=10)
    content = yaml.safe_load(config_file.read_text())

    assert run(config_file, "--candidate", "no_such_model") == 2
    assert "--candidate ['no_such_model']: not among training.candidates" in \
        capsys.readouterr().err
    content["columns"]["timestamp"] = None
    config_file.write_text(yaml.safe_dump(content, sort_keys=False))
    assert run(config_file) == 2
    assert "no time column" in capsys.readouterr().err
    content.update(task="regression", columns={**content["columns"], "target_classes": [],
                                               "positive_class": None})
    content["training"].update(metric="r2", split="random", candidates=[
        {"name": "logistic_regression", "estimator": "sklearn.linear_model.Ridge"}])
    config_file.write_text(yaml.safe_dump(content, sort_keys=False))
    assert run(config_file) == 2
    assert "regression: its performance is not estimated" in capsys.readouterr().err


@pytest.mark.slow
def test_backtest_without_a_config_drafts_one_from_the_data_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table the project has not seen: only its target, time and id columns are named."""
    write_project(tmp_path, n_historic=900, n_production=10, drift=0.0)
    output = tmp_path / "backtest"

    code = main([str(tmp_path / "data/historic_data.csv"), "--target", "churned",
                 "--time-column", "event_time", "--id", "customer_id", "--positive-class", "1",
                 "--candidate", "logistic_regression", "--windows", "2", "--output", str(output)])

    assert code == 0
    drafted = yaml.safe_load((output / "drafted_config.yaml").read_text())
    assert drafted["columns"]["target"] == "churned" and drafted["columns"]["positive_class"] == 1
    assert drafted["columns"]["timestamp"] == "event_time"
    result = json.loads((output / "backtest.json").read_text())
    assert len(result["windows"]) == 2 and result["metric"] == "roc_auc"
    assert "Updated" in capsys.readouterr().out  # the draft's own summary line
    assert main([str(tmp_path / "data/historic_data.csv"), "--target", "churned"]) == 2
    assert "give --target and --time-column" in capsys.readouterr().err
