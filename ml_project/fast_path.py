"""A fast path for requests, compiled from the fitted Pipeline's own parameters.

scikit-learn's ColumnTransformer re-checks its input on every call: for one row that costs
several times the model itself. `FastPipeline` reads the fitted statistics of the same
Pipeline (imputer fill values, scaler means and scales, one-hot categories) and applies them
with a few numpy operations, then calls the very same fitted model. Feature engineering runs
the very same `FeatureStep` functions. The result is identical to `Pipeline.predict_proba`
(tests prove it on every row of the test data); where a step is of a kind it does not know,
`compile_pipeline` says which and the service falls back to the plain Pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml_project.engineer import FeatureEngineer, FeatureStep

BlockStep = Callable[[np.ndarray], np.ndarray]
SMALL_BATCH = 32  # rows up to which per-value lookups beat vectorised ones


class UnsupportedPipeline(ValueError):
    """The Pipeline holds a step the fast path cannot reproduce exactly; the message says which."""


def _impute(imputer: SimpleImputer) -> BlockStep:
    if imputer.add_indicator or not pd.isna(imputer.missing_values):
        raise UnsupportedPipeline("SimpleImputer with add_indicator or non-NaN missing_values")
    fill = imputer.statistics_
    if fill.dtype.kind == "f":
        if np.isnan(fill).any():
            raise UnsupportedPipeline("SimpleImputer that dropped an all-missing column")

        def impute_numbers(block: np.ndarray) -> np.ndarray:
            return np.where(np.isnan(block), fill, block)

        return impute_numbers

    def impute_objects(block: np.ndarray) -> np.ndarray:
        return np.where(pd.isna(block), fill, block)

    return impute_objects


def _scale(scaler: StandardScaler) -> BlockStep:
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None

    def standardise(block: np.ndarray) -> np.ndarray:
        block = block.astype(np.float64, copy=True)
        if mean is not None:
            block -= mean
        if scale is not None:
            block /= scale
        return block

    return standardise


def _one_hot(encoder: OneHotEncoder) -> BlockStep:
    if encoder.drop_idx_ is not None or encoder.handle_unknown != "ignore":
        raise UnsupportedPipeline("OneHotEncoder with drop or handle_unknown other than 'ignore'")
    if getattr(encoder, "infrequent_categories_", None) is not None and any(
        c is not None for c in encoder.infrequent_categories_
    ):
        raise UnsupportedPipeline("OneHotEncoder with infrequent categories")
    if encoder.sparse_output:
        raise UnsupportedPipeline("OneHotEncoder with sparse output")
    # Batches: one vectorised hash lookup per column (pandas' Index). A few rows: plain dicts,
    # since get_indexer's fixed cost (~50 us a column) would be most of a request.
    lookups = [pd.Index(categories, dtype=object) for categories in encoder.categories_]
    positions = [{value: i for i, value in enumerate(c)} for c in encoder.categories_]
    offsets = np.cumsum([0] + [len(c) for c in encoder.categories_])

    def encode(block: np.ndarray) -> np.ndarray:
        encoded = np.zeros((block.shape[0], offsets[-1]), dtype=np.float64)
        if block.shape[0] <= SMALL_BATCH:
            for j, position in enumerate(positions):
                for row, value in enumerate(block[:, j]):
                    i = position.get(value)  # unknown categories encode as all zeros, as in sklearn
                    if i is not None:
                        encoded[row, offsets[j] + i] = 1.0
            return encoded
        for j, lookup in enumerate(lookups):
            index = lookup.get_indexer(block[:, j])
            known = index >= 0  # unknown categories (-1) encode as all zeros, as in sklearn
            encoded[np.flatnonzero(known), offsets[j] + index[known]] = 1.0
        return encoded

    return encode


def _compile_transformer(transformer: Any) -> list[BlockStep]:
    steps = transformer.steps if isinstance(transformer, Pipeline) else [("", transformer)]
    compiled = []
    for _, step in steps:
        if isinstance(step, SimpleImputer):
            compiled.append(_impute(step))
        elif isinstance(step, StandardScaler):
            compiled.append(_scale(step))
        elif isinstance(step, OneHotEncoder):
            compiled.append(_one_hot(step))
        else:
            raise UnsupportedPipeline(f"preprocessing step {type(step).__name__}")
    return compiled


@dataclass(frozen=True)
class _Block:
    columns: list[str]
    numeric: bool
    steps: list[BlockStep]


class FastPipeline:
    """The fitted Pipeline's arithmetic without its per-call input checks."""

    def __init__(self, pipeline: Pipeline) -> None:
        names = [name for name, _ in pipeline.steps]
        if len(pipeline.steps) != 3 or not isinstance(pipeline[0], FeatureEngineer) or not (
            isinstance(pipeline[1], ColumnTransformer)
        ):
            raise UnsupportedPipeline(f"Pipeline steps {names}; expected engineer, preprocess, model")
        self.feature_steps: Sequence[FeatureStep] = pipeline[0].steps
        self.blocks: list[_Block] = []
        for name, transformer, columns in pipeline[1].transformers_:
            if transformer == "drop" or len(columns) == 0:
                continue
            if transformer == "passthrough" or isinstance(transformer, str):
                raise UnsupportedPipeline(f"ColumnTransformer entry {name!r} = {transformer!r}")
            first = transformer.steps[0][1] if isinstance(transformer, Pipeline) else transformer
            numeric = not isinstance(first, OneHotEncoder) and not (
                isinstance(first, SimpleImputer) and first.statistics_.dtype.kind == "O"
            )
            self.blocks.append(_Block(list(columns), numeric, _compile_transformer(transformer)))
        self.model = pipeline[-1]

    def preprocess(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Engineered and preprocessed features: the array the model was trained on."""
        engineered = dict(columns)
        for feature_step in self.feature_steps:
            engineered.update(feature_step(engineered))
        parts = []
        for block in self.blocks:
            values = np.column_stack([engineered[c] for c in block.columns])
            values = values.astype(np.float64) if block.numeric else values.astype(object)
            for block_step in block.steps:
                values = block_step(values)
            parts.append(values)
        return np.hstack(parts) if len(parts) > 1 else parts[0]

    def predict_proba(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        probabilities: np.ndarray = self.model.predict_proba(self.preprocess(columns))
        return probabilities

    def predict(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        predictions: np.ndarray = self.model.predict(self.preprocess(columns))
        return predictions


def compile_pipeline(pipeline: Pipeline) -> tuple[FastPipeline | None, str]:
    """The fast path, or None and the reason the plain Pipeline must be used instead."""
    try:
        return FastPipeline(pipeline), "fast path compiled from the fitted Pipeline"
    except UnsupportedPipeline as err:
        return None, f"fast path unavailable ({err}); using the plain Pipeline"
