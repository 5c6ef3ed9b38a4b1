"""End-to-end: the modelling use case on a miniature project in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from ml_project.export import load_pipeline


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
