"""The one frozen, validated Config: project_config.yaml plus the run mode of a use case.

Every stage receives the Config explicitly. Loading fails early, naming the file and the key,
on unknown keys, wrong types, missing files and inconsistent settings.
"""

from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ml_project.config_migrations import CONFIG_VERSION, MIGRATE_COMMAND, MigrationError, migrated
from ml_project.config_sections import (
    DataConfig,
    EngineeringConfig,
    Frozen,
    ModelCardConfig,
    MonitoringConfig,
    PathsConfig,
    PredictionConfig,
    SparkConfig,
    TrackingConfig,
    TrainingConfig,
    ValidationConfig,
)

if TYPE_CHECKING:
    import sqlalchemy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREDICTION_LOG_ENV = "ML_PROJECT_PREDICTION_LOG_URL"
OUTPUT_DIR_ENV = "ML_PROJECT_OUTPUT_DIR"
DEFAULT_CONFIG_FILE = "project_config.yaml"
LOGGER = logging.getLogger(__name__)

# Columns the pipeline adds beside the user's (prediction files, quarantine, monitoring frames).
PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"  # + each class
REASON_COLUMN = "quarantine_reason"
ADDED_COLUMNS = (PREDICTION_COLUMN, "model_version", "logged_at", REASON_COLUMN)

# Texts that mean "missing" on every path: the markers pandas' CSV reader has always read as
# missing (written out here, so the readers, the per-request check and frame validation share
# one list). A JSON "NA" is a null, as the same cell in a file is.
MISSING_TEXTS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})

RunMode = Literal["modelling", "prediction"]
DataMode = Literal["historic", "production"]
Location = Literal["local", "deployed"]
Task = Literal["binary_classification", "multiclass_classification", "regression"]

CLASSIFICATION_METRICS = {
    "binary_classification": ("roc_auc", "accuracy", "f1", "neg_log_loss"),
    "multiclass_classification": ("accuracy", "f1_macro", "neg_log_loss"),
    "regression": ("neg_root_mean_squared_error", "neg_mean_absolute_error", "r2"),
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


def _as_the_file_writes_them(values: Any) -> Any:
    """Labels and categories are compared with the text of the data, but YAML reads some unquoted
    words as other things: `[No, Yes]` would otherwise become the classes 0 and 1 in silence."""
    if not isinstance(values, (list, tuple)):
        return values
    for value in values:
        if isinstance(value, bool):
            raise ValueError(
                f"YAML read an unquoted value as the boolean {str(value).lower()} (it reads yes, "
                f"no, on, off, true and false so, in any case): quote each value as your file "
                f"writes it, e.g. ['No', 'Yes']")
        if isinstance(value, date):
            raise ValueError(f"YAML read an unquoted value as the date {value.isoformat()}: "
                             f"quote it as your file writes it, e.g. '{value.isoformat()}'")
        if value is None:
            raise ValueError("a value is empty (YAML's ~, null or nothing between commas): "
                             "remove it; `nullable: true` allows missing values")
        if isinstance(value, str) and value in MISSING_TEXTS:
            raise ValueError(f"{value!r} means a missing value on every path, as in a CSV: "
                             "rename it in your data, or remove it and say `nullable: true`")
    return values


class NumericalColumn(Frozen):
    min: float | None = None
    max: float | None = None
    nullable: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> NumericalColumn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class CategoricalColumn(Frozen):
    # Categories are text, as a CSV holds them: `[1, 2, 3]` in the YAML means "1", "2", "3".
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    categories: tuple[str, ...] = Field(min_length=1)
    nullable: bool = False

    _check_categories = field_validator("categories", mode="before")(_as_the_file_writes_them)


class ColumnsConfig(Frozen):
    id: str
    timestamp: str | None = None
    target: str
    target_classes: tuple[int | str, ...] = ()
    positive_class: int | str | None = None  # binary tasks: the one f1 and ROC AUC score
    numerical: dict[str, NumericalColumn] = Field(default_factory=dict)
    categorical: dict[str, CategoricalColumn] = Field(default_factory=dict)

    _check_classes = field_validator("target_classes", mode="before")(_as_the_file_writes_them)

    @field_validator("positive_class", mode="before")
    @classmethod
    def _check_positive(cls, value: Any) -> Any:
        return value if value is None else _as_the_file_writes_them([value])[0]

    @property
    def features(self) -> tuple[str, ...]:
        """Input features in a fixed order: numerical first, then categorical."""
        return (*self.numerical, *self.categorical)

    @model_validator(mode="after")
    def _check_names(self) -> ColumnsConfig:
        features = list(self.features)
        if not features:
            raise ValueError("at least one numerical or categorical feature is required")
        special = [self.id, self.target] + ([self.timestamp] if self.timestamp else [])
        clashes = sorted(
            (set(features) & set(special)) | (set(self.numerical) & set(self.categorical))
            | {name for name in special if special.count(name) > 1}
        )
        if clashes:
            raise ValueError(f"column names used twice (id, timestamp, target and features are "
                             f"different columns): {clashes}")
        added = {*ADDED_COLUMNS, *(f"{PROBABILITY_PREFIX}{label}" for label in self.target_classes)}
        taken = sorted(set(features + special) & added)
        if taken:
            raise ValueError(f"column names {taken} are the names of columns the pipeline adds "
                             f"to its outputs (predictions, probabilities, quarantine reasons, "
                             f"monitoring): rename them in your data and here")
        return self


class Config(Frozen):
    """Everything a run needs. Relative paths resolve against `root`."""

    run_mode: RunMode
    data_mode: DataMode
    location: Location
    root: Path
    project_name: str
    task: Task
    data: DataConfig
    columns: ColumnsConfig
    validation: ValidationConfig = ValidationConfig()
    engineering: EngineeringConfig = EngineeringConfig()
    training: TrainingConfig
    tracking: TrackingConfig
    prediction: PredictionConfig = PredictionConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    model_card: ModelCardConfig = ModelCardConfig()
    spark: SparkConfig = SparkConfig()
    paths: PathsConfig = PathsConfig()

    @model_validator(mode="after")
    def _check_task(self) -> Config:
        is_classification = self.task != "regression"
        if is_classification and len(self.columns.target_classes) < 2:
            raise ValueError(f"columns.target_classes needs 2+ classes for task {self.task}")
        if self.task == "binary_classification" and len(self.columns.target_classes) != 2:
            raise ValueError("columns.target_classes needs exactly 2 classes for binary tasks")
        if not is_classification and self.columns.target_classes:
            raise ValueError("columns.target_classes must be empty for regression")
        positive, classes = self.columns.positive_class, list(self.columns.target_classes)
        if self.task == "binary_classification" and positive not in classes:
            raise ValueError(
                f"columns.positive_class must name the class f1, ROC AUC and monitoring score, "
                f"one of target_classes {classes}"
                + ("" if positive is None else f", not {positive!r}"))
        if self.task != "binary_classification" and positive is not None:
            raise ValueError(f"columns.positive_class is for binary tasks: remove it for {self.task}")
        if self.training.split == "stratified" and not is_classification:
            raise ValueError("training.split 'stratified' needs a classification task")
        if self.training.split == "time" and not self.columns.timestamp:
            raise ValueError("training.split 'time' needs columns.timestamp")
        metrics = CLASSIFICATION_METRICS[self.task]
        if self.training.metric not in metrics:
            raise ValueError(
                f"training.metric {self.training.metric!r} is not one of {list(metrics)} "
                f"for task {self.task}"
            )
        names = [candidate.name for candidate in self.training.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"training.candidates: names used twice: {names}")
        return self

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @property
    def positive_class(self) -> int | str | None:
        """The class f1 and ROC AUC score in a binary task (columns.positive_class)."""
        return self.columns.positive_class

    @property
    def metrics(self) -> tuple[str, ...]:
        """Scorer names reported in the leaderboard; the primary metric comes first."""
        others = [m for m in CLASSIFICATION_METRICS[self.task] if m != self.training.metric]
        return (self.training.metric, *others)

    def resolve(self, path_or_url: str) -> str:
        """A path made absolute against the root; URLs with a scheme are returned as they are."""
        if "://" in path_or_url:
            if path_or_url.startswith("sqlite:///") and not path_or_url.startswith("sqlite:////"):
                return "sqlite:///" + str(self.root / path_or_url[len("sqlite:///") :])
            return path_or_url
        path = Path(path_or_url)
        return str(path if path.is_absolute() else self.root / path)

    @property
    def model_artifacts_dir(self) -> Path:
        return Path(self.resolve(self.paths.model_artifacts))

    @property
    def output_dir(self) -> Path:
        """OUTPUT_DIR_ENV wins over the file: read-only file systems (App Engine, a hardened
        container) move logs and spill files to a writable folder without editing the YAML."""
        return Path(os.environ.get(OUTPUT_DIR_ENV) or self.resolve(self.paths.output))

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI wins over the file, so CI and servers can point elsewhere."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.resolve(self.tracking.tracking_uri)

    @property
    def prediction_log_url(self) -> str:
        """PREDICTION_LOG_ENV wins over the file: a database password stays out of the YAML, and
        replicas, containers and read-only cloud file systems point the log elsewhere."""
        return os.environ.get(PREDICTION_LOG_ENV) or self.resolve(
            self.prediction.prediction_log_url)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def load_config(
    run_mode: RunMode,
    data_mode: DataMode,
    location: Location,
    *,
    config_file: str | Path | None = None,
    root: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read the YAML, apply overrides (tests, CLI flags) and validate everything at once.

    Args:
        root: the folder relative paths resolve against; the project root by default.
        config_file: defaults to `<project root>/project_config.yaml`.
        overrides: nested keys merged over the file's values before validation.
    """
    config_path = Path(config_file) if config_file else PROJECT_ROOT / DEFAULT_CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path}")
    try:
        content = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:  # YAML files are UTF-8
        raise ConfigError(f"{config_path}: not valid YAML: {err}") from err
    if not isinstance(content, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level")
    mode_keys = {"run_mode", "data_mode", "location", "root"} & set(content)
    if mode_keys:
        raise ConfigError(f"{config_path}: {sorted(mode_keys)} are set by the use case, not the file")
    try:
        current, changed = migrated(content)
    except MigrationError as err:
        raise ConfigError(f"{config_path}: {err}") from err
    if changed:
        LOGGER.warning("%s is in an older format, read as format %d (%s); update the file: %s %s",
                       config_path, CONFIG_VERSION, ", ".join(".".join(key) for key in changed),
                       MIGRATE_COMMAND, config_path)
    values = _merge({k: v for k, v in current.items() if k != "config_version"}, overrides or {})
    values.update(
        run_mode=run_mode,
        data_mode=data_mode,
        location=location,
        root=Path(root).resolve() if root else PROJECT_ROOT,
    )
    try:
        return Config.model_validate(values)
    except ValidationError as err:
        raise ConfigError(f"{config_path}: invalid configuration:\n{_describe(err)}") from err


def database_url(url: str) -> sqlalchemy.URL:
    """`url` with a driver this project installs: a bare `postgresql://` means psycopg 3
    (SQLAlchemy's default for it, psycopg2, is not installed); any explicit driver is kept.
    Every database URL the project opens (prediction log, historic data) goes through it."""
    import sqlalchemy  # here: reading the config needs no database library

    parsed = sqlalchemy.make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_file(url: str | sqlalchemy.URL) -> Path | None:
    """The file a SQLite URL names (`sqlite:///`, `sqlite+pysqlite:///`); None for any other
    database, a database in memory, or a `file:` URI (whose text is no path)."""
    import sqlalchemy

    parsed = sqlalchemy.make_url(url)
    database = parsed.database
    if (parsed.get_backend_name() != "sqlite" or not database or database == ":memory:"
            or database.startswith("file:")):
        return None
    return Path(database)
