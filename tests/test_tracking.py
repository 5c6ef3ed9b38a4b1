"""The modelling run in a real sqlite MLflow store in tmp_path: what it logs, the version it
registers, and a run that fails inside ending FAILED."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ml_project.registry import CHAMPION, MODEL_FILE_SHA256_TAG, TRUSTED_TYPES_TAG, TrackingError
from ml_project.tracking import log_modelling_run, modelling_run
from tests.tracked import History, tracked_history


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return tracked_history(tmp_path_factory.mktemp("tracked"))


def test_log_modelling_run_logs_the_run_with_candidates_plots_and_model(
    history: History,
) -> None:
    strong, outcome = history.strong, history.outcomes[1]
    client = MlflowClient(strong.config.tracking_uri)

    run = client.get_run(outcome.run_id)

    assert run.data.tags["best_candidate"] == "logistic_regression"
    assert run.data.tags["alias"] == CHAMPION
    assert run.data.tags["registered_version"] == outcome.model_version
    assert run.data.params["train_rows"] == str(len(strong.train))
    assert run.data.metrics["holdout_roc_auc"] > 0.7
    artifacts = {item.path for item in client.list_artifacts(outcome.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/roc_curve.png"} <= artifacts
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'"
    )
    assert [child.data.params["candidate"] for child in children] == ["logistic_regression"]


def test_registered_version_records_its_checksum_and_the_types_it_trusts(
    history: History
) -> None:
    client = MlflowClient(history.strong.config.tracking_uri)
    version = client.get_model_version_by_alias(
        history.strong.config.tracking.registered_model_name, CHAMPION)

    assert len(version.tags[MODEL_FILE_SHA256_TAG]) == 64
    assert json.loads(version.tags[TRUSTED_TYPES_TAG]) == history.outcomes[1].trusted_types


def test_a_run_that_fails_inside_ends_failed_and_a_store_failure_is_one_tracking_error(
    history: History, tmp_path: Path
) -> None:
    """Whatever fails inside the run (here the artifact store, a file where its folder was)
    ends it FAILED, and the store's failure is one TrackingError naming the run."""
    strong = history.strong
    artifacts = tmp_path / "artifacts"
    artifacts.write_text("not a folder")
    config = strong.config.model_copy(update={"tracking": strong.config.tracking.model_copy(
        update={"experiment_name": "broken"})})
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.create_experiment("broken", artifact_location=artifacts.as_uri())
    best = max(strong.results, key=lambda result: result.cv_score)

    with pytest.raises(TrackingError, match=r"failed during run \w+ \(") as failed:
        with modelling_run(config, best.name) as run_id:
            log_modelling_run(run_id, config, results=strong.results, best=best,
                              leaderboard_files={}, holdout_metrics={"roc_auc": 0.5},
                              train=strong.train, holdout=strong.holdout, data_source="x",
                              quarantined_rows=0, reference=strong.holdout)

    assert run_id in str(failed.value)
    assert MlflowClient(config.tracking_uri).get_run(run_id).info.status == "FAILED"
