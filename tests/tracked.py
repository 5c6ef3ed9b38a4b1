"""A small modelling history in a real sqlite MLflow store, shared by test_tracking.py and
test_registry.py: a run is tracked as the modelling use case does it (run, log and register,
compare with the champion on the same holdout, promote), without the local export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ml_project.config import Config, load_config
from ml_project.ingest import load_historic_data
from ml_project.leaderboard import build_leaderboard, write_leaderboard
from ml_project.registry import alias_for, champion_on_holdout, promote
from ml_project.tracking import log_modelling_run, modelling_run
from ml_project.train import (
    CandidateResult,
    build_reference_sample,
    evaluate_holdout,
    select_best,
    split_holdout,
    train_candidates,
)
from ml_project.validate import validate_production_data
from tests.conftest import write_project

WEAK = {"name": "prior", "estimator": "sklearn.dummy.DummyClassifier",
        "params": {"strategy": "prior"}}
STRONG = {"name": "logistic_regression", "estimator": "sklearn.linear_model.LogisticRegression",
          "params": {"max_iter": 500}}


@dataclass(frozen=True)
class Tracked:
    run_id: str
    model_version: str
    alias: str
    previous_champion_score: float | None
    trusted_types: list[str]


@dataclass(frozen=True)
class Modelled:
    """A trained modelling run, ready to be tracked."""

    config: Config
    results: list[CandidateResult]
    train: pd.DataFrame
    holdout: pd.DataFrame

    def track(self) -> Tracked:
        best = select_best(self.results)
        holdout_metrics = evaluate_holdout(best.pipeline, self.holdout, self.config)
        score = holdout_metrics[self.config.training.metric]
        with modelling_run(self.config, best.name) as run_id:
            registered = log_modelling_run(
                run_id, self.config, results=self.results, best=best,
                leaderboard_files=write_leaderboard(
                    build_leaderboard(self.results, self.config), self.config),
                holdout_metrics=holdout_metrics, train=self.train, holdout=self.holdout,
                data_source=self.config.resolve(self.config.data.historic), quarantined_rows=0,
                reference=build_reference_sample(best.pipeline, self.holdout, self.config),
            )
            champion = champion_on_holdout(self.config, self.holdout)
            alias = alias_for(score, champion[0])
            promote(self.config, run_id=run_id, version=registered.version, alias=alias,
                    score=score, champion=champion, artifact_sha256="0" * 64)
        return Tracked(run_id, registered.version, alias, champion[0],
                       registered.trusted_types)


def modelled(root: Path, candidate: dict[str, Any], **training: Any) -> Modelled:
    config = load_config(
        "modelling", "historic", "local", config_file=root / "project_config.yaml", root=root,
        overrides={"training": {"candidates": [candidate], **training}},
    )
    raw = validate_production_data(load_historic_data(config), config, with_target=True).valid
    train, holdout = split_holdout(raw, config)
    return Modelled(config, train_candidates(train, config), train, holdout)


@dataclass(frozen=True)
class History:
    """One store in which a weak model, then a strong one, then the weak one again were tracked."""

    weak: Modelled
    strong: Modelled
    outcomes: list[Tracked]


def tracked_history(root: Path) -> History:
    write_project(root, n_historic=600)
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the autouse clean-up
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        weak, strong = modelled(root, WEAK), modelled(root, STRONG)
        return History(weak, strong, [weak.track(), strong.track(), weak.track()])
