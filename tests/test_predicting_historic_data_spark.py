"""End-to-end: Spark batch scoring in local[2] on multi-partition inputs gives exactly the
local batch use case's predictions and quarantine, row for row.

Needs the optional `spark` Pipfile category and Java: skipped without PySpark, except in CI
(CI=true), where a missing PySpark fails the suite.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from ml_project.predict import PredictionService
from ml_project.serving.endpoints import PredictionEndpoints
from ml_project.serving.sagemaker import invocations
from tests.churn_data import generate_historic_data
from tests.conftest import PROBABILITY_TOLERANCE, prediction_config
from tests.csv_cases import CASE_NAMES, csv_cases
from tests.tables import species
from use_cases import (
    modelling_historic_data_local,
    predicting_historic_data_local,
    predicting_historic_data_spark,
)

try:
    from pyspark.sql import SparkSession
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("PySpark is not installed: pipenv sync --categories spark",
                allow_module_level=True)

pytestmark = pytest.mark.slow

PARTS = 3


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One local[2] session for the module; the use case runs in it (it uses the active
    session). Small splits so every input below is read as several partitions."""
    scratch = tmp_path_factory.mktemp("spark")
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.files.maxPartitionBytes", str(64 * 1024))
               .config("spark.sql.files.openCostInBytes", "0")
               .config("spark.local.dir", str(scratch / "local"))
               .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
               .getOrCreate())
    yield session
    session.stop()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous


@pytest.fixture(scope="module")
def churn(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained project with a file of 6000 rows: bad values of every
    kind (tests/churn_data.py), blanks, and a few unusable labels."""
    root = tmp_path_factory.mktemp("spark_churn")
    shutil.copytree(trained_project, root, dirs_exist_ok=True)
    rows = generate_historic_data(6000, seed=5)
    labels = rows["churned"].astype(object).to_numpy()
    labels[[10, 2000, 4500]] = ["maybe", 7, "yes"]
    rows = rows.assign(churned=labels)
    rows.to_csv(root / "data/scoring.csv", index=False)
    return root


def _arguments(root: Path, *extra: str) -> list[str]:
    return ["--config", str(root / "project_config.yaml"), "--root", str(root), *extra]


def _split_csv(source: Path, folder: Path) -> Path:
    """The file's rows as PARTS CSV files, each with the header: the text is the file's own."""
    lines = source.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(body)), PARTS)):
        (folder / f"part-{i}.csv").write_text(header + "".join(body[j] for j in part))
    return folder


def _local(root: Path, source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and quarantine of the local batch use case, every cell as written."""
    assert predicting_historic_data_local.main(_arguments(root, "--input", str(source))) == 0
    name = f"{source.stem}_predictions.csv"
    predictions = pd.read_csv(root / "output/predictions" / name, dtype=str)
    quarantine = pd.read_csv(root / "output/quarantine" / name, dtype=str)
    return predictions, quarantine


def _spark(root: Path, source: Path, spark: SparkSession) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and quarantine of the Spark use case, every cell as the local files write it
    (so a value is compared as text, exactly: probabilities in their shortest round-trip form)."""
    assert predicting_historic_data_spark.main(_arguments(root, "--input", str(source))) == 0
    stem = source.name.removesuffix(".parquet").removesuffix(".csv")
    results = []
    for kind in ("predictions", "quarantine"):
        folder = root / "output" / kind / f"{stem}_predictions.parquet"
        assert (folder / "_SUCCESS").is_file()
        frame = pd.read_parquet(folder)
        results.append(pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype=str))
    return results[0], results[1]


def _same_rows(got: pd.DataFrame, expected: pd.DataFrame, identifier: str) -> None:
    """The same rows once ordered by id (Spark's order is its partitions'): every cell the same
    text, except probabilities, equal within PROBABILITY_TOLERANCE. The prediction core is not
    bit-for-bit invariant to how many rows it scores at once (the local use case itself moves a
    probability by 1 ulp between --chunk-size values), and partitions batch otherwise than the
    local file's chunks. An absolute tolerance, not units in the last place: 1 - p of a p near
    1 is many ulps of itself away for the same rounding of p."""
    assert list(got.columns) == list(expected.columns)
    assert got[identifier].is_unique

    def ordered(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(identifier, kind="stable").reset_index(drop=True)

    got, expected = ordered(got), ordered(expected)
    numbers = [column for column in got.columns if column.startswith("probability_")]
    pd.testing.assert_frame_equal(got.drop(columns=numbers), expected.drop(columns=numbers),
                                  check_exact=True)
    for column in numbers:
        np.testing.assert_allclose(got[column].astype(float).to_numpy(),
                                   expected[column].astype(float).to_numpy(), rtol=0,
                                   atol=PROBABILITY_TOLERANCE)


def test_csv_parts_score_exactly_as_the_local_use_case(churn: Path, spark: SparkSession,
                                                       tmp_path: Path) -> None:
    source = churn / "data/scoring.csv"
    parts = _split_csv(source, tmp_path / "scoring")
    assert spark.read.csv(str(parts)).rdd.getNumPartitions() >= PARTS
    expected_predictions, expected_quarantine = _local(churn, source)
    predictions, quarantine = _spark(churn, parts, spark)
    _same_rows(predictions, expected_predictions, "customer_id")
    _same_rows(quarantine, expected_quarantine, "customer_id")
    assert len(predictions) + len(quarantine) == 6000
    reasons = quarantine["quarantine_reason"].tolist()
    assert sum(reason.startswith("churned: label") for reason in reasons) == 3
    assert {reason.split(":")[0] for reason in reasons} >= {
        "tenure_months", "contract", "age", "region", "monthly_charges", "churned"}


def test_parquet_parts_score_exactly_as_the_local_use_case(churn: Path, spark: SparkSession,
                                                           tmp_path: Path) -> None:
    rows = pd.read_csv(churn / "data/scoring.csv", dtype={"customer_id": str})
    mixed = [c for c in rows.columns if rows[c].dtype == object]  # text and numbers: as text
    typed = rows.astype({c: "string" for c in mixed})
    single = tmp_path / "scoring.parquet"
    typed.to_parquet(single, index=False)
    parts = tmp_path / "parts" / "scoring.parquet"
    parts.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(typed)), PARTS)):
        typed.iloc[part].to_parquet(parts / f"part-{i}.parquet", index=False)
    assert spark.read.parquet(str(parts)).rdd.getNumPartitions() >= PARTS
    expected_predictions, expected_quarantine = _local(churn, single)
    predictions, quarantine = _spark(churn, parts, spark)
    _same_rows(predictions, expected_predictions, "customer_id")
    _same_rows(quarantine, expected_quarantine, "customer_id")
    assert len(quarantine) >= 9


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained project of another shape: multiclass, text labels, integer ids, no timestamp."""
    root = tmp_path_factory.mktemp("spark_species")
    species().write(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert modelling_historic_data_local.main(_arguments(root)) == 0
    return root


def test_another_table_scores_exactly_as_the_local_use_case(multiclass: Path, spark: SparkSession,
                                                           tmp_path: Path) -> None:
    source = multiclass / "data/production.csv"  # unlabelled, a few invalid rows
    parts = _split_csv(source, tmp_path / "production")
    assert spark.read.csv(str(parts)).rdd.getNumPartitions() >= PARTS
    expected_predictions, expected_quarantine = _local(multiclass, source)
    predictions, quarantine = _spark(multiclass, parts, spark)
    _same_rows(predictions, expected_predictions, "specimen")
    _same_rows(quarantine, expected_quarantine, "specimen")
    assert set(predictions["prediction"]) <= {"alba", "nigra", "rubra"}
    assert len(quarantine) == 3


@pytest.mark.parametrize("change, message", [
    ({"drop": "contract"}, "missing required columns: ['contract']"),
    ({"name": "no_format.txt"}, "pass --format"),
])
def test_unusable_input_is_refused_before_any_work(
    churn: Path, spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    change: dict[str, Any], message: str,
) -> None:
    rows = pd.read_csv(churn / "data/scoring.csv", dtype=str).head(50)
    path = tmp_path / str(change.get("name", "input.csv"))
    rows.drop(columns=change.get("drop", [])).to_csv(path, index=False)
    assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(path))) == 2
    assert message in caplog.text
    assert not (churn / "output/predictions" / f"{path.stem}_predictions.parquet").exists()


def _refusal(caplog: pytest.LogCaptureFixture, path: Path) -> str:
    """What a use case said it could not score `path` for: its one line, without the local
    use case's note on files written."""
    said = [record.getMessage() for record in caplog.records
            if record.getMessage().startswith(f"Cannot score {path}: ")]
    assert len(said) == 1, said
    return said[0].removeprefix(f"Cannot score {path}: ").split(". No predictions file")[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_csv_case_gets_the_same_verdict_on_every_path(
    churn: Path, spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    name: str
) -> None:
    """The same file through the local batch use case, the Spark use case and SageMaker's
    text/csv route (in process, the core both apps serve): a refusal in the same words
    everywhere (exit 2; a 400), or the same rows predicted and quarantined with the same
    reasons (SageMaker: a request is all or none, so a row the batches quarantine is a 422
    naming its column). Before, Spark predicted rows of too many fields without their extra
    values, read a quoted line break as two rows and predicted past an unclosed quote."""
    config = prediction_config(churn)
    case = next(case for case in csv_cases(churn / "data/production_data.csv", config, rows=20)
                if case.name == name)
    path = case.write(tmp_path)
    endpoints = PredictionEndpoints(PredictionService.from_config(config), None, None)
    answer = invocations(endpoints, case.text, "text/csv", None)
    content = json.loads(answer.body)
    if case.error is not None:
        assert predicting_historic_data_local.main(_arguments(churn, "--input", str(path))) == 2
        message = _refusal(caplog, path)
        caplog.clear()
        assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(path))) == 2
        assert _refusal(caplog, path) == message  # Spark's words are the local use case's
        assert message.startswith(case.error)
        if case.name == "empty":  # a request with no instance
            assert answer.status == 422
        else:
            assert (answer.status, content["detail"]) == (
                400, f"the body is not CSV this model reads: {message}")
        assert not list((churn / "output").rglob(f"{path.stem}_predictions*"))
        return
    if not case.rows:  # a header alone: empty results; a request with no instance
        assert predicting_historic_data_local.main(_arguments(churn, "--input", str(path))) == 0
        assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(path))) == 0
        for kind in ("predictions", "quarantine"):
            assert pd.read_parquet(churn / f"output/{kind}/{path.stem}_predictions.parquet").empty
        assert pd.read_csv(churn / f"output/predictions/{path.stem}_predictions.csv").empty
        assert answer.status == 422
        return
    expected_predictions, expected_quarantine = _local(churn, path)
    predictions, quarantine = _spark(churn, path, spark)
    assert (len(predictions), len(quarantine)) == (case.rows - case.quarantined,
                                                   case.quarantined)
    _same_rows(predictions, expected_predictions, "customer_id")
    if case.quarantined:
        _same_rows(quarantine, expected_quarantine, "customer_id")
        assert (answer.status, list(content["errors"])) == (422, [f"instances[1].{case.column}"])
        return
    assert answer.status == 200
    served = [str(item["prediction"]) for item in content["predictions"]]
    assert served == expected_predictions["prediction"].tolist()  # in the file's order
    np.testing.assert_allclose([item["probabilities"]["1"] for item in content["predictions"]],
                               expected_predictions["probability_1"].astype(float), rtol=0,
                               atol=PROBABILITY_TOLERANCE)


def test_a_single_csv_file_scores_exactly_as_the_local_use_case(
    churn: Path, spark: SparkSession
) -> None:
    """One file is one task's to read (a quoted line break forbids splitting it); its rows
    are spread over the cores for scoring, and come out as the local use case's."""
    source = churn / "data/scoring.csv"
    expected_predictions, expected_quarantine = _local(churn, source)
    predictions, quarantine = _spark(churn, source, spark)
    _same_rows(predictions, expected_predictions, "customer_id")
    _same_rows(quarantine, expected_quarantine, "customer_id")


def test_a_folder_s_files_must_share_one_header(
    churn: Path, spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty file among them is skipped (Spark writes one for an empty partition); a file
    whose header differs, or out of the format, refuses the input, naming the file."""
    rows = pd.read_csv(churn / "data/scoring.csv", dtype=str).head(200)
    folder = tmp_path / "parts"
    folder.mkdir()
    rows.head(100).to_csv(folder / "part-0.csv", index=False)
    (folder / "part-1.csv").write_text("")
    rows.tail(100).to_csv(folder / "part-2.csv", index=False)
    assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(folder))) == 0

    swapped = [*rows.columns[1:], rows.columns[0]]
    rows.tail(100)[swapped].to_csv(folder / "part-2.csv", index=False)
    assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(folder))) == 2
    assert "the files' headers differ: part-0.csv names ['customer_id'" in caplog.text
    assert "part-2.csv ['event_time'" in caplog.text

    (folder / "part-2.csv").write_text((folder / "part-0.csv").read_text() + '"C1,2\n')
    assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(folder))) == 2
    assert "part-2.csv: a quoted value is never closed" in caplog.text


def test_what_spark_s_parser_refuses_is_refused_in_one_line(
    churn: Path, spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The one text the format lets through and the parsers read apart: a closing quote right
    after a quote, then more text (`""month-to-month`: pandas reads `month-to-month`). Spark's
    parser refuses it (csv_format's docstring): exit 2, its reason in one line, no output."""
    lines = (churn / "data/production_data.csv").read_text().splitlines()[:4]
    path = tmp_path / "empty_quotes_then_text.csv"
    path.write_text("\n".join([*lines[:2], lines[2].replace(",month-to-month,",
                                                            ',""month-to-month,'), *lines[3:]]))
    assert ',""month-to-month,' in path.read_text()

    assert predicting_historic_data_spark.main(_arguments(churn, "--input", str(path))) == 2

    refusal = _refusal(caplog, path)
    assert "Unescaped quote" in refusal and "\n" not in refusal
    assert not list((churn / "output").rglob(f"{path.stem}_predictions*"))
