"""End-to-end: the modelling use case on a miniature project in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml_project.export import load_pipeline
from tests.conftest import write_project
from use_cases import modelling_historic_data_local


def test_modelling_use_case_leaves_artifact_leaderboard_quarantine_and_champion(
    trained_project: Path,
) -> None:
    root = trained_project
    metadata = json.loads((root / "data/model_artifacts/champion/metadata.json").read_text())
    pipeline, loaded = load_pipeline(root / "data/model_artifacts/champion")
    assert loaded == metadata
    assert metadata["alias"] == "champion"
    assert set(metadata["holdout_metrics"]) >= {"roc_auc", "accuracy"}
    assert len(metadata["sha256"]) == 64
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png"):
        assert (root / "output/leaderboard" / name).stat().st_size > 0
    board = pd.read_csv(root / "output/leaderboard/leaderboard.csv")
    assert len(board) == 3  # 2 logistic settings + 1 boosting setting
    quarantine = pd.read_csv(root / "output/quarantine/historic_data.csv")
    assert len(quarantine) > 0 and quarantine["quarantine_reason"].notna().all()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("churn_model", "champion")
    assert str(champion.version) == metadata["model_version"]
    assert list(root.glob("output/logs/modelling-*.log"))


def trap(**params: object) -> None:
    """Named as a candidate below: calling it would leave a mark."""
    Path(os.environ[TRAP_MARKER]).touch()


TRAP_MARKER = "ML_PROJECT_TEST_TRAP_MARKER"


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"training": {"candidates": [{"name": "trap", "estimator": f"{__name__}.trap"}]}},
     f"training.candidates.trap: '{__name__}.trap' is not an estimator class"),
    ({"training": {"candidates": [{"name": "popen", "estimator": "subprocess.Popen", "params": {
        "args": ["python", "-c", f"import os; open(os.environ['{TRAP_MARKER}'], 'w')"]}}]}},
     "training.candidates.popen: 'subprocess.Popen' is not an estimator class"),
    ({"training": {"candidates": [{"name": "typo", "estimator":
                                   "sklearn.linear_model.LogisticRegression",
                                   "search": {"C": [1.0], "max_iters": [100, 200]}}]}},
     "training.candidates.typo.search: sklearn.linear_model.LogisticRegression takes no "
     "parameter max_iters"),
    ({"engineering": {"steps": [f"{__name__}.trap"]}},
     f"engineering.steps: '{__name__}.trap' is not a feature step"),
], ids=["function", "process", "search-key", "step"])
def test_a_config_naming_what_cannot_train_stops_the_run_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, object], problem: str,
) -> None:
    """The config names code to import: a modelling run checks it first and calls nothing that
    is not an estimator class or a feature step (here a function that would write a file, a
    process that would), and a search key the estimator does not take stops it then, in one
    message, not a traceback after the data was read and models were trained."""
    marker = tmp_path / "called"
    monkeypatch.setenv(TRAP_MARKER, str(marker))
    config_file = write_project(tmp_path, overrides)
    (tmp_path / "data" / "historic_data.csv").unlink()  # reading data would fail differently

    with pytest.raises(SystemExit) as stopped:
        modelling_historic_data_local.main(["--config", str(config_file), "--root", str(tmp_path)])

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"{config_file}: invalid configuration" in error
    assert problem in error and "Traceback" not in error
    time.sleep(0.2)  # what a started process would write, it would have written by now
    assert not marker.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_two_modelling_runs_started_together_on_a_new_store_both_register_a_version(
    tmp_path: Path,
) -> None:
    """Two runs of the use case at once on a project without a store yet: both make it through
    the store's creation (one process at a time, `registry.open_store`), and each registers a
    version of the one model. Before, one stopped with exit 3 ("duplicate column name")."""
    config_file = write_project(tmp_path, n_historic=300, n_production=20)
    script = Path(modelling_historic_data_local.__file__)
    runs = [subprocess.Popen([sys.executable, str(script), "--config", str(config_file),
                              "--root", str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0], [output[-2000:] for output in outputs]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'churn_model'")
    assert sorted(int(version.version) for version in versions) == [1, 2]
    assert len(client.search_experiments()) == 2  # MLflow's Default and the project's
