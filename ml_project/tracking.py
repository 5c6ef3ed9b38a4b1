"""Everything MLflow: the modelling run, nested candidate runs, plots, lineage, registry, promotion.

Only modelling and monitoring import this module; the serving path never does. The store is
`sqlite:///mlflow.db` at the project root unless MLFLOW_TRACKING_URI says otherwise; artifacts go
to `mlruns/` beside it, or through the server when the URI is one
(`executables/start_tracking_server.sh`). Browse it with:
    pipenv run mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import matplotlib

matplotlib.use("Agg")  # plots are files, never windows

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import requests
import skops.io
import yaml
from matplotlib.figure import Figure
from mlflow.data.pandas_dataset import from_pandas
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.inspection import permutation_importance
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
from sklearn.pipeline import Pipeline

from ml_project.config import Config
from ml_project.export import ArtifactError, read_metadata, sha256_of
from ml_project.train import CandidateResult, evaluate_holdout, features_and_target

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
SERVER_CHECK_TIMEOUT_SECONDS = 10
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
REFERENCE_ARTIFACT = "reference"  # the run's folder holding the reference sample
# Registered-version tags that let a loader trust exactly what this project logged.
MODEL_FILE_SHA256_TAG = "model_file_sha256"
REFERENCE_SHA256_TAG = "reference_sha256"
TRUSTED_TYPES_TAG = "skops_trusted_types"
# The local artifact's sha256: the model's identity in the prediction log, whichever copy serves.
ARTIFACT_SHA256_TAG = "artifact_sha256"
# What a version answers for (task, target, classes, features, metric): scores compare only
# between versions with the same contract.
CONTRACT_TAG = "contract"


def trusted_types(pipeline: Pipeline) -> list[str]:
    """The types skops would refuse in this very Pipeline: derived from the fitted object when
    it is logged (estimators, feature-step functions, whatever the user configured), never a
    list kept by hand, and trusted at load only for the file whose sha256 was recorded."""
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))


OWNER_TAG = "ml_project.owner"  # host:pid of the process running a modelling run


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or refused a write."""


@dataclass(frozen=True)
class TrackingOutcome:
    run_id: str
    model_version: str
    alias: str  # CHAMPION or CHALLENGER
    previous_champion_score: float | None
    trusted_types: list[str]


def _experiment_id(config: Config) -> str:
    """The configured experiment, created with its artifacts beside a local store; on a
    tracking server, where the server says (its proxied artifact store): a folder on this
    machine would hold model files no other machine could load."""
    name = config.tracking.experiment_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    on_server = config.tracking_uri.startswith(("http://", "https://", "databricks"))
    location = None if on_server else (config.root / "mlruns").as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def use_store(uri: str) -> None:
    """Point this process's MLflow at `uri` without exporting it: mlflow.set_tracking_uri also
    writes MLFLOW_TRACKING_URI, which would then override every Config loaded later."""
    exported = os.environ.get(TRACKING_URI_VARIABLE)
    mlflow.set_tracking_uri(uri)
    if exported is None:
        os.environ.pop(TRACKING_URI_VARIABLE, None)
    else:
        os.environ[TRACKING_URI_VARIABLE] = exported


def redact_password(uri: str) -> str:
    """`uri` fit for messages: MLFLOW_TRACKING_URI may carry a password (user:password@host)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check_server(uri: str) -> None:
    """Fail in seconds: MLflow retries a refused connection with backoff for about 4 minutes."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_SECONDS)
    except requests.RequestException as err:  # any HTTP answer, even an error, means it is up
        raise TrackingError(
            f"MLflow tracking store {redact_password(uri)} is unreachable: {err}"
        ) from err


def connect(config: Config) -> str:
    """Point MLflow at the configured store and check it answers; returns the experiment id."""
    if config.tracking_uri.startswith(("http://", "https://")):
        _check_server(config.tracking_uri)
    use_store(config.tracking_uri)
    try:
        return _experiment_id(config)
    except Exception as err:  # mlflow raises many types for an unreachable store
        raise TrackingError(
            f"MLflow tracking store {redact_password(config.tracking_uri)} is unreachable: {err}"
        ) from err


def file_hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def evaluation_figures(
    pipeline: Pipeline, holdout: pd.DataFrame, config: Config
) -> dict[str, Figure]:
    """Confusion matrix and ROC (classification) or residuals (regression), and the
    permutation importance of each input column on the holdout."""
    features, target = features_and_target(holdout, config)
    figures: dict[str, Figure] = {}
    if config.is_classification:
        figure, axis = plt.subplots(figsize=(5, 4))
        ConfusionMatrixDisplay.from_estimator(pipeline, features, target, ax=axis)
        axis.set_title("Holdout confusion matrix")
        figures["confusion_matrix.png"] = figure
        if config.task == "binary_classification":
            figure, axis = plt.subplots(figsize=(5, 4))
            RocCurveDisplay.from_estimator(pipeline, features, target, ax=axis)
            axis.set_title("Holdout ROC curve")
            figures["roc_curve.png"] = figure
    else:
        predicted = pipeline.predict(features)
        figure, axis = plt.subplots(figsize=(5, 4))
        axis.scatter(predicted, target - predicted, s=4, alpha=0.5)
        axis.axhline(0, color="grey")
        axis.set_xlabel("predicted")
        axis.set_ylabel("actual - predicted")
        axis.set_title("Holdout residuals")
        figures["residuals.png"] = figure
    sample = holdout.sample(min(len(holdout), 2000), random_state=config.training.random_seed)
    sample_features, sample_target = features_and_target(sample, config)
    importance = permutation_importance(
        pipeline, sample_features, sample_target, scoring=config.training.metric,
        n_repeats=3, random_state=config.training.random_seed, n_jobs=1,
    )
    order = np.argsort(importance.importances_mean)
    figure, axis = plt.subplots(figsize=(6, 0.35 * len(order) + 1.5))
    axis.barh(np.asarray(sample_features.columns)[order], importance.importances_mean[order],
              xerr=importance.importances_std[order])
    axis.set_xlabel(f"drop in {config.training.metric} when shuffled")
    axis.set_title("Permutation feature importance (holdout)")
    figure.tight_layout()
    figures["permutation_importance.png"] = figure
    return figures


def contract(config: Config) -> str:
    """What a model trained under this config answers for, as text to compare."""
    columns = config.columns
    return json.dumps({"task": config.task, "target": columns.target,
                       "classes": [str(label) for label in columns.target_classes],
                       "features": list(columns.features), "metric": config.training.metric})


def champion_on_holdout(client: MlflowClient, config: Config, holdout: pd.DataFrame
                        ) -> tuple[float | None, str]:
    """The current champion's score on this run's holdout, and how it was had; None when there
    is no champion, or it answers another contract, or it cannot score these rows (a champion
    of another table, left by the demo). Scores kept from the champion's own run are not used:
    they were measured on another holdout (older data, another split)."""
    name = config.tracking.registered_model_name
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, "no champion yet"
    recorded = champion.tags.get(CONTRACT_TAG)
    if recorded is not None and recorded != contract(config):
        return None, (f"version {champion.version} was trained for another task, target, "
                      "classes, features or metric: not comparable")
    from ml_project.registry import load_registered_pipeline  # registry imports this module
    try:
        pipeline = load_registered_pipeline(config)[0]
        score = evaluate_holdout(pipeline, holdout, config, label="Champion on this holdout")
    except (ArtifactError, ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"version {champion.version} cannot score this holdout ({err})"
    return score[config.training.metric], f"version {champion.version} on this holdout"


def promote(
    client: MlflowClient, config: Config, version: str, score: float,
    previous: tuple[float | None, str],
    before_alias: Callable[[str, float | None], None] | None = None,
) -> tuple[str, float | None]:
    """Champion moves to `version` only if it beats the current champion (`previous`: its
    score on the same holdout, and how it was had); else challenger.

    `before_alias(alias, previous)` runs once the alias is decided and before it moves (the
    local export): a kill in between leaves the local champion ahead of the registry, which
    `reconcile_champion` completes at the next start.
    """
    name = config.tracking.registered_model_name
    client.set_model_version_tag(name, version, f"holdout_{config.training.metric}", str(score))
    client.set_model_version_tag(name, version, CONTRACT_TAG, contract(config))
    previous_score, how = previous
    alias = CHAMPION if previous_score is None or score > previous_score else CHALLENGER
    if before_alias is not None:
        before_alias(alias, previous_score)
    client.set_registered_model_alias(name, alias, version)
    logger.info(
        "Registered %s version %s as %s (holdout %s %.4f vs champion: %s)",
        name, version, alias, config.training.metric, score,
        how if previous_score is None else f"{previous_score:.4f}, {how}",
    )
    return alias, previous_score


def track_modelling_run(
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
    export: Callable[[TrackingOutcome], None] | None = None,
) -> TrackingOutcome:
    """Log the whole modelling run, register the model, `export` it locally, move the alias.

    The registered version is tagged with the sha256 of its model file and of the reference
    sample, and with the skops types it holds, so `load_registered_pipeline` trusts exactly
    what was logged here. A failure of the store at any stage is a TrackingError with one
    message, the run marked FAILED (by the next start if the store is gone:
    `reconcile_champion`). An error raised by `export` itself propagates unchanged.
    """
    experiment_id = connect(config)
    failure = _StageFailure(config)
    try:
        return _track(config, experiment_id, failure, export, results=results, best=best,
                      leaderboard_files=leaderboard_files, holdout_metrics=holdout_metrics,
                      train=train, holdout=holdout, data_source=data_source,
                      quarantined_rows=quarantined_rows, reference=reference)
    except Exception as err:
        raise failure.translate(err) from err


class _StageFailure:
    """Turns whatever the store raised into one TrackingError; an export's error stays itself."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.exporting = False
        self.run_id: str | None = None

    def translate(self, err: Exception) -> Exception:
        if self.exporting or isinstance(err, TrackingError):
            return err
        first_line = str(err).splitlines()[0] if str(err) else ""
        return TrackingError(
            f"MLflow tracking store {redact_password(self.config.tracking_uri)} failed during "
            f"run {self.run_id} ({type(err).__name__}: {first_line[:300]})"
        )


def _track(
    config: Config,
    experiment_id: str,
    failure: _StageFailure,
    export: Callable[[TrackingOutcome], None] | None,
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
) -> TrackingOutcome:
    client = MlflowClient(config.tracking_uri)
    pipeline = best.pipeline
    features, target = features_and_target(train, config)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"modelling-{best.name}",
                          tags={OWNER_TAG: _owner()}) as run:
        failure.run_id = run.info.run_id
        mlflow.set_tags(
            {
                "run_mode": config.run_mode,
                "data_mode": config.data_mode,
                "location": config.location,
                "best_candidate": best.name,
                "pipfile_lock_sha256": file_hash(config.root / "Pipfile.lock") or "absent",
                "config_sha256": hashlib.sha256(
                    config.model_dump_json().encode()
                ).hexdigest(),
            }
        )
        mlflow.log_params(
            {
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
            }
        )
        mlflow.log_metrics({f"holdout_{key}": value for key, value in holdout_metrics.items()})
        mlflow.log_metric(f"cv_{config.training.metric}", best.cv_score)
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        for path in leaderboard_files.values():
            mlflow.log_artifact(str(path), artifact_path="leaderboard")
        for context, frame in (("training", train), ("holdout", holdout)):
            # A local path matches two equivalent source types; integer columns in the schema
            # MLflow infers for the dataset are the data's own (its hint concerns serving).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                dataset = from_pandas(
                    frame, source=data_source, targets=config.columns.target,
                    name=f"historic_{context}",
                )
                mlflow.log_input(dataset, context=context)
        for result in results:
            with mlflow.start_run(experiment_id=experiment_id, run_name=result.name, nested=True):
                mlflow.log_params({"candidate": result.name, **result.params})
                mlflow.log_metric(f"cv_{config.training.metric}", result.cv_score)
                mlflow.log_metric("search_seconds", result.seconds)
        for file_name, figure in evaluation_figures(pipeline, holdout, config).items():
            mlflow.log_figure(figure, f"plots/{file_name}")
            plt.close(figure)
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
                pip_requirements=_pip_requirements(),
                code_paths=[str(Path(__file__).parent)],
                skops_trusted_types=types,
            )
        version = str(info.registered_model_version)
        reference_sha256 = _log_reference(reference)
        name = config.tracking.registered_model_name
        for key, value in {
            MODEL_FILE_SHA256_TAG: sha256_of(model_file(mlflow.artifacts.download_artifacts(
                artifact_uri=info.model_uri))),
            REFERENCE_SHA256_TAG: reference_sha256,
            TRUSTED_TYPES_TAG: json.dumps(types),
        }.items():
            client.set_model_version_tag(name, version, key, value)
        score = holdout_metrics[config.training.metric]

        def export_first(alias: str, previous: float | None) -> None:
            if export is not None:
                failure.exporting = True
                export(TrackingOutcome(run.info.run_id, version, alias, previous, types))
                failure.exporting = False
                exported = read_metadata(config.model_artifacts_dir / alias)
                client.set_model_version_tag(name, version, ARTIFACT_SHA256_TAG,
                                             str(exported["sha256"]))

        alias, previous = promote(client, config, version, score,
                                  champion_on_holdout(client, config, holdout), export_first)
        mlflow.set_tag("registered_version", version)
        mlflow.set_tag("alias", alias)
    return TrackingOutcome(run.info.run_id, version, alias, previous, types)


def _log_reference(reference: pd.DataFrame) -> str:
    """Log the reference sample with the run; returns its sha256."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "reference.parquet"
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_ARTIFACT)
        return sha256_of(path)


def model_file(model_directory: str) -> Path:
    """The serialised model inside a downloaded MLflow sklearn model folder."""
    flavor = yaml.safe_load((Path(model_directory) / "MLmodel").read_text())["flavors"]["sklearn"]
    return Path(model_directory) / str(flavor["pickled_model"])


def _pip_requirements() -> list[str]:
    """Pinned to what is installed: listing them skips MLflow's slow inference (~3 s a run)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "mlflow", "skops")]


def log_artifacts_to_run(run_id: str, paths: list[Path], artifact_path: str, config: Config) -> None:
    """Attach files (e.g. the exported metadata or monitoring reports) to an existing run."""
    client = MlflowClient(config.tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
