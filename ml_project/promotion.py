"""A registered version promoted by hand, and a promotion a killed process left half done.

Modelling promotes by its rule (`registry.alias_for`: champion only for a model that beats the
champion on the same holdout). `promote_version` lets a person, or a rule of their own (such as
monitoring's `--promote-challenger`), overrule it: any registered version answering for the
current contract becomes the champion (or the challenger), the local artifact and the registry
kept consistent in modelling's order: the local copy exported first, atomically; then the
alias moved; then the version tagged `promoted_by_hand` (who, when, why; also in the local
metadata.json). A process killed in between leaves the local copy ahead of the registry, which
`reconcile_champion` (run first by every modelling run and promotion) completes. One process at
a time (`promotion_lock`).

The local copy is rebuilt byte for byte from the files the modelling run logged with the
version (`log_local_artifact`: metadata.json, the Pipeline's file, the reference sample, the
model card), each checked through the sha256 the registry records before use: it has the
version's `artifact_sha256`, its identity in the prediction log. Versions registered before
these files were logged cannot be promoted by hand.

Promoting the challenger to champion: the challenger alias and the local challenger folder go
(a version holds one role), and the champion it replaces keeps no alias. It stays registered
(`--list` shows it) and can be promoted back by hand. It does not become the challenger: a
challenger is a model that lost on a holdout and that an evidence rule may promote, which would
undo a person's decision by rule.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_project.config import Config
from ml_project.export import (
    METADATA_FILE,
    MODELLING_COMMAND,
    ArtifactError,
    copy_artifact,
    load_pipeline,
    read_metadata,
    sha256_of,
)
from ml_project.registry import (
    ARTIFACT_SHA256_TAG,
    CHALLENGER,
    CHAMPION,
    CONTRACT_TAG,
    OWNER_TAG,
    TrackingError,
    connect,
    contract,
    store_failures,
)

logger = logging.getLogger(__name__)

ALIASES = (CHAMPION, CHALLENGER)
ARTIFACT_FOLDER = "artifact"  # the run's folder holding the local artifact's files
METADATA_SHA256_TAG = "artifact_metadata_sha256"  # the logged metadata.json's, on the version
PROMOTION = "promoted_by_hand"  # the version's tag and metadata.json's key: who, when, why
MISSING = "RESOURCE_DOES_NOT_EXIST"  # MlflowException.error_code of an unknown name or version


class PromotionRefused(RuntimeError):
    """The promotion cannot be made (the message says why and what to do); nothing changed."""


@dataclass(frozen=True)
class Promoted:
    """What a promotion by hand moved: `alias` from version `previous` (None: no version held
    it) to `version`, whose local copy is `artifact`, with the registry's sha256."""

    model_name: str
    version: str
    alias: str
    previous: str | None
    artifact: Path
    sha256: str
    dropped_challenger: bool  # the version was the challenger: that alias and folder are gone


def lock_file(config: Config) -> Path:
    """The promotion lock's file: beside `paths.model_artifacts` (`data/model_artifacts.lock`),
    never inside it, where every file is a model's."""
    return config.model_artifacts_dir.with_name(f"{config.model_artifacts_dir.name}.lock")


@contextmanager
def promotion_lock(config: Config) -> Iterator[None]:
    """One process at a time changes the local copies and the aliases (a modelling run's
    export and promotion, a promotion by hand, a repair): an flock on `lock_file`, released
    by the kernel if the process dies. It serialises the processes sharing that folder;
    machines sharing only a tracking server are not."""
    path = lock_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def log_local_artifact(config: Config, run_id: str, version: str, directory: Path) -> None:
    """Log the local artifact exported to `directory` with run `run_id` (folder `artifact/`)
    and record its metadata.json's sha256 on the version: what `promote_version` rebuilds the
    local copy from, every file checked through that sha256.

    Raises:
        TrackingError: the store failed.
    """
    metadata = read_metadata(directory)
    names = [METADATA_FILE, str(metadata["artifact_file"]),
             *([str(metadata["reference_file"])] if "reference_file" in metadata else []),
             *(metadata.get("model_card_files") or {})]
    with store_failures(config, f"while logging the local artifact of version {version}"):
        client = MlflowClient(config.tracking_uri)
        for name in names:
            client.log_artifact(run_id, str(directory / name), artifact_path=ARTIFACT_FOLDER)
        client.set_model_version_tag(config.tracking.registered_model_name, version,
                                     METADATA_SHA256_TAG, sha256_of(directory / METADATA_FILE))


def promoter() -> str:
    """Who promotes, as the tag records it when no name is given: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in this container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def promote_version(config: Config, version: str, *, alias: str = CHAMPION, reason: str,
                    by: str | None = None) -> Promoted:
    """Make registered `version` the `alias` (champion or challenger) by hand, whatever its
    holdout score, and its local copy `<paths.model_artifacts>/<alias>/`.

    Raises:
        PromotionRefused: nothing was changed: the store is unreachable, or the version is
            unknown, holds the alias already, answers for another contract, was registered
            without its local artifact's files, does not match its checksums or cannot be
            loaded here; the challenger asked for the champion's version.
        TrackingError: the store failed after the local copy was exported; the message says
            what was left (the next promotion or modelling run completes it).
    """
    name = config.tracking.registered_model_name
    if alias not in ALIASES:
        problem = f"alias {alias!r}: promote to {' or '.join(ALIASES)}"
    elif not str(version).strip().isdigit():
        problem = f"version {version!r}: a registered version is a number"
    else:
        problem = "" if reason.strip() else "say why (a reason): it is recorded with the promotion"
    if problem:
        raise PromotionRefused(f"{problem}. Nothing was changed.")
    version = str(int(version))  # as the registry writes it: "007" is version 7
    try:
        connect(config)
    except TrackingError as err:
        raise PromotionRefused(f"{err}. Nothing was changed.") from err
    with promotion_lock(config), tempfile.TemporaryDirectory() as downloaded:
        try:
            with store_failures(config, f"while reading version {version}"):
                _complete_promotions(config)
                found, holders = _version_and_aliases(config, version)
            registered, previous = _check(config, found, version, alias, holders)
            with store_failures(config, f"while downloading version {version}"):
                source = Path(mlflow.artifacts.download_artifacts(
                    run_id=registered.run_id, artifact_path=ARTIFACT_FOLDER,
                    dst_path=downloaded, tracking_uri=config.tracking_uri))
            _check_files(registered, source)
            record = {"alias": alias, "by": by or promoter(), "reason": reason.strip(),
                      "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "replaces": previous}
            artifact = copy_artifact(source, config.model_artifacts_dir / alias,
                                     {"alias": alias, PROMOTION: record})
        except (TrackingError, ArtifactError) as err:
            raise PromotionRefused(f"{err}. Nothing was changed.") from err
        try:
            with store_failures(config, f"while moving {name}@{alias} to version {version}"):
                dropped = _complete_hand_promotion(config, alias)
        except TrackingError as err:
            raise TrackingError(
                f"{err}. Version {version} is exported to {artifact.parent} but not yet "
                f"@{alias} in the registry: the next promotion or modelling run completes it"
            ) from err
    logger.info("Promoted %s version %s to %s by hand (was version %s): %s", name, version,
                alias, previous or "none", record["reason"])
    return Promoted(name, version, alias, previous, artifact, sha256_of(artifact), dropped)


def _version_and_aliases(config: Config, version: str
                         ) -> tuple[ModelVersion | None, dict[str, str]]:
    """The registered version (None if unknown) and the model's aliases (alias -> version)."""
    client = MlflowClient(config.tracking_uri)
    try:
        registered: ModelVersion | None = client.get_model_version(
            config.tracking.registered_model_name, version)
    except MlflowException as err:
        if err.error_code != MISSING:
            raise
        registered = None
    return registered, _aliases(client, config.tracking.registered_model_name)


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != MISSING:
            raise
        return {}
    return {alias: str(number) for alias, number in model.aliases.items()}


def _check(config: Config, registered: ModelVersion | None, version: str, alias: str,
           holders: dict[str, str]) -> tuple[ModelVersion, str | None]:
    """The version, and the one that holds `alias` now, after the refusals that need only
    the registry."""
    name = config.tracking.registered_model_name
    if registered is None:
        raise PromotionRefused(f"{name} has no version {version} (executables/promote_model.py "
                               "--list lists them). Nothing was changed.")
    if holders.get(alias) == version:
        raise PromotionRefused(f"version {version} is {name}@{alias} already. Nothing was "
                               "changed.")
    if alias == CHALLENGER and holders.get(CHAMPION) == version:
        raise PromotionRefused(f"version {version} is the champion: promote another version "
                               "to champion first. Nothing was changed.")
    recorded = registered.tags.get(CONTRACT_TAG)
    if recorded != contract(config):
        why = ("records no contract (its modelling run did not finish)" if recorded is None
               else f"answers for another task, target, classes, features or metric ({recorded})")
        raise PromotionRefused(f"version {version} {why}: the current config's is "
                               f"{contract(config)}. Nothing was changed.")
    if METADATA_SHA256_TAG not in registered.tags:
        raise PromotionRefused(
            f"version {version} was registered without its local artifact's files (before "
            f"versions carried them, or its run was stopped): it cannot be promoted by hand; "
            f"retrain ({MODELLING_COMMAND}) and promote the new version. Nothing was changed.")
    return registered, holders.get(alias)


def _check_files(registered: ModelVersion, source: Path) -> None:
    """The downloaded files are the ones the version records (metadata.json by its sha256 on
    the version, the rest by metadata.json's), and the Pipeline loads here: unpickled only
    after its sha256 matched (`load_pipeline`)."""
    version = str(registered.version)
    if sha256_of(source / METADATA_FILE) != registered.tags[METADATA_SHA256_TAG]:
        raise ArtifactError(f"the metadata.json logged with version {version} does not match "
                            "the checksum recorded at registration; refusing it")
    metadata = read_metadata(source)
    identity = (str(metadata.get("model_name")), str(metadata.get("model_version")),
                str(metadata.get("mlflow_run_id")))
    if identity != (registered.name, version, registered.run_id):
        raise ArtifactError(f"the files logged with version {version} are those of "
                            f"{identity[0]} version {identity[1]}; refusing them")
    recorded = registered.tags.get(ARTIFACT_SHA256_TAG, metadata["sha256"])
    if metadata["sha256"] != recorded:
        raise ArtifactError(f"the model file logged with version {version} is not the one "
                            f"its {ARTIFACT_SHA256_TAG} tag names; refusing it")
    load_pipeline(source)


def _complete_hand_promotion(config: Config, alias: str) -> bool:
    """Bring the registry into line with the local copy a promotion by hand exported to the
    `alias` folder: the alias moved, the record tagged, and for the champion the challenger
    role dropped. True if the challenger alias or folder went.

    The alias is moved only for a promotion not yet recorded on its version (the tag comes
    last) and only away from the version it replaced: an alias someone moved since, before or
    after the promotion completed, is reported, never overwritten."""
    try:
        local = read_metadata(config.model_artifacts_dir / alias)
    except (ArtifactError, OSError, ValueError):
        return False
    record = local.get(PROMOTION)
    name = config.tracking.registered_model_name
    if not isinstance(record, dict) or local.get("model_name") != name:
        return False
    client = MlflowClient(config.tracking_uri)
    version = str(local["model_version"])
    recorded = client.get_model_version(name, version).tags
    tags = {ARTIFACT_SHA256_TAG: str(local["sha256"]),
            PROMOTION: json.dumps(record, sort_keys=True)}
    holder = _aliases(client, name).get(alias)
    if holder != version:
        if recorded.get(PROMOTION) == tags[PROMOTION] or holder != record.get("replaces"):
            logger.warning("The local %s (version %s, promoted by hand) is not %s@%s (version "
                           "%s), which moved since: both left as they are; promote the one to "
                           "serve again", alias, version, name, alias, holder)
            return False
        client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        if recorded.get(key) != value:
            client.set_model_version_tag(name, version, key, value)
    return alias == CHAMPION and _drop_challenger(config, client, version)


def _drop_challenger(config: Config, client: MlflowClient, champion: str) -> bool:
    """The champion's version is no challenger: the alias and the local folder go if they
    name it (the registry first; a kill in between is finished by the next repair)."""
    name = config.tracking.registered_model_name
    dropped = False
    if _aliases(client, name).get(CHALLENGER) == champion:
        client.delete_registered_model_alias(name, CHALLENGER)
        dropped = True
    folder = config.model_artifacts_dir / CHALLENGER
    try:
        local = read_metadata(folder)
    except (ArtifactError, OSError, ValueError):
        return dropped
    if local.get("model_name") == name and str(local.get("model_version")) == champion:
        shutil.rmtree(folder)
        dropped = True
    return dropped


# Repair --------------------------------------------------------------------------------------

def reconcile_champion(config: Config) -> None:
    """Repair what a killed modelling run or promotion left: call first in every modelling run
    (a promotion by hand does). A run whose process died (on this host) while RUNNING is marked
    FAILED; a local copy exported by a process killed before it moved the alias (the export
    comes first) gets the alias now. A local champion behind the registry (its alias moved in
    the registry) is reported, never overwritten. Connects first: an unreachable store fails
    here, in seconds. Raises TrackingError if the store fails."""
    connect(config)
    with store_failures(config, "while reconciling the champion"):
        _fail_orphan_runs(config)
    if config.model_artifacts_dir.is_dir():  # else no local copy to agree with
        with promotion_lock(config), store_failures(config, "while reconciling the champion"):
            _complete_promotions(config)


def _complete_promotions(config: Config) -> None:
    for alias in ALIASES:
        _complete_hand_promotion(config, alias)
    _complete_modelling_promotion(config)


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


def _complete_modelling_promotion(config: Config) -> None:
    """A local champion a modelling run exported, newer than the registry's, gets the alias."""
    try:
        local = read_metadata(config.model_artifacts_dir / CHAMPION)
    except (ArtifactError, OSError, ValueError):
        return  # no local champion: nothing to agree with
    client = MlflowClient(config.tracking_uri)
    name = config.tracking.registered_model_name
    local_version = str(local.get("model_version", ""))
    if PROMOTION in local or local.get("model_name", name) != name or not local_version.isdigit():
        return  # promoted by hand: `_complete_hand_promotion`'s
    registry_version = int(_aliases(client, name).get(CHAMPION, 0))
    if int(local_version) > registry_version:
        version = client.get_model_version(name, local_version)
        if version.run_id != local.get("mlflow_run_id"):
            return  # not the version this artifact came from: leave both as they are
        client.set_model_version_tag(name, local_version, ARTIFACT_SHA256_TAG, str(local["sha256"]))
        client.set_registered_model_alias(name, CHAMPION, local_version)
        logger.warning("Moved %s@%s to version %s, as the local champion: the run that exported "
                       "it was stopped before it moved the alias", name, CHAMPION, local_version)
    elif int(local_version) < registry_version:
        logger.warning("The local champion (version %s) is behind %s@%s (version %d); re-run "
                       "modelling, promote a version by hand, or serve from the registry",
                       local_version, name, CHAMPION, registry_version)
