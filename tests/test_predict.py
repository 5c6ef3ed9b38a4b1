"""The prediction core: one artifact, one answer, whatever the path."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_project.export import ArtifactError
from ml_project.ingest import load_historic_data, stream_production_instances
from ml_project.predict import PredictionService
from ml_project.schemas import InvalidInstance
from ml_project.validate import validate_production_data
from tests.conftest import PROBABILITY_TOLERANCE, prediction_config


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


def test_predict_frame_equals_the_plain_pipeline_on_every_row(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    assert service.fast_path is not None
    scored = service.predict_frame(raw)
    expected = service.pipeline.predict_proba(raw[service.features])
    np.testing.assert_array_equal(scored[["probability_0", "probability_1"]].to_numpy(), expected)
    np.testing.assert_array_equal(
        scored["prediction"].to_numpy(), service.pipeline.predict(raw[service.features])
    )
    assert len(scored) == len(raw)


# A model's predict_proba on one row and on many can differ in the last bit (BLAS kernels
# differ by shape), for the bare Pipeline too. So: exact equality with the Pipeline on the same
# rows, and equal labels with probabilities within PROBABILITY_TOLERANCE across single-row and
# batch paths.


def test_predict_instance_equals_the_pipeline_on_the_same_row_including_nulls(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    sample = raw[service.features].head(300)
    assert sample.isna().any(axis=1).any(), "the sample must contain rows with missing values"
    for i in range(len(sample)):
        single = service.predict_instance(_record(sample.iloc[i]))
        expected = service.pipeline.predict_proba(sample.iloc[[i]])[0]
        assert single.probabilities == {"0": expected[0], "1": expected[1]}
        assert single.prediction == service.pipeline.predict(sample.iloc[[i]])[0]


def test_predict_instance_agrees_with_the_batch_for_every_row(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    sample = raw.head(300)
    batch = service.predict_frame(sample)
    for (_, row), (_, expected) in zip(sample[service.features].iterrows(), batch.iterrows()):
        single = service.predict_instance(_record(row))
        assert single.prediction == expected["prediction"]
        assert single.probabilities is not None
        assert single.probabilities["1"] == pytest.approx(expected["probability_1"], abs=PROBABILITY_TOLERANCE)


def test_predict_records_equals_predict_frame_on_the_same_rows(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    sample = raw.head(50)
    records = [_record(row) for _, row in sample[service.features].iterrows()]
    batch = service.predict_frame(sample)
    results = service.predict_records(records)
    assert [r.prediction for r in results] == batch["prediction"].tolist()
    assert [r.probabilities["1"] for r in results if r.probabilities] == batch["probability_1"].tolist()


def test_plain_pipeline_fallback_gives_the_same_answers(
    service: PredictionService, raw: pd.DataFrame, trained_project: Path
) -> None:
    plain = PredictionService.from_config(prediction_config(trained_project))
    plain.fast_path = None
    pd.testing.assert_frame_equal(plain.predict_frame(raw.head(500)), service.predict_frame(raw.head(500)))


def test_model_input_is_the_pipelines_preprocessing_by_either_path(
    service: PredictionService, raw: pd.DataFrame, trained_project: Path
) -> None:
    expected = service.pipeline[:-1].transform(raw[service.features])
    np.testing.assert_array_equal(service.model_input(raw), expected)
    plain = PredictionService.from_config(prediction_config(trained_project))
    plain.fast_path = None
    np.testing.assert_array_equal(plain.model_input(raw), expected)


def test_null_in_a_string_column_is_a_missing_value_not_an_unknown_category(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    row = _record(raw[service.features].iloc[0])
    row["payment_method"] = None
    as_nan = raw[service.features].iloc[[0]].assign(payment_method=np.nan)
    expected = service.pipeline.predict_proba(as_nan)[0]
    probabilities = service.predict_instance(row).probabilities
    assert probabilities is not None
    assert [probabilities["0"], probabilities["1"]] == expected.tolist()
    unknown = raw[service.features].iloc[[0]].assign(payment_method="never-seen")
    assert service.pipeline.predict_proba(unknown)[0].tolist() != expected.tolist()


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"age": "forty"}, "age", "must be a number"),
        ({"tenure_months": -1}, "tenure_months", "must be >= 0"),
        ({"contract": "weekly"}, "contract", "must be one of"),
        ({"region": None}, "region", "must not be null"),
        ({"age": True}, "age", "must be a number"),
    ],
)
def test_predict_instance_rejects_bad_fields_by_name(
    service: PredictionService, raw: pd.DataFrame, change: dict[str, object], field: str, reason: str
) -> None:
    record = _record(raw[service.features].iloc[0]) | change
    with pytest.raises(InvalidInstance, match=reason) as caught:
        service.predict_instance(record)
    assert field in caught.value.errors


def test_predict_instance_ignores_or_rejects_unknown_fields_as_configured(
    service: PredictionService, raw: pd.DataFrame, trained_project: Path
) -> None:
    record = _record(raw[service.features].iloc[0])
    rejecting = PredictionService.from_config(
        prediction_config(trained_project, validation={"unknown_fields": "reject"}))

    assert service.predict_instance(record | {"colour": "red"}) == service.predict_instance(record)
    with pytest.raises(InvalidInstance, match="colour: is not a known field") as caught:
        rejecting.predict_instance(record | {"colour": "red"})
    assert list(caught.value.errors) == ["colour"]


def test_predict_instance_rejects_a_missing_required_field(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    record = _record(raw[service.features].iloc[0])
    del record["contract"]
    with pytest.raises(InvalidInstance, match="contract: is required"):
        service.predict_instance(record)


def test_predict_records_names_the_bad_instance_by_position(
    service: PredictionService, raw: pd.DataFrame
) -> None:
    records = [_record(row) for _, row in raw[service.features].head(3).iterrows()]
    records[2] = records[2] | {"age": 500}
    with pytest.raises(InvalidInstance, match=r"instances\[2\]\.age"):
        service.predict_records(records)


def test_stream_records_get_the_same_predictions_as_the_batch(
    service: PredictionService, trained_project: Path
) -> None:
    config = prediction_config(trained_project)
    production_file = trained_project / "data" / "production_data.csv"
    production = pd.read_csv(production_file, dtype={"customer_id": object})
    batch = service.predict_frame(validate_production_data(production, config, with_target=False).valid)
    by_id = batch.set_index("customer_id")
    predicted = 0
    for record in stream_production_instances(production_file, config):
        try:
            result = service.predict_instance(record)
        except InvalidInstance:
            assert record["customer_id"] not in by_id.index
            continue
        expected = by_id.loc[record["customer_id"]]
        assert result.prediction == expected["prediction"]
        assert result.probabilities is not None
        assert result.probabilities["1"] == pytest.approx(expected["probability_1"], abs=PROBABILITY_TOLERANCE)
        predicted += 1
    assert predicted == len(batch)


def test_from_config_without_an_artifact_tells_the_user_to_train(tmp_path: Path) -> None:
    from tests.conftest import write_project

    write_project(tmp_path)
    with pytest.raises(ArtifactError, match="run the modelling use case first"):
        PredictionService.from_config(prediction_config(tmp_path))


def test_a_model_trained_on_other_features_is_refused_naming_the_fix(
    service: PredictionService
) -> None:
    """A champion left from another table (the demo's): an error the use cases and servers
    report in one line, not a traceback."""
    metadata = {**service.metadata, "features": ["tenure", "plan"]}

    with pytest.raises(ArtifactError, match=(
            rf"version {service.model_version} was trained on the features \['tenure', 'plan'\], "
            r"but the config lists \[.*\]: run the modelling use case for this config")):
        PredictionService(service.pipeline, metadata, service.config)


def test_registry_source_loads_the_champion(
    trained_project: Path, service: PredictionService, raw: pd.DataFrame
) -> None:
    registry = PredictionService.from_config(
        prediction_config(trained_project, prediction={"model_source": "registry"})
    )
    assert registry.model_version == service.model_version
    record = _record(raw[service.features].iloc[0])
    assert registry.predict_instance(record) == service.predict_instance(record)
    assert service.card is not None
    assert registry.card == service.card  # the card logged with the run, as exported


def test_serving_imports_no_training_or_monitoring_libraries() -> None:
    code = (
        "import sys; import ml_project.predict, ml_project.prediction_log.log;"
        "heavy = [m for m in ('mlflow', 'evidently', 'pandera', 'matplotlib') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_regression_predictions_have_no_probabilities(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    from ml_project.config import load_config
    from ml_project.export import export_pipeline
    from ml_project.train import build_pipeline
    from tests.conftest import write_project

    overrides = {
        "task": "regression",
        "columns": {"target": "monthly_spend", "target_classes": [], "positive_class": None},
        "training": {"metric": "r2", "split": "random"},
    }
    write_project(tmp_path, overrides)
    config = load_config("prediction", "historic", "local",
                         config_file=tmp_path / "project_config.yaml", root=tmp_path)
    frame = pd.read_csv(tmp_path / "data/historic_data.csv", dtype={"customer_id": object})
    raw = validate_production_data(frame.assign(monthly_spend=1.0), config, with_target=False).valid
    target = raw["monthly_charges"] * 1.1
    pipeline = build_pipeline(config, Ridge()).fit(raw[list(config.columns.features)], target)
    export_pipeline(pipeline, {"model_version": "7", "features": list(config.columns.features)},
                    config.model_artifacts_dir / "champion")
    service = PredictionService.from_config(config)
    result = service.predict_instance(_record(raw[service.features].iloc[0]))
    assert result.probabilities is None and result.model_version == "7"
    assert math.isclose(result.prediction, float(pipeline.predict(raw[service.features].iloc[[0]])[0]))
