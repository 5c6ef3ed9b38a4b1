"""PredictionService: the one prediction core behind batch, stream, APIs and cloud handlers.

It loads the exported artifact once (checksum verified), validates single instances with the
per-instance check derived from the schema, runs the one Pipeline, and returns labels (or
values) from its `predict` and class probabilities from its `predict_proba`, with the model's
identity. Nothing else in the project re-implements validation or feature logic.

The fast path (`fast_path.py`) is used only after it has proven itself on the artifact's
reference sample: the same labels and the same probabilities as the plain Pipeline, by the
frame route and the record route; otherwise the service logs why and runs the Pipeline.
The default path imports no mlflow, pandera or plotting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import ThreadpoolController

from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX, Config
from ml_project.export import (
    ArtifactError,
    library_versions,
    load_card,
    load_pipeline,
    load_reference,
    native,
)
from ml_project.fast_path import Column, FastPipeline, compile_pipeline
from ml_project.schemas import InstanceValidator, InvalidInstance

logger = logging.getLogger(__name__)

PROOF_ROWS = 2000  # reference rows the fast path must score exactly as the Pipeline does
PROOF_SINGLE_ROWS = 16  # of those, scored one request at a time too


@dataclass(frozen=True)
class Prediction:
    prediction: Any
    probabilities: dict[str, float] | None
    model_version: str


def _typed(column: pd.Series, dtype: type) -> Column:
    """A frame's column for the model: a validated categorical stays a Categorical (the fast
    path encodes its codes), anything else becomes a numpy array of `dtype`."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categorical: pd.Categorical = column.array
        return categorical
    return column.to_numpy(dtype=dtype)


def _compare(got: tuple[np.ndarray, np.ndarray | None],
             expected: tuple[np.ndarray, np.ndarray | None], route: str) -> str | None:
    """What differs between two (labels, probabilities) answers, or None if they are identical."""
    if not np.array_equal(got[0], expected[0]):
        differing = int(np.sum(np.asarray(got[0]) != np.asarray(expected[0])))
        return f"{differing} labels or values differ by {route}"
    if (got[1] is None) != (expected[1] is None):
        return f"probabilities present by one route only ({route})"
    if got[1] is not None and expected[1] is not None and not np.array_equal(got[1], expected[1]):
        largest = float(np.max(np.abs(got[1] - expected[1])))
        return f"probabilities differ by up to {largest:.3g} by {route}"
    return None


def _warn_on_library_changes(metadata: Mapping[str, Any]) -> None:
    """A model trained with other library versions may answer differently: say so at load."""
    recorded = metadata.get("libraries") or {}
    current = library_versions()
    changed = {name: (version, current.get(name)) for name, version in recorded.items()
               if current.get(name) != version}
    if changed:
        logger.warning("Model trained with other library versions (trained -> now): %s; "
                       "retrain if its answers matter to the last digit",
                       ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changed.items()))


class PredictionService:
    """A fitted Pipeline plus the rules its input must satisfy; create once, call many times.

    Args:
        reference: the artifact's reference sample (validated holdout rows with the Pipeline's
            predictions at training time); the fast path is used only if it answers exactly as
            the Pipeline does on it. None: no proof is possible, so the plain Pipeline runs.
        card: the model card exported with it, as JSON and Markdown (`export.load_card`);
            None for a model exported without one.
    """

    def __init__(self, pipeline: Pipeline, metadata: Mapping[str, Any], config: Config,
                 reference: pd.DataFrame | None = None,
                 card: tuple[dict[str, Any], str] | None = None) -> None:
        self.pipeline = pipeline
        self.card = card  # the model card (JSON, Markdown) exported with it: GET /model/card
        self.metadata = dict(metadata)
        self.config = config
        self.validator = InstanceValidator(config)
        self.features = list(self.validator.features)
        self.model_name = str(self.metadata.get("model_name", "unknown"))
        self.model_version = str(self.metadata.get("model_version", "unknown"))
        expected = list(self.metadata.get("features", self.features))
        if expected != self.features:
            raise ArtifactError(
                f"{self.model_name} version {self.model_version} was trained on the features "
                f"{expected}, but the config lists {self.features}: run the modelling use case "
                "for this config, or serve the model trained for it")
        self.model_sha256 = str(self.metadata.get("sha256", "unknown"))
        self.is_classification = config.is_classification
        self.has_probabilities = self.is_classification and hasattr(pipeline, "predict_proba")
        self.classes = [native(c) for c in getattr(pipeline, "classes_", [])]
        self._class_keys = [str(c) for c in self.classes]
        self._dtypes = [float if rule.kind == "numerical" else object for rule in self.validator.rules]
        # OpenMP's pools, found once: `limit` then asks only them (a whole controller asks
        # every loaded library, BLAS too, for its state on every request).
        self._openmp = ThreadpoolController().select(user_api="openmp")
        _warn_on_library_changes(self.metadata)
        self.reference = reference
        self.fast_path: FastPipeline | None = None
        self.core = self._choose_core(reference)

    def _choose_core(self, reference: pd.DataFrame | None) -> str:
        """Use the fast path only if it compiles and proves itself; log and return why."""
        fast_path, reason = compile_pipeline(self.pipeline)
        if fast_path is None:
            logger.info("Prediction core: %s", reason)
            return reason
        if reference is None:
            reason = "no reference sample to prove the fast path on; using the plain Pipeline"
            logger.info("Prediction core: %s", reason)
            return reason
        # On one OpenMP thread, as requests run: the proof scores 16 rows one at a time too,
        # and OpenMP's threads waking for each tree of each made it take a minute on a busy
        # 2-core machine (4 s on one thread, there).
        with self._openmp.limit(limits=1):
            difference = self._disagreement(fast_path, reference)
        if difference:
            reason = f"fast path differs from the Pipeline ({difference}); using the Pipeline"
            logger.warning("Prediction core: %s", reason)
            return reason
        self.fast_path = fast_path
        reason += f", proven identical on {min(len(reference), PROOF_ROWS)} reference rows"
        logger.info("Prediction core: %s", reason)
        return reason

    def _disagreement(self, fast_path: FastPipeline, reference: pd.DataFrame) -> str | None:
        """How the fast path's answers differ from the Pipeline's on the reference sample, by
        every route requests and batches take (None: identical), or the error it raised."""
        frame = reference[self.features].head(PROOF_ROWS)
        if frame.empty:
            return "the reference sample is empty"
        try:
            fast_path.match_layout(self.pipeline[:-1].transform(frame))
            expected = self._score_with(None, self._frame_columns(frame))
            rows = frame.astype(object).where(frame.notna(), np.nan).to_numpy().tolist()
            routes: dict[str, Mapping[str, Column]] = {
                "the validated frame": self._frame_columns(frame),
                "records": self._columns_from_rows(rows),
            }
            for route, columns in routes.items():
                difference = _compare(self._score_with(fast_path, columns), expected, route)
                if difference:
                    return difference
            for i, row in enumerate(rows[:PROOF_SINGLE_ROWS]):  # a model may round one row
                columns = self._columns_from_rows([row])         # apart from many: compare alike
                difference = _compare(self._score_with(fast_path, columns),
                                      self._score_with(None, columns), f"reference row {i} alone")
                if difference:
                    return difference
        except Exception as err:  # any failure of the shortcut means: do not use it
            return f"{type(err).__name__}: {err}"
        return None

    @classmethod
    def from_config(cls, config: Config, alias: str = "champion") -> PredictionService:
        """Load the artifact the config points at: local folder (default) or MLflow registry."""
        if config.prediction.model_source == "registry":
            from ml_project.registry import (  # only this path needs mlflow
                load_registered_pipeline,
                registered_card,
            )

            pipeline, metadata, reference = load_registered_pipeline(config, alias)
            service = cls(pipeline, metadata, config, reference,
                          registered_card(str(metadata["mlflow_run_id"])))
        else:
            service = cls.from_directory(config.model_artifacts_dir / alias, config)
        logger.info("Loaded %s version %s (%s)", service.model_name, service.model_version,
                    config.prediction.model_source)
        return service

    @classmethod
    def from_directory(cls, directory: Path, config: Config) -> PredictionService:
        pipeline, metadata = load_pipeline(directory)
        return cls(pipeline, metadata, config, load_reference(directory, metadata),
                   load_card(directory, metadata))

    def _columns_from_rows(self, rows: list[list[Any]]) -> dict[str, np.ndarray]:
        """Validated rows as typed column arrays (float for numbers, object for text)."""
        return {
            name: np.array(values, dtype=dtype)
            for name, dtype, values in zip(self.features, self._dtypes, zip(*rows))
        }

    def _score_with(self, fast_path: FastPipeline | None, columns: Mapping[str, Column]
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (or values) from `predict` and, for classification, probabilities from
        `predict_proba`, by the fast path or (None) the plain Pipeline."""
        if fast_path is not None:
            return fast_path.predict_both(columns, self.has_probabilities)
        frame = pd.DataFrame(columns, columns=self.features)
        return (self.pipeline.predict(frame),
                self.pipeline.predict_proba(frame) if self.has_probabilities else None)

    def _score(self, columns: Mapping[str, Column]) -> tuple[np.ndarray, np.ndarray | None]:
        return self._score_with(self.fast_path, columns)

    def _results(self, rows: list[list[Any]]) -> list[Prediction]:
        # Requests run the model on the calling thread only: OpenMP cannot split one row, and
        # waking its threads for every tree of a boosted model costs more than the row itself
        # (on a busy 2-core machine, p99 fell from ~170 ms to ~5 ms). A server gets its
        # parallelism from concurrent requests instead. The limit is per thread (OpenMP's
        # own), so batches elsewhere in the process keep every core.
        with self._openmp.limit(limits=1):
            predicted, probabilities = self._score(self._columns_from_rows(rows))
        if not self.is_classification:
            return [Prediction(float(value), None, self.model_version) for value in predicted]
        if probabilities is None:
            return [Prediction(native(label), None, self.model_version) for label in predicted]
        return [
            Prediction(native(label), dict(zip(self._class_keys, row.tolist())), self.model_version)
            for label, row in zip(predicted, probabilities)
        ]

    def predict_instance(self, record: Mapping[str, Any]) -> Prediction:
        """One production instance (a JSON-like mapping). Raises InvalidInstance if it is bad."""
        return self._results([self.validator.validate(record)])[0]

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Several instances at once; if any is invalid, raises naming each by its position."""
        rows, errors = [], {}
        for position, record in enumerate(records):
            try:
                rows.append(self.validator.validate(record))
            except InvalidInstance as err:
                errors.update({f"instances[{position}].{k}": v for k, v in err.errors.items()})
        if errors:
            raise InvalidInstance(errors)
        return self._results(rows) if rows else []

    def _frame_columns(self, raw: pd.DataFrame) -> dict[str, Column]:
        return {name: _typed(raw[name], dtype) for name, dtype in zip(self.features, self._dtypes)}

    def model_input(self, raw: pd.DataFrame) -> np.ndarray:
        """The array the model is given for a validated frame: engineered and preprocessed
        features, by the fast path if there is one (in the layout it gives), else the Pipeline."""
        if self.fast_path is not None:
            return self.fast_path.preprocess(self._frame_columns(raw))
        model_input: np.ndarray = self.pipeline[:-1].transform(raw[self.features])
        return model_input

    def predict_frame(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Predictions for a validated (raw) frame, e.g. from `validate_production_data`.

        Returns the id column, the prediction, one probability column per class
        (classification) and the model version, in the input's row order.
        """
        predicted, probabilities = self._score(self._frame_columns(raw))
        result = pd.DataFrame({self.config.columns.id: raw[self.config.columns.id].to_numpy()})
        result[PREDICTION_COLUMN] = predicted
        if probabilities is not None:
            for i, key in enumerate(self._class_keys):
                result[f"{PROBABILITY_PREFIX}{key}"] = probabilities[:, i]
        result["model_version"] = self.model_version
        return result

    def describe(self) -> dict[str, Any]:
        """What a client may want to know about the served model (the API's GET /model)."""
        keys = ("model_name", "model_version", "sha256", "task", "features", "classes", "metric",
                "holdout_metrics", "candidate", "trained_at")
        return {key: self.metadata.get(key) for key in keys} | {
            "fast_path": self.fast_path is not None}
