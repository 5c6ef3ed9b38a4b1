"""What monitoring compares: the window of the prediction log (the served model's records
only), the reference sample stored with the artifact, and the labels that arrived."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_project.config import Config
from ml_project.monitoring_data import (
    MonitoringInputError,
    Reference,
    attach_labels,
    labelled_production_data,
    load_reference_data,
    read_prediction_window,
    read_production_labels,
)
from ml_project.predict import PredictionService
from ml_project.prediction_log import journal
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord, new_request_id
from ml_project.schemas import InvalidInstance
from ml_project.validate import validate_production_data
from tests.churn_data import generate_production_data
from tests.conftest import prediction_config


@pytest.fixture(scope="module")
def service(trained_project: Path) -> PredictionService:
    return PredictionService.from_config(prediction_config(trained_project))


@pytest.fixture(scope="module")
def reference(trained_project: Path, service: PredictionService) -> Reference:
    return load_reference_data(service)


def config_with(root: Path, tmp_path: Path, **overrides: object) -> Config:
    """The trained project's config with its prediction log and labels under tmp_path."""
    return prediction_config(
        root,
        prediction={"prediction_log_url": f"sqlite:///{tmp_path / 'log.db'}"},
        paths={"output": str(tmp_path / "output")},
        **overrides,
    )


def test_load_reference_data_is_the_artifacts_holdout_sample_with_its_predictions(
    reference: Reference, service: PredictionService, trained_project: Path
) -> None:
    """Nothing is re-run: the sample stored at export (holdout rows, labels, predictions)."""
    metadata = service.metadata
    stored = pd.read_parquet(trained_project / "data/model_artifacts/champion"
                             / metadata["reference_file"])
    pd.testing.assert_frame_equal(reference.sample, stored)
    assert len(reference.sample) == metadata["reference_rows"] == 300  # the holdout, all of it
    assert {"prediction", "probability_0", "probability_1", "churned"} <= set(stored.columns)
    features = stored[service.features]
    np.testing.assert_array_equal(stored["prediction"], service.pipeline.predict(features))
    np.testing.assert_array_equal(stored[["probability_0", "probability_1"]],
                                  service.pipeline.predict_proba(features))


def test_load_reference_data_without_a_sample_says_to_retrain(
    service: PredictionService
) -> None:
    older = PredictionService(service.pipeline, service.metadata, service.config, None)

    with pytest.raises(MonitoringInputError, match="has no reference sample"):
        load_reference_data(older)


def write_labels(path: Path, rows: list[tuple[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["customer_id", "churned"]).to_csv(path, index=False)


def log_records(config: Config, service: PredictionService, production: pd.DataFrame,
                logged_at: list[str]) -> None:
    """Log each row as the stream would: predicted, or rejected with its error."""
    records = []
    for row, moment in zip(production.to_dict("records"), logged_at):
        instance = {str(key): (None if pd.isna(value) else value) for key, value in row.items()}
        try:
            prediction = service.predict_instance(instance)
        except InvalidInstance as err:
            records.append(LogRecord(new_request_id(), "test", instance, service.model_version,
                                     error=str(err), instance_id=instance["customer_id"],
                                     logged_at=moment))
            continue
        records.append(LogRecord(new_request_id(), "test", instance, service.model_version,
                                 prediction.prediction, prediction.probabilities, 1.0,
                                 instance_id=instance["customer_id"], logged_at=moment))
    log = PredictionLog.from_config(config)
    log.append(records)
    log.close()


def test_read_prediction_window_selects_by_count_and_time(
    trained_project: Path, service: PredictionService, tmp_path: Path
) -> None:
    config = config_with(trained_project, tmp_path)
    production, _ = generate_production_data(60, seed=3, drift=0.0)
    raw = validate_production_data(production, config, with_target=False).valid.head(40)
    raw = raw.drop(columns="event_time").astype({"age": object})
    raw.loc[5, "age"] = "unknown"  # rejected by validation: logged with its error
    times = [f"2026-01-01T00:{minute:02d}:00+00:00" for minute in range(40)]
    log_records(config, service, raw, times)

    everything = read_prediction_window(config)
    last_ten = read_prediction_window(config, last=10)
    ranged = read_prediction_window(config, since=times[2], until=times[12])

    assert (everything.requests, everything.rejected, len(everything.predictions)) == (40, 1, 39)
    assert everything.model_versions == [service.model_version]
    frame = everything.predictions
    assert list(frame.columns[:11]) == ["customer_id", *config.columns.features]
    assert {"prediction", "probability_0", "probability_1", "model_version", "logged_at"} <= set(
        frame.columns)
    assert all(frame[name].dtype == float for name in config.columns.numerical)
    assert raw.loc[5, "customer_id"] not in set(frame["customer_id"])
    assert last_ten.period == (times[30], times[39]) and last_ten.requests == 10
    assert ranged.period == (times[2], times[11]) and ranged.requests == 10
    assert ranged.rejected == 1


def test_read_prediction_window_of_an_empty_log_is_empty(
    trained_project: Path, tmp_path: Path
) -> None:
    window = read_prediction_window(config_with(trained_project, tmp_path), last=100)

    assert window.requests == 0 and window.predictions.empty and window.period == (None, None)


def test_a_window_names_future_timestamps_repeated_instances_and_records_still_waiting(
    trained_project: Path, service: PredictionService, tmp_path: Path
) -> None:
    """As found: records time-stamped in 2099, and the stream run twice over the same
    instances. Both are counted; a journal the database has not taken yet is counted too."""
    config = config_with(trained_project, tmp_path)
    production, _ = generate_production_data(30, seed=4, drift=0.0)
    raw = validate_production_data(production, config, with_target=False).valid.head(10)
    raw = raw.drop(columns="event_time")
    times = [f"2026-01-01T00:{minute:02d}:00+00:00" for minute in range(10)]
    log_records(config, service, raw, times)
    log_records(config, service, raw, [t.replace("00+00", "30+00") for t in times])  # again
    log_records(config, service, raw.head(2), ["2099-01-01T00:00:00+00:00"] * 2)
    waiting = journal.Journal(config.output_dir / journal.FOLDER)
    waiting.append(journal.encode_line({"record_key": "torn"}))  # not a record: rejected later
    waiting.close()

    window = read_prediction_window(config)

    assert window.requests == 22
    assert window.future == 2
    assert window.repeated_ids == 10 and window.repeated_records == 22
    assert window.pending == 0  # the reader loaded what waited first (the bad line moved aside)


def test_a_window_counts_the_records_the_database_has_not_taken(
    trained_project: Path, service: PredictionService, tmp_path: Path
) -> None:
    config = config_with(trained_project, tmp_path)
    production, _ = generate_production_data(10, seed=5, drift=0.0)
    raw = validate_production_data(production, config, with_target=False).valid.head(3)
    log_records(config, service, raw.drop(columns="event_time"), ["2026-01-01T00:00:00+00:00"] * 3)
    database = Path(config.prediction_log_url.removeprefix("sqlite:///"))
    holder = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        log = PredictionLog.from_config(config, load_in_background=False)
        log.append([LogRecord(new_request_id(), "test", {}, "1")])
        log.close()
        window = read_prediction_window(config)  # readable (WAL), not writable
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert window.requests == 3 and window.pending == 1


def test_read_production_labels_keeps_valid_targets_and_the_latest_correction(
    trained_project: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    write_labels(labels_file, [("P1", 1), ("P2", 0), ("P3", 7), ("P1", 0)])
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)})

    labels = read_production_labels(config)

    assert labels is not None
    assert labels.set_index("customer_id")["churned"].to_dict() == {"P2": 0, "P1": 0}


@pytest.mark.parametrize(("classes", "rows", "expected"), [
    (["False", "True"], [("P1", True), ("P2", False), ("P3", None), ("P4", True)],
     {"P1": "True", "P2": "False", "P4": "True"}),
    ([0, 1], [("P1", 1.0), ("P2", 0.0), ("P3", None), ("P4", 0.5)], {"P1": 1, "P2": 0}),
], ids=["true-false-as-text-classes", "whole-floats-as-integer-classes"])
def test_read_production_labels_reads_a_label_as_every_other_path_reads_it(
    trained_project: Path, tmp_path: Path, classes: list[Any], rows: list[tuple[str, object]],
    expected: dict[str, Any]
) -> None:
    """A CSV's True/False labels read as bools and a column with a gap as floats: labels are
    matched to the classes as the batch use case and validation match them."""
    labels_file = tmp_path / "labels.csv"
    write_labels(labels_file, rows)
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)},
                         columns={"target_classes": classes, "positive_class": classes[-1]})

    labels = read_production_labels(config)

    assert labels is not None
    found = labels.set_index("customer_id")["churned"].to_dict()
    assert found == expected
    assert [type(label) for label in found.values()] == [type(label) for label in expected.values()]


def test_read_production_labels_before_any_arrived_is_none(
    trained_project: Path, tmp_path: Path
) -> None:
    config = config_with(trained_project, tmp_path,
                         data={"production_labels": str(tmp_path / "absent.csv")})

    assert read_production_labels(config) is None


def test_read_production_labels_without_target_is_refused(
    trained_project: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["P1"], "label": [1]}).to_csv(labels_file, index=False)
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)})

    with pytest.raises(MonitoringInputError, match="churned"):
        read_production_labels(config)


def test_attach_labels_keeps_only_labelled_predictions(service: PredictionService) -> None:
    predictions = pd.DataFrame({"customer_id": ["P1", "P2", "P3"], "prediction": [1, 0, 1]})
    labels = pd.DataFrame({"customer_id": ["P3", "P1", "P9"], "churned": [0, 1, 1]})

    labelled = attach_labels(predictions, labels, service.config)

    assert labelled.sort_values("customer_id").to_dict("list") == {
        "customer_id": ["P1", "P3"], "prediction": [1, 1], "churned": [1, 0]}


def test_attach_labels_counts_an_instance_predicted_twice_once_by_its_latest_prediction(
    service: PredictionService,
) -> None:
    predictions = pd.DataFrame({"customer_id": ["P1", "P2", "P1"], "prediction": [0, 0, 1]})
    labels = pd.DataFrame({"customer_id": ["P1", "P2"], "churned": [1, 0]})

    labelled = attach_labels(predictions, labels, service.config)

    assert labelled.sort_values("customer_id").to_dict("list") == {
        "customer_id": ["P1", "P2"], "prediction": [1, 0], "churned": [1, 0]}


def test_labelled_production_data_joins_the_production_file_with_its_labels(
    trained_project: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    write_labels(labels_file, [("P000001", 1), ("P000002", 0), ("X", 1)])
    config = config_with(trained_project, tmp_path, data={"production_labels": str(labels_file)})

    extra = labelled_production_data(config)

    assert sorted(extra["customer_id"]) == ["P000001", "P000002"]
    assert {"event_time", *config.columns.features, "churned"} <= set(extra.columns)
