"""A histogram gradient boosting model's trees, compiled from their fitted nodes: the model's
own predictions, bit for bit, at a fraction of its cost.

scikit-learn walks each tree row by row, a branch the CPU cannot predict at every split. A
small tree (the default model's have 7 leaves) needs no branching: each of its splits is one
vectorised comparison over a whole column, the outcomes of a row's splits form a number, and
that number indexes a table of the leaf each combination of outcomes reaches. A row's score
is then the same leaf values added in the same order as scikit-learn adds them, so the sums,
and the probabilities computed from them, are identical (tests compare every row). A few rows
(a request) are walked in plain Python instead, where the vectorised calls' fixed cost would
dominate, and a few hundred are left to scikit-learn.

Models it cannot reproduce exactly (categorical splits, trees of more than `MAX_SPLITS`
splits) are left to scikit-learn; `compile_trees` says why. Only numpy is imported here: the
module is on the serving path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

MAX_SPLITS = 14  # split nodes per tree: a table of at most 2**14 leaf values (128 KB)
SMALL_BATCH = 16  # rows up to which walking the trees in Python is the fastest way
# Rows from which vectorised comparisons beat scikit-learn; in between, it runs the model (a
# call per split costs ~1 ms in all for the default model, more than the model on 400 rows).
VECTORISED_ROWS = 512
ROWS_PER_THREAD = 25_000  # a thread for fewer rows costs more than it saves
# Modules of the models this compiles (by name: nothing to import on the serving path).
BOOSTING_MODULE = "sklearn.ensemble._hist_gradient_boosting."

class _Node(NamedTuple):
    """A fitted node, as scikit-learn's predictor reads it."""

    is_leaf: bool
    value: float
    feature: int
    threshold: float  # a value goes left when <= it
    missing_left: bool  # where NaN goes
    left: int
    right: int


class UnsupportedModel(ValueError):
    """The model holds something the compiled trees cannot reproduce exactly."""


@dataclass(frozen=True)
class _Tree:
    features: Sequence[int]  # per split, in the order of its bit in a row's outcome code
    thresholds: Sequence[float]  # a value goes left when <= its threshold
    missing_left: Sequence[bool]  # where NaN goes
    leaves: np.ndarray  # the leaf value each outcome code reaches
    nodes: Sequence[_Node]  # the tree as fitted, for walking a few rows

    def walk(self, row: Sequence[float]) -> float:
        """One row's leaf value, as scikit-learn's predictor finds it."""
        node = self.nodes[0]
        while not node.is_leaf:
            value = row[node.feature]
            if value != value:  # NaN
                node = self.nodes[node.left if node.missing_left else node.right]
            else:
                node = self.nodes[node.left if value <= node.threshold else node.right]
        return node.value


def _compile_tree(nodes: np.ndarray) -> _Tree:
    """The leaf reached by every combination of split outcomes, found by following the tree
    for all combinations at once."""
    if nodes["is_categorical"].any():
        raise UnsupportedModel("categorical splits")
    splits = np.flatnonzero(nodes["is_leaf"] == 0)
    if len(splits) > MAX_SPLITS:
        raise UnsupportedModel(f"trees of more than {MAX_SPLITS + 1} leaves")
    bit_of_node = np.zeros(len(nodes), dtype=np.int64)
    bit_of_node[splits] = np.arange(len(splits))
    codes = np.arange(2 ** len(splits))
    node = np.zeros(len(codes), dtype=np.int64)  # every code starts at the root
    for _ in range(len(splits)):  # no path is longer than the number of splits
        goes_left = (codes >> bit_of_node[node]) & 1 == 1
        following = np.where(goes_left, nodes["left"][node], nodes["right"][node])
        node = np.where(nodes["is_leaf"][node] == 1, node, following)
    return _Tree(
        features=nodes["feature_idx"][splits].tolist(),
        thresholds=nodes["num_threshold"][splits].tolist(),
        missing_left=(nodes["missing_go_to_left"][splits] == 1).tolist(),
        leaves=nodes["value"][node].astype(np.float64),
        nodes=[_Node(bool(n["is_leaf"]), float(n["value"]), int(n["feature_idx"]),
                     float(n["num_threshold"]), bool(n["missing_go_to_left"]), int(n["left"]),
                     int(n["right"])) for n in nodes],
    )


def _threads() -> int:
    """The threads scikit-learn's own predictor would use (OMP_NUM_THREADS, threadpoolctl
    limits and CPU quotas included), so both respect the same limits."""
    try:
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        return int(_openmp_effective_n_threads())
    except ImportError:  # a scikit-learn without it: every core
        return os.cpu_count() or 1


class CompiledTrees:
    """`predict_proba` (classifier) or `predict` (regressor) of a fitted
    HistGradientBoosting model without categorical features, from its trees."""

    def __init__(self, model: Any) -> None:
        if not type(model).__module__.startswith(BOOSTING_MODULE):
            raise UnsupportedModel(f"{type(model).__name__} is not a histogram gradient boosting")
        if getattr(model, "_preprocessor", None) is not None:
            raise UnsupportedModel("categorical features")
        try:
            self.trees = [[_compile_tree(predictor.nodes) for predictor in iteration]
                          for iteration in model._predictors]
            self.baseline = np.asarray(model._baseline_prediction, dtype=np.float64)
            self.outputs = int(model.n_trees_per_iteration_)
            self.n_features = int(model.n_features_in_)
            self.loss = model._loss
        except UnsupportedModel:
            raise
        except (AttributeError, KeyError, ValueError) as err:  # another scikit-learn's internals
            raise UnsupportedModel(f"unknown model internals ({err!r})") from err
        self.model = model
        self.is_classifier = hasattr(model, "classes_")
        splits = max((len(tree.features) for trees in self.trees for tree in trees), default=0)
        # a bit per split
        self.code_type: type[np.unsignedinteger[Any]] = np.uint8 if splits <= 8 else np.uint16

    def raw_predict(self, features: np.ndarray) -> np.ndarray:
        """The sum of the leaf values over all trees, per row and output: the model's
        `_raw_predict`, in the same layout (column-major, rows x outputs)."""
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {features.shape}")
        rows = len(features)
        raw = np.zeros((rows, self.outputs), dtype=np.float64, order="F")
        raw += self.baseline  # as scikit-learn starts its sums
        if rows <= SMALL_BATCH:
            self._walk(features, raw)
            return raw
        threads = min(_threads(), rows // ROWS_PER_THREAD)
        if threads <= 1:
            self._compare(features, raw)
            return raw
        bounds = np.linspace(0, rows, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:  # numpy lets go of the GIL in these loops
            list(pool.map(self._compare, [features[a:b] for a, b in zip(bounds, bounds[1:])],
                          [raw[a:b] for a, b in zip(bounds, bounds[1:])]))
        return raw

    def _compare(self, features: np.ndarray, raw: np.ndarray) -> None:
        """Add every tree's leaf values to `raw`, by vectorised comparisons."""
        rows = len(features)
        code, shifted = np.empty(rows, self.code_type), np.empty(rows, self.code_type)
        outcome = np.empty(rows, bool)
        for iteration in self.trees:
            for output, tree in enumerate(iteration):
                code.fill(0)
                for bit, (feature, threshold, missing_left) in enumerate(
                        zip(tree.features, tree.thresholds, tree.missing_left)):
                    column = features[:, feature]
                    np.less_equal(column, threshold, out=outcome)  # False for NaN
                    if missing_left:
                        np.logical_or(outcome, np.isnan(column), out=outcome)
                    np.left_shift(outcome.view(np.uint8), bit, out=shifted, dtype=self.code_type)
                    np.bitwise_or(code, shifted, out=code)
                raw[:, output] += tree.leaves.take(code)

    def _walk(self, features: np.ndarray, raw: np.ndarray) -> None:
        """Add every tree's leaf value to `raw`, row by row in Python (Python floats add as
        numpy's float64 do, in the same order)."""
        for row, values in enumerate(features.tolist()):
            sums = raw[row].tolist()
            for iteration in self.trees:
                for output, tree in enumerate(iteration):
                    sums[output] += tree.walk(values)
            raw[row] = sums

    def _by_model(self, features: np.ndarray) -> bool:
        return SMALL_BATCH < len(features) < VECTORISED_ROWS

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The model's `predict_proba`, as the model computes it from the raw scores."""
        if self._by_model(features):
            by_model: np.ndarray = self.model.predict_proba(features)
            return by_model
        probabilities: np.ndarray = self.loss.predict_proba(self.raw_predict(features))
        return probabilities

    def predict(self, features: np.ndarray) -> np.ndarray:
        """A regressor's predictions (a classifier's labels come from `predict_proba`)."""
        if self.is_classifier:
            raise TypeError("a classifier's predictions come from predict_proba")
        if self._by_model(features):
            by_model: np.ndarray = self.model.predict(features)
            return by_model
        predictions: np.ndarray = self.loss.link.inverse(self.raw_predict(features).ravel())
        return predictions


def compile_trees(model: Any) -> tuple[CompiledTrees | None, str]:
    """The compiled trees, or None and the reason scikit-learn evaluates the model itself."""
    try:
        return CompiledTrees(model), "compiled trees"
    except UnsupportedModel as err:
        return None, f"scikit-learn's own ({err})"
