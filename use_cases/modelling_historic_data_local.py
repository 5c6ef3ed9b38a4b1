"""Modelling run on historic data, locally: validate, train, select, track, register, export.

    pipenv run python use_cases/modelling_historic_data_local.py [--extra-labelled-data PATH]

`--extra-labelled-data` appends labelled production rows (the historic columns, target
included; the monitoring use case writes such a file) to the historic data before validation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ml_project.cli import base_parser, start_run
from ml_project.config import Config
from ml_project.export import export_pipeline, git_commit, hash_frame, library_versions
from ml_project.ingest import load_historic_data, read_table
from ml_project.predict import native
from ml_project.registry import reconcile_champion
from ml_project.schemas import field_rules
from ml_project.tracking import (
    CHAMPION,
    TrackingError,
    TrackingOutcome,
    connect,
    redact_password,
    track_modelling_run,
)
from ml_project.train import (
    TrainingDataError,
    build_leaderboard,
    build_reference_sample,
    check_training_rows,
    evaluate_holdout,
    select_best,
    split_holdout,
    train_candidates,
    write_leaderboard,
)
from ml_project.validate import DataValidationError, validate_production_data, write_quarantine

logger = logging.getLogger("modelling")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--extra-labelled-data", type=Path, default=None,
        help="CSV/Parquet of labelled production rows appended to the historic data",
    )
    args = parser.parse_args(argv)
    config, log_file = start_run(parser, args, "modelling", "historic", "local", "modelling")
    started = time.perf_counter()
    try:
        connect(config)  # an unreachable store fails now, not after minutes of training
        reconcile_champion(config)  # repair what a run killed half-way left
    except TrackingError as err:
        logger.error("%s. Nothing was trained, exported or promoted.", err)
        return 3
    try:
        production = load_historic_data(config)
        if args.extra_labelled_data:
            production = append_labelled_data(production, args.extra_labelled_data, config)
        validation = validate_production_data(production, config, with_target=True)
    except (FileNotFoundError, ValueError, DataValidationError) as err:
        logger.error("Cannot use the historic data: %s", err)
        return 2
    quarantine_file = write_quarantine(validation.quarantined, config, "historic_data")
    raw = validation.valid
    try:
        check_training_rows(raw, validation.quarantined, config)
        train, holdout = split_holdout(raw, config)
        results = train_candidates(train, config)
    except TrainingDataError as err:
        logger.error("Cannot train: %s. Nothing was trained, exported or promoted.", err)
        return 2
    leaderboard = build_leaderboard(results, config)
    leaderboard_files = write_leaderboard(leaderboard, config)
    best = select_best(results)
    holdout_metrics = evaluate_holdout(best.pipeline, holdout, config)
    reference = build_reference_sample(best.pipeline, holdout, config)

    artifacts: list[Path] = []

    def export(outcome: TrackingOutcome) -> None:
        """Called by the tracking before the registry's alias moves: the local copy first."""
        metadata = {
            "model_name": config.tracking.registered_model_name,
            "model_version": outcome.model_version,
            "alias": outcome.alias,
            "mlflow_run_id": outcome.run_id,
            "candidate": best.name,
            "params": best.params,
            "task": config.task,
            "target": config.columns.target,
            "classes": [native(c) for c in getattr(best.pipeline, "classes_", [])],
            "features": list(config.columns.features),
            "schema": [rule.__dict__ | {"categories": sorted(rule.categories)} for rule in field_rules(config)],
            "metric": config.training.metric,
            "cv_score": best.cv_score,
            "holdout_metrics": holdout_metrics,
            "training_rows": len(train),
            "training_data_sha256": hash_frame(train),
            "git_commit": git_commit(config.root),
            "libraries": library_versions(),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "extra_labelled_data": str(args.extra_labelled_data) if args.extra_labelled_data else None,
            "skops_trusted_types": outcome.trusted_types,
        }
        artifacts.append(export_pipeline(best.pipeline, metadata,
                                         config.model_artifacts_dir / outcome.alias, reference))

    try:
        outcome = track_modelling_run(
            config,
            results=results,
            best=best,
            leaderboard_files=leaderboard_files,
            holdout_metrics=holdout_metrics,
            train=train,
            holdout=holdout,
            data_source=config.resolve(config.data.historic),
            quarantined_rows=len(validation.quarantined),
            reference=reference,
            export=export,
        )
    except TrackingError as err:
        logger.error("%s. Nothing was promoted.", err)
        return 3
    [artifact] = artifacts
    elapsed = time.perf_counter() - started

    print(f"\nModelling finished in {elapsed:.0f} s. Best: {best.name} {best.params}")
    print(f"  holdout {config.training.metric}: {holdout_metrics[config.training.metric]:.4f}")
    print(f"  registered: {config.tracking.registered_model_name} version {outcome.model_version}"
          f" -> @{outcome.alias}"
          + ("" if outcome.alias == CHAMPION else " (did not beat the champion)"))
    print(f"  artifact:    {artifact} (+ metadata.json)")
    print(f"  leaderboard: {leaderboard_files['md']} (.csv, .png)")
    print(f"  quarantine:  {quarantine_file} ({len(validation.quarantined)} rows)")
    print(f"  log:         {log_file}")
    print(f"  MLflow:      pipenv run mlflow ui --backend-store-uri "
          f"{redact_password(config.tracking_uri)}")
    return 0


def append_labelled_data(historic: pd.DataFrame, path: Path, config: Config) -> pd.DataFrame:
    """Historic rows followed by the labelled rows of `path`, both still unvalidated."""
    extra = read_table(str(path.resolve()), config)
    if config.columns.target not in extra.columns:
        raise DataValidationError(f"{path} has no target column {config.columns.target!r}")
    logger.info("Appending %d labelled rows from %s to the historic data", len(extra), path)
    return pd.concat([historic, extra], ignore_index=True)


if __name__ == "__main__":
    raise SystemExit(main())
