"""Compiled trees: the model's own predictions, bit for bit, by every route through them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from ml_project import compiled_trees
from ml_project.compiled_trees import SMALL_BATCH, VECTORISED_ROWS, CompiledTrees, compile_trees

FEATURES = 6


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features with missing values in training for some columns only, and a target of
    three classes that depends on them."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, FEATURES))
    features[rng.random(rows) < 0.1, 0] = np.nan
    features[rng.random(rows) < 0.05, 3] = np.nan
    score = features[:, 1] + np.nan_to_num(features[:, 0]) - 0.5 * features[:, 2] ** 2
    return features, np.digitize(score, [-0.5, 0.5])


def _unseen(rows: int) -> np.ndarray:
    """Rows to score: NaN in every column (also where training had none), infinities, values
    equal to thresholds, column-major as the fast path gives them."""
    features, _ = _data(rows, seed=1)
    rng = np.random.default_rng(2)
    features[rng.random(features.shape) < 0.05] = np.nan
    features[rng.random(features.shape) < 0.01] = np.inf
    features[rng.random(features.shape) < 0.01] = -np.inf
    features[:50] = np.round(features[:50], 1)
    return np.asfortranarray(features)


def _every_route(compiled: CompiledTrees, model: Any, method: str, features: np.ndarray,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Python walk (a few rows), the model (a few hundred), vectorised comparisons (more),
    threads (many); the raw scores too, wherever they are computed."""
    assert len(features) >= VECTORISED_ROWS
    for rows in (1, SMALL_BATCH, SMALL_BATCH + 1, VECTORISED_ROWS, len(features)):
        part = features[:rows]
        np.testing.assert_array_equal(getattr(compiled, method)(part),
                                      getattr(model, method)(part))
        np.testing.assert_array_equal(compiled.raw_predict(part), model._raw_predict(part))
    monkeypatch.setattr(compiled_trees, "ROWS_PER_THREAD", 300)
    monkeypatch.setattr(compiled_trees, "_threads", lambda: 3)
    np.testing.assert_array_equal(getattr(compiled, method)(features),
                                  getattr(model, method)(features))


@pytest.mark.parametrize("leaves", [2, 7, 15])  # 1 split; a byte of outcomes; two bytes
@pytest.mark.parametrize("classes", [2, 3])
def test_classifier_probabilities_are_the_models_own(
    leaves: int, classes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, target = _data(3000, seed=0)
    target = target if classes == 3 else (target > 0).astype(int)
    model = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=leaves, random_state=0)
    model.fit(features, target)
    compiled, how = compile_trees(model)
    assert compiled is not None, how
    assert max(len(tree.features) for trees in compiled.trees for tree in trees) == leaves - 1
    _every_route(compiled, model, "predict_proba", _unseen(1000), monkeypatch)


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_regressor_predictions_are_the_models_own(
    loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, target = _data(3000, seed=0)
    model = HistGradientBoostingRegressor(loss=loss, max_iter=30, max_leaf_nodes=7)
    model.fit(features, target + np.nan_to_num(features[:, 1]) ** 2)
    compiled, how = compile_trees(model)
    assert compiled is not None, how
    _every_route(compiled, model, "predict", _unseen(1000), monkeypatch)
    classifier = HistGradientBoostingClassifier(max_iter=2, max_leaf_nodes=7)
    with pytest.raises(TypeError):
        CompiledTrees(classifier.fit(features, target)).predict(features)


@pytest.mark.parametrize(("model", "reason"), [
    (HistGradientBoostingClassifier(max_iter=5), "trees of more than 15 leaves"),
    (HistGradientBoostingClassifier(max_iter=5, max_leaf_nodes=7, categorical_features=[5]),
     "categorical features"),
    (LogisticRegression(), "LogisticRegression is not a histogram gradient boosting"),
])
def test_what_it_cannot_reproduce_is_left_to_scikit_learn_with_the_reason(
    model: Any, reason: str
) -> None:
    features, target = _data(2000, seed=0)
    features[:, 5] = np.arange(2000) % 4  # categories for the categorical case
    model.fit(np.nan_to_num(features), target)
    compiled, how = compile_trees(model)
    assert compiled is None
    assert how == f"scikit-learn's own ({reason})"


def test_wrong_number_of_features_is_an_error_not_a_silent_misread() -> None:
    features, target = _data(VECTORISED_ROWS, seed=0)
    model = HistGradientBoostingClassifier(max_iter=3, max_leaf_nodes=7).fit(features, target)
    compiled = CompiledTrees(model)
    for rows in (1, VECTORISED_ROWS):  # walked, compared
        with pytest.raises(ValueError, match="expected 6 features"):
            compiled.predict_proba(features[:rows, :5])


def test_threads_follow_the_limits_scikit_learn_follows() -> None:
    with threadpool_limits(limits=1, user_api="openmp"):
        assert compiled_trees._threads() == 1
