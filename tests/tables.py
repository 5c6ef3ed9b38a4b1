"""Tables of other shapes than the churn example, each with a config, for the end-to-end tests.

A template is cloned to be changed: these tables have other column names, other kinds of
target and other features than the shipped example, so a mechanism that only holds for churn
fails here.
- `loans`: binary classification with TEXT labels, categorical features and missing values;
- `species`: multiclass classification with text labels, no timestamp;
- `houses`: regression with numeric features only.
Each writes historic data, a production sample (a few invalid rows) and its later labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml


@dataclass(frozen=True)
class Table:
    name: str
    config: dict[str, Any]  # a whole project_config.yaml
    historic: pd.DataFrame
    production: pd.DataFrame  # without the target; a few invalid rows
    labels: pd.DataFrame  # id and target of the production rows

    def write(self, root: Path) -> Path:
        """The data files and project_config.yaml of a project in `root`; returns the config."""
        data = root / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.historic.to_csv(data / "historic.csv", index=False)
        self.production.to_csv(data / "production.csv", index=False)
        self.labels.to_csv(data / "labels.csv", index=False)
        config_file = root / "project_config.yaml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return config_file


def _config(name: str, columns: dict[str, Any], task: str, metric: str, split: str,
            candidates: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "project_name": name,
        "data": {"historic": "data/historic.csv", "production": "data/production.csv",
                 "production_labels": "data/labels.csv"},
        "columns": columns,
        "task": task,
        "engineering": {"steps": []},
        "training": {"split": split, "holdout_fraction": 0.25, "cv_folds": 3, "metric": metric,
                     "random_seed": 3, "n_jobs": 1, "candidates": candidates},
        "tracking": {"tracking_uri": "sqlite:///tracking.db", "experiment_name": name,
                     "registered_model_name": f"{name}_model"},
        "prediction": {"prediction_log_url": "sqlite:///output/log.db", "chunk_size": 250},
        "monitoring": {"window_records": 1000, "min_labelled_records": 20},
    }


def _candidate(name: str, estimator: str, **params: Any) -> dict[str, Any]:
    return {"name": name, "estimator": estimator, "params": params}


def _spoil(frame: pd.DataFrame, rng: np.random.Generator,
           faults: list[tuple[str, Any]]) -> pd.DataFrame:
    """One invalid value in each of a few rows: validation must quarantine exactly these."""
    spoiled = frame.astype({column: object for column, _ in faults})
    for row, (column, value) in zip(rng.choice(len(frame), len(faults), replace=False), faults):
        spoiled.loc[row, column] = value
    return spoiled


def loans(rows: int = 1200, seed: int = 1, shift: float = 0.0) -> Table:
    rng = np.random.default_rng(seed)
    total = rows + rows // 4
    income = rng.lognormal(10.5 + shift, 0.4, total).round(-2)
    amount = (income * rng.uniform(0.1, 0.6, total)).round(-1)
    purpose = rng.choice(["car", "home", "study", "other"], total, p=[0.3, 0.3, 0.2, 0.2])
    grade = rng.choice(["A", "B", "C", "D"], total)
    years = rng.integers(0, 40, total).astype(float)
    risk = (amount / income * 3 - 1.0 + 0.6 * (grade == "D") - 0.5 * (grade == "A")
            + 0.4 * (purpose == "other") - 0.02 * years + rng.normal(0, 0.6, total))
    frame = pd.DataFrame({
        "loan_ref": [f"L-{i:05d}" for i in range(total)],
        "applied_at": (pd.Timestamp("2025-01-01") + pd.to_timedelta(np.arange(total), unit="h")
                       ).strftime("%Y-%m-%dT%H:%M:%S"),
        "income": income, "amount": amount, "years_employed": years,
        "purpose": purpose, "grade": grade,
        "outcome": np.where(risk > 0.2, "defaulted", "repaid"),
    })
    for column in ("years_employed", "purpose"):
        frame.loc[rng.uniform(size=total) < 0.05, column] = np.nan
    columns = {
        "id": "loan_ref", "timestamp": "applied_at", "target": "outcome",
        "target_classes": ["repaid", "defaulted"], "positive_class": "defaulted",
        "numerical": {"income": {"min": 0}, "amount": {"min": 0, "max": 1e7},
                      "years_employed": {"min": 0, "max": 60, "nullable": True}},
        "categorical": {"purpose": {"categories": ["car", "home", "study", "other"],
                                    "nullable": True},
                        "grade": {"categories": ["A", "B", "C", "D"]}},
    }
    config = _config("loans", columns, "binary_classification", "roc_auc", "time", [
        _candidate("logistic_regression", "sklearn.linear_model.LogisticRegression", max_iter=500),
        _candidate("boosting", "sklearn.ensemble.HistGradientBoostingClassifier", max_iter=30),
    ])
    return _split("loans", frame, rows, config, rng,
                  [("income", "lots"), ("grade", "Z"), ("amount", -5), ("years_employed", 99)])


def species(rows: int = 900, seed: int = 2, shift: float = 0.0) -> Table:
    rng = np.random.default_rng(seed)
    total = rows + rows // 4
    kind = rng.choice(["alba", "nigra", "rubra"], total)
    centre = {"alba": (4.0, 1.0), "nigra": (5.5, 2.0), "rubra": (7.0, 2.5)}
    length = np.array([centre[k][0] for k in kind]) + rng.normal(shift, 0.6, total)
    width = np.array([centre[k][1] for k in kind]) + rng.normal(0, 0.4, total)
    habitat = np.where(rng.uniform(size=total) < 0.7,
                       np.where(kind == "rubra", "coast", "forest"),
                       rng.choice(["coast", "forest", "meadow"], total))
    frame = pd.DataFrame({
        "specimen": rng.permutation(total) + 10_000,  # integer ids
        "petal_length_cm": length.round(2), "petal_width_cm": width.round(2),
        "habitat": habitat, "kind": kind,
    })
    columns = {
        "id": "specimen", "target": "kind", "target_classes": ["alba", "nigra", "rubra"],
        "positive_class": None,
        "numerical": {"petal_length_cm": {"min": 0, "max": 20},
                      "petal_width_cm": {"min": 0, "max": 10}},
        "categorical": {"habitat": {"categories": ["coast", "forest", "meadow"]}},
    }
    config = _config("species", columns, "multiclass_classification", "f1_macro", "stratified", [
        _candidate("logistic_regression", "sklearn.linear_model.LogisticRegression", max_iter=500),
        _candidate("forest", "sklearn.ensemble.RandomForestClassifier", n_estimators=30),
    ])
    return _split("species", frame, rows, config, rng,
                  [("petal_length_cm", 25.0), ("habitat", "desert"), ("petal_width_cm", None)])


def houses(rows: int = 1000, seed: int = 3, shift: float = 0.0) -> Table:
    rng = np.random.default_rng(seed)
    total = rows + rows // 4
    area = rng.uniform(30, 250, total).round(1)
    rooms = np.clip((area / 30 + rng.normal(0, 1, total)).round(), 1, 12)
    age = rng.uniform(0, 100, total).round() + shift * 20
    distance = rng.exponential(8, total).round(2)
    price = (2500 * area + 8000 * rooms - 600 * age - 4000 * distance
             + rng.normal(0, 20_000, total) + 50_000).round(-2)
    frame = pd.DataFrame({
        "house_id": [f"h{i}" for i in range(total)],
        "sold_at": (pd.Timestamp("2024-06-01") + pd.to_timedelta(np.arange(total), unit="D")
                    ).strftime("%Y-%m-%d"),
        "area_m2": area, "rooms": rooms, "age_years": age, "km_to_centre": distance,
        "price": price,
    })
    frame.loc[rng.uniform(size=total) < 0.04, "km_to_centre"] = np.nan
    columns = {
        "id": "house_id", "timestamp": "sold_at", "target": "price",
        "numerical": {"area_m2": {"min": 10, "max": 1000}, "rooms": {"min": 1, "max": 30},
                      "age_years": {"min": 0, "max": 500},
                      "km_to_centre": {"min": 0, "nullable": True}},
    }
    config = _config("houses", columns, "regression", "neg_root_mean_squared_error", "random", [
        _candidate("ridge", "sklearn.linear_model.Ridge"),
        _candidate("boosting", "sklearn.ensemble.HistGradientBoostingRegressor", max_iter=40),
    ])
    return _split("houses", frame, rows, config, rng,
                  [("area_m2", 5.0), ("rooms", "three"), ("sold_at", "yesterday")])


def _split(name: str, frame: pd.DataFrame, rows: int, config: dict[str, Any],
           rng: np.random.Generator, faults: list[tuple[str, Any]]) -> Table:
    """The first `rows` rows are historic; the rest arrive in production, a few spoiled."""
    target, identifier = config["columns"]["target"], config["columns"]["id"]
    historic = frame.iloc[:rows].reset_index(drop=True)
    arriving = frame.iloc[rows:].reset_index(drop=True)
    production = _spoil(arriving.drop(columns=target), rng, faults)
    return Table(name, config, historic, production, arriving[[identifier, target]])


SHAPES: dict[str, Callable[..., Table]] = {"loans": loans, "species": species, "houses": houses}
