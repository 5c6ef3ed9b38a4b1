"""Save and load the ONE artifact: the fitted Pipeline plus metadata.json with its sha256.

Layout of an artifact folder (e.g. data/model_artifacts/champion/):
    pipeline-<sha12>.joblib   the whole fitted Pipeline (engineering + preprocessing + model)
    reference-<sha12>.parquet the reference sample: validated holdout rows (features, target)
                              with the Pipeline's predictions at training time; monitoring's
                              reference and the load-time proof of the serving fast path
    metadata.json             name, version, task, features, schema, metrics, lineage, the
                              sha256 of both files, the types the MLflow copy trusts
    model_card.json, .md      the model card (`model_card.py`), with its model_card_*.png
                              figures; metadata.json's "model_card_files" holds their sha256s

Export is atomic: the artifact is written under a name of its own and synced to disk, then
metadata.json is replaced in one rename. A run killed at any moment (or a power cut) leaves
metadata.json pointing at a complete artifact, the previous one or the new one. Loading
verifies the checksum before unpickling, so a tampered or truncated file is refused, never
executed. A model refers to the code it was fitted with by module name (this package's feature
steps and transformers): one that names a module or name not importable here (the package was
renamed, a module deleted, a library not installed) is one ArtifactError naming the fix
(`unpickled`), for every loader. metadata.json's content is this module's too (`model_metadata`): the contract every
loader reads. Serving imports this module: it must not import mlflow, pandera or plotting.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess  # only git, with fixed arguments (git_commit)  # nosec B404
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence, TypeVar

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from ml_project.config import Config
from ml_project.engineer import FeatureEngineer
from ml_project.schemas import field_rules

METADATA_FILE = "metadata.json"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"
LIBRARIES = ("scikit-learn", "pandas", "numpy", "joblib")
# This package's name as Python imports it, whatever it has been renamed to.
PACKAGE = __name__.partition(".")[0]
MODELLING_COMMAND = "pipenv run python use_cases/modelling_historic_data_local.py"
RETRAIN = f"retrain: {MODELLING_COMMAND} (it replaces the champion)"
Loaded = TypeVar("Loaded")


class ArtifactError(RuntimeError):
    """The artifact is missing, incomplete or does not match its recorded checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_frame(frame: pd.DataFrame) -> str:
    """A content hash of a DataFrame (values and column names), for data lineage."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def git_commit(root: Path) -> str | None:
    """The checked-out commit of the code that trained the model, if this is a git checkout."""
    try:
        result = subprocess.run(  # fixed argv; git from PATH as the user runs it  # nosec B603 B607
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for library in LIBRARIES:
        try:
            versions[library] = version(library)
        except PackageNotFoundError:
            continue
    return versions


def native(value: Any) -> Any:
    """numpy scalars to plain Python, so results serialise to JSON unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def model_metadata(
    config: Config,
    pipeline: Pipeline,
    *,
    candidate: str,
    params: Mapping[str, Any],
    cv_score: float,
    holdout_metrics: Mapping[str, float],
    train: pd.DataFrame,
    model_version: str,
    alias: str,
    run_id: str,
    trusted_types: Sequence[str],
    extra_labelled_data: str | None = None,
) -> dict[str, Any]:
    """metadata.json's content (before the files' checksums): what the model is and answers
    for, the data and code it was trained with, how it scored, and where its registered copy
    is. Serving reads the features, classes and schema from here; monitoring the holdout
    metrics; the registry model source the trusted types."""
    return {
        "model_name": config.tracking.registered_model_name,
        "model_version": model_version,
        "alias": alias,
        "mlflow_run_id": run_id,
        "candidate": candidate,
        "params": dict(params),
        "task": config.task,
        "target": config.columns.target,
        "classes": [native(c) for c in getattr(pipeline, "classes_", [])],
        "features": list(config.columns.features),
        "schema": [rule.__dict__ | {"categories": sorted(rule.categories)}
                   for rule in field_rules(config)],
        "metric": config.training.metric,
        "cv_score": cv_score,
        "holdout_metrics": dict(holdout_metrics),
        "training_rows": len(train),
        "training_data_sha256": hash_frame(train),
        "git_commit": git_commit(config.root),
        "libraries": library_versions(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "extra_labelled_data": extra_labelled_data,
        "skops_trusted_types": list(trusted_types),
        "package": PACKAGE,  # the modules the pickled model refers to are this package's
    }


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    """Make the renames in `directory` survive a power cut (POSIX; skipped where a folder
    cannot be opened, as on Windows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_file(directory: Path, prefix: str, suffix: str, write: Callable[[BinaryIO], None]
                ) -> tuple[Path, str]:
    """Write through `write` to a temporary file, fsync, and rename it to
    `<prefix>-<sha12><suffix>`: a name that says what it holds. Returns the path and sha256."""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{prefix}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # on disk before metadata.json can name it
        checksum = sha256_of(Path(temporary))
        path = directory / f"{prefix}-{checksum[:12]}{suffix}"
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path, checksum


def export_pipeline(pipeline: Pipeline, metadata: dict[str, Any], directory: Path,
                    reference: pd.DataFrame | None = None,
                    card: Mapping[str, bytes] | None = None) -> Path:
    """Write the Pipeline, its reference sample, its model card's files (name -> bytes) and
    metadata (with sha256s) atomically; return the artifact path.

    The card's files keep fixed names (the Markdown links its figures by name): each is
    replaced in one rename, before metadata.json, which records their sha256s. A run killed in
    between leaves a card that does not match metadata.json: it is then refused, as missing."""
    return _export(directory, metadata, lambda file: joblib.dump(pipeline, file),
                   None if reference is None else (
                       len(reference), lambda file: reference.to_parquet(file, index=False)),
                   card)


def copy_artifact(source: Path, directory: Path, changes: Mapping[str, Any]) -> Path:
    """Export the artifact in `source` (as a run logged it) to `directory`, its metadata
    updated with `changes`, atomically as `export_pipeline` does; return the artifact path.

    Bytes are copied, nothing is unpickled: the Pipeline's file keeps its name and sha256 (the
    model's identity in the prediction log). Every file is checked against the sha256s of
    source's metadata.json first; one that does not match is an ArtifactError, and nothing is
    written."""
    metadata = read_metadata(source)
    checked = {str(metadata["artifact_file"]): str(metadata["sha256"])}
    if "reference_file" in metadata:
        checked[str(metadata["reference_file"])] = str(metadata.get("reference_sha256"))
    card_files = dict(metadata.get("model_card_files") or {})
    for name, expected in {**checked, **card_files}.items():
        path = source / name
        if Path(name).name != name or not path.is_file() or sha256_of(path) != expected:
            raise ArtifactError(f"{path} is missing or does not match the checksum its "
                                f"{METADATA_FILE} records")

    def copy(name: str) -> Callable[[BinaryIO], None]:
        def write(file: BinaryIO) -> None:
            with (source / name).open("rb") as original:
                shutil.copyfileobj(original, file)
        return write

    reference = (int(metadata.get("reference_rows", 0)), copy(str(metadata["reference_file"]))
                 ) if "reference_file" in metadata else None
    return _export(directory, {**metadata, **changes}, copy(str(metadata["artifact_file"])),
                   reference, {name: (source / name).read_bytes() for name in card_files})


# What an export records about its own files: recomputed by every export, never carried over.
FILE_KEYS = ("artifact_file", "sha256", "reference_file", "reference_sha256", "reference_rows",
             "model_card_files")


def _export(directory: Path, metadata: Mapping[str, Any], write_pipeline: Callable[[BinaryIO], None],
            reference: tuple[int, Callable[[BinaryIO], None]] | None,
            card: Mapping[str, bytes] | None) -> Path:
    """The atomic export behind both: the files first, metadata.json last, in one rename."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (card or {}).items():
        _write_atomically(directory / name, data)
    artifact, checksum = _write_file(directory, "pipeline", ".joblib", write_pipeline)
    record = {key: value for key, value in metadata.items() if key not in FILE_KEYS}
    record |= {"artifact_file": artifact.name, "sha256": checksum}
    if reference is not None:
        rows, write_reference = reference
        sample, sample_checksum = _write_file(directory, "reference", ".parquet", write_reference)
        record |= {"reference_file": sample.name, "reference_sha256": sample_checksum,
                   "reference_rows": rows}
    if card:
        record["model_card_files"] = {name: hashlib.sha256(data).hexdigest()
                                      for name, data in card.items()}
    try:
        previous = read_metadata(directory) if (directory / METADATA_FILE).is_file() else {}
    except ArtifactError:  # unreadable metadata: it is about to be replaced anyway
        previous = {}
    _write_atomically(directory / METADATA_FILE, json.dumps(record, indent=2, default=str).encode())
    _fsync_directory(directory)  # the renames are on disk before the previous files go
    for key in ("artifact_file", "reference_file"):
        old = previous.get(key)
        if old and old != record.get(key):
            (directory / str(old)).unlink(missing_ok=True)
    for old in set(previous.get("model_card_files", {})) - set(card or {}):
        if Path(old).name == old:  # a file of this folder, as this function wrote it
            (directory / old).unlink(missing_ok=True)
    return artifact


def read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(
            f"no model artifact in {directory}: run the modelling use case first "
            "(pipenv run python use_cases/modelling_historic_data_local.py)"
        )
    try:
        metadata: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    if "artifact_file" not in metadata or "sha256" not in metadata:
        raise ArtifactError(f"{path} lacks 'artifact_file' or 'sha256'")
    return metadata


def load_pipeline(directory: Path) -> tuple[Pipeline, dict[str, Any]]:
    """The Pipeline and its metadata, after the artifact's sha256 matches the recorded one."""
    metadata = read_metadata(directory)
    artifact = directory / str(metadata["artifact_file"])
    if not artifact.is_file():
        raise ArtifactError(
            f"model artifact {artifact} is missing (metadata names it): re-run the modelling use "
            "case (pipenv run python use_cases/modelling_historic_data_local.py)"
        )
    actual = sha256_of(artifact)
    if actual != metadata["sha256"]:
        raise ArtifactError(
            f"model artifact {artifact} does not match its checksum (expected "
            f"{metadata['sha256'][:12]}..., got {actual[:12]}...): it was modified or truncated; "
            "refusing to load it. Re-run the modelling use case."
        )
    # safe: the bytes are the ones this project wrote
    pipeline = unpickled(lambda: joblib.load(artifact), str(artifact), metadata)
    if not isinstance(pipeline, Pipeline):
        raise ArtifactError(f"{artifact} does not hold a scikit-learn Pipeline")
    return pipeline, metadata


def saved_package(metadata: Mapping[str, Any]) -> str | None:
    """The package a model was saved under: recorded since metadata.json has "package"; for an
    older one, read off its trusted types (every Pipeline holds a FeatureEngineer)."""
    if metadata.get("package"):
        return str(metadata["package"])
    engineer = f"{FeatureEngineer.__module__.partition('.')[2]}.{FeatureEngineer.__qualname__}"
    return next((str(name).partition(".")[0] for name in metadata.get("skops_trusted_types", [])
                 if str(name).partition(".")[2] == engineer), None)


def another_package(source: str, package: str) -> str:
    """Why a model saved under `package`, another name of this package, is not loaded here."""
    return (f"cannot load {source}: it was saved under the package name {package!r}, and this "
            f"project's package is {PACKAGE!r} now: the model refers to the modules of "
            f"{package!r} by name, which are not this project's code. Rename the package back "
            f"(bash executables/rename_project.sh {package}), or {RETRAIN}; to start afresh, "
            "run bash executables/clear_outputs.sh --yes before it")


def missing_code(source: str, module: str | None, error: Exception) -> str:
    """Why the model `source` cannot be loaded here and what to run, for a model that refers
    to a module (`module`) or a name (None) that cannot be imported."""
    if module is None:
        return (f"cannot load {source}: it refers to a name its module no longer has ({error}): "
                f"restore it as it was when the model was trained, or {RETRAIN}")
    if module.partition(".")[0] == PACKAGE:
        return (f"cannot load {source}: it refers to the module {module!r} of this package, "
                f"which no longer exists (deleted or renamed since the model was trained): "
                f"restore it, or {RETRAIN}")
    return (f"cannot load {source}: it needs the module {module!r}, which is not installed "
            f"here: install the package that provides it (as the model was trained with), or "
            f"{RETRAIN}")


def unpickled(load: Callable[[], Loaded], source: str, metadata: Mapping[str, Any]) -> Loaded:
    """`load()` of a serialised model, or one ArtifactError saying why not and what to run.
    Every loader of a model (the local artifact, the registry's copy) goes through here.

    A model saved under another package name is refused before anything is unpickled, whether
    or not that package can be imported here (an older copy of the project, still installed,
    would load it with that copy's code, its classes unknown to the fast path). A module or
    name it refers to that cannot be imported (deleted, renamed, a library not installed) is
    named, with the fix.
    """
    package = saved_package(metadata)
    if package is not None and package != PACKAGE:
        raise ArtifactError(another_package(source, package))
    try:
        return load()
    except ModuleNotFoundError as err:
        raise ArtifactError(missing_code(source, err.name or str(err), err)) from err
    except (ImportError, AttributeError) as err:  # a name gone from its module (pickle, skops)
        raise ArtifactError(missing_code(source, None, err)) from err


def load_reference(directory: Path, metadata: dict[str, Any]) -> pd.DataFrame | None:
    """The artifact's reference sample after its sha256 matches; None for an artifact exported
    without one (then nothing can be proven against it, and callers say so)."""
    if "reference_file" not in metadata:
        return None
    path = directory / str(metadata["reference_file"])
    if not path.is_file() or sha256_of(path) != metadata.get("reference_sha256"):
        raise ArtifactError(f"reference sample {path} is missing or does not match its checksum; "
                            "re-run the modelling use case")
    return pd.read_parquet(path)


def load_card(directory: Path, metadata: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The model card (JSON, Markdown) exported with the model, after both files match the
    sha256s metadata.json records; None for a model exported without one, or whose card does
    not match (a run killed while exporting: the next modelling run writes it again)."""
    recorded = metadata.get("model_card_files") or {}
    texts = []
    for name in (CARD_JSON, CARD_MARKDOWN):
        path = directory / name
        if name not in recorded or not path.is_file() or sha256_of(path) != recorded[name]:
            return None
        texts.append(path.read_text(encoding="utf-8"))
    return json.loads(texts[0]), texts[1]
