"""What one monitoring run concluded: the exit code of each combination of alerts, a summary
that is JSON (an undefined metric is null), and the table a person reads."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ml_project.estimate import EstimatedPerformance
from ml_project.monitoring_summary import (
    EXIT_DRIFT,
    EXIT_DRIFT_AND_ESTIMATED_DROP,
    EXIT_DRIFT_AND_PERFORMANCE_DROP,
    EXIT_ESTIMATED_DROP,
    EXIT_OK,
    EXIT_PERFORMANCE_DROP,
    ColumnDrift,
    DriftSummary,
    PerformanceSummary,
    exit_code,
    json_safe,
    summary_table,
)


def _drift(share: float) -> DriftSummary:
    columns = (ColumnDrift("age", "wasserstein", 0.3, 0.1, True),
               ColumnDrift("a_column_with_a_name_longer_than_the_table", "chisquare", 0.5, 0.05,
                           False))
    return DriftSummary(columns, (ColumnDrift("prediction", "jensenshannon", 0.0, 0.1, False),),
                        share, 0.3, 100, 50, report=None)


def _performance(production: float, baseline: float = 0.8) -> PerformanceSummary:
    return PerformanceSummary("roc_auc", {"roc_auc": production}, {"roc_auc": baseline},
                              "holdout", 120, 0.05, report=None)


@pytest.mark.parametrize(("share", "production", "code"), [
    (0.0, 0.8, EXIT_OK), (0.5, 0.8, EXIT_DRIFT), (0.0, 0.5, EXIT_PERFORMANCE_DROP),
    (0.5, 0.5, EXIT_DRIFT_AND_PERFORMANCE_DROP), (0.5, None, EXIT_DRIFT), (0.0, None, EXIT_OK),
    (0.0, math.nan, EXIT_OK),  # an undefined metric (labels of one class) is no verdict
])
def test_exit_code_says_which_alert_was_raised(
    share: float, production: float | None, code: int
) -> None:
    performance = None if production is None else _performance(production)
    assert exit_code(_drift(share), performance) == code


def _estimated(value: float, rows: int = 500) -> EstimatedPerformance:
    return EstimatedPerformance("roc_auc", {"roc_auc": value}, {"roc_auc": (value - 0.02,
                                                                           value + 0.02)},
                                {"roc_auc": 0.01}, {}, {"roc_auc": 0.8}, rows, 100, 0.05, None)


@pytest.mark.parametrize(("share", "production", "estimated", "code"), [
    (0.0, None, 0.5, EXIT_ESTIMATED_DROP), (0.5, None, 0.5, EXIT_DRIFT_AND_ESTIMATED_DROP),
    (0.0, None, 0.79, EXIT_OK), (0.5, None, 0.79, EXIT_DRIFT),
    # labels gave a verdict: the realised metric decides, whatever the estimate says
    (0.0, 0.8, 0.5, EXIT_OK), (0.5, 0.5, 0.79, EXIT_DRIFT_AND_PERFORMANCE_DROP),
    # labels of one class only: the realised metric is undefined, no verdict; the estimate's
    (0.0, math.nan, 0.5, EXIT_ESTIMATED_DROP),
])
def test_an_estimated_drop_raises_its_own_code_only_without_a_realised_verdict(
    share: float, production: float | None, estimated: float, code: int
) -> None:
    performance = None if production is None else _performance(production)
    assert exit_code(_drift(share), performance, _estimated(estimated)) == code


def test_an_estimate_on_too_few_predictions_is_no_verdict() -> None:
    few = _estimated(0.5, rows=99)
    assert not few.verdict and not few.degraded
    assert exit_code(_drift(0.0), None, few) == EXIT_OK
    assert json.loads(json.dumps(json_safe(few.to_dict()), allow_nan=False))["verdict"] is False


def test_the_drop_is_relative_to_the_holdout_so_one_threshold_fits_every_metric() -> None:
    small, large = _performance(0.78, 0.8), _performance(0.70, 0.8)
    assert small.drop == pytest.approx(0.02) and small.relative_drop == pytest.approx(0.025)
    assert not small.degraded and large.degraded  # threshold 5% of the holdout's ROC AUC
    rmse = PerformanceSummary("neg_root_mean_squared_error", {"neg_root_mean_squared_error": -110},
                              {"neg_root_mean_squared_error": -100}, "holdout", 120, 0.05,
                              report=None)
    assert rmse.relative_drop == pytest.approx(0.1) and rmse.degraded  # 10% worse, any unit


def test_a_summary_is_json_with_undefined_values_as_null() -> None:
    value: Any = {"roc_auc": math.nan, "nested": [1.0, {"f1": math.nan}]}
    assert json.loads(json.dumps(json_safe(value), allow_nan=False)) == {
        "roc_auc": None, "nested": [1.0, {"f1": None}]}
    assert json.loads(json.dumps(_performance(math.nan).to_dict(), allow_nan=False))


def test_the_table_names_each_column_its_verdict_and_the_alerts(
    tmp_path: Any
) -> None:
    from ml_project.config import load_config
    from tests.conftest import write_project

    config = load_config("prediction", "production", "local",
                         config_file=write_project(tmp_path, n_historic=50, n_production=10),
                         root=tmp_path)
    summary = {"model": {"name": "churn", "version": "3"},
               "window": {"requests": 50, "first_logged_at": "a", "last_logged_at": "b",
                          "predicted": 48, "rejected": 2}}
    table = summary_table(summary, _drift(0.5), _performance(0.5), EXIT_DRIFT_AND_PERFORMANCE_DROP,
                          config)
    lines = table.splitlines()

    assert "Monitoring churn version 3: 50 requests" in table
    assert any(line.split()[:1] == ["age"] and line.endswith("DRIFT") for line in lines)
    long_row = next(line for line in lines if "a_column_with_a_name" in line)
    assert long_row.endswith("ok") and long_row.split()[1] == "chisquare"
    assert "ALERT: data drift in age" in table
    assert "ALERT: the model performs worse in production than on its holdout." in table
    assert "performance (roc_auc, 120 labelled)" in table
    assert "estimated" not in table  # none given


def test_the_table_shows_the_estimate_its_interval_and_who_decides(tmp_path: Any) -> None:
    from ml_project.config import load_config
    from tests.conftest import write_project

    config = load_config("prediction", "production", "local",
                         config_file=write_project(tmp_path, n_historic=50, n_production=10),
                         root=tmp_path)
    summary = {"model": {"name": "churn", "version": "3"},
               "window": {"requests": 500, "first_logged_at": "a", "last_logged_at": "b",
                          "predicted": 500, "rejected": 0}}
    alone = summary_table(summary, _drift(0.0), None, EXIT_ESTIMATED_DROP, config,
                          _estimated(0.7))
    beside = summary_table(summary, _drift(0.0), _performance(0.79), EXIT_OK, config,
                           _estimated(0.7))

    assert ("estimated performance (roc_auc, 500 predictions, no labels needed): 0.7000 "
            "(95% 0.6800 .. 0.7200) vs holdout 0.8000, drop 12.5% (threshold 5.0%): "
            "ESTIMATED DROP") in alone
    assert "ALERT: the model's estimated performance (no labels yet)" in alone
    assert "the realised metric decides" in beside and "ALERT" not in beside


def test_window_warnings_name_what_the_window_lacks_or_holds_twice() -> None:
    from ml_project.monitoring_summary import window_warnings

    window = {"pending_in_journal": 7, "future_timestamps": 2, "last_logged_at": "2099-01-01",
              "repeated_instances": 3, "repeated_instance_records": 6}
    warnings = window_warnings(window)
    assert len(warnings) == 3
    assert "7 records are still in the prediction journal" in warnings[0]
    assert "2 records are time-stamped in the future (latest 2099-01-01)" in warnings[1]
    assert "3 instances (ids) were predicted more than once (6 records)" in warnings[2]
    assert window_warnings({**window, "pending_in_journal": 0, "future_timestamps": 0,
                            "repeated_instances": 0}) == []
