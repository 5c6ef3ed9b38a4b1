"""End-to-end on tables that are not the churn example: every use case, each table's own config.

Binary with text labels, categorical features and nulls; multiclass with text labels and integer
ids; regression with numeric features only: each with other column names than the example. What
a user gets after editing only project_config.yaml and the data files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from ml_project.config import PROJECT_ROOT, Config, load_config
from ml_project.export import load_pipeline
from ml_project.ingest import read_table
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from tests.serving import launch_server
from tests.tables import SHAPES, Table
from use_cases import (
    modelling_historic_data_local,
    monitoring_production_data_local,
    predicting_historic_data_local,
    predicting_production_data_local,
    predicting_production_data_local_fastapi,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(SHAPES))
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Table, Path]]:
    """A project of this shape on which the modelling use case has run."""
    table: Table = SHAPES[request.param]()
    root = tmp_path_factory.mktemp(table.name)
    table.write(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert modelling_historic_data_local.main(_arguments(root)) == 0
    yield table, root


def _arguments(root: Path, *extra: str) -> list[str]:
    return ["--config", str(root / "project_config.yaml"), "--root", str(root), *extra]


def _config(root: Path, **overrides: Any) -> Config:
    return load_config("prediction", "production", "local",
                       config_file=root / "project_config.yaml", root=root, overrides=overrides)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON client sends them: None for missing, plain Python values."""
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return records


def test_modelling_exports_and_registers_a_champion_whose_holdout_metrics_are_its_answers(
    project: tuple[Table, Path]
) -> None:
    table, root = project
    pipeline, metadata = load_pipeline(root / "data/model_artifacts/champion")
    config = _config(root)
    assert metadata["task"] == table.config["task"]
    assert metadata["holdout_metrics"][config.training.metric] == pytest.approx(
        metadata["holdout_metrics"][config.training.metric])
    champion = MlflowClient(config.tracking_uri).get_model_version_by_alias(
        config.tracking.registered_model_name, "champion")
    assert str(champion.version) == metadata["model_version"]
    reference = pd.read_parquet(root / "data/model_artifacts/champion" / metadata["reference_file"])
    features = reference[list(config.columns.features)]
    np.testing.assert_array_equal(reference["prediction"], pipeline.predict(features))
    if config.is_classification:
        assert metadata["classes"] == sorted(table.config["columns"]["target_classes"])


def test_batch_scoring_accounts_for_every_row_with_the_pipelines_own_answers(
    project: tuple[Table, Path]
) -> None:
    table, root = project
    source = root / "data/production.csv"
    assert predicting_historic_data_local.main(_arguments(root, "--input", str(source))) == 0

    config = _config(root)
    identifier = config.columns.id
    predictions = pd.read_csv(root / "output/predictions/production_predictions.csv",
                              dtype={identifier: str})
    quarantine = pd.read_csv(root / "output/quarantine/production_predictions.csv",
                             dtype={identifier: str})
    assert len(predictions) + len(quarantine) == len(table.production)
    assert len(quarantine) == 3 + (table.name == "loans")  # exactly the spoiled rows
    assert quarantine["quarantine_reason"].str.len().gt(0).all()
    service = PredictionService.from_config(config)
    assert service.fast_path is not None, service.core
    received = read_table(str(source), config)
    valid = received[received[identifier].isin(predictions[identifier])]
    expected = service.pipeline.predict(valid[list(config.columns.features)]
                                        .astype({c: object for c in config.columns.categorical}))
    got = predictions["prediction"].to_numpy()
    if config.is_classification:
        assert list(got.astype(str)) == list(expected.astype(str))
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_stream_api_and_monitoring_use_cases_work_on_the_table(
    project: tuple[Table, Path], tmp_path: Path
) -> None:
    table, root = project
    assert predicting_production_data_local.main(_arguments(root)) == 0
    config = _config(root)
    log = PredictionLog.from_config(config)
    try:
        records = log.read()
    finally:
        log.close()
    predicted = [r for r in records if r["error"] is None]
    assert len(predicted) == len(table.production) - 3 - (table.name == "loans")
    assert {r["instance_id"] for r in predicted} <= set(table.production[config.columns.id]
                                                      .astype(str))

    assert predicting_production_data_local_fastapi.main(_arguments(root, "--limit", "40")) == 0

    labels = root / "data/labels.csv"
    assert labels.is_file()
    code = monitoring_production_data_local.main(_arguments(root))
    assert code in (0, 10, 11, 12)
    summary = json.loads((root / "output/monitoring/monitoring_summary.json").read_text())
    assert summary["window"]["predicted"] >= len(predicted)
    assert summary["performance"] is not None  # the labels arrived for this window


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_both_apis_accept_the_rows_id_and_timestamp_and_answer_as_the_core(
    project: tuple[Table, Path], tmp_path: Path, framework: str
) -> None:
    table, root = project
    config = _config(root)
    service = PredictionService.from_config(config)
    valid = table.historic.drop(columns=config.columns.target).head(5)
    records = _records(valid)
    served_root = tmp_path / "served"
    shutil.copytree(root, served_root, ignore=shutil.ignore_patterns("output"))
    with launch_server(served_root / "project_config.yaml", tmp_path / "server.out",
                       framework) as (url, _):
        single = requests.post(f"{url}/predict", json=records[0], timeout=30)
        batch = requests.post(f"{url}/predict/batch", json={"instances": records}, timeout=30)
    assert single.status_code == 200, single.text
    assert batch.status_code == 200, batch.text
    expected = service.predict_records(records)
    assert single.json()["prediction"] == expected[0].prediction
    assert [p["prediction"] for p in batch.json()["predictions"]] == [
        e.prediction for e in expected]
    assert [p.get("probabilities") for p in batch.json()["predictions"]] == [
        e.probabilities for e in expected]


def test_the_contract_tests_hold_for_the_table(project: tuple[Table, Path]) -> None:
    """tests/test_contract.py, what a user runs on their own project, passes on this one."""
    _, root = project
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_contract.py",
         "--project-root", str(root)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
