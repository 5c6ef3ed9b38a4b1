"""The ColumnTransformer: which columns it takes, and how it treats missing and unknown values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_project.config import Config
from ml_project.engineer import FeatureEngineer, configured_steps
from ml_project.preprocess import MISSING_CATEGORY, build_preprocessor
from ml_project.validate import validate_production_data


@pytest.fixture
def engineered(config: Config, production_df: pd.DataFrame) -> pd.DataFrame:
    """Engineered features of the validated example data."""
    raw = validate_production_data(production_df, config, with_target=True).valid
    features = raw[list(config.columns.features)]
    engineered: pd.DataFrame = FeatureEngineer(configured_steps(config)).fit_transform(features)
    return engineered


def test_build_preprocessor_takes_configured_and_engineered_columns(config: Config) -> None:
    columns = {name: list(cols) for name, _, cols in build_preprocessor(config).transformers}

    assert columns["numerical"] == [
        *config.columns.numerical, "charges_per_tenure_month", "support_calls_per_year"
    ]
    assert columns["categorical"] == [*config.columns.categorical, "tenure_band"]


def test_build_preprocessor_output_is_complete_and_scaled(
    config: Config, engineered: pd.DataFrame
) -> None:
    assert engineered["total_charges"].isna().any()  # the example data has gaps to impute

    preprocessed = build_preprocessor(config).fit_transform(engineered)

    assert not np.isnan(preprocessed).any()
    n_numerical = len(config.columns.numerical) + 2
    np.testing.assert_allclose(preprocessed[:, :n_numerical].mean(axis=0), 0.0, atol=1e-9)
    assert set(np.unique(preprocessed[:, n_numerical:])) == {0.0, 1.0}


def test_build_preprocessor_encodes_missing_as_its_own_category(
    config: Config, engineered: pd.DataFrame
) -> None:
    preprocessor = build_preprocessor(config).fit(engineered)
    names = list(preprocessor.get_feature_names_out())
    row = engineered[engineered["payment_method"].isna()].head(1)

    encoded = pd.Series(preprocessor.transform(row)[0], index=names)

    assert encoded[f"payment_method_{MISSING_CATEGORY}"] == 1.0
    assert encoded[[n for n in names if n.startswith("payment_method_")]].sum() == 1.0


def test_build_preprocessor_encodes_unknown_categories_as_all_zeros(
    config: Config, engineered: pd.DataFrame
) -> None:
    preprocessor = build_preprocessor(config).fit(engineered)
    names = list(preprocessor.get_feature_names_out())
    row = engineered.head(1).assign(region="atlantis")

    encoded = pd.Series(preprocessor.transform(row)[0], index=names)

    assert encoded[[n for n in names if n.startswith("region_")]].sum() == 0.0
