"""The model card: its numbers are the holdout's, recomputed from the reference sample the
artifact ships; it is exported with the model (checksummed), logged to the MLflow run, the
registered version's description, and the same for every table shape. (Served by both apps:
test_fastapi_app.py, test_flask_app.py; the core: test_endpoints.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from deployment.cloud_setup import champion_files
from ml_project.config import Config, load_config
from ml_project.export import (
    CARD_JSON,
    CARD_MARKDOWN,
    export_pipeline,
    load_card,
    load_pipeline,
    read_metadata,
)
from ml_project.ingest import load_historic_data
from ml_project.metrics import score_predictions
from ml_project.model_card import TOO_SMALL, build_card, card_files, summary
from ml_project.train import (
    build_estimator,
    build_pipeline,
    build_reference_sample,
    features_and_target,
    split_holdout,
)
from ml_project.validate import validate_production_data
from tests.conftest import PROBABILITY_TOLERANCE, prediction_config
from tests.tables import SHAPES

CHAMPION = Path("data/model_artifacts/champion")


def _recomputed(config: Config, pipeline: Any, reference: pd.DataFrame,
                rows: Any = slice(None)) -> dict[str, float]:
    """The metrics from the sample's labels and the Pipeline's own answers to its features."""
    features, target = features_and_target(reference.iloc[rows] if not isinstance(rows, slice)
                                           else reference, config)
    probabilities = pipeline.predict_proba(features) if config.is_classification else None
    return score_predictions(config.metrics, target.to_numpy(), pipeline.predict(features),
                             probabilities, list(getattr(pipeline, "classes_", [])),
                             config.positive_class)


@pytest.fixture(scope="module")
def exported(trained_project: Path) -> tuple[Config, Any, dict[str, Any], pd.DataFrame,
                                              dict[str, Any]]:
    config = prediction_config(trained_project)
    pipeline, metadata = load_pipeline(trained_project / CHAMPION)
    reference = pd.read_parquet(trained_project / CHAMPION / metadata["reference_file"])
    card = json.loads((trained_project / CHAMPION / CARD_JSON).read_text())
    return config, pipeline, metadata, reference, card


def test_the_cards_holdout_metrics_are_the_ones_recomputed_from_the_reference_sample(
    exported: tuple[Config, Any, dict[str, Any], pd.DataFrame, dict[str, Any]]
) -> None:
    config, pipeline, metadata, reference, card = exported
    recomputed = _recomputed(config, pipeline, reference)

    assert card["holdout"]["rows"] == len(reference)
    assert set(card["holdout"]["metrics"]) == set(config.metrics)
    for name, value in recomputed.items():
        assert card["holdout"]["metrics"][name]["value"] == pytest.approx(
            value, abs=PROBABILITY_TOLERANCE)
        # the whole holdout is the sample here (fewer rows than train.REFERENCE_ROWS)
        assert metadata["holdout_metrics"][name] == pytest.approx(value, abs=PROBABILITY_TOLERANCE)


def test_each_interval_holds_its_point_estimate_and_has_a_width(
    exported: tuple[Config, Any, dict[str, Any], pd.DataFrame, dict[str, Any]]
) -> None:
    card = exported[4]
    for name, metric in card["holdout"]["metrics"].items():
        assert metric["ci95_low"] <= metric["value"] <= metric["ci95_high"], name
        assert metric["ci95_low"] < metric["ci95_high"], name


def test_slices_cover_every_row_of_each_feature_and_score_as_recomputed(
    exported: tuple[Config, Any, dict[str, Any], pd.DataFrame, dict[str, Any]]
) -> None:
    config, pipeline, _, reference, card = exported
    for feature in config.columns.features:
        slices = [s for s in card["slices"] if s["feature"] == feature]
        assert sum(s["rows"] for s in slices) == len(reference), feature
    for entry in card["slices"]:
        if entry["rows"] < card["min_slice_rows"]:
            assert entry["status"] == TOO_SMALL and "metrics" not in entry
    categorical = next(s for s in card["slices"] if s["feature"] in config.columns.categorical
                       and "metrics" in s)
    rows = np.flatnonzero(reference[categorical["feature"]] == categorical["slice"])
    assert len(rows) == categorical["rows"]
    for name, value in _recomputed(config, pipeline, reference, rows).items():
        assert categorical["metrics"][name] == pytest.approx(value, abs=PROBABILITY_TOLERANCE)


def test_calibration_importance_limitations_and_provenance_are_on_the_card(
    exported: tuple[Config, Any, dict[str, Any], pd.DataFrame, dict[str, Any]]
) -> None:
    config, _, metadata, reference, card = exported
    positive = (reference[config.columns.target] == config.positive_class).astype(float)
    probability = reference[f"probability_{config.positive_class}"]
    assert card["calibration"]["brier_score"] == pytest.approx(
        float(((probability - positive) ** 2).mean()), abs=PROBABILITY_TOLERANCE)
    assert len(card["calibration"]["mean_predicted"]) == len(
        card["calibration"]["observed_frequency"]) > 1
    assert {row["feature"] for row in card["importance"]} == set(config.columns.features)
    assert card["limitations"]  # the fixture's model has weaker slices than its overall score
    assert card["about"]["owner"].startswith("REVIEW:")
    assert card["libraries"] == metadata["libraries"]
    assert card["model"]["model_version"] == metadata["model_version"]
    assert card["training_data"]["sha256"] == metadata["training_data_sha256"]
    assert sum(card["training_data"]["class_balance"].values()) == card["training_data"]["rows"]


def test_the_card_is_exported_checksummed_and_shipped_with_the_champion(
    trained_project: Path, tmp_path: Path
) -> None:
    metadata = read_metadata(trained_project / CHAMPION)
    files = set(metadata["model_card_files"])
    assert {CARD_JSON, CARD_MARKDOWN} <= files and any(name.endswith(".png") for name in files)
    markdown = (trained_project / CHAMPION / CARD_MARKDOWN).read_text()
    assert all(f"]({name})" in markdown for name in files if name.endswith(".png"))
    _, shipped, _ = champion_files(prediction_config(trained_project))
    assert files <= set(shipped)

    copy = tmp_path / "champion"
    shutil.copytree(trained_project / CHAMPION, copy)
    assert load_card(copy, metadata) is not None
    (copy / CARD_JSON).write_text("{}")  # a card that is not the one exported
    assert load_card(copy, metadata) is None
    assert load_card(copy, {key: value for key, value in metadata.items()
                            if key != "model_card_files"}) is None  # exported before cards


def test_the_card_is_logged_to_the_run_and_summarised_on_the_registered_version(
    trained_project: Path, exported: tuple[Config, Any, dict[str, Any], pd.DataFrame,
                                           dict[str, Any]]
) -> None:
    config, _, metadata, _, card = exported
    client = MlflowClient(config.tracking_uri)
    version = client.get_model_version(config.tracking.registered_model_name,
                                       metadata["model_version"])
    assert version.description == summary(card)
    assert metadata["holdout_metrics"][config.training.metric] == pytest.approx(
        card["holdout"]["metrics"][config.training.metric]["value"])
    logged = {Path(item.path).name for item in client.list_artifacts(
        metadata["mlflow_run_id"], "model_card")}
    assert logged == set(metadata["model_card_files"])


def _fitted_shape(shape: str, root: Path) -> tuple[Config, Any, pd.DataFrame, pd.DataFrame]:
    """A table of another shape, its first candidate fitted without a search (seconds)."""
    config_file = SHAPES[shape](rows=400).write(root)
    config = load_config("modelling", "historic", "local", config_file=config_file, root=root)
    valid = validate_production_data(load_historic_data(config), config, with_target=True).valid
    train, holdout = split_holdout(valid, config)
    pipeline = build_pipeline(config, build_estimator(config.training.candidates[0], config))
    pipeline.fit(*features_and_target(train, config))
    return config, pipeline, train, build_reference_sample(pipeline, holdout, config)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_table_shape_gets_a_card_whose_numbers_are_its_holdouts(
    shape: str, tmp_path: Path
) -> None:
    config, pipeline, train, reference = _fitted_shape(shape, tmp_path)
    metadata = {"model_version": "1", "schema": [], "libraries": {}}
    card = build_card(config, pipeline, reference, metadata=metadata, train=train,
                      quarantined_rows=0, leaderboard=pd.DataFrame())

    for name, value in _recomputed(config, pipeline, reference).items():
        assert card["holdout"]["metrics"][name]["value"] == pytest.approx(
            value, abs=PROBABILITY_TOLERANCE)
    assert (card["calibration"] is None) == (config.task == "regression")
    assert (card["residuals"] is None) == (config.task != "regression")
    files = card_files(card)
    assert json.loads(files[CARD_JSON]) == json.loads(json.dumps(card, default=str))
    assert files == card_files(build_card(  # seeded: the same card twice
        config, pipeline, reference, metadata=metadata, train=train, quarantined_rows=0,
        leaderboard=pd.DataFrame()))


def test_slices_under_the_minimum_are_named_too_small_and_not_scored(tmp_path: Path) -> None:
    config, pipeline, train, reference = _fitted_shape("loans", tmp_path)
    config = config.model_copy(update={"model_card": config.model_card.model_copy(
        update={"min_slice_rows": len(reference) + 1})})
    card = build_card(config, pipeline, reference, metadata={}, train=train,
                      quarantined_rows=0, leaderboard=pd.DataFrame())

    assert card["slices"] and all(s["status"] == TOO_SMALL and "metrics" not in s
                                  for s in card["slices"])
    assert any(f"fewer than {len(reference) + 1} holdout rows" in text
               for text in card["limitations"])


def test_a_constant_number_is_one_slice_and_an_undefined_value_is_null(tmp_path: Path) -> None:
    config, pipeline, train, reference = _fitted_shape("houses", tmp_path)
    feature = config.columns.features[0]
    constant = reference.assign(**{feature: 3.0})
    board = pd.DataFrame({"rank": [1], "mean_r2": [float("nan")]})  # a metric CV could not score
    card = build_card(config, pipeline, constant, metadata={}, train=train,
                      quarantined_rows=0, leaderboard=board)

    assert [(s["slice"], s["rows"]) for s in card["slices"] if s["feature"] == feature] == [
        ("3", len(constant))]
    assert card["leaderboard"] == [{"rank": 1, "mean_r2": None}]
    assert json.loads(card_files(card)[CARD_JSON])["leaderboard"][0]["mean_r2"] is None


def test_a_new_export_replaces_the_card_and_removes_figures_it_no_longer_has(
    trained_project: Path, tmp_path: Path
) -> None:
    pipeline, metadata = load_pipeline(trained_project / CHAMPION)
    directory = tmp_path / "champion"
    export_pipeline(pipeline, metadata, directory, None,
                    {CARD_JSON: b"{}", CARD_MARKDOWN: b"# old", "model_card_old.png": b"png"})
    export_pipeline(pipeline, metadata, directory, None,
                    {CARD_JSON: b'{"new": 1}', CARD_MARKDOWN: b"# new"})

    assert not (directory / "model_card_old.png").exists()
    assert load_card(directory, read_metadata(directory)) == ({"new": 1}, "# new")
    export_pipeline(pipeline, metadata, directory)  # a model exported without a card
    assert not (directory / CARD_JSON).exists()
    assert "model_card_files" not in read_metadata(directory)
    assert load_card(directory, read_metadata(directory)) is None


def test_importance_scores_f1_of_text_labels_as_the_search_does(tmp_path: Path) -> None:
    config, pipeline, train, reference = _fitted_shape("loans", tmp_path)
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"metric": "f1"})})
    card = build_card(config, pipeline, reference, metadata={}, train=train,
                      quarantined_rows=0, leaderboard=pd.DataFrame())

    assert {row["feature"] for row in card["importance"]} == set(config.columns.features)
    assert max(row["mean"] for row in card["importance"]) > 0


def test_the_runs_importance_figure_scores_f1_of_text_labels_as_the_card_does(
    tmp_path: Path
) -> None:
    """The modelling run's own permutation-importance plot (tracking.evaluation_figures) takes
    the same scorer: the built-in "f1" assumes the label 1, which text labels do not have."""
    from ml_project.tracking import evaluation_figures

    config, pipeline, _, reference = _fitted_shape("loans", tmp_path)
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"metric": "f1"})})

    figures = evaluation_figures(pipeline, reference, config)

    assert "permutation_importance.png" in figures
