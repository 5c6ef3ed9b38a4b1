"""Monitoring stage: the window read from the log, the reference, drift, performance, reports.

Real Evidently reports on the miniature trained project; the generator's drift knob decides
what must be flagged.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import UndefinedMetricWarning

from ml_project.config import Config, load_config
from ml_project.monitor import detect_drift, evaluate_performance, write_report_html
from ml_project.monitoring_data import (
    MonitoringInputError,
    Reference,
    attach_labels,
    labelled_production_data,
    load_reference_data,
    read_prediction_window,
    read_production_labels,
)
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord, new_request_id
from ml_project.schemas import InvalidInstance
from ml_project.validate import validate_production_data
from tests.churn_data import generate_production_data
from tests.conftest import prediction_config

FEATURES_THAT_DRIFT = {"tenure_months", "monthly_charges", "support_calls", "contract"}


@pytest.fixture(scope="module")
def service(trained_project: Path) -> PredictionService:
    return PredictionService.from_config(prediction_config(trained_project))


@pytest.fixture(scope="module")
def reference(trained_project: Path, service: PredictionService) -> Reference:
    return load_reference_data(service)


def scored_production(service: PredictionService, *, drift: float, seed: int = 43,
                      n_rows: int = 300) -> pd.DataFrame:
    """Generated production instances, validated, scored and joined with their labels."""
    production, labels = generate_production_data(n_rows, seed=seed, drift=drift)
    raw = validate_production_data(production, service.config, with_target=False).valid
    predictions = service.predict_frame(raw).drop(columns=["customer_id", "model_version"])
    return pd.concat([raw, predictions], axis=1).merge(labels, on="customer_id")


def config_with(root: Path, tmp_path: Path, **overrides: object) -> Config:
    """The trained project's config with its prediction log and labels under tmp_path."""
    return prediction_config(
        root,
        prediction={"prediction_log_url": f"sqlite:///{tmp_path / 'log.db'}"},
        paths={"output": str(tmp_path / "output")},
        **overrides,
    )


def test_load_reference_data_is_the_artifacts_holdout_sample_with_its_predictions(
    reference: Reference, service: PredictionService, trained_project: Path
) -> None:
    """Nothing is re-run: the sample stored at export (holdout rows, labels, predictions)."""
    metadata = service.metadata
    stored = pd.read_parquet(trained_project / "data/model_artifacts/champion"
                             / metadata["reference_file"])
    pd.testing.assert_frame_equal(reference.sample, stored)
    assert len(reference.sample) == metadata["reference_rows"] == 300  # the holdout, all of it
    assert {"prediction", "probability_0", "probability_1", "churned"} <= set(stored.columns)
    features = stored[service.features]
    np.testing.assert_array_equal(stored["prediction"], service.pipeline.predict(features))
    np.testing.assert_array_equal(stored[["probability_0", "probability_1"]],
                                  service.pipeline.predict_proba(features))


def test_load_reference_data_without_a_sample_says_to_retrain(
    service: PredictionService
) -> None:
    older = PredictionService(service.pipeline, service.metadata, service.config, None)

    with pytest.raises(MonitoringInputError, match="has no reference sample"):
        load_reference_data(older)


@pytest.mark.parametrize("drift, expected", [(0.0, False), (0.6, True)])
def test_detect_drift_flags_drifted_data_only(
    service: PredictionService, reference: Reference, drift: float, expected: bool
) -> None:
    current = scored_production(service, drift=drift)

    summary = detect_drift(reference.sample, current, service.config)

    assert summary.detected is expected
    assert [d.column for d in summary.features] == list(service.config.columns.features)
    assert [d.column for d in summary.predictions] == ["prediction", "probability_1"]
    if expected:
        assert summary.drifted_share >= service.config.monitoring.drift_share_threshold
        assert FEATURES_THAT_DRIFT <= set(summary.drifted_features)
        assert summary.predictions[1].drifted  # churn probabilities shift with the inputs
    else:
        assert summary.drifted_share < service.config.monitoring.drift_share_threshold
        assert not any(d.drifted for d in summary.predictions)
    assert summary.current_rows == len(current) and summary.reference_rows == len(reference.sample)


def test_detect_drift_refuses_an_empty_window(
    service: PredictionService, reference: Reference
) -> None:
    with pytest.raises(MonitoringInputError, match="no predictions"):
        detect_drift(reference.sample, reference.sample.iloc[0:0], service.config)


def test_drift_report_html_is_self_contained_with_its_sections(
    service: PredictionService, reference: Reference, tmp_path: Path
) -> None:
    summary = detect_drift(reference.sample, scored_production(service, drift=0.6),
                           service.config)

    html = write_report_html(summary.report, tmp_path / "reports" / "drift.html").read_text()

    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=", html)  # scripts inlined: opens offline
    for section in ("Dataset Drift", "Data Drift Summary", "Drift in column 'prediction'",
                    "Drift in column 'probability_1'", *service.config.columns.features):
        assert section in html


@pytest.mark.parametrize("flip_labels, degraded", [(False, False), (True, True)])
def test_evaluate_performance_compares_production_with_the_holdout(
    service: PredictionService, reference: Reference, flip_labels: bool, degraded: bool,
    tmp_path: Path,
) -> None:
    current = scored_production(service, drift=0.0, n_rows=2000)  # few rows: a noisy metric
    if flip_labels:  # the ground truth says the model is wrong: it has gone stale
        current = current.assign(churned=1 - current["churned"])
    holdout_metrics = service.metadata["holdout_metrics"]

    summary = evaluate_performance(reference.sample, current, service.config, holdout_metrics)

    assert summary.metric == "roc_auc" and summary.labelled_rows == len(current)
    assert summary.baseline == pytest.approx(holdout_metrics)
    assert set(summary.production) == set(service.config.metrics)
    assert summary.degraded is degraded
    assert (summary.relative_drop > summary.threshold) is degraded
    assert summary.report is not None and summary.report_left_out is None
    html = write_report_html(summary.report, tmp_path / "performance.html").read_text()
    for section in ("Classification Model Performance", "Confusion Matrix",
                    "Current: Model Quality Metrics", "Reference: Model Quality Metrics"):
        assert section in html


def test_a_window_where_a_class_is_neither_labelled_nor_predicted_scores_without_warnings(
    service: PredictionService, reference: Reference
) -> None:
    """F1 of a class neither labelled nor predicted is 0 (as scikit-learn sets it, and as the
    batch use case's running scores compute it); its warning on each small window, and those of
    the Evidently reports' per-class cells, would only bury the summary."""
    current = scored_production(service, drift=0.0, n_rows=300).assign(prediction=0, churned=0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = evaluate_performance(reference.sample, current, service.config,
                                       service.metadata["holdout_metrics"])

    assert not [w for w in caught if issubclass(w.category, (UndefinedMetricWarning,
                                                               RuntimeWarning))], [
        (w.category.__name__, str(w.message)[:100], w.filename) for w in caught]
    assert summary.production["f1"] == 0.0


def test_evaluate_performance_rescores_the_holdout_without_recorded_metrics(
    service: PredictionService, reference: Reference
) -> None:
    """A registry model has no holdout metrics in its metadata: the reference sample (the
    holdout), scored now, gives the same numbers the modelling run recorded."""
    current = scored_production(service, drift=0.0)

    summary = evaluate_performance(reference.sample, current, service.config, None)

    assert summary.baseline_source == "the reference sample, scored now"
    assert summary.baseline == pytest.approx(service.metadata["holdout_metrics"])


def test_evaluate_performance_of_a_regression(trained_project: Path, tmp_path: Path) -> None:
    config = load_config(
        "prediction", "production", "local", config_file=trained_project / "project_config.yaml",
        root=tmp_path,
        overrides={"task": "regression", "columns": {"target_classes": []},
                   "training": {"split": "random", "metric": "r2"}},
    )
    target = pd.Series(range(200), dtype=float)
    reference = pd.DataFrame({"churned": target, "prediction": target + 1.0})
    current = pd.DataFrame({"churned": target, "prediction": target * 0.5})

    summary = evaluate_performance(reference, current, config, None)

    assert summary.baseline["r2"] == pytest.approx(1 - 1 / target.var(ddof=0))
    assert summary.production["r2"] < summary.baseline["r2"] - 0.05
    assert summary.degraded
    assert summary.report is not None
    html = write_report_html(summary.report, tmp_path / "performance.html").read_text()
    assert "Regression" in html


@pytest.mark.parametrize("short_of_a_class", ["window", "reference"])
def test_a_class_with_no_labelled_row_leaves_out_the_report_not_the_verdict(
    short_of_a_class: str, trained_project: Path, tmp_path: Path
) -> None:
    """Evidently's classification report fails (KeyError) when a class of the model has no
    labelled row, as in a short window of a rare class: the metrics and the verdict stand
    without it, and the summary says why."""
    classes = ["rain", "snow", "sun"]
    config = load_config(
        "prediction", "production", "local", config_file=trained_project / "project_config.yaml",
        root=tmp_path, overrides={"task": "multiclass_classification",
                                  "columns": {"target_classes": classes},
                                  "training": {"metric": "f1_macro"}},
    )
    rng = np.random.default_rng(0)

    def scored(labels: list[str], rows: int) -> pd.DataFrame:
        truth = rng.choice(labels, rows)
        probabilities = rng.dirichlet(np.ones(len(classes)), rows)
        return pd.DataFrame({"churned": truth, "prediction": truth} | {
            f"probability_{label}": probabilities[:, i] for i, label in enumerate(classes)})

    full, short = scored(classes, 300), scored(["rain", "sun"], 60)
    reference, current = (full, short) if short_of_a_class == "window" else (short, full)

    summary = evaluate_performance(reference, current, config, None)

    assert summary.report is None
    where = "the labelled window" if short_of_a_class == "window" else "the reference sample"
    assert summary.report_left_out is not None
    assert summary.report_left_out.startswith(f"{where} has no labelled row of the class snow")
    assert summary.production["f1_macro"] == 1.0 and summary.baseline["f1_macro"] == 1.0
    assert not summary.degraded
    assert summary.to_dict()["report_left_out"] == summary.report_left_out


def test_evaluate_performance_refuses_no_labels(
    service: PredictionService, reference: Reference
) -> None:
    with pytest.raises(MonitoringInputError, match="no labelled predictions"):
        evaluate_performance(reference.sample, reference.sample.iloc[0:0], service.config)


def log_records(config: Config, service: PredictionService, production: pd.DataFrame,
                logged_at: list[str]) -> None:
    """Log each row as the stream would: predicted, or rejected with its error."""
    records = []
    for row, moment in zip(production.to_dict("records"), logged_at):
        instance = {str(key): (None if pd.isna(value) else value) for key, value in row.items()}
        try:
            prediction = service.predict_instance(instance)
        except InvalidInstance as err:
            records.append(LogRecord(new_request_id(), "test", instance, service.model_version,
                                     error=str(err), instance_id=instance["customer_id"],
                                     logged_at=moment))
            continue
        records.append(LogRecord(new_request_id(), "test", instance, service.model_version,
                                 prediction.prediction, prediction.probabilities, 1.0,
                                 instance_id=instance["customer_id"], logged_at=moment))
    log = PredictionLog.from_config(config)
    log.append(records)
    log.close()


def test_read_prediction_window_selects_by_count_and_time(
    trained_project: Path, service: PredictionService, tmp_path: Path
) -> None:
    config = config_with(trained_project, tmp_path)
    production, _ = generate_production_data(60, seed=3, drift=0.0)
    raw = validate_production_data(production, config, with_target=False).valid.head(40)
    raw = raw.drop(columns="event_time").astype({"age": object})
    raw.loc[5, "age"] = "unknown"  # rejected by validation: logged with its error
    times = [f"2026-01-01T00:{minute:02d}:00+00:00" for minute in range(40)]
    log_records(config, service, raw, times)

    everything = read_prediction_window(config)
    last_ten = read_prediction_window(config, last=10)
    ranged = read_prediction_window(config, since=times[2], until=times[12])

    assert (everything.requests, everything.rejected, len(everything.predictions)) == (40, 1, 39)
    assert everything.model_versions == [service.model_version]
    frame = everything.predictions
    assert list(frame.columns[:11]) == ["customer_id", *config.columns.features]
    assert {"prediction", "probability_0", "probability_1", "model_version", "logged_at"} <= set(
        frame.columns)
    assert all(frame[name].dtype == float for name in config.columns.numerical)
    assert raw.loc[5, "customer_id"] not in set(frame["customer_id"])
    assert last_ten.period == (times[30], times[39]) and last_ten.requests == 10
    assert ranged.period == (times[2], times[11]) and ranged.requests == 10
    assert ranged.rejected == 1


def test_read_prediction_window_of_an_empty_log_is_empty(
    trained_project: Path, tmp_path: Path
) -> None:
    window = read_prediction_window(config_with(trained_project, tmp_path), last=100)

    assert window.requests == 0 and window.predictions.empty and window.period == (None, None)


def write_labels(path: Path, rows: list[tuple[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["customer_id", "churned"]).to_csv(path, index=False)


def test_read_production_labels_keeps_valid_targets_and_the_latest_correction(
    trained_project: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    write_labels(labels_file, [("P1", 1), ("P2", 0), ("P3", 7), ("P1", 0)])
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)})

    labels = read_production_labels(config)

    assert labels is not None
    assert labels.set_index("customer_id")["churned"].to_dict() == {"P2": 0, "P1": 0}


@pytest.mark.parametrize(("classes", "rows", "expected"), [
    (["False", "True"], [("P1", True), ("P2", False), ("P3", None), ("P4", True)],
     {"P1": "True", "P2": "False", "P4": "True"}),
    ([0, 1], [("P1", 1.0), ("P2", 0.0), ("P3", None), ("P4", 0.5)], {"P1": 1, "P2": 0}),
], ids=["true-false-as-text-classes", "whole-floats-as-integer-classes"])
def test_read_production_labels_reads_a_label_as_every_other_path_reads_it(
    trained_project: Path, tmp_path: Path, classes: list[Any], rows: list[tuple[str, object]],
    expected: dict[str, Any]
) -> None:
    """A CSV's True/False labels read as bools and a column with a gap as floats: labels are
    matched to the classes as the batch use case and validation match them."""
    labels_file = tmp_path / "labels.csv"
    write_labels(labels_file, rows)
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)},
                         columns={"target_classes": classes})

    labels = read_production_labels(config)

    assert labels is not None
    found = labels.set_index("customer_id")["churned"].to_dict()
    assert found == expected
    assert [type(label) for label in found.values()] == [type(label) for label in expected.values()]


def test_read_production_labels_before_any_arrived_is_none(
    trained_project: Path, tmp_path: Path
) -> None:
    config = config_with(trained_project, tmp_path,
                         data={"production_labels": str(tmp_path / "absent.csv")})

    assert read_production_labels(config) is None


def test_read_production_labels_without_target_is_refused(
    trained_project: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["P1"], "label": [1]}).to_csv(labels_file, index=False)
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)})

    with pytest.raises(MonitoringInputError, match="churned"):
        read_production_labels(config)


def test_attach_labels_keeps_only_labelled_predictions(service: PredictionService) -> None:
    predictions = pd.DataFrame({"customer_id": ["P1", "P2", "P3"], "prediction": [1, 0, 1]})
    labels = pd.DataFrame({"customer_id": ["P3", "P1", "P9"], "churned": [0, 1, 1]})

    labelled = attach_labels(predictions, labels, service.config)

    assert labelled.sort_values("customer_id").to_dict("list") == {
        "customer_id": ["P1", "P3"], "prediction": [1, 1], "churned": [1, 0]}


def test_labelled_production_data_joins_the_production_file_with_its_labels(
    trained_project: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    write_labels(labels_file, [("P000001", 1), ("P000002", 0), ("X", 1)])
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)})

    extra = labelled_production_data(config)

    assert sorted(extra["customer_id"]) == ["P000001", "P000002"]
    assert {"event_time", *config.columns.features, "churned"} <= set(extra.columns)


def test_serving_modules_do_not_import_monitoring() -> None:
    """Serving stays light: only monitoring loads Evidently."""
    package = Path(__file__).resolve().parents[1] / "ml_project"
    serving = [f"ml_project.{name}" for name in ("predict", "prediction_log", "api", "flask_api")
               if (package / f"{name}.py").is_file()]
    script = (
        f"import json, sys, {', '.join(serving)}\n"
        "print(json.dumps(sorted(name for name in sys.modules\n"
        "                        if name.startswith(('evidently', 'ml_project.monitor')))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)

    assert json.loads(result.stdout) == []
