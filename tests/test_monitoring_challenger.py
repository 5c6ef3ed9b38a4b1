"""Champion vs challenger on the same production instances: pairing by request, agreement, the
paired bootstrap interval of the metric difference, and the stated promotion rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ml_project.config import PREDICTION_COLUMN, Config, load_config
from ml_project.export import read_metadata
from ml_project.monitoring_challenger import (
    KEEP,
    PROMOTE,
    WAIT,
    Comparison,
    compare,
    comparison_lines,
    recommend,
)
from ml_project.monitoring_data import read_prediction_window
from ml_project.monitoring_summary import EXIT_BAD_INPUT, EXIT_PROMOTION_FAILED
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.registry import ARTIFACT_SHA256_TAG
from tests.conftest import write_project
from use_cases.monitoring_production_data_local import SUMMARY_FILE
from use_cases.monitoring_production_data_local import main as monitoring_main
from use_cases.predicting_production_data_local import main as stream_main

COLUMNS = ["request_id", "instance_index", "instance_id", "prediction", "probabilities",
           "model_version", "model_sha256", "logged_at"]


def _answers(labels: np.ndarray, positive_scores: np.ndarray, version: str, classes: list[Any]
             ) -> pd.DataFrame:
    """Answers to instances i0..iN (request r<i>), one per row, scores for the last class."""
    rows = []
    for i, score in enumerate(positive_scores):
        rows.append({
            "request_id": f"r{i}", "instance_index": 0, "instance_id": f"i{i}",
            "prediction": classes[int(score >= 0.5)],
            "probabilities": {str(classes[0]): 1 - score, str(classes[1]): score},
            "model_version": version, "model_sha256": f"sha-{version}",
            "logged_at": f"2026-12-01T00:{i // 60:02d}:{i % 60:02d}+00:00",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _labels(config: Config, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({config.columns.id: [f"i{i}" for i in range(len(labels))],
                         config.columns.target: labels})


def _classes(config: Config) -> list[Any]:
    return list(config.columns.target_classes)


def test_a_challenger_better_beyond_noise_is_recommended_and_pairs_are_by_request(
    config: Config
) -> None:
    generator = np.random.default_rng(0)
    classes = _classes(config)
    labels = generator.integers(0, 2, 400)
    truth = np.array(classes, dtype=object)[labels]
    champion = _answers(labels, generator.uniform(size=400), "1", classes)  # chance
    challenger = _answers(labels, np.clip(labels * 0.8 + generator.uniform(0, 0.2, 400), 0, 1),
                          "2", classes)  # informative
    older = _answers(labels, generator.uniform(size=400), "0", classes).iloc[:10]
    outside = _answers(labels, generator.uniform(size=410), "2", classes).iloc[400:]
    shadow = pd.concat([older.assign(logged_at="2026-11-30T00:00:00+00:00"), challenger,
                        outside.assign(request_id=lambda f: f["request_id"] + "x")])

    result = compare(config, champion, shadow, _labels(config, truth), "1", classes)

    assert (result.challenger_version, result.other_challengers) == ("2", ["0"])
    assert (result.answered, result.paired, result.labelled) == (400, 400, 400)
    same = (champion["prediction"] == challenger["prediction"]).mean()
    assert result.agreement == pytest.approx(same)
    assert result.difference["ci95_low"] is not None and result.difference["ci95_low"] > 0
    assert result.recommendation == PROMOTE
    assert any("PROMOTE" in line for line in comparison_lines(result))


def test_a_challenger_no_better_is_not_promoted_and_unlabelled_pairs_wait(config: Config) -> None:
    generator = np.random.default_rng(1)
    classes = _classes(config)
    labels = generator.integers(0, 2, 300)
    truth = np.array(classes, dtype=object)[labels]
    informative = np.clip(labels * 0.7 + generator.uniform(0, 0.3, 300), 0, 1)
    champion = _answers(labels, informative, "1", classes)
    worse = _answers(labels, generator.uniform(size=300), "2", classes)
    assert compare(config, champion, worse, _labels(config, truth), "1",
                   classes).recommendation == KEEP
    unlabelled = compare(config, champion, worse, None, "1", classes)
    assert (unlabelled.recommendation, unlabelled.labelled) == (WAIT, 0)
    assert unlabelled.paired == 300
    nothing = compare(config, champion, worse.iloc[0:0], None, "1", classes)
    assert nothing.challenger_version is None and "no shadow answers" in nothing.reason


@pytest.mark.parametrize(("labelled", "low", "high", "expected"), [
    (99, 0.01, 0.05, WAIT),  # too few labels, whatever the interval
    (100, 0.01, 0.05, PROMOTE),
    (100, -0.05, -0.01, KEEP),
    (100, -0.01, 0.02, WAIT),
    (100, None, None, WAIT),
])
def test_the_rule_promotes_only_when_the_whole_interval_is_above_zero(
    labelled: int, low: float | None, high: float | None, expected: str
) -> None:
    comparison = Comparison("1", "2", 500, 500, labelled=labelled, metric="roc_auc",
                            difference={"value": 0.0, "ci95_low": low, "ci95_high": high})
    assert recommend(comparison, 100)[0] == expected


def _shadow_project(challenged_project: Path, root: Path) -> Path:
    """A copy of the challenged project serving with the challenger in shadow."""
    shutil.copytree(challenged_project, root)
    config_file = root / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    content["prediction"]["shadow"] = "challenger"
    config_file.write_text(yaml.safe_dump(content, sort_keys=False))
    return config_file


def _arguments(config_file: Path) -> list[str]:
    return ["--config", str(config_file), "--root", str(config_file.parent)]


@pytest.mark.slow
def test_monitoring_promotes_the_challenger_only_when_its_evidence_clears_the_rule(
    challenged_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = _shadow_project(challenged_project, tmp_path / "project")
    config = load_config("prediction", "production", "local", config_file=config_file,
                         root=config_file.parent)
    assert stream_main(_arguments(config_file)) == 0
    log = PredictionLog.from_config(config)
    shadow = log.read(shadow=True)
    log.close()
    labels_file = Path(config.resolve(config.data.production_labels))

    # Labels as the champion predicted them: the challenger cannot be better. Not promoted.
    answers = read_prediction_window(config).predictions
    pd.DataFrame({config.columns.id: answers[config.columns.id],
                  config.columns.target: answers[PREDICTION_COLUMN]}).to_csv(labels_file,
                                                                               index=False)
    code = monitoring_main([*_arguments(config_file), "--promote-challenger"])
    summary = json.loads((config.output_dir / "monitoring" / SUMMARY_FILE).read_text())
    assert code not in (EXIT_BAD_INPUT, EXIT_PROMOTION_FAILED)
    assert summary["challenger"]["recommendation"] == KEEP
    assert summary["challenger"]["paired"] == summary["challenger"]["answered"] == len(shadow)
    assert "NOT PROMOTED" in capsys.readouterr().out
    assert read_metadata(config.model_artifacts_dir / "champion")["model_version"] == "1"

    # Labels as the challenger predicted them: better beyond noise. Promoted, as modelling does.
    pd.DataFrame({config.columns.id: [row["instance_id"] for row in shadow],
                  config.columns.target: [row["prediction"] for row in shadow]}).to_csv(
        labels_file, index=False)
    code = monitoring_main([*_arguments(config_file), "--promote-challenger"])
    summary = json.loads((config.output_dir / "monitoring" / SUMMARY_FILE).read_text())
    assert code not in (EXIT_BAD_INPUT, EXIT_PROMOTION_FAILED)
    assert summary["challenger"]["recommendation"] == PROMOTE
    assert summary["promotion"]["promoted"] is True
    assert "PROMOTED: version 2 is the champion" in capsys.readouterr().out
    champion = PredictionService.from_config(config)
    assert champion.model_version == "2"
    registered = MlflowClient(config.tracking_uri).get_model_version_by_alias(
        config.tracking.registered_model_name, "champion")
    assert str(registered.version) == "2"
    assert registered.tags[ARTIFACT_SHA256_TAG] == champion.model_sha256


def test_a_regression_challenger_is_compared_by_how_far_its_predictions_are(
    tmp_path: Path
) -> None:
    config_file = write_project(tmp_path)
    config = load_config("prediction", "production", "local", config_file=config_file,
                         root=tmp_path, overrides={
                             "task": "regression", "training": {"metric": "r2", "split": "random"},
                             "columns": {"target_classes": [], "positive_class": None}})
    generator = np.random.default_rng(3)
    truth = generator.normal(size=300)
    answers = _answers(truth, np.zeros(300), "1", [0, 1]).assign(
        prediction=truth + generator.normal(0, 1.0, 300), probabilities=None)
    shadow = answers.assign(prediction=truth + generator.normal(0, 0.1, 300), model_version="2")

    result = compare(config, answers, shadow, _labels(config, truth), "1", [])

    assert result.agreement is None
    assert result.mean_abs_difference == pytest.approx(
        float(np.abs(answers["prediction"] - shadow["prediction"]).mean()))
    assert result.metric == "r2" and result.recommendation == PROMOTE
    assert any("prediction difference" in line for line in comparison_lines(result))
