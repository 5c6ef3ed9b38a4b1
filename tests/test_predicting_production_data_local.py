"""End-to-end: the simulated production stream and its prediction log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ml_project.prediction_log.log import PredictionLog
from tests.conftest import prediction_config
from use_cases import predicting_production_data_local


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(trained_project, root)
    return root


def _stream(root: Path, *args: str) -> int:
    return predicting_production_data_local.main(
        ["--config", str(root / "project_config.yaml"), "--root", str(root), *args]
    )


def test_stream_logs_exactly_one_record_per_instance_sent(project: Path) -> None:
    assert _stream(project) == 0
    sent = pd.read_csv(project / "data/production_data.csv", dtype={"customer_id": object})
    rows = PredictionLog.from_config(prediction_config(project)).read()
    assert len(rows) == len(sent)
    assert [row["instance_id"] for row in rows] == sent["customer_id"].tolist()
    rejected = [row for row in rows if row["error"]]
    assert 0 < len(rejected) < len(rows) // 10
    assert all(row["prediction"] is None for row in rejected)
    assert all(set(row["probabilities"]) == {"0", "1"} for row in rows if not row["error"])
    assert {row["source"] for row in rows} == {"stream"}


def test_stream_limit_and_rerun_append(project: Path) -> None:
    assert _stream(project, "--limit", "5") == 0
    assert _stream(project, "--limit", "7", "--rate", "1000") == 0
    assert PredictionLog.from_config(prediction_config(project)).count() == 12


def test_stream_without_artifact_exits_with_a_clear_message(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.rmtree(project / "data/model_artifacts")
    assert _stream(project) == 2
    assert "run the modelling use case first" in caplog.text
