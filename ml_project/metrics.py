"""Holdout-style metrics computed from predictions, so any path that has predictions and labels
(holdout evaluation, batch scoring of labelled files, monitoring) reports the same numbers.

Names and signs follow scikit-learn's scorers (greater is better: `neg_log_loss` is negative).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from sklearn import metrics

# y, predictions, probabilities (columns in `classes` order), classes, the positive class
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray | None, Sequence[Any], Any], float]


def _roc_auc(y: np.ndarray, probabilities: np.ndarray | None, classes: Sequence[Any],
             positive: Any) -> float:
    """AUC of the positive class's probability; labels of any type (text too)."""
    if probabilities is None:
        raise ValueError("roc_auc needs class probabilities")
    column = list(classes).index(positive)
    return float(metrics.roc_auc_score(np.asarray(y) == positive, probabilities[:, column]))


SCORERS: dict[str, Scorer] = {
    "roc_auc": lambda y, pred, proba, classes, positive: _roc_auc(y, proba, classes, positive),
    "accuracy": lambda y, pred, proba, classes, positive: metrics.accuracy_score(y, pred),
    "f1": lambda y, pred, proba, classes, positive: metrics.f1_score(y, pred, pos_label=positive),
    "f1_macro": lambda y, pred, proba, classes, positive: metrics.f1_score(y, pred,
                                                                           average="macro"),
    "neg_log_loss": lambda y, pred, proba, classes, positive: -metrics.log_loss(
        y, proba, labels=classes),
    "neg_root_mean_squared_error": lambda y, pred, proba, classes, positive:
        -metrics.root_mean_squared_error(y, pred),
    "neg_mean_absolute_error": lambda y, pred, proba, classes, positive:
        -metrics.mean_absolute_error(y, pred),
    "r2": lambda y, pred, proba, classes, positive: metrics.r2_score(y, pred),
}


def cv_scorers(names: Sequence[str], positive: Any) -> dict[str, Any]:
    """scikit-learn scorers for the search, with the same positive class as `SCORERS`: the
    built-in "f1" assumes the label 1, which text labels do not have."""
    scorers: dict[str, Any] = {name: name for name in names}
    if "f1" in scorers:
        scorers["f1"] = metrics.make_scorer(metrics.f1_score, pos_label=positive)
    return scorers


def score_predictions(
    names: Sequence[str],
    y_true: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray | None = None,
    classes: Sequence[Any] = (),
    positive: Any = None,
) -> dict[str, float]:
    """Each named metric; ROC AUC is NaN when the labels hold a single class (undefined).

    Args:
        classes: the model's classes, in the order of the probability columns.
        positive: the positive class of a binary task (f1, roc_auc); the last class if None.
    """
    classes = list(classes)
    positive = classes[-1] if positive is None and classes else positive
    scores = {}
    for name in names:
        if name == "roc_auc" and len(np.unique(y_true)) < 2:
            scores[name] = float("nan")
        else:
            scores[name] = float(SCORERS[name](y_true, predicted, probabilities, classes,
                                               positive))
    return scores
