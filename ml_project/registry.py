"""The model registry's reading side: load a registered champion safely, and repair what a
killed modelling run left (`reconcile_champion`). Writing (runs, registration, promotion) is in
`tracking.py`.

Only the registry model source and the modelling run import this module; serving from the
local artifact never does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import skops.io
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from ml_project.config import Config
from ml_project.export import ArtifactError, read_metadata, sha256_of
from ml_project.tracking import (
    ARTIFACT_SHA256_TAG,
    CHAMPION,
    MODEL_FILE_SHA256_TAG,
    OWNER_TAG,
    REFERENCE_ARTIFACT,
    REFERENCE_SHA256_TAG,
    TRUSTED_TYPES_TAG,
    TrackingError,
    model_file,
    redact_password,
    use_store,
)

logger = logging.getLogger(__name__)


def load_registered_pipeline(
    config: Config, alias: str = CHAMPION
) -> tuple[Pipeline, dict[str, Any], pd.DataFrame | None]:
    """`models:/<name>@<alias>` from the registry, with metadata like the local artifact's and
    its reference sample.

    The model file is loaded only after its sha256 matches the one recorded on the version when
    it was logged, and skops trusts exactly the types recorded then: MLflow's own loader would
    trust whatever list the (possibly altered) model folder declares.
    """
    use_store(config.tracking_uri)
    name = config.tracking.registered_model_name
    try:
        version = MlflowClient(config.tracking_uri).get_model_version_by_alias(name, alias)
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
    loaded = skops.io.load(serialised, trusted=json.loads(tags[TRUSTED_TYPES_TAG]))
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


def reconcile_champion(config: Config) -> None:
    """Repair what a killed modelling run can leave: call at the start of every modelling run.

    - a run whose process died (on this host) while RUNNING is marked FAILED;
    - a local champion exported by a run killed before it moved the registry's alias (export
      comes first, see `promote`) gets the alias now, so both name the same version. A local
      champion behind the registry (the alias moved by hand) is reported, never overwritten.
    Raises TrackingError if the store fails.
    """
    try:
        _fail_orphan_runs(config)
        _complete_promotion(config)
    except TrackingError:
        raise
    except Exception as err:  # mlflow raises many types for a failing store
        raise TrackingError(
            f"MLflow tracking store {redact_password(config.tracking_uri)} failed while "
            f"reconciling the champion: {type(err).__name__}: {err}"
        ) from err


def _fail_orphan_runs(config: Config) -> None:
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment_name)
    if experiment is None:
        return
    host = socket.gethostname()
    for run in client.search_runs([experiment.experiment_id],
                                  filter_string="attributes.status = 'RUNNING'"):
        owner_host, _, pid = run.data.tags.get(OWNER_TAG, "").rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            client.set_terminated(run.info.run_id, status="FAILED")
            logger.warning("Marked run %s FAILED: its process %s ended while it ran",
                           run.info.run_id, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _complete_promotion(config: Config) -> None:
    try:
        local = read_metadata(config.model_artifacts_dir / CHAMPION)
    except (ArtifactError, OSError, ValueError):
        return  # no local champion: nothing to agree with
    client = MlflowClient(config.tracking_uri)
    name = config.tracking.registered_model_name
    local_version = str(local.get("model_version", ""))
    if local.get("model_name", name) != name or not local_version.isdigit():
        return
    try:
        registry_version = int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        registry_version = 0
    if int(local_version) > registry_version:
        version = client.get_model_version(name, local_version)
        if version.run_id != local.get("mlflow_run_id"):
            return  # not the version this artifact came from: leave both as they are
        client.set_registered_model_alias(name, CHAMPION, local_version)
        logger.warning("Moved %s@%s to version %s, as the local champion: the run that exported "
                       "it was stopped before it moved the alias", name, CHAMPION, local_version)
    elif int(local_version) < registry_version:
        logger.warning("The local champion (version %s) is behind %s@%s (version %d); re-run "
                       "modelling or serve from the registry", local_version, name, CHAMPION,
                       registry_version)
