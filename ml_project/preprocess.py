"""Preprocessing: impute, scale and encode, as one ColumnTransformer built from the Config."""

from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml_project.config import Config
from ml_project.engineer import configured_steps, engineered_columns

MISSING_CATEGORY = "missing"


def build_preprocessor(config: Config) -> ColumnTransformer:
    """Numerical: median impute + scale. Categorical: constant impute + one-hot.

    Columns are the configured features plus the engineered ones. Unknown categories at
    prediction time encode as all zeros instead of failing; validation rejects them upstream,
    so this only matters for data that skipped validation.
    """
    steps = configured_steps(config)
    numerical = [*config.columns.numerical, *engineered_columns(steps, "numerical")]
    categorical = [*config.columns.categorical, *engineered_columns(steps, "categorical")]
    numerical_pipeline = Pipeline(
        [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
    )
    categorical_pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    return ColumnTransformer(
        [("numerical", numerical_pipeline, numerical), ("categorical", categorical_pipeline, categorical)],
        remainder="drop",
        verbose_feature_names_out=False,
    )
