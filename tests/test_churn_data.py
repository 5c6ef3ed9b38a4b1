"""The example data generator: reproducible, in the configured schema, with exactly the planted
bad rows, labels that join production by id, and a drift knob that shifts the distribution."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ml_project.config import Config
from ml_project.ingest import known_columns, read_table
from ml_project.validate import validate_production_data
from tests.churn_data import (
    TARGET,
    generate_historic_data,
    generate_production_data,
    main,
    write_example_data,
)


def test_generate_historic_data_is_reproducible_from_its_seed() -> None:
    first, again = generate_historic_data(300, seed=1), generate_historic_data(300, seed=1)

    pd.testing.assert_frame_equal(first, again)
    assert not generate_historic_data(300, seed=1).equals(generate_historic_data(300, seed=2))


def test_generate_historic_data_matches_the_configured_columns(config: Config) -> None:
    historic = generate_historic_data(500)

    assert set(historic.columns) == set(known_columns(config))
    assert historic["event_time"].is_monotonic_increasing
    assert set(historic[TARGET]) == {0, 1}


def test_write_example_data_plants_exactly_the_bad_rows_validation_catches(
    tmp_path: Path, config: Config
) -> None:
    files = write_example_data(tmp_path, n_historic=5000, n_production=200)

    production = read_table(str(files["historic"]), config)
    quarantined = validate_production_data(production, config, with_target=True).quarantined

    assert len(quarantined) == 5  # one per 1000 rows, one of each fault
    faulty = {reason.split(":")[0] for reason in quarantined["quarantine_reason"]}
    assert faulty == {"tenure_months", "contract", "age", "region", "monthly_charges"}


@pytest.mark.parametrize("column", ["total_charges", "data_usage_gb", "payment_method"])
def test_generate_historic_data_leaves_some_nullable_values_missing(column: str) -> None:
    share = generate_historic_data(3000)[column].isna().mean()

    assert 0.01 < share < 0.06


def test_generate_production_data_has_no_target_and_labels_that_join_by_id() -> None:
    production, labels = generate_production_data(400)

    assert TARGET not in production.columns
    assert list(labels.columns) == ["customer_id", TARGET]
    assert set(labels["customer_id"]) == set(production["customer_id"])
    assert labels["customer_id"].is_unique and len(labels) == 400


def test_generate_production_data_drift_shifts_the_distribution() -> None:
    steady, _ = generate_production_data(3000, drift=0.0)
    drifted, _ = generate_production_data(3000, drift=1.0)

    def month_to_month_share(frame: pd.DataFrame) -> float:
        return float((frame["contract"] == "month-to-month").mean())

    assert month_to_month_share(drifted) > month_to_month_share(steady) + 0.2
    calls = [pd.to_numeric(frame["support_calls"]).mean() for frame in (steady, drifted)]
    assert calls[1] > calls[0] + 1.5


def test_main_writes_the_three_files_where_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--directory", str(tmp_path), "--historic-rows", "200", "--production-rows", "50"])

    assert code == 0
    names = ("historic_data.csv", "production_data.csv", "production_labels.csv")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)
    assert len(pd.read_csv(tmp_path / "production_labels.csv")) == 50
    assert str(tmp_path / "historic_data.csv") in capsys.readouterr().out
