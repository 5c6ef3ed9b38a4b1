"""Champion vs challenger on the same production instances: pairing by request, agreement, the
paired bootstrap interval of the metric difference, and the stated promotion rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_project.config import Config
from ml_project.monitoring_challenger import (
    KEEP,
    PROMOTE,
    WAIT,
    Comparison,
    compare,
    comparison_lines,
    recommend,
)

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
