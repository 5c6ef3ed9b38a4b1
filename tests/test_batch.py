"""`ml_project.batch.PartitionScorer`, the function Spark's `mapInPandas` runs on each partition,
called here in process on batches of CSV cells as strings (as Spark hands them over): every row
comes out once, predicted or quarantined with its reason, with the answers the local chunk
scorer gives the same rows. (tests/test_predicting_historic_data_spark.py runs it in Spark.)
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ml_project.batch import PartitionScorer, score_chunk
from ml_project.config import PROBABILITY_PREFIX, REASON_COLUMN
from ml_project.ingest import as_read
from ml_project.predict import PredictionService
from tests.conftest import PROBABILITY_TOLERANCE, prediction_config


def test_every_row_comes_out_once_as_the_chunk_scorer_scores_it(trained_project: Path) -> None:
    config = prediction_config(trained_project)
    service = PredictionService.from_config(config)
    cells = pd.read_csv(trained_project / "data" / "production_data.csv", dtype=str)
    cells.loc[3, "tenure_months"] = "not a number"  # quarantined, with the column named
    shipped = SimpleNamespace(value=(service.pipeline, service.metadata, service.reference))
    scorer = PartitionScorer(shipped, config, text=True)

    outputs = list(scorer(iter([cells.iloc[:100], cells.iloc[100:]])))

    # Each output holds quarantined rows or predictions, as Spark splits them by the reason
    # when it writes them: the two kinds are put together apart (their empty columns differ).
    identifier = config.columns.id
    kinds = [frame[REASON_COLUMN].notna().all() for frame in outputs]
    assert all(frame[REASON_COLUMN].notna().all() or frame[REASON_COLUMN].isna().all()
               for frame in outputs)
    quarantined = pd.concat([f for f, q in zip(outputs, kinds) if q], ignore_index=True)
    predicted = pd.concat([f for f, q in zip(outputs, kinds) if not q], ignore_index=True)
    assert len(quarantined) + len(predicted) == len(cells)
    assert sorted([*quarantined[identifier], *predicted[identifier]]) == sorted(cells[identifier])
    assert "tenure_months" in quarantined.loc[
        quarantined[identifier] == cells.loc[3, identifier], REASON_COLUMN].item()
    local = score_chunk(as_read(cells, config, text=True), service, config)
    assert local.predictions is not None and len(local.quarantined) == len(quarantined)
    expected = local.predictions.set_index(identifier).sort_index()
    got = predicted.set_index(identifier).sort_index()
    assert set(expected.columns) <= set(got.columns)
    for column in expected.columns:
        if column.startswith(PROBABILITY_PREFIX):  # two batches of 100 and 198 rows vs one of
            np.testing.assert_allclose(            # 298: not promised bit for bit (BLAS kernels)
                got[column].to_numpy(), expected[column].to_numpy(), rtol=0,
                atol=PROBABILITY_TOLERANCE)
        else:
            np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy())


def test_a_batch_with_a_malformed_row_is_passed_on_unscored(trained_project: Path) -> None:
    """Spark's CSV parser marks a row of the wrong width (its text in the `malformed` column):
    the driver refuses the input, so the batch is not scored; its malformed rows alone come
    out, for the driver to name the first. Carried columns never reach validation."""
    config = prediction_config(trained_project, validation={"unknown_fields": "reject"})
    service = PredictionService.from_config(config)
    cells = pd.read_csv(trained_project / "data" / "production_data.csv", dtype=str).head(6)
    carried = cells.assign(malformed=None, order=np.arange(6))
    shipped = SimpleNamespace(value=(service.pipeline, service.metadata, service.reference))
    scorer = PartitionScorer(shipped, config, text=True, carried=("malformed", "order"),
                             malformed="malformed")

    clean = pd.concat(list(scorer(iter([carried]))), ignore_index=True)
    assert len(clean) == 6 and clean["malformed"].isna().all()  # scored: "order" not refused
    bad = carried.assign(malformed=np.array([None, None, "C9,1,2", None, "C8,,", None]))
    outputs = list(scorer(iter([carried, bad])))
    refused = outputs[-1]
    assert refused["malformed"].tolist() == ["C9,1,2", "C8,,"]
    assert refused["order"].tolist() == [2, 4]
    assert refused[REASON_COLUMN].isna().all() and refused["prediction"].isna().all()
