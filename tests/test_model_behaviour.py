"""Behaviour of the trained model, in the spirit of Made-With-ML: what must not matter (invariance)
and which way what does matter must push (direction). Uses the session's trained champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from ml_project.export import load_pipeline
from ml_project.ingest import read_table
from ml_project.validate import validate_production_data
from tests.conftest import prediction_config


@pytest.fixture(scope="module")
def champion(trained_project: Path) -> Pipeline:
    pipeline, _ = load_pipeline(trained_project / "data" / "model_artifacts" / "champion")
    return pipeline


@pytest.fixture(scope="module")
def features(trained_project: Path) -> pd.DataFrame:
    """Valid production features the model has never seen."""
    config = prediction_config(trained_project)
    production = read_table(config.resolve(config.data.production), config)
    raw = validate_production_data(production, config, with_target=False).valid
    return raw[list(config.columns.features)]


def _churn_probability(pipeline: Pipeline, features: pd.DataFrame) -> np.ndarray:
    probabilities: np.ndarray = pipeline.predict_proba(features)[:, 1]
    return probabilities


@pytest.mark.parametrize("region", ["north", "south", "east", "west"])
def test_champion_is_nearly_invariant_to_region(
    champion: Pipeline, features: pd.DataFrame, region: str
) -> None:
    """Region plays no part in churn in the example data; the model should barely use it."""
    before = _churn_probability(champion, features)

    after = _churn_probability(champion, features.assign(region=region))

    assert np.abs(after - before).mean() < 0.05
    assert ((after > 0.5) == (before > 0.5)).mean() >= 0.9


def test_champion_predicts_more_churn_with_more_support_calls(
    champion: Pipeline, features: pd.DataFrame
) -> None:
    before = _churn_probability(champion, features)
    more_calls = features.assign(support_calls=features["support_calls"] + 3)

    after = _churn_probability(champion, more_calls)

    assert (after > before).mean() >= 0.95
    assert (after - before).mean() > 0.05


def test_champion_predicts_less_churn_on_a_two_year_contract(
    champion: Pipeline, features: pd.DataFrame
) -> None:
    monthly = _churn_probability(champion, features.assign(contract="month-to-month"))

    two_year = _churn_probability(champion, features.assign(contract="two-year"))

    assert (two_year < monthly).mean() >= 0.95
