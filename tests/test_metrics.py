"""Metrics accumulated chunk by chunk agree with the same metrics on the whole arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ml_project.metrics import RunningScores, score_predictions

CLASSIFICATION = ["roc_auc", "accuracy", "f1", "f1_macro", "neg_log_loss"]
REGRESSION = ["neg_root_mean_squared_error", "neg_mean_absolute_error", "r2"]


def test_running_scores_equal_whole_array_scores_for_classification() -> None:
    random = np.random.default_rng(0)
    labels = random.integers(0, 2, 20_000)
    positive = np.clip(labels * 0.3 + random.random(20_000) * 0.7, 0, 1)
    probabilities = np.column_stack([1 - positive, positive])
    predicted = (positive > 0.5).astype(int)
    running = RunningScores(CLASSIFICATION, [0, 1], regression=False)
    for start in range(0, 20_000, 777):
        end = start + 777
        running.add(labels[start:end], predicted[start:end], probabilities[start:end])
    expected = score_predictions(CLASSIFICATION, labels, predicted, probabilities, [0, 1])
    result = running.result()
    assert result["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-4)
    for name in ("accuracy", "f1", "f1_macro", "neg_log_loss"):
        assert result[name] == pytest.approx(expected[name], rel=1e-9), name


def test_running_scores_equal_whole_array_scores_for_regression() -> None:
    random = np.random.default_rng(1)
    truth = random.normal(50, 10, 5000)
    predicted = truth + random.normal(0, 3, 5000)
    running = RunningScores(REGRESSION, [], regression=True)
    for start in range(0, 5000, 333):
        running.add(truth[start:start + 333], predicted[start:start + 333])
    expected = score_predictions(REGRESSION, truth, predicted)
    assert running.result() == pytest.approx(expected, rel=1e-9)


def test_running_scores_refuse_a_label_outside_the_classes() -> None:
    running = RunningScores(["accuracy"], [0, 1], regression=False)
    with pytest.raises(ValueError, match="among the classes"):
        running.add(np.array([7]), np.array([1]))
