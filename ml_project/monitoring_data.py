"""What monitoring compares: a window of the prediction log, the served model's reference sample
and the ground-truth labels that have arrived. Plain pandas, no Evidently (see `monitor.py`).

The window holds the answers of the monitored model only (its artifact's sha256, never the
challenger's answers in shadow), so another model's predictions never mix in; the reference is the sample stored with the artifact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX, Config
from ml_project.ingest import read_table
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.schemas import LabelRule

logger = logging.getLogger(__name__)

# Clocks differ a little between machines: a record this far ahead of now is not "future".
FUTURE_TOLERANCE = pd.Timedelta(minutes=5)


class MonitoringInputError(ValueError):
    """Input monitoring cannot use: an empty window, a labels file without id or target."""


@dataclass(frozen=True)
class PredictionWindow:
    """The predicted requests of a window of the prediction log, one row each.

    `predictions` holds the id, the features as sent, the prediction, one probability column per
    class (classification), the model version and `logged_at`. Rejected requests carry no
    prediction, so they are only counted. What deserves a warning is counted too: records still
    in the journal (not yet in the database), records time-stamped in the future, and instances
    (ids) predicted more than once (a stream run twice, a client retrying).
    """

    predictions: pd.DataFrame
    requests: int
    rejected: int
    pending: int = 0
    future: int = 0
    repeated_ids: int = 0
    repeated_records: int = 0

    @property
    def model_versions(self) -> list[str]:
        return sorted(self.predictions["model_version"].dropna().astype(str).unique())

    @property
    def period(self) -> tuple[str | None, str | None]:
        """The first and last `logged_at` of the window (None when it is empty)."""
        if self.predictions.empty:
            return None, None
        logged = self.predictions["logged_at"]
        return str(logged.min()), str(logged.max())


@dataclass(frozen=True)
class Reference:
    """The served model's reference sample: holdout rows (features, target) with the model's
    predictions, the baseline of drift and of performance."""

    sample: pd.DataFrame
    source: str


def read_prediction_window(
    config: Config, *, last: int | None = None, since: str | None = None, until: str | None = None,
    model_sha256: str | None = None,
) -> PredictionWindow:
    """The last `last` requests of the prediction log, optionally within [since, until).

    Read a chunk at a time, each turned into columns at once (repeated texts shared), so memory
    follows the window's size, not the log's, nor the records' JSON.

    Args:
        since, until: ISO 8601 UTC timestamps, compared with each record's `logged_at`.
        model_sha256: only the records of the model with this artifact checksum (the one being
            monitored), so another model's predictions (an earlier project's, say) never mix in.
    """
    log = PredictionLog.from_config(config)
    frames: list[pd.DataFrame] = []
    requests = 0
    shared: dict[Any, Any] = {}
    try:
        for chunk in log.read_chunks(last=last, since=since, until=until,
                                     model_sha256=model_sha256, shadow=False):
            requests += len(chunk)
            predicted = [r for r in chunk if r["error"] is None and r["prediction"] is not None]
            frames.append(_logged_frame(predicted, config, shared))
        pending = log.pending().records
    finally:
        log.close()
    predictions = pd.concat(frames, ignore_index=True) if frames else _logged_frame([], config, {})
    logger.info("Prediction log window: %d requests, %d predicted", requests, len(predictions))
    logged_at = pd.to_datetime(predictions["logged_at"], utc=True, errors="coerce",
                               format="ISO8601")
    future = int((logged_at > pd.Timestamp.now(tz="UTC") + FUTURE_TOLERANCE).sum())
    ids = predictions[config.columns.id]
    repeated = ids.notna().to_numpy() & ids.duplicated(keep=False).to_numpy()
    return PredictionWindow(predictions, requests, requests - len(predictions), pending, future,
                            int(ids[repeated].nunique()), int(repeated.sum()))


def _logged_frame(records: list[dict[str, Any]], config: Config,
                  shared: dict[Any, Any]) -> pd.DataFrame:
    """Logged inputs as the raw frame they passed validation as (numbers float, NaN missing);
    texts that repeat (categories, versions) share one object through `shared`."""
    columns = config.columns

    def share(values: Any) -> list[Any]:
        return [shared.setdefault(value, value) if isinstance(value, str) else value
                for value in values]

    inputs = pd.DataFrame([record["input"] for record in records], dtype=object)
    inputs = inputs.reindex(columns=list(columns.features))
    numerical = {name: pd.to_numeric(inputs[name], errors="coerce").astype(float)
                 for name in columns.numerical}
    categorical = {name: pd.Series(share(inputs[name].where(inputs[name].notna(), np.nan)),
                                   index=inputs.index, dtype=object)
                   for name in columns.categorical}
    probabilities = pd.DataFrame(
        [record["probabilities"] or {} for record in records], dtype=float
    ).add_prefix(PROBABILITY_PREFIX)
    logged = pd.DataFrame(
        {
            columns.id: [record["instance_id"] for record in records],
            PREDICTION_COLUMN: share(record["prediction"] for record in records),
            "model_version": share(record["model_version"] for record in records),
            "logged_at": [record["logged_at"] for record in records],
        }
    )
    return pd.concat(
        [logged[[columns.id]], inputs.assign(**numerical, **categorical).reset_index(drop=True),
         logged.drop(columns=columns.id), probabilities],
        axis=1,
    )


def load_reference_data(service: PredictionService) -> Reference:
    """The reference sample stored with the served model's artifact (and proven at its load)."""
    if service.reference is None:
        raise MonitoringInputError(
            f"model version {service.model_version} has no reference sample (exported by an "
            "older release): re-run the modelling use case"
        )
    return Reference(service.reference, "the artifact's reference sample (holdout rows)")


def read_production_labels(config: Config) -> pd.DataFrame | None:
    """Ground truth that has arrived so far (id and target), or None if no labels file exists.

    Rows with an invalid target are dropped with a warning; for an id labelled twice, the later
    row (a correction) wins.
    """
    path = Path(config.resolve(config.data.production_labels))
    if not path.is_file():
        logger.info("No production labels at %s yet: performance is not evaluated", path)
        return None
    columns = config.columns
    labels = read_table(str(path), config)
    missing = [name for name in (columns.id, columns.target) if name not in labels.columns]
    if missing:
        raise MonitoringInputError(f"labels file {path} lacks the columns {missing}")
    typed, _ = LabelRule(config).typed(labels[columns.target])  # None where missing or unusable
    labels = labels[[columns.id]].assign(**{columns.target: typed})
    valid = labels[columns.target].notna().to_numpy()
    if not valid.all():
        logger.warning("Ignoring %d labels with an invalid %s in %s",
                       int((~valid).sum()), columns.target, path)
    # the classes' own dtype once the gaps are gone (scikit-learn's metrics refuse object ints)
    labels = labels[valid].infer_objects()
    return labels.drop_duplicates(columns.id, keep="last").reset_index(drop=True)


def attach_labels(predictions: pd.DataFrame, labels: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The predictions whose ground truth has arrived, with the target column added; an instance
    predicted more than once (a stream run twice) counts once, by its latest prediction."""
    return latest_predictions(predictions, config).merge(labels, on=config.columns.id,
                                                         how="inner")


def latest_predictions(predictions: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Each instance once, by its latest prediction (a request without an id is its own
    instance): what performance, realised or estimated, is measured on."""
    ids = predictions[config.columns.id]
    repeated = ids.notna().to_numpy() & ids.duplicated(keep="last").to_numpy()
    return predictions[~repeated].reset_index(drop=True)


def labelled_production_data(config: Config) -> pd.DataFrame:
    """The production file as received joined with its labels: extra rows for retraining.

    Rows stay as received (invalid ones included), so the modelling run validates and
    quarantines them exactly as it does historic rows.
    """
    labels = read_production_labels(config)
    production = read_table(config.resolve(config.data.production), config)
    if labels is None:
        return production.iloc[0:0].assign(**{config.columns.target: []})
    production = production.drop(columns=[config.columns.target], errors="ignore")
    return production.merge(labels, on=config.columns.id, how="inner")
