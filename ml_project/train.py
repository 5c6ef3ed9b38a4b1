"""Training: the config's code checked, holdout split, CV search per candidate, selection,
holdout evaluation and the reference sample (the leaderboard: `leaderboard.py`).

Every candidate is the same Pipeline[engineer -> preprocess -> model] with a different model,
so the selected Pipeline is exactly the artifact that is exported and served.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    StratifiedKFold,
    TimeSeriesSplit,
    train_test_split,
)
from sklearn.pipeline import Pipeline

from ml_project.config import (
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    REASON_COLUMN,
    Config,
    ConfigError,
)
from ml_project.config_sections import CandidateConfig
from ml_project.engineer import FeatureEngineer, configured_steps
from ml_project.metrics import cv_scorers, score_predictions
from ml_project.preprocess import build_preprocessor
from ml_project.schemas import label_key

logger = logging.getLogger(__name__)

# Enough rows for a drift test to see a shift and a proof to cover the data's variety, few
# enough to load in a blink with the model.
REFERENCE_ROWS = 5000


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's fitted search: every setting's CV scores and the refitted best."""

    name: str
    search: GridSearchCV
    seconds: float

    @property
    def pipeline(self) -> Pipeline:
        best: Pipeline = self.search.best_estimator_
        return best

    @property
    def cv_score(self) -> float:
        return float(self.search.best_score_)

    @property
    def params(self) -> dict[str, Any]:
        return {key.removeprefix("model__"): value for key, value in self.search.best_params_.items()}


def features_and_target(frame: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, pd.Series]:
    """The Pipeline's input columns (features only, in schema order) and the target."""
    return frame[list(config.columns.features)], frame[config.columns.target]


def split_holdout(raw: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a share of rows: stratified by target, at random, or the latest by timestamp."""
    training = config.training
    if training.split == "time":
        timestamp = config.columns.timestamp
        if not timestamp:
            raise ValueError("training.split 'time' needs columns.timestamp")
        ordered = raw.sort_values(timestamp, kind="stable", ignore_index=True)
        cut = int(round(len(ordered) * (1 - training.holdout_fraction)))
        logger.info("Split %d rows into %d train and %d holdout (time: the latest by %s)",
                    len(raw), cut, len(raw) - cut, timestamp)
        return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)
    stratify = raw[config.columns.target] if training.split == "stratified" else None
    train, holdout = train_test_split(
        raw,
        test_size=training.holdout_fraction,
        random_state=training.random_seed,
        stratify=stratify,
    )
    logger.info("Split %d rows into %d train and %d holdout (%s)",
                len(raw), len(train), len(holdout), training.split)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def _import_estimator_class(path: str, where: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    try:
        estimator_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{where}: cannot import {path!r} ({err})") from err
    # Checked before anything named in the config is called: an estimator class has fit and
    # get_params (scikit-learn's API, which LightGBM's and XGBoost's classes follow too), looked
    # up statically, so that no class attribute, property or metaclass hook of it runs.
    if not inspect.isclass(estimator_class) or not all(
            callable(_static_attribute(estimator_class, method)) for method in ("fit", "get_params")):
        raise ValueError(f"{where}: {path!r} is not an estimator class (one with fit and "
                         "get_params, as scikit-learn's)")
    return estimator_class


def _static_attribute(owner: object, name: str) -> object:
    """`owner.name` as stored, without running a descriptor or __getattr__; None if absent."""
    try:
        return inspect.getattr_static(owner, name)
    except AttributeError:
        return None


def _is_estimator_spec(value: Any) -> bool:
    """A nested estimator in `params` or `search`: {estimator: dotted.Path, params: {...}}."""
    return isinstance(value, Mapping) and "estimator" in value and set(value) <= {
        "estimator", "params"}


def _built(value: Any, config: Config, where: str) -> Any:
    """`value` with every estimator spec in it built, in lists too (a stack's estimators)."""
    if _is_estimator_spec(value):
        return _instantiate(str(value["estimator"]), value.get("params") or {}, config, where)
    if isinstance(value, (list, tuple)):
        return [_built(item, config, f"{where}[{number}]") for number, item in enumerate(value)]
    return value


def _instantiate(path: str, params: Mapping[str, Any], config: Config, where: str) -> BaseEstimator:
    estimator_class = _import_estimator_class(path, where)
    built = {key: _built(value, config, f"{where}.{key}") for key, value in params.items()}
    if "random_state" in inspect.signature(estimator_class).parameters:
        built.setdefault("random_state", config.training.random_seed)
    try:
        estimator: BaseEstimator = estimator_class(**built)
    except TypeError as err:
        raise ValueError(f"{where}: {path} does not take these params: {err}") from err
    return estimator


def build_estimator(candidate: CandidateConfig, config: Config) -> BaseEstimator:
    """Instantiate `candidate.estimator` (a dotted import path) with its fixed params.

    A param may itself be an estimator, written `{estimator: dotted.Path, params: {...}}`
    (the base model of a `TunedThresholdClassifierCV`, say), alone or in a list (a stack's);
    `random_state` is seeded from `training.random_seed` wherever an estimator takes one and
    the config does not set it.
    """
    return _instantiate(candidate.estimator, candidate.params, config,
                        f"training.candidates.{candidate.name}")


def build_search(candidate: CandidateConfig, config: Config) -> dict[str, list[Any]]:
    """The candidate's search grid, estimator specs among its values built as in params."""
    where = f"training.candidates.{candidate.name}.search"
    return {key: _built(values, config, f"{where}.{key}")
            for key, values in candidate.search.items()}


def check_training_config(config: Config) -> None:
    """What the config names as code, imported and checked before any data is read or any model
    trained: every feature step against the columns, every candidate against the task and its
    search. The modelling use case runs it right after loading the config.

    Raises:
        ConfigError: naming the key and what is wrong with it.
    """
    try:
        configured_steps(config)
        check_candidates(config)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_candidates(config: Config) -> None:
    """Every candidate builds, suits the task (a classifier for classification, a regressor for
    regression) and takes every key its search varies. Raises ValueError naming the candidate."""
    for candidate in config.training.candidates:
        estimator = build_estimator(candidate, config)
        build_search(candidate, config)
        unknown = sorted(set(candidate.search) - set(estimator.get_params()))
        if unknown:
            raise ValueError(f"training.candidates.{candidate.name}.search: {candidate.estimator} "
                             f"takes no parameter {', '.join(unknown)}")
        if config.is_classification and not is_classifier(estimator):
            raise ValueError(f"training.candidates.{candidate.name}: {candidate.estimator} is not a"
                             f" classifier, and the task is {config.task}")
        if not config.is_classification and not is_regressor(estimator):
            raise ValueError(f"training.candidates.{candidate.name}: {candidate.estimator} is not a"
                             " regressor, and the task is regression")
        if config.is_classification and not hasattr(estimator, "predict_proba"):
            raise ValueError(f"training.candidates.{candidate.name}: {candidate.estimator} has no "
                             "predict_proba; the served answers include class probabilities")


def build_pipeline(config: Config, estimator: BaseEstimator) -> Pipeline:
    """The artifact's shape: feature engineering, preprocessing, model."""
    return Pipeline(
        [
            ("engineer", FeatureEngineer(configured_steps(config))),
            ("preprocess", build_preprocessor(config)),
            ("model", estimator),
        ]
    )


def _cv_splitter(config: Config) -> KFold | StratifiedKFold | TimeSeriesSplit:
    training = config.training
    if training.split == "time":
        return TimeSeriesSplit(n_splits=training.cv_folds)
    if config.is_classification:
        return StratifiedKFold(training.cv_folds, shuffle=True, random_state=training.random_seed)
    return KFold(training.cv_folds, shuffle=True, random_state=training.random_seed)


class TrainingDataError(ValueError):
    """The training rows cannot be used with this configuration; the message says what to
    change."""


def check_training_rows(valid: pd.DataFrame, quarantined: pd.DataFrame, config: Config) -> None:
    """Enough valid rows to hold out and cross-validate, and every class among them. A config
    that does not describe the file quarantines most rows, so the message gives the commonest
    reasons rows were quarantined.

    Raises:
        TrainingDataError: too few rows, or a class without enough rows.
    """
    folds = config.training.cv_folds
    reasons = quarantined.get(REASON_COLUMN, pd.Series(dtype=object)).value_counts()
    why = "" if reasons.empty else (
        f"; {len(quarantined)} of {len(valid) + len(quarantined)} rows were quarantined, most "
        "often for " + "; ".join(f"{reason!r} ({count} rows)" for reason, count in
                                 reasons.head(2).items()))
    if len(valid) < 2 * folds:
        raise TrainingDataError(
            f"{len(valid)} valid rows, too few to hold out {config.training.holdout_fraction:.0%} "
            f"and cross-validate in {folds} folds (at least {2 * folds} are needed){why}")
    if not config.is_classification:
        return
    counts = valid[config.columns.target].map(label_key).value_counts()
    rows = {label: int(counts.get(label_key(label), 0)) for label in config.columns.target_classes}
    least = 2 if config.training.split == "stratified" else 1
    short = [f"{label!r} ({count})" for label, count in rows.items() if count < least]
    if short:
        raise TrainingDataError(
            f"the classes {', '.join(short)} of columns.target_classes have fewer than {least} "
            f"valid rows, too few to learn and score them: check target_classes against the "
            f"labels of your file{why}")


def check_time_folds(target: pd.Series, config: Config) -> None:
    """A time split keeps the order of the rows, so a class may be missing from a CV fold: a
    model that never saw a class cannot give its probability, and ROC AUC is undefined on
    validation rows of one class. Say so before training, naming the fold and the fix.

    Raises:
        TrainingDataError: such a fold.
    """
    if config.training.split != "time" or not config.is_classification:
        return
    labels = target.astype(str).to_numpy()
    classes = [str(label) for label in config.columns.target_classes]
    folds = config.training.cv_folds
    fix = "use fewer training.cv_folds, or training.split: stratified"
    for number, (fit_rows, score_rows) in enumerate(_cv_splitter(config).split(labels), start=1):
        missing = [label for label in classes if label not in set(labels[fit_rows])]
        if missing:
            raise TrainingDataError(
                f"training.split 'time': the training rows of CV fold {number} of {folds} (the "
                f"earliest {len(fit_rows)}) have no row of the class {', '.join(missing)}, and "
                f"a model cannot learn a class it never saw; {fix}")
        if "roc_auc" in config.metrics and len(set(labels[score_rows])) < 2:
            raise TrainingDataError(
                f"training.split 'time': the validation rows of CV fold {number} of {folds} "
                f"are all of the class {labels[score_rows][0]}, and ROC AUC is undefined on "
                f"them; {fix}")


def train_candidates(train: pd.DataFrame, config: Config) -> list[CandidateResult]:
    """Grid-search every configured candidate with K-fold CV on all metrics; refit each best.

    Raises:
        TrainingDataError: a time split whose folds cannot be scored (`check_time_folds`).
    """
    features, target = features_and_target(train, config)
    check_time_folds(target, config)
    results = []
    candidates = config.training.candidates
    for number, candidate in enumerate(candidates, start=1):
        grid = {f"model__{key}": values for key, values in build_search(candidate, config).items()}
        settings = int(np.prod([len(values) for values in grid.values()])) if grid else 1
        logger.info(
            "Candidate %d/%d %s: %d settings x %d folds",
            number, len(candidates), candidate.name, settings, config.training.cv_folds,
        )
        search = GridSearchCV(
            build_pipeline(config, build_estimator(candidate, config)),
            grid,
            scoring=cv_scorers(config.metrics, config.positive_class,
                               config.columns.target_classes),
            refit=config.training.metric,
            cv=_cv_splitter(config),
            n_jobs=config.training.n_jobs,
            error_score="raise",
        )
        started = time.perf_counter()
        search.fit(features, target)
        result = CandidateResult(candidate.name, search, time.perf_counter() - started)
        logger.info(
            "Candidate %d/%d %s done in %.1f s: CV %s = %.4f with %s",
            number, len(candidates), candidate.name, result.seconds,
            config.training.metric, result.cv_score, result.params,
        )
        results.append(result)
    return results


def select_best(results: list[CandidateResult]) -> CandidateResult:
    """The candidate with the best mean CV score on the primary metric."""
    if not results:
        raise ValueError("no trained candidates to select from")
    return max(results, key=lambda result: result.cv_score)


def evaluate_holdout(pipeline: Pipeline, holdout: pd.DataFrame, config: Config,
                     label: str = "Holdout") -> dict[str, float]:
    """Every leaderboard metric on the holdout (same definitions as batch scoring reports)."""
    features, target = features_and_target(holdout, config)
    probabilities = pipeline.predict_proba(features) if config.is_classification else None
    classes = list(pipeline.classes_) if config.is_classification else []
    metrics = score_predictions(config.metrics, target.to_numpy(), pipeline.predict(features),
                                probabilities, classes, config.positive_class)
    logger.info("%s: %s", label, ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items()))
    return metrics


def build_reference_sample(pipeline: Pipeline, holdout: pd.DataFrame, config: Config
                           ) -> pd.DataFrame:
    """The artifact's reference sample: up to REFERENCE_ROWS validated holdout rows (identifiers,
    features, target) with the Pipeline's own predictions and probabilities.

    Monitoring compares production with it, and every load of the model proves the serving
    fast path against it: both need rows the model has not been trained on, as served.
    """
    if len(holdout) > REFERENCE_ROWS:
        holdout = holdout.sample(REFERENCE_ROWS, random_state=config.training.random_seed
                                 ).sort_index()
    sample = holdout.reset_index(drop=True)
    features, _ = features_and_target(sample, config)
    predictions = {PREDICTION_COLUMN: pipeline.predict(features)}
    if config.is_classification and hasattr(pipeline, "predict_proba"):
        probabilities = pipeline.predict_proba(features)
        predictions |= {f"{PROBABILITY_PREFIX}{label}": probabilities[:, i]
                        for i, label in enumerate(pipeline.classes_)}
    return sample.assign(**predictions)
