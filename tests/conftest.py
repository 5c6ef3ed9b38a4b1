"""Shared fixtures: small generated data in tmp_path and one trained model per test session.

Every test writes only under tmp_path (or pytest's session tmp dir); none touches the repo's
data/, output/ or mlflow.db.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest
import yaml

from ml_project.config import Config, _merge, load_config
from tests.churn_data import write_example_data
from tests.postgres import PostgresServer, running_server

FIXTURE_CONFIG = Path(__file__).with_name("fixture_config.yaml")

# Small and quick, but the same code paths as the shipped configuration.
FAST_TRAINING: dict[str, Any] = {
    "training": {
        "cv_folds": 3,
        "n_jobs": 1,
        "candidates": [
            {
                "name": "logistic_regression",
                "estimator": "sklearn.linear_model.LogisticRegression",
                "params": {"max_iter": 500},
                "search": {"C": [0.1, 1.0]},
            },
            {
                "name": "hist_gradient_boosting",
                "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
                "params": {"max_iter": 30},
                "search": {"learning_rate": [0.1]},
            },
        ],
    }
}


def write_project(root: Path, overrides: dict[str, Any] | None = None, *,
                  n_historic: int = 1500, n_production: int = 300, drift: float = 0.6) -> Path:
    """Lay out a miniature project in `root`: the churn fixture table plus a config file from
    tests/fixture_config.yaml (never the project's own); returns the config file."""
    write_example_data(root / "data", n_historic=n_historic, n_production=n_production, drift=drift)
    content = yaml.safe_load(FIXTURE_CONFIG.read_text())
    config_file = root / "project_config.yaml"
    config_file.write_text(
        yaml.safe_dump(_merge(_merge(content, FAST_TRAINING), overrides or {}), sort_keys=False)
    )
    return config_file


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment variables that would point a test at real stores or servers."""
    for name in ("MLFLOW_TRACKING_URI", "ML_PROJECT_API_KEY", "ML_PROJECT_SERVER_URL",
                 "ML_PROJECT_PREDICTION_LOG_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres.py); each test creates its own
    database on it (`create_database`)."""
    yield from running_server()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A miniature project root with small example data and the fast config."""
    write_project(tmp_path)
    return tmp_path


@pytest.fixture
def config(project: Path) -> Config:
    return load_config(
        "modelling", "historic", "local",
        config_file=project / "project_config.yaml", root=project,
    )


@pytest.fixture
def production_df(project: Path) -> pd.DataFrame:
    return pd.read_csv(project / "data" / "historic_data.csv", dtype={"customer_id": object})


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A miniature project on which the modelling use case has run once: champion exported
    to data/model_artifacts/champion, registered in <root>/mlflow.db. Treat it as read-only;
    copy it (shutil.copytree) if a test must change it."""
    from use_cases import modelling_historic_data_local

    root = tmp_path_factory.mktemp("trained_project")
    config_file = write_project(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = modelling_historic_data_local.main(["--config", str(config_file), "--root", str(root)])
    assert code == 0
    yield root


def prediction_config(root: Path, **overrides: Any) -> Config:
    """A prediction-mode Config for a miniature project root."""
    return load_config(
        "prediction", "production", "local",
        config_file=root / "project_config.yaml", root=root, overrides=overrides,
    )
