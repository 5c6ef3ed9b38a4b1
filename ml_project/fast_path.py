"""A fast path for requests and batches: the fitted Pipeline's preprocessing, read from its public
fitted attributes, without the per-call input checks of a ColumnTransformer.

scikit-learn's ColumnTransformer re-checks and re-slices its input on every call: for one row
that costs several times the model itself. `FastPipeline` applies the same fitted statistics
(imputer fill values, scaler means and scales, one-hot categories) with a few numpy operations,
runs the very same feature-step functions, and then calls the very same fitted model through
its public `predict` and `predict_proba`. For the few classifiers whose `predict` is, in
scikit-learn's own code, the class of highest probability (`LABEL_IS_MOST_PROBABLE`), it calls
`predict_proba` alone and takes that class: one pass over the model's trees instead of two,
and `predict` itself wherever the highest probability is shared.

It is a shortcut, so it is held to three rules:
- it accepts only the exact types it knows (`type(step) is StandardScaler`, not a subclass that
  may transform differently) with the settings it reproduces, and says why otherwise;
- it reads public fitted attributes only (`statistics_`, `mean_`, `scale_`, `categories_`,
  `transformers_`, `output_indices_`);
- it proves itself each time a model is loaded: `prove` scores the artifact's reference sample
  both ways, and on any difference the service logs why and uses the plain Pipeline
  (`PredictionService`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml_project.engineer import FeatureEngineer, FeatureStep

Column = Union[np.ndarray, pd.Categorical]  # a categorical feature may come as a Categorical
# A step of a block, applied to the block's values (rows x its columns); may work in place.
BlockStep = Callable[[np.ndarray], np.ndarray]
# A block's columns and the part of the model input it fills (rows x its output columns).
BlockTransform = Callable[[Sequence[Column], np.ndarray], None]
SMALL_BATCH = 32  # rows up to which per-value dict lookups beat vectorised ones
# Classifiers whose `predict` gives, wherever one class's probability is strictly the highest,
# that class. Forests take the argmax of their averaged probabilities; histogram gradient
# boosting and logistic regression take the sign or argmax of their decision function, and
# their probabilities (its sigmoid or softmax) keep its order but may round two decisions to one
# probability: a decision of 1e-20 is class 1 to `predict` and probability 0.5 to both classes.
# Exact types only: a subclass, or a wrapper such as a threshold-tuned classifier, may label
# otherwise.
LABEL_IS_MOST_PROBABLE = (ExtraTreesClassifier, HistGradientBoostingClassifier, LogisticRegression,
                          RandomForestClassifier)


class UnsupportedPipeline(ValueError):
    """The Pipeline holds a step the fast path cannot reproduce exactly; the message says which."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise UnsupportedPipeline(reason)


def _check_imputer(imputer: Any) -> SimpleImputer:
    _require(type(imputer) is SimpleImputer, f"step of type {type(imputer).__name__}")
    _require(not imputer.add_indicator and bool(pd.isna(imputer.missing_values)),
             "SimpleImputer with add_indicator or non-NaN missing_values")
    checked: SimpleImputer = imputer
    return checked


def _impute(imputer: SimpleImputer) -> BlockStep:
    fill = imputer.statistics_
    if fill.dtype.kind == "f":
        _require(not np.isnan(fill).any(), "SimpleImputer that dropped an all-missing column")

        def impute_numbers(block: np.ndarray) -> np.ndarray:
            np.copyto(block, fill, where=np.isnan(block))
            return block

        return impute_numbers

    def impute_objects(block: np.ndarray) -> np.ndarray:
        return np.where(pd.isna(block), fill, block)

    return impute_objects


def _scale(scaler: Any) -> BlockStep:
    _require(type(scaler) is StandardScaler, f"step of type {type(scaler).__name__}")
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None

    def standardise(block: np.ndarray) -> np.ndarray:
        block = block.astype(np.float64, copy=False)
        if mean is not None:
            block -= mean
        if scale is not None:
            block /= scale
        return block

    return standardise


def _check_encoder(encoder: Any) -> OneHotEncoder:
    _require(type(encoder) is OneHotEncoder, f"step of type {type(encoder).__name__}")
    _require(encoder.drop is None and encoder.handle_unknown == "ignore",
             "OneHotEncoder with drop or handle_unknown other than 'ignore'")
    _require(encoder.min_frequency is None and encoder.max_categories is None,
             "OneHotEncoder with infrequent categories")
    _require(not encoder.sparse_output and np.dtype(encoder.dtype) == np.float64,
             "OneHotEncoder with sparse or non-float64 output")
    checked: OneHotEncoder = encoder
    return checked


class _OneHotColumns:
    """Impute (when an imputer precedes the encoder) and one-hot encode, column by column.

    Each value's category is looked up once. A pandas Categorical (a validated frame's column)
    needs no lookup per row: its few categories are looked up and its codes index the result.
    Plain values take one vectorised hash lookup per column, or plain dicts for a few rows.
    A value found nowhere is imputed if missing, else unknown: all zeros, as
    handle_unknown='ignore' does.
    """

    def __init__(self, imputer: SimpleImputer | None, encoder: OneHotEncoder) -> None:
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
        """Write the encoding into `out` (rows x all categories of these columns)."""
        rows = len(columns[0])
        out[...] = 0.0
        for j, column in enumerate(columns):
            first = self.offsets[j]
            if rows <= SMALL_BATCH and not isinstance(column, pd.Categorical):
                for row, value in enumerate(column):
                    i = self.positions[j].get(value)
                    if i is None:
                        i = self.missing[j] if pd.isna(value) else -1
                    if i >= 0:
                        out[row, first + i] = 1.0
                continue
            found = self._found(j, column)
            present = np.flatnonzero(found >= 0)
            out[present, first + found[present]] = 1.0


def _one_hot(encoder: OneHotEncoder) -> BlockStep:
    """The encoder as a later step of a block (after an imputer of numbers, say)."""
    encode = _OneHotColumns(None, encoder)

    def one_hot(block: np.ndarray) -> np.ndarray:
        encoded = np.empty((block.shape[0], int(encode.offsets[-1])), dtype=np.float64)
        encode([block[:, j] for j in range(block.shape[1])], encoded)
        return encoded

    return one_hot


def _steps_of(transformer: Any) -> list[Any]:
    if type(transformer) is Pipeline:
        return [step for _, step in transformer.steps]
    return [transformer]


def _compile_steps(steps: list[Any]) -> list[BlockStep]:
    compiled = []
    for step in steps:
        if type(step) is SimpleImputer:
            compiled.append(_impute(_check_imputer(step)))
        elif type(step) is StandardScaler:
            compiled.append(_scale(step))
        elif type(step) is OneHotEncoder:
            compiled.append(_one_hot(_check_encoder(step)))
        else:
            raise UnsupportedPipeline(f"preprocessing step of type {type(step).__name__}")
    return compiled


def _chain(steps: list[BlockStep], numeric: bool) -> BlockTransform:
    """A block's steps applied in turn to its columns stacked as one array."""

    def transform(columns: Sequence[Column], out: np.ndarray) -> None:
        values = np.empty((len(columns[0]), len(columns)), dtype=np.float64 if numeric else object)
        for j, column in enumerate(columns):
            values[:, j] = column
        for step in steps:
            values = step(values)
        out[...] = values

    return transform


def _compile_block(transformer: Any) -> BlockTransform:
    """One ColumnTransformer entry; [imputer of text,] one-hot encoder: fused, column by column."""
    steps = _steps_of(transformer)
    if type(steps[-1]) is OneHotEncoder and len(steps) <= 2:
        encoder = _check_encoder(steps[-1])
        imputer = _check_imputer(steps[0]) if len(steps) == 2 else None
        if imputer is None or imputer.statistics_.dtype.kind == "O":
            return _OneHotColumns(imputer, encoder)
    first = steps[0]
    text = type(first) is OneHotEncoder or (
        type(first) is SimpleImputer and first.statistics_.dtype.kind == "O")
    return _chain(_compile_steps(steps), numeric=not text)


@dataclass(frozen=True)
class _Block:
    columns: list[str]
    transform: BlockTransform
    output: slice  # its columns in the model input


class FastPipeline:
    """The fitted Pipeline's arithmetic without its per-call input checks (see the module)."""

    def __init__(self, pipeline: Pipeline) -> None:
        names = [name for name, _ in pipeline.steps]
        _require(type(pipeline) is Pipeline and len(pipeline.steps) == 3
                 and type(pipeline[0]) is FeatureEngineer and type(pipeline[1]) is ColumnTransformer,
                 f"Pipeline steps {names}; expected engineer, preprocess (ColumnTransformer), model")
        preprocess: ColumnTransformer = pipeline[1]
        _require(preprocess.transformer_weights is None, "ColumnTransformer with transformer_weights")
        self.feature_steps: Sequence[FeatureStep] = pipeline[0].steps
        self.blocks: list[_Block] = []
        outputs = preprocess.output_indices_
        for name, transformer, columns in preprocess.transformers_:
            if isinstance(transformer, str) and transformer == "drop" or len(columns) == 0:
                continue
            _require(not isinstance(transformer, str),
                     f"ColumnTransformer entry {name!r} = {transformer!r}")
            self.blocks.append(_Block(list(columns), _compile_block(transformer), outputs[name]))
        self.width = max((block.output.stop for block in self.blocks), default=0)
        self.model = pipeline[-1]
        self.labels_from_probabilities = (type(self.model) in LABEL_IS_MOST_PROBABLE
                                          and getattr(self.model, "n_outputs_", 1) == 1)
        self.order: Literal["C", "F"] = "C"  # see `match_layout`

    def match_layout(self, preprocessed: np.ndarray) -> None:
        """Lay the model input out in memory as the Pipeline does (`preprocessed`: its output).

        A linear model's BLAS kernel rounds the last bit differently for a row-major and a
        column-major array, and which one the ColumnTransformer gives depends on its blocks
        (one block passes its own array through). Observed, not assumed."""
        column_major = preprocessed.flags.f_contiguous and not preprocessed.flags.c_contiguous
        self.order = "F" if column_major else "C"

    def preprocess(self, columns: Mapping[str, Column]) -> np.ndarray:
        """Engineered and preprocessed features: the array the model is given by the Pipeline.

        `columns` holds numpy arrays or, for categorical features, pandas Categoricals.
        """
        engineered = dict(columns)
        for feature_step in self.feature_steps:
            engineered.update(feature_step(engineered))
        rows = len(next(iter(columns.values())))
        features = np.empty((rows, self.width), dtype=np.float64, order=self.order)
        for block in self.blocks:  # each fills its own columns: no stacking of parts
            block.transform([engineered[c] for c in block.columns], features[:, block.output])
        return features

    def predict_both(self, columns: Mapping[str, Column], probabilities: bool
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's `predict` and (if `probabilities`) `predict_proba` on one preprocessed
        input: the Pipeline would preprocess the same rows twice, to the same array."""
        features = self.preprocess(columns)
        if not probabilities:
            predicted: np.ndarray = self.model.predict(features)
            return predicted, None
        scores: np.ndarray = self.model.predict_proba(features)
        if self.labels_from_probabilities:
            return self._most_probable(scores, features), scores
        return self.model.predict(features), scores

    def _most_probable(self, probabilities: np.ndarray, features: np.ndarray) -> np.ndarray:
        """What `predict` gives for a `LABEL_IS_MOST_PROBABLE` model: each row's class of
        highest probability or, unless every row has exactly one (a tie, or NaN from a model
        with NaN parameters), `predict` itself: the decision function's order, which the
        probabilities no longer show, decides those."""
        top = probabilities.argmax(axis=1)
        highest = probabilities[np.arange(len(top)), top]
        if ((probabilities == highest[:, np.newaxis]).sum(axis=1) != 1).any():
            predicted: np.ndarray = self.model.predict(features)
            return predicted
        labels: np.ndarray = self.model.classes_.take(top)
        return labels


def compile_pipeline(pipeline: Pipeline) -> tuple[FastPipeline | None, str]:
    """The fast path, or None and the reason the plain Pipeline must be used instead."""
    try:
        return FastPipeline(pipeline), "fast path compiled from the fitted Pipeline"
    except UnsupportedPipeline as err:
        return None, f"fast path unavailable ({err}); using the plain Pipeline"
