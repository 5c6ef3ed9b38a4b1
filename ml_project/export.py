"""Save and load the ONE artifact: the fitted Pipeline plus metadata.json with its sha256.

Layout of an artifact folder (e.g. data/model_artifacts/champion/):
    pipeline-<sha12>.joblib   the whole fitted Pipeline (engineering + preprocessing + model)
    metadata.json             name, version, task, features, schema, metrics, lineage, sha256

Export is atomic: the artifact is written under a name of its own and synced to disk, then
metadata.json is replaced in one rename. A run killed at any moment (or a power cut) leaves
metadata.json pointing at a complete artifact, the previous one or the new one. Loading verifies the checksum before unpickling, so
a tampered or truncated file is refused, never executed. Serving imports this module: it must
not import mlflow, pandera or plotting.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess  # only git, with fixed arguments (git_commit)  # nosec B404
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.pipeline import Pipeline

METADATA_FILE = "metadata.json"
LIBRARIES = ("scikit-learn", "pandas", "numpy", "joblib")


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


def export_pipeline(pipeline: Pipeline, metadata: dict[str, Any], directory: Path) -> Path:
    """Write the Pipeline and its metadata (plus sha256) atomically; return the artifact path."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".pipeline.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            joblib.dump(pipeline, file)
            file.flush()
            os.fsync(file.fileno())  # on disk before metadata.json can name it
        checksum = sha256_of(Path(temporary))
        artifact = directory / f"pipeline-{checksum[:12]}.joblib"
        os.replace(temporary, artifact)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        previous = _artifact_file(directory) if (directory / METADATA_FILE).is_file() else None
    except ArtifactError:  # unreadable metadata: it is about to be replaced anyway
        previous = None
    record = {**metadata, "artifact_file": artifact.name, "sha256": checksum}
    _write_atomically(directory / METADATA_FILE, json.dumps(record, indent=2, default=str).encode())
    _fsync_directory(directory)  # the renames are on disk before the previous artifact goes
    if previous and previous != artifact:
        previous.unlink(missing_ok=True)
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


def _artifact_file(directory: Path) -> Path:
    return directory / str(read_metadata(directory)["artifact_file"])


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
    pipeline = joblib.load(artifact)  # safe: the bytes are the ones this project wrote
    if not isinstance(pipeline, Pipeline):
        raise ArtifactError(f"{artifact} does not hold a scikit-learn Pipeline")
    return pipeline, metadata
