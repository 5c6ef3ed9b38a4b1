"""Any scikit-learn-compatible estimator that wins goes all the way: modelling, tracking, registry,
export, the prediction core (fast path or not), the endpoints and monitoring's reference.

For each estimator kind the modelling use case runs with it as the only candidate; then the
holdout metrics it recorded are recomputed from the SERVED answers, and the registry's copy
answers as the local artifact does.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from ml_project.config import PROBABILITY_PREFIX, Config, load_config
from ml_project.metrics import score_predictions
from ml_project.monitor import detect_drift
from ml_project.monitoring_data import load_reference_data
from ml_project.predict import PredictionService
from ml_project.serving.endpoints import PredictionEndpoints
from tests.conftest import write_project
from tests.tables import houses
from use_cases import modelling_historic_data_local

pytestmark = pytest.mark.slow

LOGISTIC = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}
CLASSIFIERS: dict[str, dict[str, Any]] = {
    "linear": LOGISTIC,
    "random_forest": {"estimator": "sklearn.ensemble.RandomForestClassifier",
                      "params": {"n_estimators": 30, "min_samples_leaf": 3}},
    "extra_trees": {"estimator": "sklearn.ensemble.ExtraTreesClassifier",
                    "params": {"n_estimators": 30}},
    "hist_gradient_boosting": {"estimator": "sklearn.ensemble.HistGradientBoostingClassifier"},
    "tuned_threshold": {"estimator": "sklearn.model_selection.TunedThresholdClassifierCV",
                        "params": {"estimator": LOGISTIC, "scoring": "balanced_accuracy",
                                   "cv": 3}},
    "lightgbm": {"estimator": "lightgbm.LGBMClassifier",
                 "params": {"n_estimators": 40, "verbose": -1}},
}
REGRESSORS: dict[str, dict[str, Any]] = {
    "regressor_extra_trees": {"estimator": "sklearn.ensemble.ExtraTreesRegressor",
                              "params": {"n_estimators": 30}},
}


def _needs(candidate: dict[str, Any]) -> Any:
    module = candidate["estimator"].split(".")[0]
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (pipenv sync --categories boosting)")


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=_needs(candidate)) for name, candidate in
    {**CLASSIFIERS, **REGRESSORS}.items()
])
def modelled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Config]:
    """A project whose only candidate is this estimator, after the modelling use case."""
    name: str = request.param
    root = tmp_path_factory.mktemp(name)
    candidate = {"name": name, **(CLASSIFIERS.get(name) or REGRESSORS[name])}
    if name in REGRESSORS:
        table = houses(600)
        table.config["training"]["candidates"] = [candidate]
        config_file = table.write(root)
    else:
        config_file = write_project(root, {"training": {"candidates": [candidate]}},
                                    n_historic=800, n_production=50)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        arguments = ["--config", str(config_file), "--root", str(root)]
        assert modelling_historic_data_local.main(arguments) == 0
    yield load_config("prediction", "production", "local", config_file=config_file, root=root)


def test_served_answers_reproduce_the_recorded_holdout_metrics(modelled: Config) -> None:
    service = PredictionService.from_config(modelled)
    reference = load_reference_data(service).sample
    served = service.predict_frame(reference)
    target = reference[modelled.columns.target].to_numpy()
    probabilities = served[[f"{PROBABILITY_PREFIX}{c}" for c in service.classes]].to_numpy(
    ) if service.has_probabilities else None

    recomputed = score_predictions(modelled.metrics, target, served["prediction"].to_numpy(),
                                   probabilities, service.classes, modelled.positive_class)

    assert recomputed == pytest.approx(service.metadata["holdout_metrics"], rel=1e-12)
    np.testing.assert_array_equal(served["prediction"], reference["prediction"])
    assert not detect_drift(reference, served.assign(**{
        c: reference[c] for c in modelled.columns.features}), modelled).detected


def test_the_registry_copy_answers_as_the_local_artifact(modelled: Config) -> None:
    local = PredictionService.from_config(modelled)
    registry_config = modelled.model_copy(update={"prediction": modelled.prediction.model_copy(
        update={"model_source": "registry"})})
    registered = PredictionService.from_config(registry_config)
    rows = local.reference
    assert rows is not None and registered.reference is not None

    pd.testing.assert_frame_equal(registered.predict_frame(rows).drop(columns="model_version"),
                                  local.predict_frame(rows).drop(columns="model_version"))
    if "Forest" in modelled.training.candidates[0].estimator:  # the first release's failure
        assert "sklearn.tree._tree.Tree" in local.metadata["skops_trusted_types"]


def test_the_endpoints_answer_with_the_pipelines_predict(modelled: Config) -> None:
    service = PredictionService.from_config(modelled)
    reference = service.reference
    assert reference is not None
    features = reference[service.features].head(20)
    records = json.loads(features.to_json(orient="records"))
    endpoints = PredictionEndpoints(service, None, None)

    reply = endpoints.predict_batch(json.dumps({"instances": records}).encode(), None)

    assert reply.status == 200, reply.body
    answered = [item["prediction"] for item in json.loads(reply.body)["predictions"]]
    expected = service.pipeline.predict(features)
    if modelled.is_classification:
        assert answered == [str(v) if isinstance(v, str) else v.item() for v in expected]
    else:
        np.testing.assert_allclose(answered, expected, rtol=1e-12)
