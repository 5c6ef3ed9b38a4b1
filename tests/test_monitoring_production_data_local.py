"""End-to-end: stream -> prediction log -> monitoring use case (-> retraining) on small projects.

Most tests monitor the session's trained project read-only: their config points the prediction
log, the production sample, its labels and the output under tmp_path, and the tracking store at
an unreachable location (monitoring must carry on). The retraining test trains its own project,
since it registers and exports a new model version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ml_project.config import Config, _merge
from ml_project.ingest import stream_production_instances
from ml_project.monitoring_summary import (
    EXIT_BAD_INPUT,
    EXIT_DRIFT,
    EXIT_DRIFT_AND_PERFORMANCE_DROP,
    EXIT_ESTIMATED_DROP,
    EXIT_OK,
    EXIT_PERFORMANCE_DROP,
    EXIT_RETRAINING_FAILED,
)
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord, new_request_id
from ml_project.schemas import InvalidInstance
from tests.churn_data import generate_production_data
from tests.conftest import prediction_config, write_project
from use_cases import modelling_historic_data_local
from use_cases.monitoring_production_data_local import (
    DRIFT_REPORT,
    PERFORMANCE_REPORT,
    SUMMARY_FILE,
    main,
)


def log_production_stream(config: Config, model_sha256: str | None = None) -> int:
    """What the production stream does: each instance predicted (or rejected) and logged,
    with the served model's identity (or, given `model_sha256`, another model's)."""
    service = PredictionService.from_config(config)
    log = PredictionLog.from_config(config)
    records = []
    for instance in stream_production_instances(Path(config.resolve(config.data.production)),
                                                config):
        outcome: dict[str, Any] = {}
        try:
            prediction = service.predict_instance(instance)
            outcome = {"prediction": prediction.prediction,
                       "probabilities": prediction.probabilities}
        except InvalidInstance as err:
            outcome = {"error": str(err)}
        records.append(LogRecord(new_request_id(), "stream", instance, service.model_version,
                                 instance_id=str(instance["customer_id"]), latency_ms=0.3,
                                 model_name=service.model_name,
                                 model_sha256=model_sha256 or service.model_sha256, **outcome))
    log.append(records)
    log.close()
    return len(records)


def write_production(directory: Path, *, drift: float, labels: str = "all") -> None:
    """The production sample and its labels: all correct, all wrong, a few, or none yet."""
    production, truth = generate_production_data(300, seed=43, drift=drift)
    directory.mkdir(parents=True, exist_ok=True)
    production.to_csv(directory / "production_data.csv", index=False)
    if labels == "wrong":
        truth = truth.assign(churned=1 - truth["churned"])
    if labels == "few":
        truth = truth.head(20)
    if labels == "none":
        (directory / "production_labels.csv").unlink(missing_ok=True)
    else:
        truth.to_csv(directory / "production_labels.csv", index=False)


@pytest.fixture
def monitored(trained_project: Path, tmp_path: Path) -> Path:
    """A config file in tmp_path serving the trained project's model; returns tmp_path."""
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("")
    overrides = {
        "data": {"historic": str(trained_project / "data" / "historic_data.csv"),
                 "production": str(tmp_path / "data" / "production_data.csv"),
                 "production_labels": str(tmp_path / "data" / "production_labels.csv")},
        "paths": {"model_artifacts": str(trained_project / "data" / "model_artifacts")},
        "tracking": {"tracking_uri": f"sqlite:///{blocked / 'mlflow.db'}"},  # unreachable
        # 300 labelled rows measure a ROC AUC to about +-0.03: alert on a 10% relative drop,
        # well clear of that noise (wrong labels drop it by half)
        "monitoring": {"performance_drop_threshold": 0.1},
    }
    content = yaml.safe_load((trained_project / "project_config.yaml").read_text())
    config_text = yaml.safe_dump(_merge(content, overrides), sort_keys=False)
    (tmp_path / "project_config.yaml").write_text(config_text)
    return tmp_path


def run_monitoring(root: Path, *args: str) -> int:
    return main(["--config", str(root / "project_config.yaml"), "--root", str(root), *args])


def read_summary(root: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((root / "output/monitoring" / SUMMARY_FILE).read_text())
    return summary


@pytest.mark.parametrize(
    "drift, labels, expected",
    [
        (0.0, "all", EXIT_OK),
        (0.6, "all", EXIT_DRIFT),
        (0.0, "wrong", EXIT_PERFORMANCE_DROP),
        (0.6, "wrong", EXIT_DRIFT_AND_PERFORMANCE_DROP),
    ],
)
def test_exit_code_says_what_crossed_its_threshold(
    monitored: Path, drift: float, labels: str, expected: int,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    write_production(monitored / "data", drift=drift, labels=labels)
    log_production_stream(prediction_config(monitored))

    with caplog.at_level(logging.WARNING):
        code = run_monitoring(monitored)

    assert code == expected
    summary = read_summary(monitored)
    assert summary["exit_code"] == expected
    assert summary["window"]["requests"] == 300 and summary["window"]["rejected"] >= 1
    assert summary["reference"]["rows"] == 300  # the artifact's sample: the whole holdout
    assert summary["drift"]["detected"] is (drift > 0)
    assert summary["performance"]["degraded"] is (labels == "wrong")
    assert summary["performance"]["labelled_rows"] == summary["window"]["predicted"]
    reports = monitored / "output/monitoring"
    assert "Dataset Drift" in (reports / DRIFT_REPORT).read_text()
    assert "Classification Model Performance" in (reports / PERFORMANCE_REPORT).read_text()
    out = capsys.readouterr().out
    assert ("ALERT: data drift" in out) is (drift > 0)
    assert ("ALERT: the model performs worse" in out) is (labels == "wrong")
    assert "Reports not logged to MLflow" in caplog.text  # tracking unreachable: carried on


@pytest.mark.parametrize("labels", ["none", "few"])
def test_performance_report_appears_only_with_enough_labels(
    monitored: Path, labels: str
) -> None:
    write_production(monitored / "data", drift=0.6, labels="all")
    log_production_stream(prediction_config(monitored))
    assert run_monitoring(monitored) == EXIT_DRIFT
    assert (monitored / "output/monitoring" / PERFORMANCE_REPORT).is_file()
    write_production(monitored / "data", drift=0.6, labels=labels)  # labels gone, or only 20

    code = run_monitoring(monitored)

    assert code == EXIT_DRIFT
    assert read_summary(monitored)["performance"] is None
    assert not (monitored / "output/monitoring" / PERFORMANCE_REPORT).exists()  # no stale verdict
    assert (monitored / "output/monitoring" / DRIFT_REPORT).is_file()


def test_an_estimated_drop_without_labels_has_its_own_exit_code(
    monitored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Customers of one contract only: one feature drifts (no data drift), and the model, whose
    strongest signal is the contract, tells them apart less well. Its served probabilities
    show it before any label arrives; when the labels come, the realised metric decides."""
    production, truth = generate_production_data(1000, seed=44, drift=0.0)
    one_contract = production["contract"] == "one-year"
    # p-value tests on a reference of 300 rows flag a feature or two by chance besides the
    # contract: data drift is judged on half of the features here, so the code is the estimate's
    config_file = monitored / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    content["monitoring"]["drift_share_threshold"] = 0.5
    config_file.write_text(yaml.safe_dump(content, sort_keys=False))
    directory = monitored / "data"
    directory.mkdir(parents=True, exist_ok=True)
    production[one_contract].to_csv(directory / "production_data.csv", index=False)
    log_production_stream(prediction_config(monitored))

    code = run_monitoring(monitored, "--retrain-on-drift")

    summary = read_summary(monitored)
    estimated = summary["estimated_performance"]
    assert summary["performance"] is None and not summary["drift"]["detected"]
    assert code == EXIT_ESTIMATED_DROP == summary["exit_code"]
    assert summary["retraining"] is None  # no labels to learn the change from: no retraining
    assert estimated["metric"] == "roc_auc" and estimated["degraded"] is True
    assert estimated["relative_drop"] > estimated["threshold"]
    low, high = estimated["interval_95"]["roc_auc"]
    assert low < estimated["estimated"]["roc_auc"] < high
    assert estimated["calibration"]["rows"] == summary["reference"]["rows"]
    assert "ALERT: the model's estimated performance" in capsys.readouterr().out

    truth[truth["customer_id"].isin(production[one_contract]["customer_id"])].to_csv(
        directory / "production_labels.csv", index=False)
    code = run_monitoring(monitored)

    summary = read_summary(monitored)
    realised = summary["performance"]
    assert code == (EXIT_PERFORMANCE_DROP if realised["degraded"] else EXIT_OK)
    estimated = summary["estimated_performance"]
    error = abs(estimated["estimated"]["roc_auc"] - realised["production"]["roc_auc"])
    assert error <= 3 * estimated["sampling_error"]["roc_auc"]  # both reported, and they agree
    assert "the realised metric decides" in capsys.readouterr().out


def test_window_follows_last_and_time_range(monitored: Path) -> None:
    write_production(monitored / "data", drift=0.6, labels="none")  # drift decides the code
    log_production_stream(prediction_config(monitored))

    assert run_monitoring(monitored, "--last", "150") == EXIT_DRIFT
    assert read_summary(monitored)["window"]["requests"] == 150
    assert run_monitoring(monitored, "--since", "2000-01-01T00:00:00+01:00") == EXIT_DRIFT
    assert read_summary(monitored)["window"]["requests"] == 300  # a range lifts the default cap
    assert run_monitoring(monitored, "--until", "2000-01-01") == EXIT_BAD_INPUT  # nothing then


def test_monitoring_reads_only_the_records_of_the_model_it_monitors(
    monitored: Path
) -> None:
    """After adapting the template, the demo's records (another model, also "version 1") are
    still in the log: they must not enter the window and fake a drift."""
    write_production(monitored / "data", drift=0.6, labels="none")
    log_production_stream(prediction_config(monitored), model_sha256="0" * 64)  # another model
    write_production(monitored / "data", drift=0.0, labels="none")
    log_production_stream(prediction_config(monitored))

    assert run_monitoring(monitored) == EXIT_OK
    assert read_summary(monitored)["window"]["requests"] == 300


def test_empty_prediction_log_is_bad_input(
    monitored: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_production(monitored / "data", drift=0.6)

    assert run_monitoring(monitored) == EXIT_BAD_INPUT
    assert "no predictions of model version" in caplog.text


def test_missing_model_is_bad_input(monitored: Path, caplog: pytest.LogCaptureFixture) -> None:
    config_file = monitored / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    content["paths"]["model_artifacts"] = str(monitored / "no_models")
    config_file.write_text(yaml.safe_dump(content, sort_keys=False))

    assert run_monitoring(monitored) == EXIT_BAD_INPUT
    assert "run the modelling use case first" in caplog.text


@pytest.mark.parametrize("args", [["--last", "0"], ["--since", "yesterday"]])
def test_bad_arguments_exit_with_bad_input(monitored: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_monitoring(monitored, *args)

    assert exit_info.value.code == EXIT_BAD_INPUT


def test_retraining_without_labels_fails_plainly(
    monitored: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_production(monitored / "data", drift=0.6, labels="none")
    log_production_stream(prediction_config(monitored))

    assert run_monitoring(monitored, "--retrain-on-drift") == EXIT_RETRAINING_FAILED
    assert "Cannot retrain: no production rows have labels" in caplog.text
    assert read_summary(monitored)["exit_code"] == EXIT_RETRAINING_FAILED


def test_stream_log_monitor_retrain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole loop on a project of its own: train, stream drifted data into the log, monitor,
    retrain on historic plus labelled production data, and let the promotion rule decide."""
    config_file = write_project(tmp_path)
    root_args = ["--config", str(config_file), "--root", str(tmp_path)]
    assert modelling_historic_data_local.main(root_args) == 0
    config = prediction_config(tmp_path)
    first_run = json.loads((tmp_path / "data/model_artifacts/champion/metadata.json").read_text())
    assert log_production_stream(config) == 300

    code = main([*root_args, "--retrain-on-drift"])

    assert code == EXIT_DRIFT  # the alert stands after a successful retraining
    retraining = read_summary(tmp_path)["retraining"]
    assert retraining["model_version"] == "2"
    assert retraining["extra_labelled_rows"] == 300
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version("churn_model", "2")
    assert retraining["alias"] in version.aliases
    new_metadata = json.loads(
        (tmp_path / "data/model_artifacts" / retraining["alias"] / "metadata.json").read_text())
    assert new_metadata["model_version"] == "2"
    assert new_metadata["extra_labelled_data"].endswith("labelled_production_data.csv")
    assert new_metadata["training_rows"] > first_run["training_rows"]  # production rows joined
    out = capsys.readouterr().out
    assert "RETRAINED: version 2" in out
    logged = [item.path for item in client.list_artifacts(first_run["mlflow_run_id"], "monitoring")]
    assert len(logged) == 1  # one folder per monitoring run, on the served model's run
    files = {Path(item.path).name for item in client.list_artifacts(first_run["mlflow_run_id"],
                                                                     logged[0])}
    assert files == {DRIFT_REPORT, PERFORMANCE_REPORT, SUMMARY_FILE}
    extra = pd.read_csv(tmp_path / "output/monitoring/labelled_production_data.csv")
    assert "churned" in extra.columns
