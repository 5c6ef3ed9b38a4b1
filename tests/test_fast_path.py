"""The fast path: the fitted preprocessing without the per-call checks, used only after it
proved itself at load (the Pipeline's labels and probabilities exactly, by every route), for the
exact types it knows; anything else runs the plain Pipeline, and the reason is logged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

from ml_project.engineer import FeatureStep
from ml_project.ingest import load_historic_data
from ml_project.predict import PredictionService
from ml_project.preprocess import build_preprocessor
from ml_project.validate import validate_production_data
from tests.conftest import prediction_config


@pytest.fixture(scope="module")
def service(trained_project: Path) -> PredictionService:
    return PredictionService.from_config(prediction_config(trained_project))


@pytest.fixture(scope="module")
def raw(trained_project: Path, service: PredictionService) -> pd.DataFrame:
    config = prediction_config(trained_project)
    return validate_production_data(load_historic_data(config), config, with_target=False).valid


def _record(row: pd.Series) -> dict[str, object]:
    """A row as a JSON client sends it: None for missing values."""
    return {str(k): (None if pd.isna(v) else v) for k, v in row.items()}


def _fit(service: PredictionService, raw: pd.DataFrame, model: Any,
         preprocessor: Any = None) -> Pipeline:
    """The service's Pipeline shape around `model` (and, optionally, another preprocessor),
    fitted on a target that needs the features."""
    from ml_project.train import build_pipeline

    pipeline = build_pipeline(service.config, model)
    if preprocessor is not None:
        pipeline.steps[1] = ("preprocess", preprocessor)
    target = (raw["tenure_months"] < 24) ^ ((raw["monthly_charges"] * 100).round() % 2 == 1)
    return pipeline.fit(raw[service.features], target.astype(int))


def _service_for(pipeline: Pipeline, service: PredictionService, raw: pd.DataFrame
                 ) -> PredictionService:
    """A service over `pipeline` with a reference sample of `raw`, as an export gives it."""
    reference = raw.head(300).assign(prediction=pipeline.predict(raw[service.features].head(300)))
    return PredictionService(pipeline, service.metadata, service.config, reference)


ESTIMATORS = {
    "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=0),
    "logistic_regression": lambda: LogisticRegression(max_iter=500),
    "random_forest": lambda: RandomForestClassifier(n_estimators=20, random_state=0),
    "extra_trees": lambda: ExtraTreesClassifier(n_estimators=20, random_state=0),
    "fixed_threshold": lambda: FixedThresholdClassifier(LogisticRegression(), threshold=0.2),
}


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_fast_path_proves_itself_and_answers_as_the_pipeline_for_each_estimator(
    service: PredictionService, raw: pd.DataFrame, kind: str
) -> None:
    pipeline = _fit(service, raw, ESTIMATORS[kind]())
    served = _service_for(pipeline, service, raw)

    assert served.fast_path is not None, served.core
    scored = served.predict_frame(raw)
    features = raw[service.features]
    np.testing.assert_array_equal(scored["prediction"], pipeline.predict(features))
    np.testing.assert_array_equal(scored[["probability_0", "probability_1"]],
                                  pipeline.predict_proba(features))
    row = _record(features.iloc[3])
    assert served.predict_instance(row).prediction == pipeline.predict(features.iloc[[3]])[0]


def test_labels_come_from_predict_not_from_the_largest_probability(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    """A threshold-tuned classifier labels 1 from probability 0.2 on: the served label is its
    `predict`, which an argmax of `predict_proba` would contradict on many rows."""
    pipeline = _fit(service, raw, ESTIMATORS["fixed_threshold"]())
    served = _service_for(pipeline, service, raw)
    features = raw[service.features]

    labels = served.predict_frame(raw)["prediction"].to_numpy()
    argmax = pipeline.classes_[pipeline.predict_proba(features).argmax(axis=1)]

    assert (labels != argmax).sum() > 0
    np.testing.assert_array_equal(labels, pipeline.predict(features))


class _AlwaysPositive(LogisticRegression):  # type: ignore[misc]
    """A subclass whose `predict` is not the class of highest probability."""

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.classes_[1])


@pytest.mark.parametrize(("model", "shortcut"), [
    (ESTIMATORS["hist_gradient_boosting"], True),
    (ESTIMATORS["logistic_regression"], True),
    (ESTIMATORS["random_forest"], True),
    (ESTIMATORS["extra_trees"], True),
    (ESTIMATORS["fixed_threshold"], False),
    (lambda: _AlwaysPositive(max_iter=500), False),
])
def test_only_exact_known_classifiers_take_the_label_from_the_highest_probability(
    service: PredictionService, raw: pd.DataFrame, model: Any, shortcut: bool
) -> None:
    """The shortcut saves `predict`'s pass over the model; a subclass or a wrapper may label
    otherwise, so it calls `predict` (and the load-time proof passes either way)."""
    pipeline = _fit(service, raw, model())
    served = _service_for(pipeline, service, raw)

    assert served.fast_path is not None, served.core
    assert served.fast_path.labels_from_probabilities is shortcut
    features = raw[service.features]
    np.testing.assert_array_equal(served.predict_frame(raw)["prediction"],
                                  pipeline.predict(features))


def test_a_shared_highest_probability_takes_the_label_predict_gives(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    """A decision of 1e-20 is class 1 to `predict`, and probability 0.5 to both classes, whose
    argmax would say class 0."""
    pipeline = _fit(service, raw, LogisticRegression(max_iter=500))
    model = pipeline[-1]
    model.coef_[:] = 0.0
    model.intercept_[:] = 1e-20
    features = raw[service.features]
    assert (pipeline.predict_proba(features) == 0.5).all()
    assert (pipeline.predict(features) == 1).all()

    served = _service_for(pipeline, service, raw)

    assert served.fast_path is not None and served.fast_path.labels_from_probabilities
    assert (served.predict_frame(raw)["prediction"] == 1).all()
    assert served.predict_instance(_record(features.iloc[0])).prediction == 1


def test_a_probability_that_is_not_a_number_takes_the_label_predict_gives(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    """A multiclass model with a NaN parameter: its softmax is NaN for every class, whose argmax
    is the first class, while `predict` takes the argmax of the decision, where the NaN is.
    (The load-time proof would refuse the model; the shortcut does not lean on that.)"""
    from ml_project.fast_path import compile_pipeline
    from ml_project.train import build_pipeline

    features = raw[service.features]
    target = pd.qcut(raw["tenure_months"], 3, labels=["low", "mid", "high"]).astype(str)
    pipeline = build_pipeline(service.config, LogisticRegression(max_iter=500))
    pipeline.fit(features, target)
    pipeline[-1].intercept_[2] = np.nan
    expected = pipeline.predict(features)
    assert np.isnan(pipeline.predict_proba(features)).all()
    assert (expected == pipeline.classes_[2]).all()

    compiled, reason = compile_pipeline(pipeline)

    assert compiled is not None and compiled.labels_from_probabilities, reason
    labels, _ = compiled.predict_both(service._frame_columns(raw), probabilities=True)
    np.testing.assert_array_equal(labels, expected)


class _ShiftedScaler(StandardScaler):  # type: ignore[misc]
    """A subclass that transforms differently: an isinstance test would take it for its base."""

    def transform(self, X: Any, copy: Any = None) -> Any:
        return super().transform(X, copy=copy) + 1.0


def _preprocessor_with(service: PredictionService, **changes: Any) -> ColumnTransformer:
    preprocessor = build_preprocessor(service.config)
    return preprocessor.set_params(**changes)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"numerical__scale": _ShiftedScaler()}, "step of type _ShiftedScaler"),
    ({"transformer_weights": {"numerical": 2.0, "categorical": 1.0}}, "transformer_weights"),
])
def test_fast_path_refuses_types_and_settings_it_cannot_reproduce(
    service: PredictionService, raw: pd.DataFrame, changes: dict[str, Any], reason: str
) -> None:
    pipeline = _fit(service, raw, LogisticRegression(max_iter=500),
                    _preprocessor_with(service, **changes))
    served = _service_for(pipeline, service, raw)

    assert served.fast_path is None and reason in served.core
    features = raw[service.features]
    np.testing.assert_array_equal(served.predict_frame(raw)[["probability_0", "probability_1"]],
                                  pipeline.predict_proba(features))


def test_a_fast_path_that_answers_differently_is_not_used_and_the_reason_is_logged(
    service: PredictionService, raw: pd.DataFrame, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """The load-time proof is the safety net for whatever the type checks miss: a shortcut
    whose arithmetic is off by a hair (as a library upgrade could make it) is caught."""
    from ml_project import fast_path, predict

    def off_by_a_hair(pipeline: Pipeline) -> tuple[fast_path.FastPipeline | None, str]:
        compiled, reason = fast_path.compile_pipeline(pipeline)
        assert compiled is not None
        block = compiled.blocks[0]
        original = block.transform

        def shifted(columns: Any, out: np.ndarray) -> None:
            original(columns, out)
            out += 1e-9

        compiled.blocks[0] = replace(block, transform=shifted)
        return compiled, reason

    monkeypatch.setattr(predict, "compile_pipeline", off_by_a_hair)
    with caplog.at_level("WARNING", logger="ml_project.predict"):
        served = _service_for(service.pipeline, service, raw)

    assert served.fast_path is None
    assert "fast path differs from the Pipeline (probabilities differ by up to" in caplog.text
    np.testing.assert_array_equal(
        served.predict_frame(raw.head(50))[["probability_0", "probability_1"]],
        service.pipeline.predict_proba(raw[service.features].head(50)))


def test_the_load_time_proof_runs_on_one_openmp_thread_as_requests_do(
    service: PredictionService, raw: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its single rows go a tree at a time: with OpenMP's threads woken for every tree, the
    proof took a minute to load on a busy 2-core machine."""
    from ml_project import fast_path, predict

    threads: list[int] = []

    def counting(pipeline: Pipeline) -> tuple[fast_path.FastPipeline | None, str]:
        compiled, reason = fast_path.compile_pipeline(pipeline)
        assert compiled is not None
        predict_both = compiled.predict_both

        def recorded(columns: Any, probabilities: bool) -> Any:
            threads.extend(pool["num_threads"] for pool in threadpool_info()
                           if pool["user_api"] == "openmp")
            return predict_both(columns, probabilities)

        monkeypatch.setattr(compiled, "predict_both", recorded)
        return compiled, reason

    monkeypatch.setattr(predict, "compile_pipeline", counting)
    with threadpool_limits(limits=2, user_api="openmp"):  # what a 2-core machine gives
        served = _service_for(service.pipeline, service, raw)

    assert served.fast_path is not None
    assert threads and set(threads) == {1}


def test_without_a_reference_sample_the_plain_pipeline_runs(
    service: PredictionService
) -> None:
    served = PredictionService(service.pipeline, service.metadata, service.config, None)

    assert served.fast_path is None and "no reference sample" in served.core


@pytest.mark.parametrize("rows", [1, 5, 200])  # per-value lookups for a few rows, vectorised beyond
def test_fast_path_preprocessing_equals_the_pipeline_including_unknown_categories(
    service: PredictionService, raw: pd.DataFrame, rows: int
) -> None:
    assert service.fast_path is not None
    categorical = list(service.config.columns.categorical)
    # as requests give them: object arrays, which (unlike a validated Categorical) can hold
    # a category the model never saw
    features = raw[service.features].head(rows).astype(dict.fromkeys(categorical, object))
    features.loc[0, "contract"] = "never-seen"
    columns = {name: features[name].to_numpy(dtype=dtype)
               for name, dtype in zip(service.features, service._dtypes)}
    np.testing.assert_array_equal(
        service.fast_path.preprocess(columns), service.pipeline[:-1].transform(features)
    )


@pytest.mark.parametrize("rows", [1, 5, 200])
def test_fast_path_encodes_validated_categoricals_from_their_codes(
    service: PredictionService, raw: pd.DataFrame, rows: int
) -> None:
    """A validated frame's categorical features arrive as Categoricals, missing values included;
    their codes give the same encoding as the Pipeline's imputer and encoder on the values."""
    assert service.fast_path is not None
    categorical = list(service.config.columns.categorical)
    features = raw[service.features].head(rows).reset_index(drop=True)
    features.loc[0, categorical] = np.nan
    assert all(isinstance(features[name].dtype, pd.CategoricalDtype) for name in categorical)
    columns = {name: features[name].array if name in categorical else features[name].to_numpy()
               for name in service.features}
    as_objects = features.astype(dict.fromkeys(categorical, object))
    expected = service.pipeline[:-1].transform(as_objects)
    np.testing.assert_array_equal(service.fast_path.preprocess(columns), expected)
    np.testing.assert_array_equal(service.pipeline[:-1].transform(features), expected)


def test_fast_path_feature_steps_get_numpy_arrays_for_validated_categoricals(
    service: PredictionService, raw: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps work on numpy arrays: a Categorical input reaches them as an object array."""
    seen: dict[str, Any] = {}

    def spy(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.update({name: values for name, values in columns.items()})
        return {"contract_seen": np.zeros(len(columns["contract"]))}

    assert service.fast_path is not None and isinstance(raw["contract"].dtype, pd.CategoricalDtype)
    step = FeatureStep("spy", ("contract",), (("contract_seen", "numerical"),), spy)
    monkeypatch.setattr(service.fast_path, "feature_steps", [*service.fast_path.feature_steps, step])
    service.predict_frame(raw.head(50))
    assert isinstance(seen["contract"], np.ndarray) and seen["contract"].dtype == object
    assert seen["contract"].tolist() == raw["contract"].head(50).astype(object).tolist()
