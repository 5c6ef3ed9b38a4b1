"""The sections of project_config.yaml other than the columns: where the data is, how to
train, track, serve, monitor and report. Each is a frozen model that refuses unknown keys; the
whole file is put together, checked across sections and loaded in `config.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    """A config section: immutable once loaded, and an unknown key is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Frozen):
    historic: str
    historic_table: str | None = None
    historic_query: str | None = None
    production: str
    production_labels: str


class ValidationConfig(Frozen):
    fail_on_invalid: bool = False
    # A field none of the columns names: ignored (dropped, logged) or refused, on every path.
    unknown_fields: Literal["ignore", "reject"] = "ignore"


class EngineeringConfig(Frozen):
    steps: tuple[str, ...] = ()


class CandidateConfig(Frozen):
    name: str
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    # Each key a parameter of the estimator, each list the values tried (at least one).
    search: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)


class TrainingConfig(Frozen):
    split: Literal["stratified", "random", "time"] = "stratified"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    cv_folds: int = Field(5, ge=2)
    metric: str
    random_seed: int = 42
    n_jobs: int = 1
    candidates: tuple[CandidateConfig, ...] = Field(min_length=1)


class TrackingConfig(Frozen):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: str
    registered_model_name: str


class PredictionConfig(Frozen):
    model_source: Literal["local", "registry"] = "local"
    chunk_size: int = Field(5000, ge=1)
    prediction_log_url: str = "sqlite:///output/prediction_log.db"
    max_batch_size: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1)
    server_url: str = "http://127.0.0.1:8000"
    request_timeout_seconds: float = Field(10, gt=0)
    max_retries: int = Field(3, ge=0)
    # "challenger": every answered instance is scored again by the challenger, off the request
    # path (serving/shadow.py), for monitoring to compare; "off": the champion alone runs.
    shadow: Literal["off", "challenger"] = "off"
    # Instances a shadow pass scores at most: older ones waiting beyond are skipped and counted.
    shadow_max_backlog: int = Field(10_000, ge=1)


class WebhookConfig(Frozen):
    url_env: str  # the variable holding the URL: a webhook URL is a secret, never in this file
    format: Literal["slack", "json"] = "slack"  # Slack-compatible {"text": ...} or the summary


class EmailConfig(Frozen):
    host: str
    port: int = Field(587, ge=1, le=65535)
    sender: str
    to: tuple[str, ...] = Field(min_length=1)
    starttls: bool = True
    username_env: str | None = None  # variables holding the SMTP login, if the server wants one
    password_env: str | None = None


class AlertsConfig(Frozen):
    """Where a monitoring run sends its summary (ml_project/alerts.py): `send: on_alert` only when
    a check failed, `always` after every run."""

    send: Literal["on_alert", "always"] = "on_alert"
    timeout_seconds: float = Field(10, gt=0)
    retries: int = Field(2, ge=0)
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None


class MonitoringConfig(Frozen):
    window_records: int = Field(5000, ge=1)
    drift_share_threshold: float = Field(0.3, ge=0, le=1)
    # Relative: 0.05 alerts when the primary metric is 5% worse than on the holdout.
    performance_drop_threshold: float = Field(0.05, ge=0)
    # Fewer labelled predictions than this make a metric noise, not evidence: no verdict.
    min_labelled_records: int = Field(100, ge=1)
    alerts: AlertsConfig = AlertsConfig()


class SparkConfig(Frozen):
    """Where the Spark batch use case runs: `local[*]` on this machine, a cluster URL
    (`spark://host:7077`, `yarn`, `k8s://...`) in production, plus any Spark settings."""

    master: str = "local[*]"
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ModelCardConfig(Frozen):
    """What a model card says of the model (REVIEW: placeholders until a person writes it), and
    how its numbers are computed (`model_card.py`)."""

    purpose: str = "REVIEW: what the model predicts, for whom, and which decision it informs"
    owner: str = "REVIEW: the team or person accountable for the model"
    intended_use: str = "REVIEW: where its predictions may be used"
    out_of_scope: str = "REVIEW: uses and populations it was not built or checked for"
    min_slice_rows: int = Field(30, ge=1)  # fewer holdout rows: a slice is "too small" to score
    bootstrap_resamples: int = Field(200, ge=10)
    importance_rows: int = Field(2000, ge=10)  # rows permutation importance shuffles, at most


class PathsConfig(Frozen):
    model_artifacts: str = "data/model_artifacts"
    output: str = "output"
