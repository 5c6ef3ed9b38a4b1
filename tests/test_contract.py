"""Contract tests on YOUR project: what must hold for any table, read from your own
project_config.yaml and data files (the rest of the suite uses its own fixture table).

They check that the config loads, the data has the configured columns and validates, the API's
request model says what validation enforces, and a valid row of your data gets the same answer
by every path (batch, stream, record, the endpoints) from a small model of your own shape.
Edit the config and data freely: these tests follow them. `--project-root DIR` checks the
project laid out in DIR instead of this checkout (tests/test_any_table.py does, on its tables).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, Ridge

from ml_project.config import Config, load_config
from ml_project.ingest import read_in_chunks, stream_production_instances
from ml_project.predict import PredictionService
from ml_project.schemas import InstanceValidator, InvalidInstance
from ml_project.serving.endpoints import PredictionEndpoints
from ml_project.serving.request_model import build_request_model
from ml_project.train import build_pipeline, build_reference_sample, split_holdout
from ml_project.validate import validate_production_data

SAMPLE_ROWS = 2000  # enough to fit a small model of your shape; large files are not read whole


@pytest.fixture(scope="module")
def root(request: pytest.FixtureRequest) -> Path | None:
    """`pytest tests/test_contract.py --project-root DIR` checks the project in DIR instead."""
    option = request.config.getoption("--project-root")
    return Path(option).resolve() if option else None


def _load(run_mode: str, data_mode: str, root: Path | None) -> Config:
    if root is None:
        return load_config(run_mode, data_mode, "local")  # type: ignore[arg-type]
    return load_config(run_mode, data_mode, "local",  # type: ignore[arg-type]
                       config_file=root / "project_config.yaml", root=root)


@pytest.fixture(scope="module")
def config(root: Path | None) -> Config:
    return _load("modelling", "historic", root)


def _first_rows(source: str, config: Config) -> pd.DataFrame:
    chunks = read_in_chunks(Path(config.resolve(source)), config.model_copy(update={
        "prediction": config.prediction.model_copy(update={"chunk_size": SAMPLE_ROWS})}))
    return next(iter(chunks))


@pytest.fixture(scope="module")
def historic(config: Config) -> pd.DataFrame:
    if "://" in config.data.historic:
        pytest.skip("historic data comes from a database: not read by the contract tests")
    return _first_rows(config.data.historic, config)


def test_the_config_loads_for_every_run_mode(root: Path | None) -> None:
    for run_mode, data_mode in (("modelling", "historic"), ("prediction", "historic"),
                                ("prediction", "production")):
        assert _load(run_mode, data_mode, root).project_name


def test_the_historic_data_has_every_configured_column_and_validates(
    config: Config, historic: pd.DataFrame
) -> None:
    result = validate_production_data(historic, config, with_target=True)

    assert len(result.valid) > 0, result.quarantined.head().to_string()
    assert result.quarantined["quarantine_reason"].str.len().gt(0).all()
    if config.is_classification:
        present = set(result.valid[config.columns.target])
        assert len(present) >= 2, f"only the classes {present} in the first rows"


def test_the_production_data_validates_as_received(config: Config) -> None:
    production = _first_rows(config.data.production, config)

    result = validate_production_data(production, config, with_target=False)

    assert len(result.valid) > 0
    assert len(result.valid) + len(result.quarantined) == len(production)


def test_the_stream_and_the_batch_refuse_the_same_rows_of_your_production_data(
    config: Config, tmp_path: Path
) -> None:
    production = _first_rows(config.data.production, config)
    written = tmp_path / "production.csv"
    production.to_csv(written, index=False)
    validator = InstanceValidator(config)
    refused = set()
    for position, record in enumerate(stream_production_instances(written, config)):
        try:
            validator.validate(record)
        except InvalidInstance:
            refused.add(position)

    quarantined = validate_production_data(production, config, with_target=False).quarantined

    assert set(quarantined.index) == refused


def test_the_request_model_documents_what_validation_enforces(
    config: Config, historic: pd.DataFrame
) -> None:
    model = build_request_model(config)
    identifiers = {config.columns.id} | ({config.columns.timestamp} - {None})
    assert set(model.model_fields) == (set(config.columns.features) | identifiers
                                       | {config.columns.target})
    valid = validate_production_data(historic, config, with_target=True).valid.head(20)
    for record in _records(valid.drop(columns=config.columns.target)):
        InstanceValidator(config).validate(record)
        model.model_validate(record)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records", date_format="iso"))
    return records


def _small_model(config: Config) -> BaseEstimator:
    return LogisticRegression(max_iter=300) if config.is_classification else Ridge()


def test_a_valid_row_gets_the_same_answer_by_every_path(
    config: Config, historic: pd.DataFrame, tmp_path: Path
) -> None:
    raw = validate_production_data(historic, config, with_target=True).valid
    train, holdout = split_holdout(raw, config)
    features = list(config.columns.features)
    pipeline = build_pipeline(config, _small_model(config)).fit(train[features],
                                                                  train[config.columns.target])
    reference = build_reference_sample(pipeline, holdout, config)
    service = PredictionService(pipeline, {"model_version": "contract", "features": features},
                                config, reference)
    rows = holdout.drop(columns=config.columns.target).head(25)

    batch = service.predict_frame(rows)["prediction"].tolist()
    records = _records(rows)
    one_by_one = [service.predict_instance(record).prediction for record in records]
    reply = PredictionEndpoints(service, None, None).predict_batch(
        json.dumps({"instances": records}).encode(), None)
    answered = [item["prediction"] for item in json.loads(reply.body)["predictions"]]
    written = tmp_path / "rows.csv"
    rows.to_csv(written, index=False)
    streamed = [service.predict_instance(record).prediction
                for record in stream_production_instances(written, config)]

    assert reply.status == 200, reply.body
    expected = [value.item() if isinstance(value, np.generic) else value
                for value in pipeline.predict(rows[features])]
    for answers in (batch, one_by_one, answered, streamed):
        if config.is_classification:
            assert [str(a) for a in answers] == [str(e) for e in expected]
        else:
            np.testing.assert_allclose(answers, expected, rtol=1e-9)
