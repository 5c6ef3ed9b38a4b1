"""The generator of the churn example: the shipped demo data and the tests' fixture table.

One seeded generator writes all three files, so the data the quickstart uses is reproducible:
- historic data: features, event timestamp and the churn label;
- a production sample: the same features without the label, a few out-of-schema rows, and an
  optional drift knob (`drift` from 0 = same distribution to 1 = strongly shifted);
- the production labels that "arrive later", joined by id for performance monitoring.

Run `pipenv run python -m tests.churn_data` to rewrite the demo files in data/. The tests use
it with `tests/fixture_config.yaml`, never the project's own config or data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CONTRACTS = ("month-to-month", "one-year", "two-year")
PAYMENT_METHODS = ("electronic-check", "mailed-check", "bank-transfer", "credit-card")
INTERNET_SERVICES = ("dsl", "fiber", "none")
REGIONS = ("north", "south", "east", "west")
TARGET = "churned"


def _customers(n_rows: int, rng: np.random.Generator, drift: float, id_prefix: str,
               start: str, days: int) -> pd.DataFrame:
    """Features and the latent churn probability for `n_rows` customers."""
    contract_p = np.array([0.5, 0.3, 0.2]) * (1 - drift) + np.array([0.8, 0.15, 0.05]) * drift
    contract = rng.choice(CONTRACTS, size=n_rows, p=contract_p)
    tenure = np.clip(rng.gamma(2.0, 14.0 * (1 - 0.5 * drift), n_rows), 0, 120).round()
    internet = rng.choice(INTERNET_SERVICES, size=n_rows, p=[0.4, 0.45, 0.15])
    base_charges = np.where(internet == "fiber", 80.0, np.where(internet == "dsl", 55.0, 25.0))
    monthly = np.clip(base_charges * (1 + 0.4 * drift) + rng.normal(0, 12, n_rows), 5, 400)
    total = np.clip(monthly * tenure * rng.normal(1.0, 0.05, n_rows), 0, None)
    support_calls = rng.poisson(1.5 + 2.5 * drift, n_rows)
    usage = np.clip(rng.lognormal(3.0, 0.8, n_rows), 0, 1999)
    age = np.clip(rng.normal(45, 15, n_rows), 18, 95).round()
    payment = rng.choice(PAYMENT_METHODS, size=n_rows, p=[0.35, 0.2, 0.25, 0.2])
    region = rng.choice(REGIONS, size=n_rows)
    timestamps = pd.Timestamp(start) + pd.to_timedelta(rng.uniform(0, days, n_rows), unit="D")

    logit = (
        -1.2
        + 1.3 * (contract == "month-to-month")
        - 0.9 * (contract == "two-year")
        - 0.035 * tenure
        + 0.012 * (monthly - 60)
        + 0.3 * support_calls
        + 0.5 * (payment == "electronic-check")
        + 0.4 * (internet == "fiber")
        - 0.008 * (age - 45)
        # interactions and thresholds a linear model cannot express, trees can
        + 1.5 * ((tenure < 6) & (internet == "fiber"))
        + 0.0015 * (age - 45) ** 2
        - 1.0 * ((support_calls >= 4) & (contract == "two-year"))
        + rng.normal(0, 0.8, n_rows)  # noise keeps the signal learnable but imperfect
    )
    frame = pd.DataFrame(
        {
            "customer_id": [f"{id_prefix}{i:06d}" for i in range(n_rows)],
            "event_time": timestamps.strftime("%Y-%m-%dT%H:%M:%S"),
            "tenure_months": tenure.astype(int),
            "monthly_charges": monthly.round(2),
            "total_charges": total.round(2),
            "support_calls": support_calls,
            "data_usage_gb": usage.round(1),
            "age": age.astype(int),
            "contract": contract,
            "payment_method": payment,
            "internet_service": internet,
            "region": region,
        }
    )
    frame[TARGET] = (rng.uniform(size=n_rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame.sort_values("event_time", ignore_index=True)


def _blank_some(frame: pd.DataFrame, rng: np.random.Generator, share: float) -> pd.DataFrame:
    """Blank a few percent of the nullable columns, as real data arrives."""
    blanked = frame.copy()
    for column in ("total_charges", "data_usage_gb", "payment_method", "internet_service"):
        blanked.loc[rng.uniform(size=len(frame)) < share, column] = np.nan
    return blanked


def _corrupt_some(frame: pd.DataFrame, rng: np.random.Generator, n_bad: int) -> pd.DataFrame:
    """Out-of-schema rows that validation must catch: range, category, type and null errors."""
    corrupted = frame.astype({"tenure_months": object, "age": object}).copy()
    rows = rng.choice(len(frame), size=n_bad, replace=False)
    faults: list[tuple[str, Any]] = [
        ("tenure_months", -3),
        ("contract", "weekly"),
        ("age", "unknown"),
        ("region", np.nan),
        ("monthly_charges", 9999.0),
    ]
    for i, row in enumerate(rows):
        column, value = faults[i % len(faults)]
        corrupted.loc[row, column] = value
    return corrupted


def generate_historic_data(n_rows: int = 20_000, seed: int = 42) -> pd.DataFrame:
    """Two years of labelled customer snapshots with a few missing values and bad rows."""
    rng = np.random.default_rng(seed)
    frame = _customers(n_rows, rng, drift=0.0, id_prefix="H", start="2024-01-01", days=730)
    return _corrupt_some(_blank_some(frame, rng, 0.03), rng, n_bad=max(1, n_rows // 1000))


def generate_production_data(
    n_rows: int = 2_000, seed: int = 7, drift: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Unlabelled production instances (a few out of schema) and their later-arriving labels."""
    rng = np.random.default_rng(seed)
    frame = _customers(n_rows, rng, drift=drift, id_prefix="P", start="2026-01-01", days=60)
    labels = frame[["customer_id", TARGET]].copy()
    production = _corrupt_some(_blank_some(frame, rng, 0.03), rng, n_bad=max(1, n_rows // 200))
    return production.drop(columns=TARGET), labels


def write_example_data(
    directory: Path, *, n_historic: int = 20_000, n_production: int = 2_000, drift: float = 0.6,
    seed: int = 42,
) -> dict[str, Path]:
    """Write historic_data.csv, production_data.csv and production_labels.csv into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    production, labels = generate_production_data(n_production, seed=seed + 1, drift=drift)
    files = {
        "historic": directory / "historic_data.csv",
        "production": directory / "production_data.csv",
        "production_labels": directory / "production_labels.csv",
    }
    generate_historic_data(n_historic, seed=seed).to_csv(files["historic"], index=False)
    production.to_csv(files["production"], index=False)
    labels.to_csv(files["production_labels"], index=False)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", type=Path, default=Path("data"))
    parser.add_argument("--historic-rows", type=int, default=20_000)
    parser.add_argument("--production-rows", type=int, default=2_000)
    parser.add_argument("--drift", type=float, default=0.6, help="0 = no drift, 1 = strong drift")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    files = write_example_data(
        args.directory, n_historic=args.historic_rows, n_production=args.production_rows,
        drift=args.drift, seed=args.seed,
    )
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
