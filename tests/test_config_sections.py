"""The config's sections: each refuses a key it does not know and a value out of its bounds,
naming it; each is frozen once loaded; the optional ones have defaults, so a file may leave
them out (and a later version may add one without a migration)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from ml_project.config_sections import (
    AlertsConfig,
    DataConfig,
    EmailConfig,
    Frozen,
    ModelCardConfig,
    MonitoringConfig,
    PathsConfig,
    PredictionConfig,
    SparkConfig,
    TrainingConfig,
    ValidationConfig,
)

CANDIDATE = {"name": "logistic", "estimator": "sklearn.linear_model.LogisticRegression"}
REQUIRED: dict[type[Frozen], dict[str, Any]] = {
    DataConfig: {"historic": "h.csv", "production": "p.csv", "production_labels": "l.csv"},
    TrainingConfig: {"metric": "roc_auc", "candidates": [CANDIDATE]},
    EmailConfig: {"host": "smtp.example.com", "sender": "a@example.com", "to": ["b@example.com"]},
}
OPTIONAL = [ValidationConfig, PredictionConfig, MonitoringConfig, AlertsConfig, SparkConfig,
            ModelCardConfig, PathsConfig]


@pytest.mark.parametrize("section", [*REQUIRED, *OPTIONAL], ids=lambda section: section.__name__)
def test_a_section_refuses_a_key_it_does_not_know_and_stays_as_loaded(
    section: type[Frozen]
) -> None:
    loaded = section.model_validate(REQUIRED.get(section, {}))

    with pytest.raises(pydantic.ValidationError, match="colour\n  Extra inputs are not permitted"):
        section.model_validate({**REQUIRED.get(section, {}), "colour": "blue"})
    field = next(iter(section.model_fields))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        setattr(loaded, field, getattr(loaded, field))


@pytest.mark.parametrize(("section", "values", "key"), [
    (TrainingConfig, {"holdout_fraction": 1.0}, "holdout_fraction"),
    (TrainingConfig, {"cv_folds": 1}, "cv_folds"),
    (TrainingConfig, {"candidates": []}, "candidates"),
    (PredictionConfig, {"max_batch_size": 0}, "max_batch_size"),
    (MonitoringConfig, {"drift_share_threshold": 1.5}, "drift_share_threshold"),
    (EmailConfig, {"port": 70000}, "port"),
    (EmailConfig, {"to": []}, "to"),
    (AlertsConfig, {"send": "sometimes"}, "send"),
    (ModelCardConfig, {"bootstrap_resamples": 5}, "bootstrap_resamples"),
])
def test_a_value_out_of_its_bounds_is_refused_naming_the_key(
    section: type[Frozen], values: dict[str, Any], key: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        section.model_validate({**REQUIRED.get(section, {}), **values})

    assert [error["loc"][0] for error in caught.value.errors()] == [key]


def test_the_optional_sections_read_from_nothing_are_their_documented_defaults() -> None:
    monitoring = MonitoringConfig.model_validate({})

    assert monitoring.alerts == AlertsConfig() and monitoring.alerts.webhook is None
    assert PredictionConfig.model_validate({}).model_source == "local"
    assert ModelCardConfig.model_validate({}).owner.startswith("REVIEW:")
    assert PathsConfig.model_validate({}) == PathsConfig(model_artifacts="data/model_artifacts",
                                                         output="output")
