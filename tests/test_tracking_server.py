"""A shared tracking server: `executables/start_tracking_server.sh` started on a free port (a
SQLite backend store and an artifact folder in tmp_path); modelling registers the champion there
through MLFLOW_TRACKING_URI, its model files uploaded through the server's artifact proxy, and
the prediction use cases load it from there (`model_source: registry`) and answer as the local
artifact does; a version promoted by hand is downloaded through it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from ml_project.config import PROJECT_ROOT, _merge, load_config
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.promotion import promote_version
from ml_project.registry import ARTIFACT_SHA256_TAG, CHALLENGER, CHAMPION
from tests.conftest import FAST_TRAINING, prediction_config, write_project
from tests.serving import assert_serves, free_port
from tests.tracked import WEAK
from use_cases import (
    modelling_historic_data_local,
    predicting_historic_data_local,
    predicting_production_data_local,
)
from use_cases.modelling_historic_data_local import model

# A real MLflow tracking server.
pytestmark = pytest.mark.slow

SCRIPT = PROJECT_ROOT / "executables" / "start_tracking_server.sh"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The script in the foreground, as a person runs it; yields the URI it prints and the
    server's artifact folder. Stopped with SIGTERM (the process group: mlflow's workers too)."""
    folder = tmp_path_factory.mktemp("tracking_server")
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "artifacts"),
        "PORT": str(free_port()),
    }
    output = folder / "server.out"
    with output.open("w") as output_file:
        server = subprocess.Popen(["bash", str(SCRIPT), "--workers", "1"], env=environment,
                                  stdout=output_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{environment['PORT']}"
        deadline = time.monotonic() + 180
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"{uri}/health", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                time.sleep(0.5)
        assert server.poll() is None, output.read_text()
        assert_serves(server, int(environment["PORT"]), output)
        assert f"export MLFLOW_TRACKING_URI={uri}" in output.read_text()
        yield uri, folder / "artifacts"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=90)  # seconds on a quiet machine, longer on a loaded CI runner
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def set_model_source(root: Path, source: str) -> None:
    config_file = root / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump(_merge(content, {"prediction": {"model_source": source}}),
                                          sort_keys=False))


def test_the_champion_registered_on_the_server_serves_as_the_local_artifact(
    tracking_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, artifacts = tracking_server
    root = tmp_path / "project"
    # One quick candidate: what is under test is the server's part, not the search.
    write_project(root, {"training": {"cv_folds": 2, "candidates": FAST_TRAINING["training"][
        "candidates"][:1]}}, n_historic=800, n_production=60)
    arguments = ["--config", str(root / "project_config.yaml"), "--root", str(root)]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    assert modelling_historic_data_local.main(arguments) == 0
    config = prediction_config(root)
    version = MlflowClient(uri).get_model_version_by_alias(
        config.tracking.registered_model_name, CHAMPION)
    assert not (root / "mlruns").exists() and not (root / "mlflow.db").exists()
    assert any(path.name.endswith(".skops") for path in artifacts.rglob("*"))  # via the proxy

    scored: dict[str, pd.DataFrame] = {}
    for source in ("local", "registry"):
        set_model_source(root, source)
        assert predicting_historic_data_local.main(arguments) == 0
        scored[source] = pd.read_csv(root / "output/predictions/historic_data_predictions.csv")
        assert predicting_production_data_local.main(arguments) == 0
    log = PredictionLog.from_config(config)
    records = log.read()
    log.close()

    pd.testing.assert_frame_equal(scored["registry"], scored["local"])
    local, registry = records[: len(records) // 2], records[len(records) // 2:]
    assert len(local) == len(registry) == 60
    assert [(row["instance_id"], row["prediction"], row["probabilities"]) for row in registry] \
        == [(row["instance_id"], row["prediction"], row["probabilities"]) for row in local]
    assert {row["model_version"] for row in records} == {str(version.version)}


def test_a_version_promoted_by_hand_through_the_server_serves_with_its_registered_sha256(
    tracking_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local artifact's files logged through the server's artifact proxy, downloaded from it
    by the promotion, byte for byte: the challenger (the class prior, which lost) served."""
    uri, _ = tracking_server
    root = tmp_path / "project"
    write_project(root, {"training": {"cv_folds": 2, "candidates": FAST_TRAINING["training"][
        "candidates"][:1]}}, n_historic=800, n_production=60)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for candidates in (None, [WEAK]):  # the champion here (or the other test's), then a loser
        model(load_config("modelling", "historic", "local", config_file=root /
                          "project_config.yaml", root=root,
                          overrides={"training": {"candidates": candidates}} if candidates else None))
    name = prediction_config(root).tracking.registered_model_name
    challenger = str(MlflowClient(uri).get_model_version_by_alias(name, CHALLENGER).version)
    shutil.rmtree(root / "data" / "model_artifacts" / CHALLENGER)  # only the server has it now

    promoted = promote_version(prediction_config(root), challenger, reason="through the server")

    registered = MlflowClient(uri).get_model_version(name, challenger)
    assert MlflowClient(uri).get_model_version_by_alias(name, CHAMPION).version == \
        registered.version
    service = PredictionService.from_config(prediction_config(root))
    assert service.model_version == challenger
    assert service.model_sha256 == promoted.sha256 == registered.tags[ARTIFACT_SHA256_TAG]
