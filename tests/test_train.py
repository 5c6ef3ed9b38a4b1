"""Training: every task end to end on small generated data, the holdout split, the leaderboard."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import TimeSeriesSplit

from ml_project.config import Config, ConfigError, load_config
from ml_project.config_sections import CandidateConfig
from ml_project.ingest import load_historic_data
from ml_project.leaderboard import build_leaderboard
from ml_project.train import (
    CandidateResult,
    TrainingDataError,
    build_estimator,
    build_pipeline,
    build_search,
    check_training_config,
    check_training_rows,
    evaluate_holdout,
    select_best,
    split_holdout,
    train_candidates,
)
from ml_project.validate import validate_production_data
from tests.conftest import write_project
from tests.tables import SHAPES
from use_cases import modelling_historic_data_local

LOGISTIC: dict[str, Any] = {
    "name": "logistic_regression",
    "estimator": "sklearn.linear_model.LogisticRegression",
    "params": {"max_iter": 500},
    "search": {"C": [0.1, 1.0]},
}


def _config(root: Path, **overrides: Any) -> Config:
    return load_config(
        "modelling", "historic", "local",
        config_file=root / "project_config.yaml", root=root, overrides=overrides,
    )


def _raw(config: Config, **derived: Any) -> pd.DataFrame:
    """Validated historic data, with extra target columns derived from its features."""
    production = load_historic_data(config)
    features = production.assign(
        monthly_charges=pd.to_numeric(production["monthly_charges"]),
        support_calls=pd.to_numeric(production["support_calls"]),
    )
    extra = {name: function(features) for name, function in derived.items()}
    return validate_production_data(production.assign(**extra), config, with_target=True).valid


def _charge_segment(features: pd.DataFrame) -> pd.Series:
    """Three classes from monthly charges: a learnable multiclass target."""
    return pd.cut(features["monthly_charges"], [0, 45, 75, np.inf], labels=["low", "mid", "high"])


def _yearly_bill(features: pd.DataFrame) -> pd.Series:
    """A numeric target from the features plus noise: a learnable regression target."""
    noise = np.random.default_rng(0).normal(0, 30, len(features))
    return 12 * features["monthly_charges"] + 25 * features["support_calls"] + noise


@dataclass(frozen=True)
class Run:
    config: Config
    train: pd.DataFrame
    holdout: pd.DataFrame
    results: list[CandidateResult]


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One binary training run on the example data, shared by the leaderboard tests."""
    root = tmp_path_factory.mktemp("binary")
    write_project(root)
    config = _config(root)
    train, holdout = split_holdout(_raw(config), config)
    return Run(config, train, holdout, train_candidates(train, config))


def test_train_candidates_binary_classification_end_to_end(binary_run: Run) -> None:
    best = select_best(binary_run.results)

    metrics = evaluate_holdout(best.pipeline, binary_run.holdout, binary_run.config)

    assert set(metrics) == set(binary_run.config.metrics)
    assert metrics["roc_auc"] > 0.7
    probabilities = best.pipeline.predict_proba(binary_run.holdout.head(3))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_train_candidates_multiclass_classification_end_to_end(project: Path) -> None:
    config = _config(
        project,
        task="multiclass_classification",
        columns={"target": "charge_segment", "target_classes": ["low", "mid", "high"],
                 "positive_class": None},
        training={"metric": "f1_macro", "candidates": [LOGISTIC]},
    )
    raw = _raw(config, charge_segment=_charge_segment)
    train, holdout = split_holdout(raw, config)

    best = select_best(train_candidates(train, config))
    metrics = evaluate_holdout(best.pipeline, holdout, config)

    assert set(metrics) == {"f1_macro", "accuracy", "neg_log_loss"}
    assert metrics["f1_macro"] > 0.7
    assert set(best.pipeline.predict(holdout)) <= {"low", "mid", "high"}
    assert best.pipeline.predict_proba(holdout.head(2)).shape == (2, 3)


def test_train_candidates_regression_end_to_end(project: Path) -> None:
    config = _config(
        project,
        task="regression",
        columns={"target": "yearly_bill", "target_classes": [], "positive_class": None},
        training={
            "split": "random",
            "metric": "neg_root_mean_squared_error",
            "candidates": [
                {"name": "ridge", "estimator": "sklearn.linear_model.Ridge",
                 "search": {"alpha": [0.1, 10.0]}},
                {"name": "boosting", "estimator": "sklearn.ensemble.HistGradientBoostingRegressor",
                 "params": {"max_iter": 30}},
            ],
        },
    )
    raw = _raw(config, yearly_bill=_yearly_bill)
    train, holdout = split_holdout(raw, config)

    results = train_candidates(train, config)
    best = select_best(results)
    metrics = evaluate_holdout(best.pipeline, holdout, config)

    assert [result.name for result in results] == ["ridge", "boosting"]
    assert metrics["r2"] > 0.8
    assert metrics["neg_root_mean_squared_error"] < 0
    assert build_leaderboard(results, config)["candidate"].iloc[0] == best.name


def test_split_holdout_by_time_holds_out_the_latest_rows(project: Path) -> None:
    config = _config(project, training={"split": "time", "holdout_fraction": 0.25})
    raw = _raw(config)

    train, holdout = split_holdout(raw, config)

    assert len(holdout) == round(len(raw) * 0.25) and len(train) + len(holdout) == len(raw)
    assert holdout["event_time"].min() >= train["event_time"].max()
    assert train["event_time"].is_monotonic_increasing


def _time_ordered_segments(config: Config, rare_rows: slice) -> pd.DataFrame:
    """The multiclass charge segments in time order, the class "high" only in `rare_rows`."""
    train, _ = split_holdout(_raw(config, charge_segment=_charge_segment), config)
    segment = train["charge_segment"].astype(object).replace("high", "mid")
    segment.iloc[rare_rows] = "high"
    return train.assign(charge_segment=segment)


def test_a_time_split_scores_folds_that_lack_a_rare_class(project: Path) -> None:
    """A time split keeps the order of the rows, so a rare class seen early may be missing from
    later validation folds: log loss still scores them, over the model's classes."""
    config = _config(
        project,
        task="multiclass_classification",
        columns={"target": "charge_segment", "target_classes": ["low", "mid", "high"],
                 "positive_class": None},
        training={"split": "time", "metric": "neg_log_loss", "candidates": [LOGISTIC]},
    )
    train = _time_ordered_segments(config, slice(0, 40))

    result = select_best(train_candidates(train, config))

    assert np.isfinite(result.cv_score) and result.cv_score < 0
    assert result.pipeline.predict_proba(train.head(2)).shape == (2, 3)


def test_a_time_split_whose_first_fold_never_sees_a_class_is_refused_with_the_fix(
    project: Path
) -> None:
    config = _config(
        project,
        task="multiclass_classification",
        columns={"target": "charge_segment", "target_classes": ["low", "mid", "high"],
                 "positive_class": None},
        training={"split": "time", "metric": "f1_macro", "cv_folds": 3, "candidates": [LOGISTIC]},
    )
    train = _time_ordered_segments(config, slice(-40, None))

    with pytest.raises(TrainingDataError, match=(
            r"the training rows of CV fold 1 of 3 \(the earliest \d+\) have no row of the "
            r"class high.*use fewer training.cv_folds, or training.split: stratified")):
        train_candidates(train, config)


def test_a_time_split_with_a_validation_fold_of_one_class_is_refused_for_roc_auc(
    project: Path
) -> None:
    config = _config(project, training={"split": "time", "metric": "roc_auc", "cv_folds": 3,
                                        "candidates": [LOGISTIC]})
    train, _ = split_holdout(_raw(config), config)
    _, first_validation = next(TimeSeriesSplit(n_splits=3).split(train))
    churned = train["churned"].copy()
    churned.iloc[first_validation] = 0

    with pytest.raises(TrainingDataError, match=r"the validation rows of CV fold 1 of 3 are all "
                                                r"of the class 0, and ROC AUC is undefined"):
        train_candidates(train.assign(churned=churned), config)


def test_a_config_that_quarantines_every_row_stops_modelling_with_the_reasons(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Labels spelled otherwise than target_classes says: every row is quarantined, and the run
    says why before any training (it used to die in the split with scikit-learn's message)."""
    config_file = project / "project_config.yaml"
    content = yaml.safe_load(config_file.read_text())
    content["columns"]["target_classes"] = ["no", "yes"]
    content["columns"]["positive_class"] = "yes"
    config_file.write_text(yaml.safe_dump(content))

    code = modelling_historic_data_local.main(["--config", str(config_file), "--root",
                                               str(project)])

    assert code == 2
    assert re.search(r"Cannot train: 0 valid rows, too few to hold out \d+% and cross-validate "
                     r"in \d folds .*; (\d+) of \1 rows were quarantined, most often for "
                     r".churned: must be one of \['no', 'yes'\], got '[01]'. \(\d+ rows\)",
                     caplog.text), caplog.text
    assert not (project / "data" / "model_artifacts" / "champion").exists()


@pytest.mark.parametrize(("split", "rows_of_high", "least"), [
    ("stratified", 1, 2), ("random", 0, 1)])
def test_a_class_without_enough_valid_rows_is_refused_before_training(
    project: Path, split: str, rows_of_high: int, least: int
) -> None:
    config = _config(project, task="multiclass_classification",
                     columns={"target": "charge_segment", "target_classes": ["low", "mid", "high"],
                 "positive_class": None},
                     training={"split": split, "metric": "f1_macro"})
    raw = _raw(config, charge_segment=_charge_segment)
    segment = raw["charge_segment"].astype(object).replace("high", "mid")
    segment.iloc[:rows_of_high] = "high"

    with pytest.raises(TrainingDataError, match=(
            rf"the classes 'high' \({rows_of_high}\) of columns.target_classes have fewer than "
            rf"{least} valid rows")):
        check_training_rows(raw.assign(charge_segment=segment), raw.iloc[:0], config)


def test_split_holdout_stratified_keeps_the_class_balance(binary_run: Run) -> None:
    rates = [frame["churned"].mean() for frame in (binary_run.train, binary_run.holdout)]

    assert abs(rates[0] - rates[1]) < 0.01
    assert len(binary_run.holdout) / (len(binary_run.train) + len(binary_run.holdout)) == (
        pytest.approx(0.2, abs=0.01)
    )


def test_select_best_takes_the_best_cv_score(binary_run: Run) -> None:
    best = select_best(binary_run.results)

    assert best.cv_score == max(result.cv_score for result in binary_run.results)
    board = build_leaderboard(binary_run.results, binary_run.config)
    assert board.loc[0, "mean_roc_auc"] == pytest.approx(best.cv_score)


def test_select_best_rejects_an_empty_list() -> None:
    with pytest.raises(ValueError, match="no trained candidates"):
        select_best([])


def test_build_estimator_sets_params_and_the_seed(config: Config) -> None:
    candidate = CandidateConfig.model_validate(LOGISTIC)

    estimator = build_estimator(candidate, config)

    assert isinstance(estimator, LogisticRegression)
    assert estimator.max_iter == 500 and estimator.random_state == config.training.random_seed


@pytest.mark.parametrize(
    "estimator",
    ["sklearn.linear_model.NoSuchModel", "no_such_package.Model", "LogisticRegression"],
)
def test_build_estimator_names_the_candidate_that_cannot_be_imported(
    config: Config, estimator: str
) -> None:
    candidate = CandidateConfig(name="typo", estimator=estimator)

    expected = rf"training\.candidates\.typo: cannot import '{estimator}'"
    with pytest.raises(ValueError, match=expected):
        build_estimator(candidate, config)


def test_build_pipeline_is_engineer_preprocess_model(config: Config) -> None:
    pipeline = build_pipeline(config, LogisticRegression())

    assert [name for name, _ in pipeline.steps] == ["engineer", "preprocess", "model"]


@pytest.mark.parametrize(("table", "candidate", "problem"), [
    ("houses", {"name": "churny", "estimator": "sklearn.linear_model.LogisticRegression"},
     "training.candidates.churny: sklearn.linear_model.LogisticRegression is not a regressor"),
    ("loans", {"name": "ridge", "estimator": "sklearn.linear_model.Ridge"},
     "training.candidates.ridge: sklearn.linear_model.Ridge is not a classifier"),
    ("loans", {"name": "svm", "estimator": "sklearn.svm.SVC"},
     "training.candidates.svm: sklearn.svm.SVC has no predict_proba"),
    ("loans", {"name": "typo", "estimator": "sklearn.ensemble.RandomForrestClassifier"},
     "training.candidates.typo: cannot import 'sklearn.ensemble.RandomForrestClassifier'"),
    ("loans", {"name": "bad_param", "estimator": "sklearn.linear_model.LogisticRegression",
               "params": {"colour": "blue"}},
     "training.candidates.bad_param: sklearn.linear_model.LogisticRegression does not take"),
    ("loans", {"name": "bad_search", "estimator": "sklearn.linear_model.LogisticRegression",
               "search": {"C": [1.0], "depth": [2, 3]}},
     "training.candidates.bad_search.search: sklearn.linear_model.LogisticRegression takes no "
     "parameter depth"),
    ("loans", {"name": "not_a_class", "estimator": "os.getcwd"},
     "training.candidates.not_a_class: 'os.getcwd' is not an estimator class"),
    ("loans", {"name": "not_an_estimator", "estimator": "collections.OrderedDict"},
     "training.candidates.not_an_estimator: 'collections.OrderedDict' is not an estimator class"),
])
def test_check_training_config_refuses_a_candidate_that_does_not_suit_the_task_naming_it(
    tmp_path: Path, table: str, candidate: dict[str, Any], problem: str
) -> None:
    """Found before any data is read, not after minutes of training a classifier on a
    regression target; loading the config imports nothing it names (serving trains nothing)."""
    config_file = SHAPES[table](rows=50).write(tmp_path)
    config = load_config("modelling", "historic", "local", config_file=config_file,
                         root=tmp_path, overrides={"training": {"candidates": [candidate]}})

    with pytest.raises(ConfigError, match=re.escape(problem)):
        check_training_config(config)


MARK_VARIABLE = "ML_PROJECT_TEST_ESTIMATOR_MARK"  # a file anything called below would create


class _AnswersEverything(type):
    """A metaclass answering any attribute asked of its classes, running code to do so."""

    def __getattr__(cls, name: str) -> object:
        Path(os.environ[MARK_VARIABLE]).touch()
        return lambda *args, **kwargs: None


class LooksLikeAnEstimator(metaclass=_AnswersEverything):
    """`getattr(LooksLikeAnEstimator, "fit")` gives a callable: not a proof of an estimator."""


def _touch(path: Path) -> dict[str, Any]:
    return {"estimator": "subprocess.Popen", "params": {"args": ["touch", str(path)]}}


LOGISTIC_SPEC = {"estimator": "sklearn.linear_model.LogisticRegression"}


@pytest.mark.parametrize(("candidate", "where", "named"), [
    (lambda mark: {"name": "popen", **_touch(mark)}, "popen", "subprocess.Popen"),
    (lambda mark: {"name": "nested", "estimator": "sklearn.model_selection.FixedThresholdClassifier",
                   "params": {"estimator": _touch(mark)}}, "nested.estimator", "subprocess.Popen"),
    (lambda mark: {"name": "stack", "estimator": "sklearn.ensemble.StackingClassifier",
                   "params": {"estimators": [["lr", LOGISTIC_SPEC], ["bad", _touch(mark)]]}},
     "stack.estimators[1][1]", "subprocess.Popen"),
    (lambda mark: {"name": "searched", "estimator": "sklearn.model_selection.FixedThresholdClassifier",
                   "params": {"estimator": LOGISTIC_SPEC},
                   "search": {"estimator": [LOGISTIC_SPEC, _touch(mark)]}},
     "searched.search.estimator[1]", "subprocess.Popen"),
    (lambda mark: {"name": "metaclass", "estimator": f"{__name__}.LooksLikeAnEstimator"},
     "metaclass", f"{__name__}.LooksLikeAnEstimator"),
], ids=["popen", "nested", "in-a-list", "in-a-search", "metaclass"])
def test_nothing_named_as_an_estimator_is_called_before_it_is_known_to_be_an_estimator_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, candidate: Callable[[Path], dict[str, Any]],
    where: str, named: str,
) -> None:
    """The config names code to import, as any framework's settings do; what it names is called
    only once it is an estimator class, at any depth (a param, a list of them, a search value),
    and looked up statically (no metaclass hook runs). Here each would create a file."""
    mark = tmp_path / "ran"
    monkeypatch.setenv(MARK_VARIABLE, str(mark))
    config_file = SHAPES["loans"](rows=50).write(tmp_path)
    config = load_config("modelling", "historic", "local", config_file=config_file,
                         root=tmp_path, overrides={"training": {"candidates": [candidate(mark)]}})

    with pytest.raises(ConfigError, match=re.escape(
            f"training.candidates.{where}: '{named}' is not an estimator class")):
        check_training_config(config)
    time.sleep(0.2)  # what a started process would write, it would have written by now
    assert not mark.exists()


def test_estimators_in_a_list_and_in_a_search_are_built_from_their_dotted_paths(
    tmp_path: Path,
) -> None:
    config_file = SHAPES["loans"](rows=50).write(tmp_path)
    tree = {"estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": 2}}
    stack = {"name": "stack", "estimator": "sklearn.ensemble.StackingClassifier",
             "params": {"estimators": [["lr", LOGISTIC_SPEC], ["tree", tree]],
                        "final_estimator": LOGISTIC_SPEC},
             "search": {"final_estimator": [LOGISTIC_SPEC, tree]}}
    config = load_config("modelling", "historic", "local", config_file=config_file,
                         root=tmp_path, overrides={"training": {"candidates": [stack]}})
    check_training_config(config)

    estimator = build_estimator(config.training.candidates[0], config)
    grid = build_search(config.training.candidates[0], config)

    assert [(name, type(model).__name__) for name, model in estimator.estimators] == [
        ("lr", "LogisticRegression"), ("tree", "DecisionTreeClassifier")]
    assert estimator.get_params()["tree__random_state"] == config.training.random_seed
    assert [type(model).__name__ for model in grid["final_estimator"]] == [
        "LogisticRegression", "DecisionTreeClassifier"]


def test_a_search_key_with_no_values_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    config_file = SHAPES["loans"](rows=50).write(tmp_path)
    empty = {**LOGISTIC, "search": {"C": []}}

    with pytest.raises(ConfigError, match=r"training\.candidates\.0\.search\.C: List should "
                                          r"have at least 1 item"):
        load_config("modelling", "historic", "local", config_file=config_file, root=tmp_path,
                    overrides={"training": {"candidates": [empty]}})


def test_a_nested_estimator_param_is_built_from_its_dotted_path(tmp_path: Path) -> None:
    config_file = SHAPES["loans"](rows=50).write(tmp_path)
    tuned = {"name": "tuned", "estimator": "sklearn.model_selection.FixedThresholdClassifier",
             "params": {"threshold": 0.3, "estimator": {
                 "estimator": "sklearn.linear_model.LogisticRegression",
                 "params": {"C": 0.5}}}}
    config = load_config("modelling", "historic", "local", config_file=config_file,
                         root=tmp_path, overrides={"training": {"candidates": [tuned]}})

    estimator = build_estimator(config.training.candidates[0], config)

    assert type(estimator).__name__ == "FixedThresholdClassifier"
    assert estimator.get_params()["estimator__C"] == 0.5
    assert estimator.get_params()["estimator__random_state"] == config.training.random_seed
