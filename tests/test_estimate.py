"""Performance estimated without labels (CBPE): synthetic windows whose true class probabilities
are known, so the realised metric can be drawn and the estimate judged against it.

Tolerance: an estimate must land within 3 of its own stated sampling errors of the realised
metric (and within 0.02 on windows of 10,000 rows); with fixed seeds every test is deterministic.
The Monte Carlo behind each interval takes a second or more: the tests of many windows or of a
multiclass table are in the slow tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_project.config import Config, load_config
from ml_project.estimate import (
    Calibration,
    EstimatedPerformance,
    check_calibration,
    estimate_performance,
    expected_scores,
    served_outputs,
)
from ml_project.metrics import score_predictions
from tests.conftest import write_project

BINARY_BASELINE = {"roc_auc": 0.75, "accuracy": 0.7, "f1": 0.7, "neg_log_loss": -0.6}
MULTICLASS_BASELINE = {"f1_macro": 0.6, "accuracy": 0.6, "neg_log_loss": -0.9}


def load(root: Path, overrides: dict[str, Any] | None = None) -> Config:
    config_file = write_project(root, n_historic=60, n_production=10)
    return load_config("prediction", "production", "local", config_file=config_file,
                       root=root, overrides=overrides)


@pytest.fixture
def binary(tmp_path: Path) -> Config:
    return load(tmp_path)


@pytest.fixture
def multiclass(tmp_path: Path) -> Config:
    return load(tmp_path, {"task": "multiclass_classification",
                           "columns": {"target_classes": ["a", "b", "c"], "positive_class": None},
                           "training": {"metric": "f1_macro"}})


def binary_window(rows: int, a: float, b: float, *, seed: int, sharpen: float = 1.0
                  ) -> pd.DataFrame:
    """True P(churn) ~ Beta(a, b), labels drawn from it; the model serves the truth, or with
    `sharpen` > 1 an overconfident version of it (log-odds times `sharpen`): the same ranking."""
    generator = np.random.default_rng(seed)
    truth = generator.beta(a, b, rows)
    served = 1 / (1 + np.exp(-sharpen * np.log(truth / (1 - truth))))
    return pd.DataFrame({"churned": (generator.random(rows) < truth).astype(int),
                         "prediction": (served >= 0.5).astype(int),
                         "probability_0": 1 - served, "probability_1": served})


def multiclass_window(rows: int, concentration: list[float], *, seed: int) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    truth = generator.dirichlet(concentration, rows)
    classes = np.array(["a", "b", "c"])
    labels = (generator.random(rows)[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    return pd.DataFrame({"churned": classes[np.minimum(labels, 2)],
                         "prediction": classes[truth.argmax(axis=1)],
                         **{f"probability_{c}": truth[:, k] for k, c in enumerate(classes)}})


def realised(frame: pd.DataFrame, config: Config) -> dict[str, float]:
    classes, predicted, served = served_outputs(frame, config)
    return score_predictions(config.metrics, frame["churned"].to_numpy(), classes[predicted],
                             served, list(classes), config.positive_class)


def assert_close(estimate: EstimatedPerformance, truth: dict[str, float], within: float) -> None:
    for name, value in truth.items():
        error = abs(estimate.estimated[name] - value)
        assert error <= 3 * estimate.sampling_error[name], (name, estimate.estimated[name], value)
        assert error <= within, (name, estimate.estimated[name], value)
        low, high = estimate.intervals[name]
        assert low < estimate.estimated[name] < high


def test_calibrated_probabilities_estimate_the_realised_binary_metrics(binary: Config) -> None:
    """Covariate shift: the window's probabilities sit higher than the reference's."""
    reference = binary_window(3000, 2, 3, seed=1)
    window = binary_window(10_000, 3, 2, seed=2)

    estimate = estimate_performance(reference, window, binary, BINARY_BASELINE)

    assert estimate.calibration is not None and not estimate.calibration.mapped
    assert set(estimate.estimated) == set(binary.metrics) and not estimate.not_estimated
    assert_close(estimate, realised(window, binary), within=0.02)


@pytest.mark.slow
def test_calibrated_probabilities_estimate_the_realised_multiclass_metrics(
    multiclass: Config
) -> None:
    reference = multiclass_window(3000, [1, 1, 1], seed=3)
    window = multiclass_window(10_000, [2, 1, 0.5], seed=4)

    estimate = estimate_performance(reference, window, multiclass, MULTICLASS_BASELINE)

    assert estimate.calibration is not None and not estimate.calibration.mapped
    assert_close(estimate, realised(window, multiclass), within=0.02)


def test_miscalibrated_probabilities_get_a_map_that_improves_the_estimate(binary: Config) -> None:
    """Overconfident probabilities: the served ones promise far more than they deliver."""
    reference = binary_window(3000, 2, 3, seed=5, sharpen=2.5)
    window = binary_window(10_000, 3, 2, seed=6, sharpen=2.5)
    truth = realised(window, binary)

    mapped = estimate_performance(reference, window, binary, BINARY_BASELINE)
    as_served = estimate_performance(reference, window, binary, BINARY_BASELINE,
                                     calibration=Calibration(3000, 0.0, 0.0, 0.0, None))

    calibration = mapped.calibration
    assert calibration is not None and calibration.mapped and calibration.method is not None
    assert calibration.brier_mapped < calibration.brier_served
    assert calibration.max_gap is not None and calibration.max_gap > 0.1
    for name, value in truth.items():
        assert abs(mapped.estimated[name] - value) < abs(as_served.estimated[name] - value) / 3
    assert_close(mapped, truth, within=0.03)
    # the served probabilities are used as they are for the scores: the map only weighs
    classes, predicted, served = served_outputs(window, binary)
    assert np.array_equal(classes[predicted], window["prediction"].to_numpy())


def test_the_map_is_fitted_on_the_reference_only_when_it_helps_out_of_fold(
    multiclass: Config
) -> None:
    calibrated = check_calibration(multiclass_window(3000, [1, 1, 1], seed=7), multiclass)
    tempered = multiclass_window(3000, [1, 1, 1], seed=7)
    probabilities = tempered[["probability_a", "probability_b", "probability_c"]].to_numpy() ** 3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    overconfident = tempered.assign(probability_a=probabilities[:, 0],
                                    probability_b=probabilities[:, 1],
                                    probability_c=probabilities[:, 2])

    fixed = check_calibration(overconfident, multiclass)

    assert not calibrated.mapped and calibrated.method is None
    assert fixed.mapped and fixed.brier_mapped < fixed.brier_served - 2 * fixed.standard_error
    mapped = fixed.apply(probabilities)
    assert np.allclose(mapped.sum(axis=1), 1.0)  # one-vs-rest maps, renormalised


def test_expected_accuracy_and_log_loss_are_their_exact_expectations(binary: Config) -> None:
    window = binary_window(500, 2, 2, seed=8)
    classes, predicted, served = served_outputs(window, binary)
    truth = served[:, ::-1] ** 0.5
    truth /= truth.sum(axis=1, keepdims=True)  # any probabilities the map could give

    expected = expected_scores(["accuracy", "neg_log_loss"], classes, predicted, served, truth, 1)

    assert expected["accuracy"] == pytest.approx(truth[np.arange(500), predicted].mean())
    assert expected["neg_log_loss"] == pytest.approx((truth * np.log(served)).sum(axis=1).mean())


@pytest.mark.slow
def test_the_interval_narrows_as_the_window_grows(binary: Config) -> None:
    reference = binary_window(2000, 2, 3, seed=9)
    small = estimate_performance(reference, binary_window(200, 2, 3, seed=10), binary,
                                 BINARY_BASELINE, calibration=check_calibration(reference, binary))
    large = estimate_performance(reference, binary_window(5000, 2, 3, seed=11), binary,
                                 BINARY_BASELINE, calibration=small.calibration)

    for name in binary.metrics:
        assert small.sampling_error[name] > 3 * large.sampling_error[name]


@pytest.mark.slow
def test_the_95_percent_interval_covers_the_realised_metric_about_as_often(
    binary: Config
) -> None:
    reference = binary_window(3000, 2, 3, seed=12)
    calibration = check_calibration(reference, binary)
    covered = []
    for seed in range(30):
        window = binary_window(300, 3, 2, seed=100 + seed)
        estimate = estimate_performance(reference, window, binary, BINARY_BASELINE, calibration)
        low, high = estimate.intervals["roc_auc"]
        covered.append(low <= realised(window, binary)["roc_auc"] <= high)

    assert np.mean(covered) >= 0.85


def test_an_estimated_drop_past_the_threshold_is_degraded_with_enough_rows(
    binary: Config
) -> None:
    reference = binary_window(2000, 2, 3, seed=13)
    calibration = check_calibration(reference, binary)
    # probabilities near one half: the model can hardly tell churners apart in this window
    vague = binary_window(500, 40, 40, seed=14)
    strong = {**BINARY_BASELINE, "roc_auc": 0.9}

    dropped = estimate_performance(reference, vague, binary, strong, calibration)
    few = estimate_performance(reference, vague.head(50), binary, strong, calibration)

    assert dropped.verdict and dropped.degraded
    assert dropped.relative_drop == pytest.approx(
        (0.9 - dropped.estimated["roc_auc"]) / 0.9)
    assert dropped.to_dict()["degraded"] is True
    assert few.rows == 50 < binary.monitoring.min_labelled_records
    assert not few.verdict and not few.degraded  # too few predictions to judge


def test_regression_is_not_estimated_and_says_so(tmp_path: Path) -> None:
    config = load(tmp_path, {"task": "regression",
                             "columns": {"target_classes": [], "positive_class": None},
                             "training": {"metric": "r2", "split": "random"}})
    window = pd.DataFrame({"prediction": [1.0, 2.0, 3.0]})

    estimate = estimate_performance(window, window, config, {"r2": 0.5})

    assert estimate.estimated == {} and estimate.intervals == {}
    assert set(estimate.not_estimated) == set(config.metrics)
    assert all(reason.startswith("not estimated") for reason in estimate.not_estimated.values())
    assert not estimate.degraded and not estimate.verdict
    assert estimate.to_dict()["not_estimated"]["r2"].startswith("not estimated")


def test_what_cannot_be_estimated_is_named_never_given_a_number(binary: Config) -> None:
    reference = binary_window(1000, 2, 3, seed=15)
    without_probabilities = reference.drop(columns=["probability_0", "probability_1"])
    # every served probability 0: one class only, so ROC AUC is undefined on the window
    certain = binary_window(300, 2, 3, seed=16).assign(prediction=0, probability_0=1.0,
                                                       probability_1=0.0)

    blind = estimate_performance(without_probabilities, certain, binary, BINARY_BASELINE)
    one_class = estimate_performance(reference, certain, binary, BINARY_BASELINE,
                                     calibration=check_calibration(reference, binary))

    unlogged = estimate_performance(reference, certain.assign(probability_1=np.nan), binary,
                                    BINARY_BASELINE)

    assert blind.estimated == {} and "probability_0" in blind.not_estimated["roc_auc"]
    assert unlogged.not_estimated["accuracy"] == (
        "not estimated: 300 rows have no served probabilities")
    assert "roc_auc" not in one_class.estimated
    assert "one class only" in one_class.not_estimated["roc_auc"]
    assert one_class.estimated["accuracy"] == pytest.approx(1.0)
    assert not one_class.degraded  # the primary metric is not estimated: no verdict


def test_a_small_reference_is_used_as_served_and_says_why(binary: Config) -> None:
    calibration = check_calibration(binary_window(30, 2, 3, seed=17, sharpen=3), binary)

    assert not calibration.mapped
    assert calibration.note is not None and "fewer than 50" in calibration.note


def test_a_served_label_outside_the_classes_is_refused(binary: Config) -> None:
    window = binary_window(10, 2, 3, seed=18).assign(prediction=7)

    with pytest.raises(ValueError, match=r"served labels \['7'\] are none of the classes"):
        served_outputs(window, binary)
