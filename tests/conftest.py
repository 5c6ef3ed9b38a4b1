"""Shared fixtures: small generated data in tmp_path and one trained model per test session.

Every test writes only under tmp_path (or pytest's session tmp dir); none touches the repo's
data/, output/ or mlflow.db.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pandas as pd
import pytest
import yaml

from ml_project.config import Config, _merge, load_config
from tests.churn_data import write_example_data
from tests.postgres import PostgresServer, running_server

if TYPE_CHECKING:
    from tests.deployment_helpers import BundleVirtualenvs

FIXTURE_CONFIG = Path(__file__).with_name("fixture_config.yaml")
# Probabilities of the same rows scored in other batches (sizes, chunks, Spark partitions),
# on other threads or another CPU may differ in the last bits: no library promises them bit for
# bit (BLAS kernels differ by shape; an AMD host moved one by 1.1e-16). Labels stay exact.
PROBABILITY_TOLERANCE = 1e-12

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--project-root", default=None, metavar="DIR",
                     help="the project whose project_config.yaml and data tests/test_contract.py "
                          "checks (default: this checkout)")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment variables that would point a test at real stores or servers."""
    for name in ("MLFLOW_TRACKING_URI", "ML_PROJECT_API_KEY", "ML_PROJECT_SERVER_URL",
                 "ML_PROJECT_PREDICTION_LOG_URL", "ML_PROJECT_OUTPUT_DIR"):
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


@pytest.fixture(scope="session")
def deployable_project(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed checkout of this project with the session's champion, for
    executables/cloud_setup.sh (tests/deployment_helpers.py). Bundles go to its output/."""
    from tests.deployment_helpers import make_deployable_project

    return make_deployable_project(trained_project, tmp_path_factory.mktemp("deployable_project"))


@pytest.fixture(scope="session")
def bundle_virtualenvs(tmp_path_factory: pytest.TempPathFactory) -> BundleVirtualenvs:
    """`.python_for(requirements_txt)`: a fresh virtualenv holding exactly those requirements,
    one per distinct content per session."""
    from tests.deployment_helpers import BundleVirtualenvs

    return BundleVirtualenvs(tmp_path_factory.mktemp("bundle_venvs"))


@pytest.fixture(scope="session")
def local_api_answers(trained_project: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> list[tuple[int, str, bytes]]:
    """What the local FastAPI app answers to tests.deployment_helpers.PREDICT_REQUESTS: the
    bytes every deployed provider must send back too."""
    from ml_project.predict import PredictionService
    from ml_project.prediction_log.log import PredictionLog
    from ml_project.serving.fastapi_app import create_app
    from tests.deployment_helpers import answers
    from tests.serving import load_serving_config, serve_in_thread, write_serving_config

    config = load_serving_config(
        write_serving_config(trained_project, tmp_path_factory.mktemp("local_api")))
    log = PredictionLog.from_config(config)
    try:
        with serve_in_thread(create_app(PredictionService.from_config(config), log)) as url:
            return answers(url)
    finally:
        log.close()


# A candidate that cannot beat the session's champion on the holdout: a depth-2 tree.
WEAK_CANDIDATE: dict[str, Any] = {
    "name": "decision_stump",
    "estimator": "sklearn.tree.DecisionTreeClassifier",
    "params": {"max_depth": 2},
    "search": {},
}


@pytest.fixture(scope="session")
def challenged_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A miniature project on which the modelling use case has run twice: version 1 is the
    champion, version 2 (a weaker model) the challenger, each exported to
    data/model_artifacts/<alias> and registered in <root>/mlflow.db. Read-only, as
    `trained_project`."""
    from use_cases import modelling_historic_data_local

    root = tmp_path_factory.mktemp("challenged_project")
    config_file = write_project(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for candidates in (None, [WEAK_CANDIDATE]):
            if candidates is not None:
                content = yaml.safe_load(config_file.read_text())
                content["training"]["candidates"] = candidates
                config_file.write_text(yaml.safe_dump(content, sort_keys=False))
            arguments = ["--config", str(config_file), "--root", str(root)]
            assert modelling_historic_data_local.main(arguments) == 0
    assert (root / "data" / "model_artifacts" / "challenger" / "metadata.json").is_file()
    yield root
