"""The MLflow store and its model registry: connect to it, load a registered version safely,
compare a new model with the champion on the same holdout and move the aliases. The modelling
run's own logging is `tracking.py`; a version promoted by hand, and the repair of what a killed
run left, `promotion.py`.

The store is `sqlite:///mlflow.db` at the project root unless MLFLOW_TRACKING_URI says
otherwise; artifacts go to `mlruns/` beside it, or through the server when the URI is one
(`executables/start_tracking_server.sh`). Only modelling, monitoring and the registry model
source import this module; serving from the local artifact never does.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import mlflow
import pandas as pd
import requests
import skops.io
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from ml_project.config import Config, sqlite_file
from ml_project.export import (
    CARD_JSON,
    CARD_MARKDOWN,
    ArtifactError,
    sha256_of,
    unpickled,
)
from ml_project.train import evaluate_holdout

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
SERVER_CHECK_TIMEOUT_SECONDS = 10
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
REFERENCE_ARTIFACT = "reference"  # the run's folder holding the reference sample
CARD_ARTIFACT = "model_card"  # the run's folder holding the model card's files
# Registered-version tags that let a loader trust exactly what this project logged.
MODEL_FILE_SHA256_TAG = "model_file_sha256"
REFERENCE_SHA256_TAG = "reference_sha256"
TRUSTED_TYPES_TAG = "skops_trusted_types"
# The local artifact's sha256: the model's identity in the prediction log, whichever copy serves.
ARTIFACT_SHA256_TAG = "artifact_sha256"
# What a version answers for (task, target, classes, features, metric): scores compare only
# between versions with the same contract.
CONTRACT_TAG = "contract"
OWNER_TAG = "ml_project.owner"  # host:pid of the process running a modelling run
# MlflowException.error_code of a create that lost a race (the name exists now).
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or refused a write."""


def redact_password(uri: str) -> str:
    """`uri` fit for messages: MLFLOW_TRACKING_URI may carry a password (user:password@host)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextmanager
def store_failures(config: Config, during: str) -> Iterator[None]:
    """Whatever the store raises inside, as one TrackingError naming the store and `during`:
    mlflow raises many types for a store that is down or refuses a write."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise TrackingError(
            f"MLflow tracking store {redact_password(config.tracking_uri)} failed {during} "
            f"({type(err).__name__}: {first_line[:300]})"
        ) from err


def use_store(uri: str) -> None:
    """Point this process's MLflow at `uri` without exporting it: mlflow.set_tracking_uri also
    writes MLFLOW_TRACKING_URI, which would then override every Config loaded later."""
    exported = os.environ.get(TRACKING_URI_VARIABLE)
    mlflow.set_tracking_uri(uri)
    if exported is None:
        os.environ.pop(TRACKING_URI_VARIABLE, None)
    else:
        os.environ[TRACKING_URI_VARIABLE] = exported


def _check_server(uri: str) -> None:
    """Fail in seconds: MLflow retries a refused connection with backoff for about 4 minutes."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_SECONDS)
    except requests.RequestException as err:  # any HTTP answer, even an error, means it is up
        raise TrackingError(
            f"MLflow tracking store {redact_password(uri)} is unreachable: {err}"
        ) from err


@contextmanager
def _one_process_at_a_time(uri: str) -> Iterator[None]:
    """Serialise a local SQLite store's first use across processes. MLflow creates a store's
    tables on first use by running its migrations, which SQLite cannot run in a transaction: two
    processes doing so at once collide ("duplicate column name") and may leave the schema half
    made. Under this lock (an flock on `<database>.lock` beside it) the first process creates
    them, and the others wait, then find them made. A server or another database makes its own."""
    # An MLflow URI need not be a database URL at all (a folder, `databricks`, `http://...`).
    database = sqlite_file(uri) if uri.startswith("sqlite") else None
    if database is None or not database.parent.is_dir():  # MLflow's own error names the path
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield


def open_store(uri: str) -> MlflowClient:
    """Point this process's MLflow at `uri`, with the store's tables made (tracking and model
    registry, made by the first process to use a new local store, one process at a time)."""
    use_store(uri)
    with _one_process_at_a_time(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the tracking store makes its tables
        client.search_registered_models(max_results=1)  # and the registry's
    return client


def connect(config: Config) -> str:
    """Point MLflow at the configured store and check it answers; returns the experiment id,
    creating the experiment if needed: its artifacts beside a local store, or where a tracking
    server says (a folder on this machine would hold files no other machine could load)."""
    if config.tracking_uri.startswith(("http://", "https://")):
        _check_server(config.tracking_uri)
    name = config.tracking.experiment_name
    try:
        open_store(config.tracking_uri)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        on_server = config.tracking_uri.startswith(("http://", "https://", "databricks"))
        location = None if on_server else (config.root / "mlruns").as_uri()
        try:
            return str(mlflow.create_experiment(name, artifact_location=location))
        except MlflowException as err:  # another run created it since: use theirs
            if err.error_code != ALREADY_EXISTS:
                raise
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)
    except Exception as err:  # mlflow raises many types for an unreachable store
        raise TrackingError(
            f"MLflow tracking store {redact_password(config.tracking_uri)} is unreachable: {err}"
        ) from err


def owner() -> str:
    """This process, as a run's OWNER_TAG records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def model_file(model_directory: str) -> Path:
    """The serialised model inside a downloaded MLflow sklearn model folder."""
    flavor = yaml.safe_load((Path(model_directory) / "MLmodel").read_text())["flavors"]["sklearn"]
    return Path(model_directory) / str(flavor["pickled_model"])


def contract(config: Config) -> str:
    """What a model trained under this config answers for, as text to compare."""
    columns = config.columns
    return json.dumps({"task": config.task, "target": columns.target,
                       "classes": [str(label) for label in columns.target_classes],
                       "features": list(columns.features), "metric": config.training.metric})


# Loading -------------------------------------------------------------------------------------

def load_registered_pipeline(
    config: Config, alias: str = CHAMPION
) -> tuple[Pipeline, dict[str, Any], pd.DataFrame | None]:
    """`models:/<name>@<alias>` from the registry, with metadata like the local artifact's and
    its reference sample.

    The model file is loaded only after its sha256 matches the one recorded on the version when
    it was logged, and skops trusts exactly the types recorded then: MLflow's own loader would
    trust whatever list the (possibly altered) model folder declares.
    """
    name = config.tracking.registered_model_name
    try:
        version = open_store(config.tracking_uri).get_model_version_by_alias(name, alias)
        serialised = model_file(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}"))
    except Exception as err:  # unreachable store, unknown model or alias, unreadable files
        raise ArtifactError(
            f"cannot load models:/{name}@{alias} from {redact_password(config.tracking_uri)}: {err}"
        ) from err
    tags = version.tags
    if MODEL_FILE_SHA256_TAG not in tags or TRUSTED_TYPES_TAG not in tags:
        raise ArtifactError(f"models:/{name}/{version.version} was not registered by this "
                            "project's modelling run (no checksum recorded): refusing to load it")
    if sha256_of(serialised) != tags[MODEL_FILE_SHA256_TAG]:
        raise ArtifactError(f"models:/{name}/{version.version}: the model file does not match "
                            "the checksum recorded at registration; refusing to load it")
    trusted = json.loads(tags[TRUSTED_TYPES_TAG])
    loaded = unpickled(lambda: skops.io.load(serialised, trusted=trusted),
                       f"models:/{name}/{version.version}", {"skops_trusted_types": trusted})
    if not isinstance(loaded, Pipeline):
        raise ArtifactError(f"models:/{name}/{version.version} does not hold a Pipeline")
    metadata = {
        "model_name": name,
        "model_version": str(version.version),
        "alias": alias,
        "mlflow_run_id": version.run_id,
        "task": config.task,
        "features": list(config.columns.features),
        # the identity logged with each prediction: the same as the local copy's
        "sha256": tags.get(ARTIFACT_SHA256_TAG, tags[MODEL_FILE_SHA256_TAG]),
    }
    return loaded, metadata, _registered_reference(str(version.run_id),
                                                  tags.get(REFERENCE_SHA256_TAG))


def _registered_reference(run_id: str, expected_sha256: str | None) -> pd.DataFrame | None:
    """The reference sample logged with a run, after its sha256 matches; None if absent."""
    if expected_sha256 is None:
        return None
    directory = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    path = Path(directory) / "reference.parquet"
    if sha256_of(path) != expected_sha256:
        raise ArtifactError(f"the reference sample of run {run_id} does not match its checksum")
    return pd.read_parquet(path)


def registered_card(run_id: str) -> tuple[dict[str, Any], str] | None:
    """The model card logged with a run (`tracking.log_model_card`), JSON and Markdown; None
    for a run logged without one. Read, never executed: shown as the run logged it."""
    try:
        directory = Path(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                             artifact_path=CARD_ARTIFACT))
        return (json.loads((directory / CARD_JSON).read_text(encoding="utf-8")),
                (directory / CARD_MARKDOWN).read_text(encoding="utf-8"))
    except (MlflowException, OSError, ValueError):  # no card logged, or not one this wrote
        return None


# Promotion -----------------------------------------------------------------------------------

def champion_on_holdout(config: Config, holdout: pd.DataFrame) -> tuple[float | None, str]:
    """The current champion's score on this run's holdout, and how it was had; None when there
    is no champion, or it answers another contract, or it cannot be loaded here (saved under
    another package name: logged, with the fix), or it cannot score these rows (a champion
    of another table, left by the demo). Scores kept from the champion's own run are not used:
    they were measured on another holdout (older data, another split)."""
    name = config.tracking.registered_model_name
    with store_failures(config, "while reading the champion"):
        try:
            champion = MlflowClient(config.tracking_uri).get_model_version_by_alias(
                name, CHAMPION)
        except MlflowException:
            return None, "no champion yet"
    recorded = champion.tags.get(CONTRACT_TAG)
    if recorded is not None and recorded != contract(config):
        return None, (f"version {champion.version} was trained for another task, target, "
                      "classes, features or metric: not comparable")
    try:
        pipeline = load_registered_pipeline(config)[0]
    except ArtifactError as err:  # it could not serve either: any model that loads beats it
        logger.warning("The champion, version %s, cannot be loaded here, so the new model "
                       "replaces it without a comparison: %s", champion.version, err)
        return None, f"version {champion.version} cannot be loaded here (see above)"
    try:
        score = evaluate_holdout(pipeline, holdout, config, label="Champion on this holdout")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"version {champion.version} cannot score this holdout ({err})"
    return score[config.training.metric], f"version {champion.version} on this holdout"


def alias_for(score: float, champion_score: float | None) -> str:
    """The promotion rule: champion only for a model that beats the champion on the same
    holdout (or when there is none to beat), else challenger."""
    return CHAMPION if champion_score is None or score > champion_score else CHALLENGER


def promote(config: Config, *, run_id: str, version: str, alias: str, score: float,
            champion: tuple[float | None, str], artifact_sha256: str) -> None:
    """Record on the version what it answers for and how it scored, then move `alias` to it.

    Call after the local export: a kill in between leaves the local champion ahead of the
    registry, which `promotion.reconcile_champion` completes at the next start.
    """
    name = config.tracking.registered_model_name
    client = MlflowClient(config.tracking_uri)
    with store_failures(config, f"during run {run_id}"):
        for key, value in {f"holdout_{config.training.metric}": str(score),
                           CONTRACT_TAG: contract(config),
                           ARTIFACT_SHA256_TAG: artifact_sha256}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, alias, version)
        client.set_tag(run_id, "registered_version", version)
        client.set_tag(run_id, "alias", alias)
    champion_score, how = champion
    logger.info(
        "Registered %s version %s as %s (holdout %s %.4f vs champion: %s)",
        name, version, alias, config.training.metric, score,
        how if champion_score is None else f"{champion_score:.4f}, {how}",
    )
