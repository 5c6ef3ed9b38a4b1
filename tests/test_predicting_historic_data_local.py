"""End-to-end: chunked batch scoring of a historic file with the exported champion."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ml_project.config import PROJECT_ROOT, REASON_COLUMN
from ml_project.csv_format import CsvFormatError, check_csv
from ml_project.predict import PredictionService
from ml_project.validate import validate_production_data
from tests.churn_data import generate_historic_data
from tests.conftest import PROBABILITY_TOLERANCE, prediction_config
from tests.csv_cases import CASE_NAMES, CsvCase, csv_cases
from use_cases import predicting_historic_data_local


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(trained_project, root)
    return root


def _score(root: Path, *args: str) -> int:
    return predicting_historic_data_local.main(
        ["--config", str(root / "project_config.yaml"), "--root", str(root), *args]
    )


@pytest.mark.parametrize("chunk_size", [97, 500, 100_000])
def test_chunked_scoring_equals_the_in_memory_pipeline(project: Path, chunk_size: int) -> None:
    assert _score(project, "--chunk-size", str(chunk_size)) == 0
    predictions = pd.read_csv(project / "output/predictions/historic_data_predictions.csv",
                              dtype={"customer_id": object})
    quarantined = pd.read_csv(project / "output/quarantine/historic_data_predictions.csv")
    source = pd.read_csv(project / "data/historic_data.csv", dtype={"customer_id": object})
    assert len(predictions) + len(quarantined) == len(source)
    assert quarantined["quarantine_reason"].notna().all()
    service = PredictionService.from_config(prediction_config(project))
    valid = source[source["customer_id"].isin(predictions["customer_id"])]
    expected = service.pipeline.predict_proba(valid[service.features].astype(
        {c: float for c in ("tenure_months", "age")}))[:, 1]
    np.testing.assert_allclose(predictions["probability_1"], expected, rtol=0,
                               atol=PROBABILITY_TOLERANCE)
    assert (predictions["model_version"].astype(str) == service.model_version).all()


def test_bad_rows_are_quarantined_with_the_column_named(project: Path, tmp_path: Path) -> None:
    rows = pd.read_csv(project / "data/historic_data.csv", dtype={"customer_id": object}).head(6)
    bad = rows.astype({"age": object}).copy()
    bad.loc[0, "age"] = "forty"  # wrong type
    bad.loc[1, "tenure_months"] = 999  # out of range
    bad.loc[2, "contract"] = "weekly"  # unknown category
    bad.loc[3, "region"] = None  # null where not allowed
    bad["extra_column"] = "ignored"  # extra columns are dropped with a log line
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    assert _score(project, "--input", str(path)) == 0
    quarantined = pd.read_csv(project / "output/quarantine/bad_predictions.csv")
    reasons = quarantined["quarantine_reason"].tolist()
    assert len(reasons) == 4
    for column, reason in zip(("age", "tenure_months", "contract", "region"), reasons):
        assert reason.startswith(column)
    assert len(pd.read_csv(project / "output/predictions/bad_predictions.csv")) == 2


def test_a_missing_column_rejects_the_file_naming_it(project: Path, tmp_path: Path) -> None:
    rows = pd.read_csv(project / "data/historic_data.csv").head(5).drop(columns="contract")
    path = tmp_path / "no_contract.csv"
    rows.to_csv(path, index=False)
    assert _score(project, "--input", str(path)) == 2


def test_missing_artifact_exits_with_a_clear_message(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.rmtree(project / "data/model_artifacts")
    assert _score(project) == 2
    assert "run the modelling use case first" in caplog.text


def test_corrupted_artifact_is_refused(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    artifact = next((project / "data/model_artifacts/champion").glob("pipeline-*.joblib"))
    artifact.write_bytes(artifact.read_bytes()[:-10])
    assert _score(project) == 2
    assert "checksum" in caplog.text


PEAK_MEMORY_SCRIPT = """
import sys, tracemalloc
from use_cases import predicting_historic_data_local as use_case
tracemalloc.start()
code = use_case.main(sys.argv[1:])
print(tracemalloc.get_traced_memory()[1])
raise SystemExit(code)
"""


def _peak_memory(project: Path, rows: int, tmp_path: Path, labelled: bool = False) -> int:
    """Peak traced memory of a scoring run in a fresh interpreter, as a user would run it."""
    path = tmp_path / f"{'labelled' if labelled else 'unlabelled'}_{rows}.csv"
    data = generate_historic_data(rows, seed=3)
    (data if labelled else data.drop(columns="churned")).to_csv(path, index=False)
    arguments = ["--config", str(project / "project_config.yaml"), "--root", str(project),
                 "--input", str(path), "--chunk-size", "500"]
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, *arguments],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
def test_chunked_scoring_keeps_memory_flat(project: Path, tmp_path: Path, labelled: bool) -> None:
    small = _peak_memory(project, 3_000, tmp_path, labelled)
    large = _peak_memory(project, 30_000, tmp_path, labelled)  # 10x the rows, 60x the chunk
    assert large < 1.3 * small, (small, large)


def test_unusable_labels_are_quarantined_and_metrics_use_the_rest(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = pd.read_csv(project / "data/historic_data.csv", dtype={"customer_id": object}).head(400)
    rows = rows.astype({"churned": object})
    rows.loc[3, "churned"] = 7
    rows.loc[5, "churned"] = "yes"
    rows.loc[6, "churned"] = None  # no label: predicted, left out of the metrics
    path = tmp_path / "labelled.csv"
    rows.to_csv(path, index=False)

    assert _score(project, "--input", str(path), "--chunk-size", "97") == 0

    quarantined = pd.read_csv(project / "output/quarantine/labelled_predictions.csv",
                              dtype={"customer_id": object})
    by_id = dict(zip(quarantined["customer_id"], quarantined["quarantine_reason"]))
    assert by_id[rows.loc[3, "customer_id"]] == "churned: label '7' is not one of [0, 1]"
    assert by_id[rows.loc[5, "customer_id"]] == "churned: label 'yes' is not one of [0, 1]"
    predictions = pd.read_csv(project / "output/predictions/labelled_predictions.csv")
    assert len(predictions) + len(quarantined) == len(rows)
    assert "roc_auc" in capsys.readouterr().out


def test_a_header_only_file_gives_an_empty_result(project: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text((project / "data/historic_data.csv").read_text().splitlines()[0] + "\n")

    assert _score(project, "--input", str(path)) == 0

    predictions = pd.read_csv(project / "output/predictions/empty_predictions.csv")
    assert predictions.empty and "prediction" in predictions.columns
    assert not list((project / "output").rglob("*.partial*"))


def test_a_file_failing_half_way_leaves_no_output_that_looks_complete(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid row late in the file stops a run that must not quarantine
    (`validation.fail_on_invalid`, exit 2) after 400 rows: no predictions file under its final
    name. (A file out of the CSV format is refused before its first row.)"""
    rows = pd.read_csv(project / "data/historic_data.csv", dtype={"customer_id": object}).head(700)
    checked = validate_production_data(rows, prediction_config(project), with_target=False)
    rows = rows.drop(index=checked.quarantined.index).head(600).reset_index(drop=True)
    rows = rows.astype({"age": object})
    rows.loc[450, "age"] = "forty"
    path = tmp_path / "late_error.csv"
    rows.to_csv(path, index=False)
    config_file = project / "project_config.yaml"
    settings = yaml.safe_load(config_file.read_text())
    settings["validation"]["fail_on_invalid"] = True
    config_file.write_text(yaml.safe_dump(settings, sort_keys=False))

    assert _score(project, "--input", str(path), "--chunk-size", "100") == 2

    assert "(400 rows had been scored)" in caplog.text
    assert not (project / "output/predictions/late_error_predictions.csv").exists()
    assert not list((project / "output").rglob("*.partial*"))


@pytest.fixture(scope="module")
def scoring(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the trained project for every CSV case (each writes its own outputs)."""
    root = tmp_path_factory.mktemp("csv_cases")
    shutil.copytree(trained_project, root, dirs_exist_ok=True)
    return root


def _case(name: str, root: Path) -> CsvCase:
    cases = csv_cases(root / "data/production_data.csv", prediction_config(root), rows=20)
    return next(case for case in cases if case.name == name)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_csv_case_gets_the_format_s_verdict(
    scoring: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """A file out of the format: exit 2 and the format's one line, before any output; a file
    in it: every row predicted or quarantined (tests/csv_cases.py; Spark and SageMaker give
    the same verdicts: tests/test_predicting_historic_data_spark.py, tests/test_sagemaker.py)."""
    case = _case(name, scoring)
    path = case.write(tmp_path)
    code = _score(scoring, "--input", str(path))
    predictions = scoring / f"output/predictions/{path.stem}_predictions.csv"
    if case.error is not None:
        with pytest.raises(CsvFormatError) as refusal:
            check_csv(path)
        assert str(refusal.value).startswith(case.error)
        assert code == 2
        assert f"Cannot score {path}: {refusal.value}. No predictions file" in caplog.text
        assert not predictions.exists()
        return
    assert code == 0
    predicted = pd.read_csv(predictions, dtype=str)
    quarantine = scoring / f"output/quarantine/{path.stem}_predictions.csv"
    quarantined = pd.read_csv(quarantine, dtype=str) if case.rows else pd.DataFrame()
    assert (len(predicted), len(quarantined)) == (case.rows - case.quarantined, case.quarantined)
    if case.quarantined:
        assert quarantined[REASON_COLUMN].str.startswith(f"{case.column}: ").all()
