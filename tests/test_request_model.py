"""The API's documented request model: derived from the same rules the validator checks, so
what the document declares valid is what the service predicts (schemathesis holds the running
service to it: tests/test_api_fuzz.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from ml_project.config import MISSING_TEXTS, Config, load_config
from ml_project.schemas import InstanceValidator, field_rules
from ml_project.serving.request_model import build_request_model
from tests.conftest import write_project


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("request_model")
    write_project(root, n_historic=50, n_production=10)
    return load_config("prediction", "production", "local",
                       config_file=root / "project_config.yaml", root=root)


def test_every_feature_is_a_field_and_only_the_required_ones_are_required(config: Config) -> None:
    schema = build_request_model(config).model_json_schema()
    rules = field_rules(config)

    assert set(schema["properties"]) == {rule.name for rule in rules} | {
        config.columns.id, config.columns.timestamp, config.columns.target}
    assert set(schema["required"]) == {rule.name for rule in rules if not rule.nullable}


def test_the_example_is_an_instance_the_validator_accepts(config: Config) -> None:
    [example] = build_request_model(config).model_json_schema()["examples"]
    InstanceValidator(config).validate(example)


@pytest.mark.parametrize(("change", "valid"), [
    ({"age": 110}, True), ({"age": 111}, False), ({"age": "41"}, True), ({"age": "x"}, False),
    ({"contract": "two-year"}, True), ({"contract": "lifetime"}, False),
    ({"payment_method": None}, True), ({"payment_method": "NA"}, True),
    ({"tenure_months": None}, False),
])
def test_the_model_declares_the_validators_verdict_on_a_field(
    config: Config, change: dict[str, Any], valid: bool
) -> None:
    """Ranges, categories, nullability and a number as text, as the rules state them."""
    model = build_request_model(config)
    [example] = model.model_json_schema()["examples"]
    instance = {**example, **change}
    if valid:
        model.model_validate(instance)
        InstanceValidator(config).validate(instance)
    else:
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(instance)


def test_unknown_fields_are_refused_when_the_config_rejects_them(tmp_path: Path) -> None:
    write_project(tmp_path, {"validation": {"unknown_fields": "reject"}}, n_historic=50,
                  n_production=10)
    config = load_config("prediction", "production", "local",
                         config_file=tmp_path / "project_config.yaml", root=tmp_path)
    model = build_request_model(config)
    [example] = model.model_json_schema()["examples"]
    with pytest.raises(pydantic.ValidationError):
        model.model_validate({**example, "colour": "red"})


def test_the_id_is_never_a_text_that_means_missing(config: Config) -> None:
    schema = build_request_model(config).model_json_schema()
    assert schema["properties"][config.columns.id]["not"] == {"enum": sorted(MISSING_TEXTS)}
