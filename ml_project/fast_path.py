"""A fast path for requests and batches, compiled from the fitted Pipeline's own parameters.

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
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml_project.compiled_trees import BOOSTING_MODULE, compile_trees
from ml_project.engineer import FeatureEngineer, FeatureStep

Column = Union[np.ndarray, pd.Categorical]  # a categorical feature may come as a Categorical
# A step of a block may change the array it is given: each block's array is made for it.
BlockStep = Callable[[np.ndarray], np.ndarray]
# A block's columns and the part of the model input it fills (rows x its output columns).
BlockTransform = Callable[[Sequence[Column], np.ndarray], None]
SMALL_BATCH = 32  # rows up to which per-value lookups beat vectorised ones
# Modules of the models given the model input column-major (by name: no import needed).
COLUMN_MAJOR_MODELS = (BOOSTING_MODULE,)


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
            np.copyto(block, fill, where=np.isnan(block))  # in place: see BlockStep
            return block

        return impute_numbers

    def impute_objects(block: np.ndarray) -> np.ndarray:
        return np.where(pd.isna(block), fill, block)

    return impute_objects


def _scale(scaler: StandardScaler) -> BlockStep:
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None

    def standardise(block: np.ndarray) -> np.ndarray:
        block = block.astype(np.float64, copy=False)  # in place: see BlockStep
        if mean is not None:
            block -= mean
        if scale is not None:
            block /= scale
        return block

    return standardise


def _check_encoder(encoder: OneHotEncoder) -> None:
    if encoder.drop_idx_ is not None or encoder.handle_unknown != "ignore":
        raise UnsupportedPipeline("OneHotEncoder with drop or handle_unknown other than 'ignore'")
    if getattr(encoder, "infrequent_categories_", None) is not None and any(
        c is not None for c in encoder.infrequent_categories_
    ):
        raise UnsupportedPipeline("OneHotEncoder with infrequent categories")
    if encoder.sparse_output:
        raise UnsupportedPipeline("OneHotEncoder with sparse output")


class _OneHotColumns:
    """Impute (when an imputer precedes the encoder) and one-hot encode, column by column.

    Each value's category is looked up once. A pandas Categorical (a validated frame's column)
    needs no lookup per row: its few categories are looked up and its codes index the result.
    Plain values take one vectorised hash lookup per column, or plain dicts for a few rows,
    where get_indexer's fixed cost (~50 us a column) would be most of a request. A value found
    nowhere is imputed if missing, else unknown: all zeros, as handle_unknown='ignore' does.
    """

    def __init__(self, imputer: SimpleImputer | None, encoder: OneHotEncoder) -> None:
        _check_encoder(encoder)
        self.lookups = [pd.Index(categories, dtype=object) for categories in encoder.categories_]
        self.positions = [{value: i for i, value in enumerate(c)} for c in encoder.categories_]
        self.offsets = np.cumsum([0] + [len(c) for c in encoder.categories_])
        fills = [np.nan] * len(self.lookups) if imputer is None else list(imputer.statistics_)
        # Where a missing value lands: its imputed value's category or, with no imputer, the
        # category the encoder learnt for NaN, if any; -1 is nowhere (all zeros).
        self.missing = [int(lookup.get_indexer([fill])[0]) for lookup, fill in
                        zip(self.lookups, fills)]

    def _found(self, j: int, column: Column) -> np.ndarray:
        """Each row's category position in column j (-1: none)."""
        if isinstance(column, pd.Categorical):
            table = np.append(self.lookups[j].get_indexer(column.categories), self.missing[j])
            found: np.ndarray = table[column.codes]  # code -1 (missing) takes the last entry
            return found
        values = np.asarray(column, dtype=object)
        found = self.lookups[j].get_indexer(values)
        unmatched = np.flatnonzero(found < 0)
        found[unmatched[pd.isna(values[unmatched])]] = self.missing[j]
        return found

    def __call__(self, columns: Sequence[Column], out: np.ndarray) -> None:
        """Write the encoding into `out` (rows x all categories), one indicator at a time: in a
        column-major `out` each is a contiguous run of comparisons, several times faster than
        scattering ones across rows."""
        rows = len(columns[0])
        for j, column in enumerate(columns):
            first = self.offsets[j]
            if rows <= SMALL_BATCH and not isinstance(column, pd.Categorical):
                out[:, first:self.offsets[j + 1]] = 0.0
                for row, value in enumerate(column):
                    i = self.positions[j].get(value)
                    if i is None:
                        i = self.missing[j] if pd.isna(value) else -1
                    if i >= 0:
                        out[row, first + i] = 1.0
                continue
            found = self._found(j, column)  # -1 (unknown) equals no category: all zeros
            for i in range(self.offsets[j + 1] - first):
                np.equal(found, i, out=out[:, first + i])


def _new_output(rows: int, width: int) -> np.ndarray:
    """An uninitialised float64 array, column-major: each output column is contiguous, so
    blocks fill it column by column (`FastPipeline.column_major`: which models get it so)."""
    return np.empty((width, rows), dtype=np.float64).T


def _one_hot(encoder: OneHotEncoder) -> BlockStep:
    """The encoder as a step of a block (after numeric steps, say)."""
    encode = _OneHotColumns(None, encoder)

    def one_hot(block: np.ndarray) -> np.ndarray:
        encoded = _new_output(block.shape[0], int(encode.offsets[-1]))
        encode([block[:, j] for j in range(block.shape[1])], encoded)
        return encoded

    return one_hot


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


def _chain(steps: list[BlockStep], numeric: bool) -> BlockTransform:
    """A block's steps applied in turn to its columns stacked as one array: numbers are
    stacked straight into `out` when the block keeps its width (impute, scale), so the
    in-place steps leave the result where the model reads it."""

    def transform(columns: Sequence[Column], out: np.ndarray) -> None:
        if numeric and out.shape[1] == len(columns):
            values = out
        else:
            values = _new_output(len(columns[0]), len(columns))
            values = values if numeric else values.astype(object)
        for j, column in enumerate(columns):
            values[:, j] = column
        for step in steps:
            values = step(values)
        if values is not out:
            out[...] = values

    return transform


def _compile_block(transformer: Any) -> BlockTransform:
    """One ColumnTransformer entry; [imputer of text,] one-hot encoder: fused, column by column."""
    steps = [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [
        transformer]
    if isinstance(steps[-1], OneHotEncoder) and len(steps) <= 2:
        imputer = steps[0] if len(steps) == 2 else None
        if imputer is None or (
            isinstance(imputer, SimpleImputer) and imputer.statistics_.dtype.kind == "O"
            and not imputer.add_indicator and pd.isna(imputer.missing_values)
        ):
            return _OneHotColumns(imputer, steps[-1])
    first = steps[0]
    numeric = not isinstance(first, OneHotEncoder) and not (
        isinstance(first, SimpleImputer) and first.statistics_.dtype.kind == "O"
    )
    return _chain(_compile_transformer(transformer), numeric)


@dataclass(frozen=True)
class _Block:
    columns: list[str]
    transform: BlockTransform
    output: slice  # its columns in the model input


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
        outputs = pipeline[1].output_indices_
        for name, transformer, columns in pipeline[1].transformers_:
            if transformer == "drop" or len(columns) == 0:
                continue
            if transformer == "passthrough" or isinstance(transformer, str):
                raise UnsupportedPipeline(f"ColumnTransformer entry {name!r} = {transformer!r}")
            self.blocks.append(_Block(list(columns), _compile_block(transformer), outputs[name]))
        self.width = max((block.output.stop for block in self.blocks), default=0)
        self.model = pipeline[-1]
        # Trees compare one value at a time, so a row's answer cannot depend on the layout and
        # they read the column-major array ~5% faster. Other models get the row-major array the
        # ColumnTransformer gives: a linear model's BLAS kernel rounds differently by layout.
        self.column_major = type(self.model).__module__.startswith(COLUMN_MAJOR_MODELS)
        self.trees, self.model_path = compile_trees(self.model)
        if self.trees is not None and self.trees.n_features != self.width:
            raise UnsupportedPipeline(f"the model takes {self.trees.n_features} features, "
                                      f"the preprocessing gives {self.width}")

    def preprocess(self, columns: Mapping[str, Column]) -> np.ndarray:
        """Engineered and preprocessed features: the array the model was trained on, its
        values identical to the ColumnTransformer's, column-major if the model is a
        histogram gradient boosting (see `column_major`), else row-major.

        `columns` holds numpy arrays or, for categorical features, pandas Categoricals.
        """
        engineered = dict(columns)
        for feature_step in self.feature_steps:
            engineered.update(feature_step(engineered))
        features = _new_output(len(next(iter(columns.values()))), self.width)
        for block in self.blocks:  # each fills its own columns: no stacking of parts
            block.transform([engineered[c] for c in block.columns], features[:, block.output])
        return features if self.column_major else np.ascontiguousarray(features)

    def predict_proba(self, columns: Mapping[str, Column]) -> np.ndarray:
        scorer = self.model if self.trees is None else self.trees
        probabilities: np.ndarray = scorer.predict_proba(self.preprocess(columns))
        return probabilities

    def predict(self, columns: Mapping[str, Column]) -> np.ndarray:
        scorer = self.model if self.trees is None else self.trees
        predictions: np.ndarray = scorer.predict(self.preprocess(columns))
        return predictions


def compile_pipeline(pipeline: Pipeline) -> tuple[FastPipeline | None, str]:
    """The fast path, or None and the reason the plain Pipeline must be used instead."""
    try:
        fast = FastPipeline(pipeline)
    except UnsupportedPipeline as err:
        return None, f"fast path unavailable ({err}); using the plain Pipeline"
    return fast, f"fast path compiled from the fitted Pipeline; model: {fast.model_path}"
