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

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import UndefinedMetricWarning

from ml_project.config import Config, load_config
from ml_project.monitor import detect_drift, evaluate_performance, write_report_html
from ml_project.monitoring_data import (
    MonitoringInputError,
    Reference,
    load_reference_data,
)
from ml_project.predict import PredictionService
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
        overrides={"task": "regression", "columns": {"target_classes": [], "positive_class": None},
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
                                  "columns": {"target_classes": classes,
                                              "positive_class": None},
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


def test_serving_modules_do_not_import_monitoring() -> None:
    """Serving stays light: only monitoring loads Evidently."""
    serving = ["ml_project.predict", "ml_project.prediction_log.log",
               "ml_project.serving.launcher", "ml_project.serving.fastapi_app",
               "ml_project.serving.flask_app", "ml_project.serving.bundle"]
    script = (
        f"import json, sys, {', '.join(serving)}\n"
        "print(json.dumps(sorted(name for name in sys.modules\n"
        "                        if name.startswith(('evidently', 'ml_project.monitor')))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)

    assert json.loads(result.stdout) == []
