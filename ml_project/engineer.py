"""Feature engineering: one small interface for a step, composed into a scikit-learn transformer.

A `FeatureStep` declares the columns it reads and the columns it writes (with their kind) and
holds a pure function from the input columns to the output columns. Each step can be unit-tested
on a tiny DataFrame; `FeatureEngineer` runs the configured steps inside the model Pipeline, so
training, batch scoring, the APIs and every cloud handler compute features with the same code.

To add a feature: write a module-level function, wrap it in a `FeatureStep`, add it to `STEPS`,
and list its name under `engineering.steps` in project_config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from ml_project.config import Config

Kind = Literal["numerical", "categorical"]


@dataclass(frozen=True)
class FeatureStep:
    """A pure transform from declared input columns to declared output columns."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[tuple[str, Kind], ...]
    function: Callable[[pd.DataFrame], pd.DataFrame]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The output columns for `frame`, checked against what the step declares."""
        missing = [column for column in self.inputs if column not in frame.columns]
        if missing:
            raise KeyError(f"feature step {self.name!r} needs columns {missing}")
        result = self.function(frame[list(self.inputs)])
        if list(result.columns) != self.output_names:
            raise ValueError(
                f"feature step {self.name!r} returned {list(result.columns)}, "
                f"declared {self.output_names}"
            )
        return result


def charges_per_tenure_month(frame: pd.DataFrame) -> pd.DataFrame:
    """Average monthly spend so far; new customers count as one month."""
    months = frame["tenure_months"].clip(lower=1)
    return pd.DataFrame({"charges_per_tenure_month": frame["total_charges"] / months})


def support_calls_per_year(frame: pd.DataFrame) -> pd.DataFrame:
    """Support calls normalised by tenure, so long-standing customers are comparable."""
    years = frame["tenure_months"] / 12 + 1
    return pd.DataFrame({"support_calls_per_year": frame["support_calls"] / years})


TENURE_BANDS = (0, 12, 24, 48, np.inf)
TENURE_LABELS = ("0-12", "12-24", "24-48", "48+")


def tenure_band(frame: pd.DataFrame) -> pd.DataFrame:
    """Tenure as a categorical band: churn risk falls in steps, not linearly."""
    bands = pd.cut(frame["tenure_months"], TENURE_BANDS, labels=TENURE_LABELS, right=False)
    return pd.DataFrame({"tenure_band": bands.astype(object).where(bands.notna(), np.nan)})


STEPS: dict[str, FeatureStep] = {
    step.name: step
    for step in (
        FeatureStep(
            "charges_per_tenure_month",
            ("total_charges", "tenure_months"),
            (("charges_per_tenure_month", "numerical"),),
            charges_per_tenure_month,
        ),
        FeatureStep(
            "support_calls_per_year",
            ("support_calls", "tenure_months"),
            (("support_calls_per_year", "numerical"),),
            support_calls_per_year,
        ),
        FeatureStep(
            "tenure_band",
            ("tenure_months",),
            (("tenure_band", "categorical"),),
            tenure_band,
        ),
    )
}


def configured_steps(config: Config) -> list[FeatureStep]:
    """The steps named in `engineering.steps`, checked against the known steps and columns."""
    unknown = [name for name in config.engineering.steps if name not in STEPS]
    if unknown:
        raise KeyError(f"engineering.steps: unknown steps {unknown}; known: {sorted(STEPS)}")
    steps = [STEPS[name] for name in config.engineering.steps]
    available = set(config.columns.features)
    for step in steps:
        missing = [column for column in step.inputs if column not in available]
        if missing:
            raise KeyError(f"feature step {step.name!r} needs columns {missing}")
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
        engineered = X
        for step in self.steps:
            engineered = engineered.assign(**step(engineered))
        return engineered

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        names = list(self.feature_names_in_)
        names += [name for step in self.steps for name in step.output_names]
        return np.asarray(names, dtype=object)
