"""Monitoring: data drift, prediction drift and model performance of the logged predictions.

What is compared (the window of the log, the reference sample, the labels) is read by
`monitoring_data.py`; this module turns it into Evidently's reports and our verdicts.

Current data is a window of the prediction log: the records of the served model only (its
artifact's sha256), so another model's predictions, the demo's say, never mix in. Reference
data is the reference sample stored with the artifact: validated holdout rows with their labels
and the model's predictions at training time, so prediction drift compares like with like and
nothing of the historic data, its validation or its split is re-run. Performance is measured
where ground-truth labels have arrived (the labels file joined by id) and compared with the
holdout's.

Evidently's API changes between versions, so every call to it lives in this module, behind
functions named for what they do (`detect_drift`, `evaluate_performance`, `write_report_html`):
an upgrade touches this file only. The serving path never imports this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from evidently import (
    BinaryClassification,
    DataDefinition,
    Dataset,
    MulticlassClassification,
    Regression,
    Report,
    Run,
)
from evidently.metrics import ValueDrift
from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset
from sklearn.exceptions import UndefinedMetricWarning

from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX, Config
from ml_project.metrics import score_predictions
from ml_project.monitoring_data import MonitoringInputError
from ml_project.monitoring_summary import ColumnDrift, DriftSummary, PerformanceSummary

logger = logging.getLogger(__name__)


# --- Drift and performance: Evidently's reports, our verdicts -----------------------------------


def _prediction_columns(reference: pd.DataFrame, config: Config) -> tuple[list[str], list[str]]:
    """Categorical and numerical prediction columns to watch for drift: the label and, for a
    binary task, the positive class's probability (all classes' for multiclass)."""
    if not config.is_classification:
        return [], [PREDICTION_COLUMN]
    probabilities = [c for c in reference.columns if c.startswith(PROBABILITY_PREFIX)]
    if config.task == "binary_classification":
        probabilities = [f"{PROBABILITY_PREFIX}{config.positive_class}"]
    return [PREDICTION_COLUMN], probabilities


def _drift_dataset(frame: pd.DataFrame, columns: list[str], definition: DataDefinition,
                   categorical: Sequence[str]) -> Dataset:
    """Categorical columns as text, so an integer label logged as JSON matches a scored one
    (and a validated frame's Categorical matches the log's plain text)."""
    data = frame.reindex(columns=columns)
    values = {name: data[name].astype(object) for name in categorical}
    as_text = {name: column.where(column.isna(), column.astype(str))
               for name, column in values.items()}
    return Dataset.from_pandas(data.assign(**as_text), data_definition=definition)


def detect_drift(reference: pd.DataFrame, current: pd.DataFrame, config: Config) -> DriftSummary:
    """Drift of every input feature and of the predictions, with Evidently's default test per
    column (distances above 1000 reference rows, p-values below) and its default thresholds.

    Raises:
        MonitoringInputError: the current window is empty.
    """
    if current.empty:
        raise MonitoringInputError("no predictions in the window to compare with the reference")
    features = list(config.columns.features)
    categorical_predictions, numerical_predictions = _prediction_columns(reference, config)
    watched = [*categorical_predictions, *numerical_predictions]
    categorical = [*config.columns.categorical, *categorical_predictions]
    definition = DataDefinition(
        numerical_columns=[*config.columns.numerical, *numerical_predictions],
        categorical_columns=categorical,
    )
    threshold = config.monitoring.drift_share_threshold
    report = Report(
        [
            DataDriftPreset(columns=features, drift_share=threshold),
            *(ValueDrift(column=column) for column in watched),
        ],
        include_tests=True,  # the per-column tests carry Evidently's drifted / not drifted verdict
    )
    columns = features + watched
    with _quiet_report():
        snapshot = report.run(
            _drift_dataset(current, columns, definition, categorical),
            _drift_dataset(reference, columns, definition, categorical),
        )
    results = json.loads(snapshot.json())
    share = next(
        float(metric["value"]["share"]) for metric in results["metrics"]
        if metric["config"]["type"].endswith("DriftedColumnsCount")
    )
    drifts = _column_drifts(results)
    summary = DriftSummary(
        features=tuple(drifts[column] for column in features),
        predictions=tuple(drifts[column] for column in watched),
        drifted_share=share,
        threshold=threshold,
        reference_rows=len(reference),
        current_rows=len(current),
        report=snapshot,
    )
    logger.info("Drift: %d of %d features drifted (share %.2f, threshold %.2f)",
                len(summary.drifted_features), len(features), share, threshold)
    return summary


def _column_drifts(results: Mapping[str, Any]) -> dict[str, ColumnDrift]:
    """Per-column score (the metric) and verdict (its test) from a report's JSON results."""
    failed = {
        test["metric_config"]["metric_id"]: test["status"] == "FAIL"
        for test in results["tests"]
        if test["metric_config"]["params"]["type"].endswith("ValueDrift")
    }
    drifts = {}
    for metric in results["metrics"]:
        params = metric["config"]
        if params["type"].endswith("ValueDrift"):
            drifts[params["column"]] = ColumnDrift(
                column=params["column"],
                method=str(params["method"]),
                score=float(metric["value"]),
                threshold=float(params["threshold"]),
                drifted=failed[metric["id"]],
            )
    return drifts


def _classes(frame: pd.DataFrame, config: Config) -> list[Any]:
    """The model's classes in the order of its probability columns (`probability_<class>`)."""
    by_name = {str(label): label for label in config.columns.target_classes}
    return [by_name[c.removeprefix(PROBABILITY_PREFIX)]
            for c in frame.columns if c.startswith(PROBABILITY_PREFIX)]


def _score(frame: pd.DataFrame, config: Config) -> dict[str, float]:
    """Every configured metric, computed exactly as the modelling run's holdout metrics."""
    target = frame[config.columns.target]
    predicted = frame[PREDICTION_COLUMN]
    if not config.is_classification:
        return score_predictions(config.metrics, target.to_numpy(float), predicted.to_numpy(float))
    classes = _classes(frame, config)
    probabilities = frame[[f"{PROBABILITY_PREFIX}{c}" for c in classes]].to_numpy(float)
    return score_predictions(
        config.metrics, target.to_numpy(), predicted.astype(target.dtype).to_numpy(),
        probabilities, classes, config.positive_class,
    )


def _performance_dataset(frame: pd.DataFrame, config: Config) -> Dataset:
    """Target, prediction and probabilities mapped for Evidently's classification or
    regression metrics; class labels as text, probability columns named by their class."""
    target = config.columns.target
    if not config.is_classification:
        data = frame[[target, PREDICTION_COLUMN]].astype(float)
        definition = DataDefinition(
            numerical_columns=[target, PREDICTION_COLUMN],
            regression=[Regression(target=target, prediction=PREDICTION_COLUMN)],
        )
        return Dataset.from_pandas(data, data_definition=definition)
    labels = [str(label) for label in _classes(frame, config)]
    renamed = {f"{PROBABILITY_PREFIX}{label}": label for label in labels}
    data = frame[[target, PREDICTION_COLUMN, *renamed]].rename(columns=renamed)
    data = data.astype({target: str, PREDICTION_COLUMN: str})
    classification: BinaryClassification | MulticlassClassification
    if config.task == "binary_classification":
        positive = str(config.positive_class)
        classification = BinaryClassification(
            target=target, prediction_labels=PREDICTION_COLUMN, prediction_probas=positive,
            pos_label=positive,
        )
    else:
        classification = MulticlassClassification(
            target=target, prediction_labels=PREDICTION_COLUMN, prediction_probas=labels
        )
    definition = DataDefinition(
        numerical_columns=labels,
        categorical_columns=[target, PREDICTION_COLUMN],
        classification=[classification],
    )
    return Dataset.from_pandas(data, data_definition=definition)


@contextlib.contextmanager
def _quiet_report() -> Iterator[None]:
    """Evidently's reports compute per-bucket statistics that scikit-learn and numpy warn about
    on small buckets (a class never predicted, one row in a bin: "R^2 score is not well-defined",
    "Precision is ill-defined", a divide by zero). The report shows those cells as undefined and
    the verdict is computed apart (`_score`): the warnings only bury the summary."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        yield


def _report_left_out(reference: pd.DataFrame, current: pd.DataFrame, config: Config
                     ) -> str | None:
    """Why Evidently's classification report cannot be made, or None: it fails (KeyError,
    evidently 0.7) when a class of the model has no labelled row, as in a short window of a
    rare class. The metrics and the verdict do not need it."""
    if not config.is_classification:
        return None
    classes = [str(label) for label in config.columns.target_classes]
    for name, frame in (("the labelled window", current), ("the reference sample", reference)):
        present = set(frame[config.columns.target].astype(str))
        missing = [label for label in classes if label not in present]
        if missing:
            return (f"{name} has no labelled row of the class{'es' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)}, and Evidently's classification report needs every "
                    "class; the metrics and the verdict are computed without it")
    return None


def holdout_baseline(reference: pd.DataFrame, config: Config,
                     recorded_holdout_metrics: Mapping[str, float] | None = None
                     ) -> tuple[dict[str, float], str]:
    """The metrics production is compared with, and their source: those recorded when the model
    was trained (its metadata) when they hold the primary metric, else the reference scored."""
    if recorded_holdout_metrics and config.training.metric in recorded_holdout_metrics:
        return ({key: float(value) for key, value in recorded_holdout_metrics.items()},
                "holdout metrics recorded at training")
    return _score(reference, config), "the reference sample, scored now"


def evaluate_performance(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: Config,
    recorded_holdout_metrics: Mapping[str, float] | None = None,
) -> PerformanceSummary:
    """Quality of the labelled production predictions (`current`) next to the holdout's.

    Args:
        reference: the holdout rows with target and the served model's predictions.
        recorded_holdout_metrics: the metrics recorded when the model was trained (its
            metadata); they are the baseline when they hold the primary metric, otherwise the
            reference is scored now.
    Raises:
        MonitoringInputError: no labelled predictions.
    """
    if current.empty:
        raise MonitoringInputError("no labelled predictions to evaluate")
    metric = config.training.metric
    baseline, source = holdout_baseline(reference, config, recorded_holdout_metrics)
    snapshot, left_out = None, _report_left_out(reference, current, config)
    if left_out:
        logger.warning("No performance report: %s", left_out)
    else:
        preset = ClassificationPreset() if config.is_classification else RegressionPreset()
        with _quiet_report():
            snapshot = Report([preset]).run(
                _performance_dataset(current, config), _performance_dataset(reference, config)
            )
    summary = PerformanceSummary(
        metric=metric,
        production=_score(current, config),
        baseline=baseline,
        baseline_source=source,
        labelled_rows=len(current),
        threshold=config.monitoring.performance_drop_threshold,
        report=snapshot,
        report_left_out=left_out,
    )
    logger.info("Performance: %s %.4f on %d labelled predictions vs %.4f (%s)", metric,
                summary.production[metric], len(current), baseline[metric], source)
    return summary


def write_report_html(report: Run, path: Path) -> Path:
    """A self-contained HTML file (scripts and data inlined): it opens offline, anywhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report.save_html(str(path))
    return path
