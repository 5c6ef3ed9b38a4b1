"""Tables of several shapes for the drafter's tests, and the drafted config loaded with them.

Each table is generated here; a test writes it as CSV or Parquet, drafts it, and merges the
draft into the tests' own config in place of its columns, loaded by the real Config loader.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from executables.draft_config import draft_config
from ml_project.config import Config, load_config
from tests.conftest import FIXTURE_CONFIG

ROWS = 400


def _with_nulls(values: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    result = values.astype(object)
    result[rng.random(len(values)) < share] = None
    return result


def binary_table(rng: np.random.Generator) -> pd.DataFrame:
    """Churn-like: categorical features with nulls, a flag, codes, free text, a constant, dates."""
    return pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(ROWS)],
        "event_time": pd.date_range("2024-01-01", periods=ROWS, freq="h").strftime(
            "%Y-%m-%dT%H:%M:%S"),
        "tenure_months": rng.integers(0, 73, ROWS),
        "monthly_charges": _with_nulls(rng.uniform(20, 120, ROWS).round(2), rng, 0.1),
        "contract": _with_nulls(rng.choice(["monthly", "yearly", "two-year"], ROWS), rng, 0.05),
        "is_senior": rng.choice([True, False], ROWS),
        "plan_code": rng.choice([1, 2, 3], ROWS),
        "support_calls": rng.poisson(2, ROWS),
        "notes": [f"called about invoice {i}" for i in range(ROWS)],
        "country": "NL",
        "legacy_score": np.full(ROWS, np.nan),
        "signup_date": pd.date_range("2020-01-01", periods=ROWS, freq="D").strftime("%Y-%m-%d"),
        "churned": rng.choice([0, 1], ROWS),
    })


def multiclass_table(rng: np.random.Generator) -> pd.DataFrame:
    """Text labels, an id named in another style, no timestamp."""
    return pd.DataFrame({
        "RowID": rng.permutation(ROWS) + 1000,
        "petal_length": rng.normal(4, 1.5, ROWS).round(1),
        "petal_width": _with_nulls(rng.normal(1.2, 0.5, ROWS).round(2), rng, 0.02),
        "colour": rng.choice(["blue", "white", "violet", "1"], ROWS),
        "species": rng.choice(["setosa", "versicolor", "virginica"], ROWS),
    })


def regression_table(rng: np.random.Generator) -> pd.DataFrame:
    """Numeric features only, negative values, a float target."""
    return pd.DataFrame({
        "listing": [f"L-{i}" for i in range(ROWS)],
        "temperature": rng.normal(-5, 10, ROWS),
        "floor_area_m2": rng.uniform(20, 250, ROWS),
        "rooms": rng.integers(1, 9, ROWS),
        "price": rng.lognormal(12, 0.5, ROWS),
    })


def other_names_table(rng: np.random.Generator) -> pd.DataFrame:
    """Unusual column names, yes/no text labels, true/false texts, integer-looking categories."""
    return pd.DataFrame({
        "Order Ref": [f"{i:08d}" for i in range(ROWS)],
        "Created At": pd.date_range("2025-03-01", periods=ROWS, freq="min").strftime(
            "%Y-%m-%d %H:%M:%S+01:00"),
        "Amount (EUR)": rng.exponential(80, ROWS).round(2),
        "Store": rng.choice(["001", "002", "017"], ROWS),
        "Gift?": rng.choice(["true", "false"], ROWS),
        "Returned": rng.choice(["yes", "no"], ROWS),
    })


def flag_target_table(rng: np.random.Generator) -> pd.DataFrame:
    """A True/False target (read as bools from a CSV as from Parquet), a flag feature."""
    return pd.DataFrame({
        "PassengerId": [f"{i:04d}_01" for i in range(ROWS)],
        "Age": _with_nulls(rng.integers(0, 80, ROWS).astype(float), rng, 0.05),
        "VIP": rng.choice([True, False], ROWS),
        "Transported": rng.choice([True, False], ROWS),
    })


SHAPES: dict[str, tuple[Callable[[np.random.Generator], pd.DataFrame], dict[str, Any]]] = {
    "binary": (binary_table, {"target": "churned"}),
    "multiclass": (multiclass_table, {"target": "species"}),
    "regression": (regression_table, {"target": "price", "id_column": "listing"}),
    "other_names": (other_names_table, {"target": "Returned", "id_column": "Order Ref",
                                        "timestamp": "Created At"}),
    "flag_target": (flag_target_table, {"target": "Transported", "id_column": "PassengerId"}),
}


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def config_from_draft(draft: dict[str, Any], data_file: Path, root: Path) -> Config:
    """The tests' churn config with the drafted sections in place of its columns and task."""
    base = yaml.safe_load(FIXTURE_CONFIG.read_text())
    del base["columns"]
    base["data"]["historic"] = str(data_file)
    config_file = root / "project_config.yaml"
    config_file.write_text(yaml.safe_dump(base, sort_keys=False))
    return load_config("modelling", "historic", "local", config_file=config_file, root=root,
                       overrides=draft)


def drafted(shape: str, suffix: str, tmp_path: Path) -> tuple[pd.DataFrame, Path, str]:
    make, options = SHAPES[shape]
    frame = make(np.random.default_rng(7))
    path = write_table(frame, tmp_path / f"{shape}{suffix}")
    return frame, path, draft_config(path, **options)


# Tables whose draft is read from part of the year (a season, a working day) and must hold for
# rows from all of it: (make(rng, rows, part) -> frame, draft options, part seen, whole range).
AIRPORTS = [f"{a}{b}" for a in "ABCDEFGHIJK" for b in "LMNOPQRSTU"][:103]


def bookings(rng: np.random.Generator, rows: int, whole: bool) -> pd.DataFrame:
    """A rare text target, no timestamp, a 103-value destination, an ISO weekday (1-7), an
    hour and a month, a long-tailed price; the part seen: January-November, 6-21 h, Mon-Fri."""
    return pd.DataFrame({
        "booking_ref": [f"B{rng.integers(10**9)}-{i}" for i in range(rows)],
        "month": rng.integers(1, 13 if whole else 12, rows),
        "departure_hour": rng.integers(0, 24, rows) if whole else rng.integers(6, 22, rows),
        "day_of_week": rng.integers(1, 8 if whole else 6, rows),
        "destination": rng.choice(AIRPORTS, rows),
        "price": rng.exponential(120, rows).round(2),
        "passengers": rng.integers(1, 7, rows),
        "status": rng.choice(["ok", "fraud"], rows, p=[0.97, 0.03]),
    })


def sensors(rng: np.random.Generator, rows: int, whole: bool) -> pd.DataFrame:
    """A 0/1 target with 1 rare, an integer id, day of month (February seen), week of the year
    (winter seen), hour, a year that goes on, temperatures below zero."""
    return pd.DataFrame({
        "reading_id": rng.permutation(rows) + (10**6 if whole else 0),
        "day": rng.integers(1, 32 if whole else 29, rows),
        "week": rng.integers(1, 54 if whole else 10, rows),
        "hour": rng.integers(0, 24, rows) if whole else rng.integers(8, 19, rows),
        "year": rng.integers(2023, 2027 if whole else 2025, rows),
        "temperature": rng.normal(-5, 6, rows).round(1),
        "failure": rng.choice([0, 1], rows, p=[0.9, 0.1]),
    })


def orders(rng: np.random.Generator, rows: int, whole: bool) -> pd.DataFrame:
    """A text multiclass target, pandas' weekday (0-6, Mon-Fri seen), a quarter (Q4 unseen)."""
    return pd.DataFrame({
        "order_id": [f"O{i}-{int(whole)}" for i in range(rows)],
        "weekday": rng.integers(0, 7 if whole else 5, rows),
        "quarter": rng.integers(1, 5 if whole else 4, rows),
        "items": rng.poisson(3, rows),
        "channel": rng.choice(["web", "app", "phone"], rows),
        "priority": rng.choice(["low", "normal", "high"], rows),
    })


def houses(rng: np.random.Generator, rows: int, whole: bool) -> pd.DataFrame:
    """Regression, a month counted from 0 (0-10 seen), the year sold (earlier years seen)."""
    return pd.DataFrame({
        "house_id": [f"H{i}-{int(whole)}" for i in range(rows)],
        "month_sold": rng.integers(0, 12 if whole else 11, rows),
        "year_sold": rng.integers(2010, 2027 if whole else 2021, rows),
        "area_m2": rng.uniform(30, 250, rows).round(1),
        "price": rng.lognormal(12, 0.4, rows).round(-2),
    })


SEASONAL: dict[str, tuple[Callable[[np.random.Generator, int, bool], pd.DataFrame], str]] = {
    "bookings": (bookings, "status"), "sensors": (sensors, "failure"),
    "orders": (orders, "priority"), "houses": (houses, "price")}


# Names YAML would read as something else, or that would end a line: each must come back as
# itself, and none may add a key of its own to the draft.
AWKWARD_NAMES = ["a\nevil: 1", "b\r\nalso: 2", "c\u2028evil: 3", "d\x85e", "tab\there",
                 "x # not a comment", "k: v", "it's \"quoted\"", "café ☕", "<<", "yes", "1",
                 "~", "- item", "[list", "&anchor", "*alias", "!tag", "%directive", "@at",
                 "`tick", "back\\slash", "\x01start\x1bescape\x7f", "n" * 20_000]
EXTREMES = [1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 0.0,
            sys.float_info.max, -sys.float_info.max]


def awkward_table(rng: np.random.Generator) -> pd.DataFrame:
    """Awkward names for features, id and target, awkward categories and labels, the extreme
    floats in one column, one of infinities only, one of subnormals only, free text."""
    numbers = rng.normal(0, 1, ROWS)
    numbers[: len(EXTREMES)] = EXTREMES
    columns: dict[str, Any] = {"id\nevil: 1": [f"r{i}" for i in range(ROWS)]}
    columns |= {name: rng.normal(0, 1, ROWS).round(3) for name in AWKWARD_NAMES}
    columns |= {
        "extremes": numbers,
        "only infinite": rng.choice([math.inf, -math.inf], ROWS),
        "only subnormal": rng.choice([5e-324, 1e-323, 2.5e-322], ROWS),
        "colour\n#: 1": rng.choice(["red\nevil: 1", "green # not a comment", "<<", "yes"],
                                   ROWS),
        "free\ntext: 1": [f"note {i}\nx: y" for i in range(ROWS)],
        "label\n: 1": rng.choice(["churn: yes", "no # really"], ROWS),
    }
    return pd.DataFrame(columns)
