"""Config: the shipped file loads; every kind of mistake fails at load, naming the key and file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from ml_project.config import (
    OUTPUT_DIR_ENV,
    PREDICTION_LOG_ENV,
    PROJECT_ROOT,
    Config,
    ConfigError,
    load_config,
    sqlite_file,
)


def _load(config_file: Path, root: Path, **overrides: Any) -> Config:
    return load_config(
        "modelling", "historic", "local", config_file=config_file, root=root, overrides=overrides
    )


def test_load_config_reads_the_project_config_next_to_the_code_by_default() -> None:
    config = load_config("prediction", "production", "local")

    assert config == load_config("prediction", "production", "local",
                                 config_file=PROJECT_ROOT / "project_config.yaml", root=PROJECT_ROOT)
    assert config.root == PROJECT_ROOT
    assert config.run_mode == "prediction"
    assert config.columns.features == (*config.columns.numerical, *config.columns.categorical)
    assert config.metrics[0] == config.training.metric
    assert config.output_dir == PROJECT_ROOT / "output"


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"training": {"cv_fold": 3}}, "training.cv_fold", "Extra inputs are not permitted"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"training": {"cv_folds": "five"}}, "training.cv_folds", "valid integer"),
        ({"training": {"holdout_fraction": 1.5}}, "training.holdout_fraction", "less than 1"),
        (
            {"columns": {"numerical": {"age": {"min": "young"}}}},
            "columns.numerical.age.min",
            "valid number",
        ),
        ({"validation": {"fail_on_invalid": "sometimes"}}, "validation.fail_on_invalid", "boolean"),
        ({"task": "clustering"}, "task", "binary_classification"),
    ],
    ids=["unknown-nested-key", "unknown-top-key", "wrong-int", "out-of-range", "wrong-float",
         "wrong-bool", "unknown-task"],
)
def test_load_config_names_file_and_key_of_a_bad_value(
    project: Path, overrides: dict[str, Any], key: str, problem: str
) -> None:
    config_file = project / "project_config.yaml"

    with pytest.raises(ConfigError) as caught:
        _load(config_file, project, **overrides)

    message = str(caught.value)
    assert str(config_file) in message
    assert f"{key}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"training": {"metric": "r2"}}, r"training\.metric 'r2' is not one of .*roc_auc"),
        (
            {"task": "regression", "columns": {"target_classes": [], "positive_class": None},
             "training": {"metric": "r2", "split": "stratified"}},
            r"training\.split 'stratified' needs a classification task",
        ),
        (
            {"task": "regression", "training": {"metric": "r2", "split": "random"}},
            r"columns\.target_classes must be empty for regression",
        ),
        (
            {"columns": {"target_classes": [0, 1, 2]}},
            r"columns\.target_classes needs exactly 2 classes",
        ),
        (
            {"columns": {"timestamp": None}, "training": {"split": "time"}},
            r"training\.split 'time' needs columns\.timestamp",
        ),
        ({"columns": {"positive_class": None}},
         r"columns\.positive_class must name the class f1, ROC AUC and monitoring score, one of "
         r"target_classes \[0, 1\]$"),
        ({"columns": {"positive_class": "1"}},
         r"columns\.positive_class must name .* one of target_classes \[0, 1\], not '1'$"),
        ({"task": "multiclass_classification", "columns": {"target_classes": [0, 1, 2]},
          "training": {"metric": "f1_macro"}},
         r"columns\.positive_class is for binary tasks: remove it for multiclass_classification"),
        ({"columns": {"numerical": {"age": {"min": 90, "max": 18}}}}, r"columns\.numerical\.age"),
        ({"columns": {"categorical": {"region": {"categories": []}}}}, r"columns\.categorical"),
        ({"columns": {"id": "age"}}, r"column names used twice .*: \['age'\]"),
        ({"columns": {"timestamp": "customer_id"}},
         r"column names used twice .*: \['customer_id'\]$"),
        ({"columns": {"id": "prediction"}},
         r"column names \['prediction'\] are the names of columns the pipeline adds"),
        ({"columns": {"numerical": {"probability_1": {}, "logged_at": {}}}},
         r"column names \['logged_at', 'probability_1'\] are the names of columns the pipeline"),
    ],
    ids=["metric-for-task", "stratified-regression", "classes-regression", "binary-3-classes",
         "time-without-timestamp", "binary-without-positive", "positive-not-a-class",
         "positive-for-multiclass", "min-above-max", "no-categories", "id-is-feature",
         "id-is-timestamp", "id-is-an-output", "features-are-outputs"],
)
def test_load_config_rejects_inconsistent_settings(
    project: Path, overrides: dict[str, Any], expected: str
) -> None:
    config_file = project / "project_config.yaml"

    with pytest.raises(ConfigError, match=expected) as caught:
        _load(config_file, project, **overrides)

    assert str(config_file) in str(caught.value)


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        _load(missing, tmp_path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("training: [unclosed", "not valid YAML"),
        ("- a\n- list\n", "expected a mapping at the top level"),
        ("run_mode: prediction\n", r"\['run_mode'\] are set by the use case"),
    ],
    ids=["bad-yaml", "not-a-mapping", "run-mode-in-file"],
)
def test_load_config_rejects_malformed_files(tmp_path: Path, content: str, expected: str) -> None:
    config_file = tmp_path / "project_config.yaml"
    config_file.write_text(content)

    with pytest.raises(ConfigError, match=expected):
        _load(config_file, tmp_path)


@pytest.mark.parametrize(
    ("key", "written", "expected"),
    [
        ("target_classes", "[No, Yes]",
         r"columns\.target_classes: YAML read an unquoted value as the boolean false "
         r"\(it reads yes, no, on, off, true and false so, in any case\): quote each value"),
        ("target_classes", "[off, on]", r"columns\.target_classes: .*the boolean false"),
        ("categorical", "{plan: {categories: [yes, no]}}",
         r"columns\.categorical\.plan\.categories: YAML read .*the boolean true"),
        ("categorical", "{day: {categories: ['2016-01-02', 2016-01-01]}}",
         r"columns\.categorical\.day\.categories: YAML read .*the date 2016-01-01: "
         r"quote it .*'2016-01-01'"),
        ("categorical", "{plan: {categories: [basic, ~]}}",
         r"plan\.categories: a value is empty .*nullable: true"),
        ("categorical", "{region: {categories: [north, 'NA']}}",
         r"region\.categories: 'NA' means a missing value on every path, as in a CSV"),
    ],
    ids=["no-yes-classes", "on-off-classes", "yes-no-categories", "date-category", "null-category",
         "missing-text-category"],
)
def test_labels_and_categories_that_yaml_reads_as_other_types_are_refused_naming_the_fix(
    project: Path, key: str, written: str, expected: str
) -> None:
    """Unquoted, `[No, Yes]` is two booleans to YAML, which pydantic would take for the classes
    0 and 1: never what a file of "No"/"Yes" means."""
    config_file = project / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    content["columns"][key] = "WRITTEN_AS_IS"
    config_file.write_text(yaml.safe_dump(content).replace("WRITTEN_AS_IS", written))

    with pytest.raises(ConfigError, match=expected):
        _load(config_file, project)


def test_config_is_frozen(config: Config) -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.task = "regression"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.training.metric = "accuracy"  # type: ignore[misc]


def test_load_config_overrides_merge_into_nested_sections(config: Config, project: Path) -> None:
    changed = _load(project / "project_config.yaml", project, training={"cv_folds": 4})

    assert changed.training.cv_folds == 4
    assert changed.training.candidates == config.training.candidates
    assert changed.training.metric == config.training.metric


def test_tracking_uri_relative_sqlite_resolves_against_root(config: Config, project: Path) -> None:
    assert config.tracking.tracking_uri == "sqlite:///mlflow.db"
    assert config.tracking_uri == f"sqlite:///{project}/mlflow.db"
    assert config.tracking_uri.startswith("sqlite:////")


def test_tracking_uri_environment_variable_wins(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")

    assert config.tracking_uri == "http://tracking.example:5000"


def test_prediction_log_url_resolves_against_root_and_its_environment_variable_wins(
    config: Config, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PREDICTION_LOG_ENV, raising=False)
    assert config.prediction_log_url == f"sqlite:///{project}/output/prediction_log.db"

    monkeypatch.setenv(PREDICTION_LOG_ENV, "postgresql://writer:secret@db:5432/log")

    assert config.prediction_log_url == "postgresql://writer:secret@db:5432/log"


def test_output_dir_resolves_against_root_and_its_environment_variable_wins(
    config: Config, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config.output_dir == project / "output"

    monkeypatch.setenv(OUTPUT_DIR_ENV, str(tmp_path / "writable"))

    assert config.output_dir == tmp_path / "writable"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("data/historic_data.csv", "{root}/data/historic_data.csv"),
        ("/absolute/file.csv", "/absolute/file.csv"),
        ("sqlite:///relative.db", "sqlite:///{root}/relative.db"),
        ("sqlite:////absolute.db", "sqlite:////absolute.db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("s3://bucket/key.parquet", "s3://bucket/key.parquet"),
    ],
)
def test_resolve_makes_relative_paths_absolute_and_keeps_urls(
    config: Config, value: str, expected: str
) -> None:
    assert config.resolve(value) == expected.format(root=config.root)


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:////srv/log.db", Path("/srv/log.db")),
    ("sqlite+pysqlite:///relative/mlflow.db", Path("relative/mlflow.db")),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
    ("sqlite:///file:log.db?mode=ro&uri=true", None),  # a URI's text names no file
    ("postgresql://user@host/db", None),
])
def test_sqlite_file_is_the_file_a_sqlite_url_names_and_none_for_anything_else(
    url: str, path: Path | None
) -> None:
    """One answer for the prediction log's engine and the MLflow store's first-use lock."""
    assert sqlite_file(url) == path
