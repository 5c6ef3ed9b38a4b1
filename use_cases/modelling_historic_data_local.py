"""Modelling run on historic data, locally: validate, split, search, select, evaluate, register,
export, promote.

    pipenv run python use_cases/modelling_historic_data_local.py [--extra-labelled-data PATH]

`--extra-labelled-data` appends labelled production rows (the historic columns, target
included; the monitoring use case writes such a file) to the historic data before validation.
Exit codes: 0 done, 2 bad config or data (nothing trained), 3 the tracking store failed
(nothing promoted).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml_project.cli import base_parser, start_run
from ml_project.config import Config
from ml_project.export import export_pipeline, model_metadata, sha256_of
from ml_project.ingest import load_historic_data, read_table
from ml_project.leaderboard import build_leaderboard, write_leaderboard
from ml_project.model_card import build_card, card_files, summary
from ml_project.promotion import log_local_artifact, promotion_lock, reconcile_champion
from ml_project.registry import (
    CHAMPION,
    TrackingError,
    alias_for,
    champion_on_holdout,
    promote,
    redact_password,
)
from ml_project.tracking import log_model_card, log_modelling_run, modelling_run
from ml_project.train import (
    build_reference_sample,
    check_training_config,
    check_training_rows,
    evaluate_holdout,
    select_best,
    split_holdout,
    train_candidates,
)
from ml_project.validate import DataValidationError, validate_production_data, write_quarantine

logger = logging.getLogger("modelling")


@dataclass(frozen=True)
class Modelled:
    """What a modelling run made: the registered version, where it went and how it scored."""

    candidate: str
    params: dict[str, object]
    model_version: str
    alias: str
    metric: str
    holdout_score: float
    champion_score: float | None  # the champion it was compared with, on the same holdout
    artifact: Path
    leaderboard: Path
    quarantine: Path
    quarantined_rows: int


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--extra-labelled-data", type=Path, default=None,
        help="CSV/Parquet of labelled production rows appended to the historic data",
    )
    args = parser.parse_args(argv)
    config, log_file = start_run(parser, args, "modelling", "historic", "local", "modelling",
                                 check=check_training_config)
    started = time.perf_counter()
    try:
        modelled = model(config, args.extra_labelled_data)
    except (FileNotFoundError, ValueError) as err:  # DataValidationError, TrainingDataError too
        logger.error("Cannot train: %s. Nothing was trained, exported or promoted.", err)
        return 2
    except TrackingError as err:
        logger.error("%s", err)
        return 3

    print(f"\nModelling finished in {time.perf_counter() - started:.0f} s. Best: "
          f"{modelled.candidate} {modelled.params}")
    print(f"  holdout {modelled.metric}: {modelled.holdout_score:.4f}")
    print(f"  registered: {config.tracking.registered_model_name} version "
          f"{modelled.model_version} -> @{modelled.alias}"
          + ("" if modelled.alias == CHAMPION else " (did not beat the champion)"))
    print(f"  artifact:    {modelled.artifact} (+ metadata.json, model_card.md)")
    print(f"  leaderboard: {modelled.leaderboard} (.csv, .png)")
    print(f"  quarantine:  {modelled.quarantine} ({modelled.quarantined_rows} rows)")
    print(f"  log:         {log_file}")
    print(f"  MLflow:      pipenv run mlflow ui --backend-store-uri "
          f"{redact_password(config.tracking_uri)}")
    return 0


def model(config: Config, extra_labelled_data: Path | None = None) -> Modelled:
    """The modelling stages in order, on the historic data (plus `extra_labelled_data`).
    The monitoring use case retrains by calling this.

    Raises:
        TrackingError: the store is unreachable (before any training) or failed later.
        DataValidationError, TrainingDataError, FileNotFoundError: the data cannot train.
    """
    left = "Nothing was trained, exported or promoted."  # if the store fails
    try:
        reconcile_champion(config)  # an unreachable store fails now, not after the training
        production = load_historic_data(config)
        if extra_labelled_data is not None:
            production = append_labelled_data(production, extra_labelled_data, config)
        validation = validate_production_data(production, config, with_target=True)
        quarantine = write_quarantine(validation.quarantined, config, "historic_data")
        check_training_rows(validation.valid, validation.quarantined, config)
        train, holdout = split_holdout(validation.valid, config)
        results = train_candidates(train, config)
        board = build_leaderboard(results, config)
        leaderboard = write_leaderboard(board, config)
        best = select_best(results)
        holdout_metrics = evaluate_holdout(best.pipeline, holdout, config)
        reference = build_reference_sample(best.pipeline, holdout, config)
        score = holdout_metrics[config.training.metric]

        left = "Nothing was exported or promoted."
        with modelling_run(config, best.name) as run_id:
            registered = log_modelling_run(
                run_id, config, results=results, best=best, leaderboard_files=leaderboard,
                holdout_metrics=holdout_metrics, train=train, holdout=holdout,
                data_source=config.resolve(config.data.historic),
                quarantined_rows=len(validation.quarantined), reference=reference)
            with promotion_lock(config):  # no promotion by hand in between
                champion = champion_on_holdout(config, holdout)
                alias = alias_for(score, champion[0])
                metadata = model_metadata(
                    config, best.pipeline, candidate=best.name, params=best.params,
                    cv_score=best.cv_score, holdout_metrics=holdout_metrics, train=train,
                    model_version=registered.version, alias=alias, run_id=run_id,
                    trusted_types=registered.trusted_types,
                    extra_labelled_data=str(extra_labelled_data) if extra_labelled_data else None)
                card = build_card(config, best.pipeline, reference, metadata=metadata,
                                  train=train, quarantined_rows=len(validation.quarantined),
                                  leaderboard=board)
                card_bytes = card_files(card)
                log_model_card(config, registered.version, card_bytes, summary(card))
                # The local copy first: a kill before the alias moves is repaired by the next
                # run. Its files go with the run too: a promotion by hand rebuilds it from them.
                artifact = export_pipeline(best.pipeline, metadata,
                                           config.model_artifacts_dir / alias, reference,
                                           card_bytes)
                left = (f"Version {registered.version} is exported to {artifact.parent} but not "
                        f"yet @{alias} in the registry: the next modelling run moves the alias.")
                log_local_artifact(config, run_id, registered.version, artifact.parent)
                promote(config, run_id=run_id, version=registered.version, alias=alias,
                        score=score, champion=champion, artifact_sha256=sha256_of(artifact))
    except TrackingError as err:
        raise TrackingError(f"{err}. {left}") from err
    return Modelled(best.name, best.params, registered.version, alias, config.training.metric,
                    score, champion[0], artifact, leaderboard["md"], quarantine,
                    len(validation.quarantined))


def append_labelled_data(historic: pd.DataFrame, path: Path, config: Config) -> pd.DataFrame:
    """Historic rows followed by the labelled rows of `path`, both still unvalidated."""
    extra = read_table(str(path.resolve()), config)
    if config.columns.target not in extra.columns:
        raise DataValidationError(f"{path} has no target column {config.columns.target!r}")
    logger.info("Appending %d labelled rows from %s to the historic data", len(extra), path)
    return pd.concat([historic, extra], ignore_index=True)


if __name__ == "__main__":
    raise SystemExit(main())
