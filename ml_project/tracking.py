"""The modelling run in MLflow: its context, parameters and metrics, lineage, one nested run per
candidate, evaluation plots, and the model logged and registered as a new version.

Comparing with the champion and moving the aliases is `registry.py`'s, and the local artifact
`export.py`'s: the modelling use case calls the three in order. Browse the store with:
    pipenv run mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Iterator, Mapping

import mlflow
import numpy as np
import pandas as pd
import skops.io
from matplotlib.figure import Figure
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.inspection import permutation_importance
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
from sklearn.pipeline import Pipeline

from ml_project.config import Config
from ml_project.export import sha256_of
from ml_project.metrics import cv_scorers
from ml_project.registry import (
    CARD_ARTIFACT,
    MODEL_FILE_SHA256_TAG,
    OWNER_TAG,
    REFERENCE_ARTIFACT,
    REFERENCE_SHA256_TAG,
    TRUSTED_TYPES_TAG,
    connect,
    model_file,
    owner,
    store_failures,
)
from ml_project.train import CandidateResult, features_and_target

logger = logging.getLogger(__name__)

# What the logged model pins (pip_requirements): listing them skips MLflow's slow inference.
MODEL_REQUIREMENTS = ("scikit-learn", "pandas", "numpy", "mlflow", "skops")


@dataclass(frozen=True)
class RegisteredModel:
    """The version a modelling run registered, and the skops types its file holds."""

    run_id: str
    version: str
    trusted_types: list[str]


def trusted_types(pipeline: Pipeline) -> list[str]:
    """The types skops would refuse in this very Pipeline: derived from the fitted object when
    it is logged (estimators, feature-step functions, whatever the user configured), never a
    list kept by hand, and trusted at load only for the file whose sha256 was recorded."""
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))


@contextmanager
def modelling_run(config: Config, candidate: str) -> Iterator[str]:
    """An MLflow run around the rest of a modelling run (logging, registration, export,
    promotion); yields its id. Anything failing inside ends it FAILED; a process killed inside
    leaves it RUNNING, and the next modelling run marks it FAILED (`reconcile_champion`)."""
    experiment_id = connect(config)
    with store_failures(config, "when the run started"):
        run = mlflow.start_run(experiment_id=experiment_id, run_name=f"modelling-{candidate}",
                               tags={OWNER_TAG: owner()})
    try:
        yield run.info.run_id
    except BaseException:
        try:
            mlflow.end_run("FAILED")
        except Exception:  # the store is what failed: the next run marks this one FAILED
            logger.debug("Run %s could not be marked FAILED", run.info.run_id, exc_info=True)
        raise
    with store_failures(config, f"during run {run.info.run_id}"):
        mlflow.end_run("FINISHED")


def log_modelling_run(
    run_id: str,
    config: Config,
    *,
    results: list[CandidateResult],
    best: CandidateResult,
    leaderboard_files: dict[str, Path],
    holdout_metrics: dict[str, float],
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    data_source: str,
    quarantined_rows: int,
    reference: pd.DataFrame,
) -> RegisteredModel:
    """Log what the run did into run `run_id` (the active `modelling_run`) and register the
    model as a new version. The version is tagged with the sha256 of its model file and of the
    reference sample, and with the skops types it holds, so `load_registered_pipeline` trusts
    exactly what was logged here.

    Raises:
        TrackingError: the store failed at any step (one message; the run then ends FAILED).
    """
    with store_failures(config, f"during run {run_id}"):
        _log_context(config, best, train, holdout, quarantined_rows, holdout_metrics,
                     leaderboard_files)
        _log_lineage(config, train, holdout, data_source)
        _log_candidates(results, config)
        for file_name, figure in evaluation_figures(best.pipeline, holdout, config).items():
            mlflow.log_figure(figure, f"plots/{file_name}")
        return _log_and_register_model(run_id, config, best.pipeline, train, reference)


def _log_context(config: Config, best: CandidateResult, train: pd.DataFrame,
                 holdout: pd.DataFrame, quarantined_rows: int,
                 holdout_metrics: dict[str, float], leaderboard_files: dict[str, Path]) -> None:
    """Tags, parameters, metrics, the config and the leaderboard of the run."""
    lock = config.root / "Pipfile.lock"
    mlflow.set_tags({
        "run_mode": config.run_mode,
        "data_mode": config.data_mode,
        "location": config.location,
        "best_candidate": best.name,
        "pipfile_lock_sha256": sha256_of(lock) if lock.is_file() else "absent",
        "config_sha256": hashlib.sha256(config.model_dump_json().encode()).hexdigest(),
    })
    mlflow.log_params({
        "task": config.task,
        "metric": config.training.metric,
        "split": config.training.split,
        "holdout_fraction": config.training.holdout_fraction,
        "cv_folds": config.training.cv_folds,
        "random_seed": config.training.random_seed,
        "features": ",".join(config.columns.features),
        "engineering_steps": ",".join(config.engineering.steps),
        "train_rows": len(train),
        "holdout_rows": len(holdout),
        "quarantined_rows": quarantined_rows,
        **{f"best_{key}": value for key, value in best.params.items()},
    })
    mlflow.log_metrics({f"holdout_{key}": value for key, value in holdout_metrics.items()})
    mlflow.log_metric(f"cv_{config.training.metric}", best.cv_score)
    mlflow.log_dict(config.model_dump(mode="json"), "config.json")
    for path in leaderboard_files.values():
        mlflow.log_artifact(str(path), artifact_path="leaderboard")


def _log_lineage(config: Config, train: pd.DataFrame, holdout: pd.DataFrame,
                 data_source: str) -> None:
    """The training and holdout rows as the run's datasets, with their source."""
    for context, frame in (("training", train), ("holdout", holdout)):
        # A local path matches two equivalent source types; integer columns in the schema
        # MLflow infers for the dataset are the data's own (its hint concerns serving).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=data_source, targets=config.columns.target,
                                  name=f"historic_{context}")
            mlflow.log_input(dataset, context=context)


def _log_candidates(results: list[CandidateResult], config: Config) -> None:
    """One nested run per candidate (in the parent's experiment): its best setting, CV score
    and search time."""
    parent = mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent is not None else None
    for result in results:
        with mlflow.start_run(experiment_id=experiment_id, run_name=result.name, nested=True):
            mlflow.log_params({"candidate": result.name, **result.params})
            mlflow.log_metric(f"cv_{config.training.metric}", result.cv_score)
            mlflow.log_metric("search_seconds", result.seconds)


def _log_and_register_model(run_id: str, config: Config, pipeline: Pipeline,
                            train: pd.DataFrame, reference: pd.DataFrame) -> RegisteredModel:
    """The Pipeline as an MLflow sklearn model (skops), registered as a new version, and its
    reference sample; the version tagged with what a loader must check."""
    features, _ = features_and_target(train, config)
    # Numerical inputs as float: an integer schema would reject missing values at serving.
    example = features.head(5).astype({name: float for name in config.columns.numerical})
    types = trusted_types(pipeline)
    with warnings.catch_warnings():  # integer labels in the output schema are intended
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            registered_model_name=config.tracking.registered_model_name,
            pip_requirements=[f"{name}=={installed_version(name)}" for name in MODEL_REQUIREMENTS],
            code_paths=[str(Path(__file__).parent)],
            skops_trusted_types=types,
        )
    version = str(info.registered_model_version)
    downloaded = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri)
    client = MlflowClient(config.tracking_uri)
    for key, value in {
        MODEL_FILE_SHA256_TAG: sha256_of(model_file(downloaded)),
        REFERENCE_SHA256_TAG: _log_reference(reference),
        TRUSTED_TYPES_TAG: json.dumps(types),
    }.items():
        client.set_model_version_tag(config.tracking.registered_model_name, version, key, value)
    return RegisteredModel(run_id, version, types)


def _log_reference(reference: pd.DataFrame) -> str:
    """Log the reference sample with the run; returns its sha256."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "reference.parquet"
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_ARTIFACT)
        return sha256_of(path)


def log_model_card(config: Config, version: str, files: Mapping[str, bytes], summary: str
                   ) -> None:
    """The model card's files as the active run's `model_card/` artifacts, and its summary as
    the registered version's description (what the registry's UI shows first).

    Raises:
        TrackingError: the store failed.
    """
    with store_failures(config, f"while logging the model card of version {version}"):
        with tempfile.TemporaryDirectory() as directory:
            for name, data in files.items():
                Path(directory, name).write_bytes(data)
            mlflow.log_artifacts(directory, artifact_path=CARD_ARTIFACT)
        MlflowClient(config.tracking_uri).update_model_version(
            config.tracking.registered_model_name, version, description=summary)


def evaluation_figures(
    pipeline: Pipeline, holdout: pd.DataFrame, config: Config
) -> dict[str, Figure]:
    """Confusion matrix and ROC (classification) or residuals (regression), and the
    permutation importance of each input column on the holdout. Figures, not pyplot: files,
    never windows, and nothing left open in a global registry."""
    features, target = features_and_target(holdout, config)
    figures: dict[str, Figure] = {}
    if config.is_classification:
        figure = Figure(figsize=(5, 4))
        axis = figure.subplots()
        ConfusionMatrixDisplay.from_estimator(pipeline, features, target, ax=axis)
        axis.set_title("Holdout confusion matrix")
        figures["confusion_matrix.png"] = figure
        if config.task == "binary_classification":
            figure = Figure(figsize=(5, 4))
            axis = figure.subplots()
            RocCurveDisplay.from_estimator(pipeline, features, target, ax=axis)
            axis.set_title("Holdout ROC curve")
            figures["roc_curve.png"] = figure
    else:
        predicted = pipeline.predict(features)
        figure = Figure(figsize=(5, 4))
        axis = figure.subplots()
        axis.scatter(predicted, target - predicted, s=4, alpha=0.5)
        axis.axhline(0, color="grey")
        axis.set_xlabel("predicted")
        axis.set_ylabel("actual - predicted")
        axis.set_title("Holdout residuals")
        figures["residuals.png"] = figure
    sample = holdout.sample(min(len(holdout), 2000), random_state=config.training.random_seed)
    sample_features, sample_target = features_and_target(sample, config)
    importance = permutation_importance(
        pipeline, sample_features, sample_target,
        scoring=cv_scorers([config.training.metric], config.positive_class,
                           config.columns.target_classes)[config.training.metric],
        n_repeats=3, random_state=config.training.random_seed, n_jobs=1,
    )
    order = np.argsort(importance.importances_mean)
    figure = Figure(figsize=(6, 0.35 * len(order) + 1.5))
    axis = figure.subplots()
    axis.barh(np.asarray(sample_features.columns)[order], importance.importances_mean[order],
              xerr=importance.importances_std[order])
    axis.set_xlabel(f"drop in {config.training.metric} when shuffled")
    axis.set_title("Permutation feature importance (holdout)")
    figure.tight_layout()
    figures["permutation_importance.png"] = figure
    return figures


def log_artifacts_to_run(run_id: str, paths: list[Path], artifact_path: str, config: Config
                         ) -> None:
    """Attach files (e.g. monitoring reports) to an existing run.

    Raises:
        TrackingError: the store is unreachable or refused them.
    """
    connect(config)
    with store_failures(config, f"while logging to run {run_id}"):
        client = MlflowClient(config.tracking_uri)
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)

