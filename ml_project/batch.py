"""Score one chunk of a historic file: validate, quarantine unusable labels, predict.

The local batch use case calls `score_chunk` on every chunk of its file and Spark on every
batch of every partition (`PartitionScorer`), so for the same rows both give the same
predictions and the same quarantine reasons. Nothing here imports pyspark or mlflow: executors
import this module, and the default install has no Spark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX, REASON_COLUMN, Config
from ml_project.ingest import as_read
from ml_project.predict import PredictionService
from ml_project.schemas import LabelRule
from ml_project.validate import validate_production_data

logger = logging.getLogger(__name__)

Artifact = tuple[Pipeline, dict[str, Any], pd.DataFrame | None]  # pipeline, metadata, reference


@dataclass(frozen=True)
class ScoredChunk:
    valid: pd.DataFrame  # validated rows; labels, if any, of the classes' own type
    quarantined: pd.DataFrame  # rows as received plus REASON_COLUMN, by position in the chunk
    predictions: pd.DataFrame | None  # one row per valid row; None when no row is valid


def score_chunk(chunk: pd.DataFrame, service: PredictionService, config: Config) -> ScoredChunk:
    """Validate a chunk as production data, quarantine unusable labels, predict the rest."""
    result = validate_production_data(chunk, config, with_target=False)
    valid, quarantined = quarantine_bad_labels(chunk, result.valid, result.quarantined, config)
    return ScoredChunk(valid, quarantined, service.predict_frame(valid) if len(valid) else None)


def quarantine_bad_labels(
    chunk: pd.DataFrame, valid: pd.DataFrame, quarantined: pd.DataFrame, config: Config
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Valid rows whose label is unusable (not a known class; for regression, not a finite
    number) move to the quarantine, as received, with the reason; a missing label is no label.
    The labels kept are of the classes' own type, so metrics compare like with like."""
    target = config.columns.target
    if target not in valid.columns or not len(valid):
        return valid, quarantined
    rule = LabelRule(config)
    typed, good = rule.typed(valid[target])
    if good.all():
        return valid.assign(**{target: typed}), quarantined
    positions = np.setdiff1d(np.arange(len(chunk)), quarantined.index.to_numpy())
    bad = chunk.iloc[positions[~good]].set_axis(positions[~good])  # by position, as validation
    # the label as text: the same reason whether its chunk parsed 7 as a number or as text
    bad = bad.assign(**{REASON_COLUMN: [f"{target}: {rule.check(value)[1]}"
                                        for value in bad[target]]})
    logger.warning("%d rows with an unusable label %s quarantined", len(bad), target)
    kept = valid[good].reset_index(drop=True).assign(**{target: typed[good].to_numpy()})
    return kept, pd.concat([quarantined, bad]).sort_index()


def prediction_columns(service: PredictionService) -> list[str]:
    """The columns of a predictions file: id, prediction, probabilities, model version."""
    classes = [f"{PROBABILITY_PREFIX}{key}" for key in service.classes] \
        if service.is_classification else []
    return [service.config.columns.id, PREDICTION_COLUMN, *classes, "model_version"]


class Shipped(Protocol):
    """The artifact as executors receive it: a Spark Broadcast, sent once per executor."""

    @property
    def value(self) -> Artifact: ...


_SERVICES: dict[tuple[str, str, str], PredictionService] = {}


@dataclass(frozen=True)
class PartitionScorer:
    """What Spark's `mapInPandas` runs on each partition: `score_chunk` on every batch.

    Each batch yields its quarantined rows (the columns as read plus REASON_COLUMN, prediction
    columns empty) and its predictions (the id in the id column, the other input columns empty,
    no reason): one output schema, split by the reason when written. The PredictionService is
    built once per Python worker process, which Spark reuses across tasks.

    Args:
        text: the partitions hold a CSV's cells as strings (else Parquet's typed columns).
        carried: columns Spark adds (a row's order...), passed through, never scored.
        malformed: the carried column holding the text of a row Spark's CSV parser found of
            the wrong width: a batch with one is not scored, its malformed rows are passed on
            alone, for the driver to refuse the input (`csv_format.wrong_width`).
    """

    artifact: Shipped
    config: Config
    text: bool
    carried: tuple[str, ...] = ()
    malformed: str | None = None

    def service(self) -> PredictionService:
        pipeline, metadata, reference = self.artifact.value
        key = (str(metadata.get("sha256")), str(metadata.get("model_version")),
               self.config.model_dump_json())
        if key not in _SERVICES:
            _SERVICES[key] = PredictionService(pipeline, metadata, self.config, reference)
        return _SERVICES[key]

    def __call__(self, batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        service = self.service()
        identifier = self.config.columns.id
        outputs = [*prediction_columns(service)[1:]]
        for batch in batches:
            batch = batch.reset_index(drop=True)
            if self.malformed is not None and batch[self.malformed].notna().any():
                bad = batch[batch[self.malformed].notna()]
                yield bad.assign(**{column: _empty(len(bad)) for column in [REASON_COLUMN,
                                                                             *outputs]})
                continue
            cells = batch.drop(columns=list(self.carried))
            scored = score_chunk(as_read(cells, self.config, text=self.text), service,
                                 self.config)
            predicted = 0 if scored.predictions is None else len(scored.predictions)
            if predicted + len(scored.quarantined) != len(batch):  # nothing silently dropped
                raise RuntimeError(f"row accounting mismatch: {len(batch)} rows in, {predicted} "
                                   f"predicted, {len(scored.quarantined)} quarantined")
            if len(scored.quarantined):  # never an empty frame: pyspark cannot convert one
                yield batch.iloc[scored.quarantined.index.to_numpy()].reset_index(drop=True).assign(
                    **{REASON_COLUMN: scored.quarantined[REASON_COLUMN].to_numpy()},
                    **{column: _empty(len(scored.quarantined)) for column in outputs})
            if scored.predictions is not None:
                inputs = {column: _empty(predicted) for column in batch.columns}
                yield pd.DataFrame(inputs | {REASON_COLUMN: _empty(predicted)}).assign(
                    **{identifier: scored.predictions[identifier].to_numpy()},
                    **{column: scored.predictions[column].to_numpy() for column in outputs})


def _empty(rows: int) -> np.ndarray:
    """A column of nulls that Arrow casts to any type."""
    return np.full(rows, None, dtype=object)
