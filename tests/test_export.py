"""The artifact: atomic export, checksum-verified loading and messages a user can act on."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from ml_project.config import Config
from ml_project.engineer import FeatureStep
from ml_project.export import (
    METADATA_FILE,
    MODELLING_COMMAND,
    PACKAGE,
    ArtifactError,
    copy_artifact,
    export_pipeline,
    hash_frame,
    load_pipeline,
    read_metadata,
    saved_package,
    unpickled,
)
from ml_project.train import build_pipeline, features_and_target
from ml_project.validate import validate_production_data

METADATA: dict[str, Any] = {"model_name": "churn_model", "model_version": "1", "task": "binary"}


@pytest.fixture
def raw(config: Config, production_df: pd.DataFrame) -> pd.DataFrame:
    return validate_production_data(production_df, config, with_target=True).valid


def _fitted(config: Config, raw: pd.DataFrame, c: float = 1.0) -> Pipeline:
    features, target = features_and_target(raw, config)
    return build_pipeline(config, LogisticRegression(C=c, max_iter=500)).fit(features, target)


@pytest.fixture
def pipeline(config: Config, raw: pd.DataFrame) -> Pipeline:
    return _fitted(config, raw)


@pytest.fixture
def exported(pipeline: Pipeline, tmp_path: Path) -> Path:
    """An artifact folder holding one exported pipeline; returns the folder."""
    directory = tmp_path / "model_artifacts" / "champion"
    export_pipeline(pipeline, METADATA, directory)
    return directory


def _artifacts(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name != METADATA_FILE)


def test_export_pipeline_round_trip_keeps_predictions_and_metadata(
    pipeline: Pipeline, exported: Path, raw: pd.DataFrame, config: Config
) -> None:
    loaded, metadata = load_pipeline(exported)

    features, _ = features_and_target(raw, config)
    pd.testing.assert_frame_equal(
        pd.DataFrame(loaded.predict_proba(features)), pd.DataFrame(pipeline.predict_proba(features))
    )
    assert metadata == {**METADATA, "artifact_file": metadata["artifact_file"],
                        "sha256": metadata["sha256"]}
    assert metadata["artifact_file"] == f"pipeline-{metadata['sha256'][:12]}.joblib"
    assert _artifacts(exported) == [metadata["artifact_file"]]  # no temporary files left
    assert read_metadata(exported) == metadata


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate"])
def test_load_pipeline_refuses_a_damaged_artifact(exported: Path, damage: str) -> None:
    artifact = exported / read_metadata(exported)["artifact_file"]
    content = bytearray(artifact.read_bytes())
    if damage == "flip-a-byte":
        content[len(content) // 2] ^= 0xFF
    else:
        del content[len(content) // 2 :]
    artifact.write_bytes(bytes(content))

    with pytest.raises(ArtifactError, match="does not match its checksum.*refusing to load"):
        load_pipeline(exported)


def test_load_pipeline_without_an_artifact_says_to_run_modelling(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="run the modelling use case first"):
        load_pipeline(tmp_path / "model_artifacts" / "champion")


def test_load_pipeline_with_the_artifact_file_deleted_says_to_run_modelling(exported: Path) -> None:
    (exported / read_metadata(exported)["artifact_file"]).unlink()

    with pytest.raises(ArtifactError, match="is missing.*[Rr]e-run the modelling use case"):
        load_pipeline(exported)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "is not valid JSON"),
        ('{"model_name": "x"}', "lacks 'artifact_file' or 'sha256'"),
    ],
)
def test_read_metadata_rejects_broken_metadata(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / METADATA_FILE).write_text(content)

    with pytest.raises(ArtifactError, match=match):
        read_metadata(tmp_path)


def test_load_pipeline_refuses_an_artifact_that_is_not_a_pipeline(tmp_path: Path) -> None:
    export_pipeline(LogisticRegression(), METADATA, tmp_path)

    with pytest.raises(ArtifactError, match="does not hold a scikit-learn Pipeline"):
        load_pipeline(tmp_path)


def test_export_pipeline_replaces_the_previous_artifact_file(
    exported: Path, config: Config, raw: pd.DataFrame
) -> None:
    old = read_metadata(exported)["artifact_file"]
    newer = _fitted(config, raw, c=0.01)

    artifact = export_pipeline(newer, {**METADATA, "model_version": "2"}, exported)

    assert _artifacts(exported) == [artifact.name] and artifact.name != old
    loaded, metadata = load_pipeline(exported)
    assert metadata["model_version"] == "2" and loaded.named_steps["model"].C == 0.01


def test_export_pipeline_of_the_same_pipeline_keeps_one_file(
    pipeline: Pipeline, exported: Path
) -> None:
    before = _artifacts(exported)

    export_pipeline(pipeline, METADATA, exported)

    assert _artifacts(exported) == before
    load_pipeline(exported)


def test_export_pipeline_failing_dump_leaves_the_previous_artifact_loadable(
    exported: Path, config: Config, raw: pd.DataFrame
) -> None:
    before = read_metadata(exported)
    unpicklable = _fitted(config, raw)
    lambda_step = FeatureStep(
        "lambda", ("age",), (("age_again", "numerical"),), lambda cols: {"age_again": cols["age"]}
    )
    unpicklable.named_steps["engineer"].steps = [lambda_step]

    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        export_pipeline(unpicklable, {**METADATA, "model_version": "2"}, exported)

    assert _artifacts(exported) == [before["artifact_file"]]  # the temporary file is gone
    _, metadata = load_pipeline(exported)
    assert metadata == before


def test_hash_frame_depends_on_values_and_column_names_only(raw: pd.DataFrame) -> None:
    frame = raw.head(20)

    assert hash_frame(frame) == hash_frame(frame.copy())
    assert hash_frame(frame) == hash_frame(frame.set_axis(range(100, 120)))
    assert hash_frame(frame) != hash_frame(frame.assign(age=frame["age"] + 1))
    assert hash_frame(frame) != hash_frame(frame.rename(columns={"age": "age_years"}))
    assert json.dumps(hash_frame(frame))  # a plain string for metadata.json


# Models that refer to code not importable here -----------------------------------------------

def _exported_under_package(root: Path, package: str, metadata: dict[str, Any],
                            monkeypatch: pytest.MonkeyPatch, *, removed: bool = True) -> Path:
    """A Pipeline whose first step is a function of the package `package` (made in `root`),
    exported; then (`removed`) the package is gone, as after a rename. Returns the artifact
    folder."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "steps.py").write_text("def double(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(root))
    steps = importlib.import_module(f"{package}.steps")
    pipeline = Pipeline([("double", FunctionTransformer(steps.double)),
                         ("model", LogisticRegression())]).fit(np.array([[0.0], [1.0]]), [0, 1])
    export_pipeline(pipeline, metadata, root / "champion")
    if not removed:
        return root / "champion"
    for name in (f"{package}.steps", package):
        monkeypatch.delitem(sys.modules, name)
    (root / package / "steps.py").unlink()
    (root / package / "__init__.py").unlink()
    (root / package).rmdir()
    importlib.invalidate_caches()
    return root / "champion"


@pytest.mark.parametrize("importable", [False, True], ids=["package-gone", "old-copy-importable"])
def test_load_pipeline_of_a_model_saved_under_another_package_name_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, importable: bool
) -> None:
    """The same verdict whether the old package is gone or an older copy of the project still
    provides it (its code is not this project's)."""
    directory = _exported_under_package(tmp_path, "churn_before", METADATA | {
        "package": "churn_before"}, monkeypatch, removed=not importable)
    artifact = directory / str(read_metadata(directory)["artifact_file"])

    with pytest.raises(ArtifactError) as refusal:
        load_pipeline(directory)

    assert str(refusal.value) == (
        f"cannot load {artifact}: it was saved under the package name 'churn_before', and this "
        f"project's package is '{PACKAGE}' now: the model refers to the modules of "
        "'churn_before' by name, which are not this project's code. Rename the package back "
        "(bash executables/rename_project.sh churn_before), or retrain: "
        f"{MODELLING_COMMAND} (it replaces the champion); to start afresh, run bash "
        "executables/clear_outputs.sh --yes before it")


def test_saved_package_is_recorded_or_read_off_the_trusted_types() -> None:
    assert saved_package({"package": "acme"}) == "acme"
    assert saved_package({"skops_trusted_types": [
        "lightgbm.sklearn.LGBMClassifier", "old_name.engineer.FeatureEngineer",
        "old_name.engineer.tenure_band"]}) == "old_name"
    assert saved_package({"skops_trusted_types": ["lightgbm.sklearn.LGBMClassifier"]}) is None
    assert saved_package({}) is None


def _global(module: str, name: str) -> bytes:
    """A pickle of nothing but a reference to `module.name` (protocol 0's GLOBAL)."""
    return f"c{module}\n{name}\n.".encode()


@pytest.mark.parametrize(("reference", "metadata", "says"), [
    (_global(f"{PACKAGE}.features_deleted", "step"), METADATA,
     f"it refers to the module '{PACKAGE}.features_deleted' of this package, which no longer "
     f"exists (deleted or renamed since the model was trained): restore it, or retrain: "
     f"{MODELLING_COMMAND}"),
    (_global(f"{PACKAGE}.engineer", "a_step_renamed_since"), METADATA,
     "it refers to a name its module no longer has (Can't get attribute 'a_step_renamed_since'"),
    (_global("a_library_not_installed.models", "Booster"), METADATA,
     "it needs the module 'a_library_not_installed', which is not installed here: install the "
     "package that provides it"),
    (_global("old_name.engineer", "FeatureEngineer"), METADATA | {
        "skops_trusted_types": ["old_name.engineer.FeatureEngineer"]},
     f"saved under the package name 'old_name', and this project's package is '{PACKAGE}' now"),
], ids=["module-of-this-package-deleted", "step-renamed", "library-missing", "older-metadata"])
def test_a_model_referring_to_code_not_here_is_one_artifact_error_saying_what_to_do(
    reference: bytes, metadata: dict[str, Any], says: str
) -> None:
    with pytest.raises(ArtifactError, match="^cannot load models:/churn_model/1: ") as refusal:
        unpickled(lambda: pickle.loads(reference), "models:/churn_model/1", metadata)  # nosec B301

    assert says in str(refusal.value)
    assert MODELLING_COMMAND in str(refusal.value)


@pytest.fixture
def exported_with_card(pipeline: Pipeline, raw: pd.DataFrame, tmp_path: Path) -> Path:
    """An artifact as a run logs it: the Pipeline, a reference sample and a card."""
    directory = tmp_path / "logged"
    export_pipeline(pipeline, {**METADATA, "alias": "challenger"}, directory, raw.head(20),
                    {"model_card.json": b"{}", "model_card.md": b"# card"})
    return directory


def test_copy_artifact_copies_every_file_byte_for_byte_with_the_changes(
    exported_with_card: Path, tmp_path: Path
) -> None:
    """A promotion by hand rebuilds the local copy from the logged files: the Pipeline's file
    keeps its sha256 (the model's identity), only the metadata named changes."""
    source = read_metadata(exported_with_card)
    target = tmp_path / "model_artifacts" / "champion"
    export_pipeline(_identity_pipeline(), METADATA, target)  # a previous champion, replaced

    artifact = copy_artifact(exported_with_card, target, {"alias": "champion", "note": "x"})

    copied = read_metadata(target)
    assert artifact == target / source["artifact_file"]
    assert copied == {**source, "alias": "champion", "note": "x"}
    for name in [source["artifact_file"], source["reference_file"], *source["model_card_files"]]:
        assert (target / name).read_bytes() == (exported_with_card / name).read_bytes()
    assert sorted(path.name for path in target.iterdir()) == sorted(
        [METADATA_FILE, source["artifact_file"], source["reference_file"],
         *source["model_card_files"]])
    assert load_pipeline(target)[1]["sha256"] == source["sha256"]


@pytest.mark.parametrize("damaged", ["artifact_file", "reference_file", "model_card.md"])
def test_copy_artifact_refuses_a_file_that_does_not_match_and_writes_nothing(
    exported_with_card: Path, tmp_path: Path, damaged: str
) -> None:
    metadata = read_metadata(exported_with_card)
    name = metadata.get(damaged, damaged)
    with (exported_with_card / name).open("ab") as file:
        file.write(b"tampered")
    target = tmp_path / "model_artifacts" / "champion"

    with pytest.raises(ArtifactError, match=f"{name} is missing or does not match"):
        copy_artifact(exported_with_card, target, {"alias": "champion"})

    assert not target.exists()


def _identity_pipeline() -> Pipeline:
    return Pipeline([("identity", FunctionTransformer())])
