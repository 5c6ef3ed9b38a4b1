"""Holdout-style metrics computed from predictions, so any path that has predictions and labels
(holdout evaluation, batch scoring of labelled files, monitoring) reports the same numbers.

Names and signs follow scikit-learn's scorers (greater is better: `neg_log_loss` is negative).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics

# y, predictions, probabilities (columns in `classes` order), classes, the positive class, and
# each row's weight (None: 1 each; `estimate.py` scores every possible label of a row, weighted
# by its probability, with these same definitions)
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray | None, Sequence[Any], Any,
                   np.ndarray | None], float]


def _roc_auc(y: np.ndarray, probabilities: np.ndarray | None, classes: Sequence[Any],
             positive: Any, weight: np.ndarray | None) -> float:
    """AUC of the positive class's probability; labels of any type (text too)."""
    if probabilities is None:
        raise ValueError("roc_auc needs class probabilities")
    column = list(classes).index(positive)
    return float(metrics.roc_auc_score(np.asarray(y) == positive, probabilities[:, column],
                                       sample_weight=weight))


SCORERS: dict[str, Scorer] = {
    "roc_auc": lambda y, pred, proba, classes, positive, weight: _roc_auc(
        y, proba, classes, positive, weight),
    "accuracy": lambda y, pred, proba, classes, positive, weight: metrics.accuracy_score(
        y, pred, sample_weight=weight),
    # zero_division=0.0: the value scikit-learn gives anyway for a class neither labelled nor
    # predicted (and `RunningScores` too), without its warning on every small window
    "f1": lambda y, pred, proba, classes, positive, weight: metrics.f1_score(
        y, pred, pos_label=positive, zero_division=0.0, sample_weight=weight),
    "f1_macro": lambda y, pred, proba, classes, positive, weight: metrics.f1_score(
        y, pred, average="macro", zero_division=0.0, sample_weight=weight),
    "neg_log_loss": lambda y, pred, proba, classes, positive, weight: -metrics.log_loss(
        y, proba, labels=classes, sample_weight=weight),
    "neg_root_mean_squared_error": lambda y, pred, proba, classes, positive, weight:
        -metrics.root_mean_squared_error(y, pred, sample_weight=weight),
    "neg_mean_absolute_error": lambda y, pred, proba, classes, positive, weight:
        -metrics.mean_absolute_error(y, pred, sample_weight=weight),
    "r2": lambda y, pred, proba, classes, positive, weight: metrics.r2_score(
        y, pred, sample_weight=weight),
}


def bootstrap_interval(statistic: Callable[[np.ndarray], float], size: int, *,
                       resamples: int, seed: int) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of `statistic(rows)`: `resamples` draws of `size`
    row indices with replacement, from a seeded generator (the same interval twice). A draw
    whose statistic is undefined (NaN: a resample with one class for ROC AUC) is left out."""
    generator = np.random.default_rng(seed)
    draws = [value for _ in range(resamples)
             if np.isfinite(value := statistic(generator.integers(0, size, size)))]
    if not draws:
        return float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def cv_scorers(names: Sequence[str], positive: Any, classes: Sequence[Any] = ()
               ) -> dict[str, Any]:
    """scikit-learn scorers for the search, with the same positive class and classes as
    `SCORERS`: the built-in "f1" assumes the label 1, which text labels do not have, and the
    built-in "neg_log_loss" takes the classes from the fold's labels, so it fails on a fold
    without a rare class (a time split keeps such folds)."""
    scorers: dict[str, Any] = {name: name for name in names}
    if "f1" in scorers:
        scorers["f1"] = metrics.make_scorer(metrics.f1_score, pos_label=positive)
    if "neg_log_loss" in scorers and classes:
        scorers["neg_log_loss"] = metrics.make_scorer(
            metrics.log_loss, greater_is_better=False, response_method="predict_proba",
            labels=sorted(classes))  # the order of `classes_` and of log_loss
    return scorers


def score_predictions(
    names: Sequence[str],
    y_true: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray | None = None,
    classes: Sequence[Any] = (),
    positive: Any = None,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """Each named metric; ROC AUC is NaN when the labels hold a single class (undefined).

    Args:
        classes: the model's classes, in the order of the probability columns.
        positive: the positive class of a binary task (f1, roc_auc); the last class if None.
        sample_weight: each row's weight (rows of weight 0 count as absent).
    """
    classes = list(classes)
    positive = classes[-1] if positive is None and classes else positive
    present = y_true if sample_weight is None else np.asarray(y_true)[sample_weight > 0]
    scores = {}
    for name in names:
        if name == "roc_auc" and len(np.unique(present)) < 2:
            scores[name] = float("nan")
        else:
            scores[name] = float(SCORERS[name](y_true, predicted, probabilities, classes,
                                               positive, sample_weight))
    return scores


def relative_drop(baseline: float, value: float) -> float:
    """How much worse `value` is than `baseline`, as a share of the baseline's magnitude (0.05:
    5% worse), so one threshold means the same for any metric and unit; the plain drop when
    the baseline is 0. Greater is better, as in scikit-learn's scorers."""
    drop = baseline - value
    return drop / abs(baseline) if baseline != 0 else drop


class RunningScores:
    """The same metrics over a stream of chunks, in constant memory (batch scoring of files
    larger than memory): counts and sums, exact; ROC AUC from a histogram of the positive
    class's probability per label, `bins` bins, pairs within one bin counted as ties (off from
    the exact value by at most the share of such pairs: < 1e-4 on the shipped model)."""

    def __init__(self, names: Sequence[str], classes: Sequence[Any], *, regression: bool,
                 positive: Any = None, bins: int = 1 << 16) -> None:
        self.names = list(names)
        self.classes = list(classes)
        # the positive class of a binary task (f1, roc_auc), as in `score_predictions`
        self.positive = (self.classes.index(positive) if positive is not None
                         else len(self.classes) - 1)
        self.regression = regression
        self.bins = bins
        self.rows = 0
        size = len(self.classes)
        self.confusion = np.zeros((size, size), dtype=np.int64)  # [true, predicted]
        self.log_loss_sum = 0.0
        self.histogram = np.zeros((2, bins), dtype=np.int64)  # [negative, positive] x bin
        self.sums = np.zeros(4)  # y, y^2, squared error, absolute error (regression)

    def add(self, y_true: np.ndarray, predicted: np.ndarray,
            probabilities: np.ndarray | None = None) -> None:
        self.rows += len(y_true)
        if self.regression:
            y, p = np.asarray(y_true, dtype=float), np.asarray(predicted, dtype=float)
            self.sums += [y.sum(), (y * y).sum(), ((y - p) ** 2).sum(), np.abs(y - p).sum()]
            return
        truth = pd.Categorical(y_true, categories=self.classes).codes.astype(np.int64)
        guess = pd.Categorical(predicted, categories=self.classes).codes.astype(np.int64)
        if (truth < 0).any() or (guess < 0).any():
            raise ValueError(f"labels and predictions must be among the classes {self.classes}")
        np.add.at(self.confusion, (truth, guess), 1)
        if probabilities is not None:
            chosen = probabilities[np.arange(len(truth)), truth]
            self.log_loss_sum -= float(np.log(np.clip(chosen, np.finfo(float).eps, 1)).sum())
            if len(self.classes) == 2:
                bins = np.minimum((probabilities[:, self.positive] * self.bins).astype(np.int64),
                                  self.bins - 1)
                np.add.at(self.histogram, ((truth == self.positive).astype(np.int64), bins), 1)

    def result(self) -> dict[str, float]:
        """Each named metric; NaN where it is undefined (no rows, ROC AUC of one class)."""
        return {name: self._score(name) for name in self.names}

    def _score(self, name: str) -> float:
        n = self.rows
        if n == 0:
            return float("nan")
        if self.regression:
            total, squares, squared_error, absolute_error = self.sums
            variance = squares - total * total / n
            return {
                "neg_root_mean_squared_error": -float(np.sqrt(squared_error / n)),
                "neg_mean_absolute_error": -float(absolute_error / n),
                "r2": float(1 - squared_error / variance) if variance > 0 else float("nan"),
            }[name]
        confusion = self.confusion
        true_positive = np.diag(confusion).astype(float)
        per_class_f1 = 2 * true_positive / np.maximum(confusion.sum(0) + confusion.sum(1), 1)
        if name == "accuracy":
            return float(true_positive.sum() / n)
        if name == "f1":
            return float(per_class_f1[self.positive])
        if name == "f1_macro":
            return float(per_class_f1.mean())
        if name == "neg_log_loss":
            return -self.log_loss_sum / n
        if name == "roc_auc":
            negatives, positives = self.histogram
            if not negatives.sum() or not positives.sum():
                return float("nan")
            below = np.cumsum(negatives) - negatives
            wins = (positives * (below + 0.5 * negatives)).sum()
            return float(wins / (negatives.sum() * positives.sum()))
        raise KeyError(f"unknown metric {name!r}")
