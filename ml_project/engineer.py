"""Feature engineering: one small interface for a step, composed into a scikit-learn transformer.

A feature step is a module-level function from input columns to output columns (numpy arrays
keyed by name; a categorical output may be a pandas Categorical, which spares encoding a text
lookup per row), decorated with `@feature_step(inputs=..., outputs=...)` to declare what it
reads and writes. The config names steps by dotted import path, like candidates
(`engineering.steps: [ml_project.engineer.tenure_band]`): Python's imports are the one registry.
Each step can be unit-tested on a few hand-written values; `FeatureEngineer` runs the configured
steps inside the model Pipeline, so training, batch scoring, the APIs and every cloud handler
compute features with the same code.

To add a feature: write a decorated function in a module of this package (here, or a module of
your own such as `ml_project/features.py`) and list its dotted path under `engineering.steps`.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from ml_project.config import Config

Kind = Literal["numerical", "categorical"]
STEP_ATTRIBUTE = "feature_step"  # where @feature_step keeps a function's declaration


Columns = Mapping[str, np.ndarray]
# What a step returns per column: a numpy array or, for a categorical output, optionally a
# pandas Categorical (its codes spare the encoder a text lookup per row).
Output = Union[np.ndarray, pd.Categorical]


@dataclass(frozen=True)
class FeatureStep:
    """A pure transform from declared input columns to declared output columns.

    Steps work on plain numpy arrays keyed by column name, of any length: the same function
    computes a feature for a 100k-row batch inside the Pipeline and for a single request on
    the serving fast path, so the two can never disagree.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[tuple[str, Kind], ...]
    function: Callable[[Columns], Mapping[str, Output]]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def __call__(self, columns: Mapping[str, Output]) -> Mapping[str, Output]:
        """The output columns, checked against what the step declares."""
        missing = [column for column in self.inputs if column not in columns]
        if missing:
            raise KeyError(f"feature step {self.name!r} needs columns {missing}")
        # numpy arrays in, whatever the caller holds (a Categorical arrives as its values)
        result = self.function({column: np.asarray(columns[column]) for column in self.inputs})
        if list(result) != self.output_names:
            raise ValueError(
                f"feature step {self.name!r} returned {list(result)}, declared {self.output_names}"
            )
        # A scalar or an aggregate would broadcast silently: one value per row, or an error.
        rows = np.shape(columns[self.inputs[0]]) if self.inputs else None
        shapes = {name: np.shape(values) for name, values in result.items()}
        if rows is not None and any(shape != rows for shape in shapes.values()):
            raise ValueError(
                f"feature step {self.name!r} returned shapes {shapes} for inputs of shape {rows}"
            )
        return result


StepFunction = Callable[[Columns], Mapping[str, Output]]


def feature_step(
    inputs: Sequence[str], outputs: Mapping[str, Kind]
) -> Callable[[StepFunction], StepFunction]:
    """Declare a function a feature step: the columns it reads and those it writes, by kind.

    The function itself is returned unchanged (so it pickles by reference, as any function);
    its `FeatureStep` is attached to it and found again from its dotted path.
    """

    def declare(function: StepFunction) -> StepFunction:
        name = f"{function.__module__}.{function.__qualname__}"
        step = FeatureStep(name, tuple(inputs), tuple(outputs.items()), function)
        setattr(function, STEP_ATTRIBUTE, step)
        return function

    return declare


def import_step(path: str) -> FeatureStep:
    """The feature step a dotted import path names; ValueError saying what is wrong if none.

    Nothing the path names is called, nor any attribute of it evaluated, before it is known to
    be a function that `@feature_step` declared (its declaration read from the function's own
    attributes, statically: no property or __getattr__ runs).
    """
    module_name, _, attribute = path.rpartition(".")
    try:
        target: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"engineering.steps: cannot import {path!r} ({err})") from err
    step = vars(target).get(STEP_ATTRIBUTE) if inspect.isfunction(target) else None
    if not isinstance(step, FeatureStep) or step.function is not target:
        raise ValueError(f"engineering.steps: {path!r} is not a feature step; decorate the "
                         "function with @feature_step(inputs=..., outputs=...), outermost")
    return step


@feature_step(
    inputs=("total_charges", "tenure_months"), outputs={"charges_per_tenure_month": "numerical"}
)
def charges_per_tenure_month(columns: Columns) -> dict[str, np.ndarray]:
    """Average monthly spend so far; new customers count as one month."""
    months = np.maximum(columns["tenure_months"].astype(float), 1.0)
    return {"charges_per_tenure_month": columns["total_charges"].astype(float) / months}


@feature_step(
    inputs=("support_calls", "tenure_months"), outputs={"support_calls_per_year": "numerical"}
)
def support_calls_per_year(columns: Columns) -> dict[str, np.ndarray]:
    """Support calls normalised by tenure, so long-standing customers are comparable."""
    years = columns["tenure_months"].astype(float) / 12 + 1
    return {"support_calls_per_year": columns["support_calls"].astype(float) / years}


TENURE_EDGES = np.array([12.0, 24.0, 48.0])
TENURE_LABELS = pd.Index(["0-12", "12-24", "24-48", "48+"], dtype=object)


@feature_step(inputs=("tenure_months",), outputs={"tenure_band": "categorical"})
def tenure_band(columns: Columns) -> dict[str, pd.Categorical]:
    """Tenure as a categorical band: churn risk falls in steps, not linearly.

    A Categorical (missing tenure: a missing band), so encoding it is a lookup per band, not
    a text hash per row.
    """
    tenure = columns["tenure_months"].astype(float)
    codes = np.searchsorted(TENURE_EDGES, tenure, side="right")
    codes[np.isnan(tenure)] = -1
    return {"tenure_band": pd.Categorical.from_codes(codes, categories=TENURE_LABELS)}


def configured_steps(config: Config) -> list[FeatureStep]:
    """The steps `engineering.steps` names, in order, each reading only columns that exist."""
    steps = [import_step(path) for path in config.engineering.steps]
    available = set(config.columns.features)
    for step in steps:
        missing = [column for column in step.inputs if column not in available]
        if missing:
            raise ValueError(f"engineering.steps: {step.name} needs columns {missing}, which are "
                             "neither features nor outputs of an earlier step")
        clashes = [column for column in step.output_names if column in available]
        if clashes:
            raise ValueError(f"engineering.steps: {step.name} writes columns {clashes}, which "
                             "already exist")
        available.update(step.output_names)
    return steps


def engineered_columns(steps: Sequence[FeatureStep], kind: Kind) -> list[str]:
    """Names of the columns the steps add, of one kind."""
    return [name for step in steps for name, step_kind in step.outputs if step_kind == kind]


class FeatureEngineer(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Apply feature steps in order, adding their outputs to the input columns.

    Stateless: `fit` only records the input columns, so the transform is identical in training
    and prediction.
    """

    def __init__(self, steps: Sequence[FeatureStep] = ()) -> None:
        self.steps = steps

    def fit(self, X: pd.DataFrame, y: object = None) -> FeatureEngineer:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        columns: dict[str, Output] = {str(name): X[name].to_numpy() for name in X.columns}
        for step in self.steps:
            columns.update(step(columns))
        added = {name: columns[name] for step in self.steps for name in step.output_names}
        return X.assign(**added)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        names = list(self.feature_names_in_)
        names += [name for step in self.steps for name in step.output_names]
        return np.asarray(names, dtype=object)
