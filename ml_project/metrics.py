"""Holdout-style metrics computed from predictions, so any path that has predictions and labels
(holdout evaluation, batch scoring of labelled files, monitoring) reports the same numbers.

Names and signs follow scikit-learn's scorers (greater is better: `neg_log_loss` is negative).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from sklearn import metrics

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray | None, Sequence[Any]], float]


def _binary_proba(probabilities: np.ndarray | None) -> np.ndarray:
    if probabilities is None:
        raise ValueError("roc_auc needs class probabilities")
    return probabilities[:, 1]


SCORERS: dict[str, Scorer] = {
    "roc_auc": lambda y, pred, proba, classes: metrics.roc_auc_score(y, _binary_proba(proba)),
    "accuracy": lambda y, pred, proba, classes: metrics.accuracy_score(y, pred),
    "f1": lambda y, pred, proba, classes: metrics.f1_score(y, pred, pos_label=classes[-1]),
    "f1_macro": lambda y, pred, proba, classes: metrics.f1_score(y, pred, average="macro"),
    "neg_log_loss": lambda y, pred, proba, classes: -metrics.log_loss(y, proba, labels=classes),
    "neg_root_mean_squared_error": lambda y, pred, proba, classes: -metrics.root_mean_squared_error(
        y, pred
    ),
    "neg_mean_absolute_error": lambda y, pred, proba, classes: -metrics.mean_absolute_error(y, pred),
    "r2": lambda y, pred, proba, classes: metrics.r2_score(y, pred),
}


def score_predictions(
    names: Sequence[str],
    y_true: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray | None = None,
    classes: Sequence[Any] = (),
) -> dict[str, float]:
    """Each named metric; ROC AUC is NaN when the labels hold a single class (undefined)."""
    scores = {}
    for name in names:
        if name == "roc_auc" and len(np.unique(y_true)) < 2:
            scores[name] = float("nan")
        else:
            scores[name] = float(SCORERS[name](y_true, predicted, probabilities, list(classes)))
    return scores
