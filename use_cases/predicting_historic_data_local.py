"""Prediction run on historic data, locally: score a file in chunks with the exported champion.

    pipenv run python use_cases/predicting_historic_data_local.py [--input PATH]

Writes output/predictions/<input>_predictions.csv (id, prediction, probabilities, model version)
and quarantines invalid rows with their reasons: valid + quarantined = input rows, always. A
label that is not a known class (or, for regression, not a number) quarantines its row too, so
metrics are computed on the rest. Both files are written under a hidden `.partial` name and
renamed only once the whole file is scored: a run that stops half-way leaves no file that
looks complete. Memory stays flat for files larger than memory; labelled files also get
holdout-style metrics. With `prediction.shadow: challenger`, the challenger scores the same
valid rows into <input>_predictions_challenger.csv, and the summary says how often both agree
and how each scores on labelled rows.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ml_project.batch import prediction_columns, score_chunk
from ml_project.cli import base_parser, start_run
from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX
from ml_project.export import ArtifactError
from ml_project.ingest import count_rows, read_in_chunks
from ml_project.metrics import RunningScores
from ml_project.predict import PredictionService
from ml_project.serving.shadow import ShadowUnavailable, load_challenger
from ml_project.validate import DataValidationError, write_quarantine

logger = logging.getLogger("predicting_historic")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None,
                        help="CSV or Parquet file to score (default: data.historic)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per chunk (default: prediction.chunk_size)")
    args = parser.parse_args(argv)
    overrides = {"prediction": {"chunk_size": args.chunk_size}} if args.chunk_size else {}
    config, _ = start_run(parser, args, "prediction", "historic", "local", "predicting_historic",
                          overrides=overrides)
    source = args.input.resolve() if args.input else Path(config.resolve(config.data.historic))
    try:
        service = PredictionService.from_config(config)
        challenger = (load_challenger(config, service) if config.prediction.shadow != "off"
                      else None)
    except (ArtifactError, ShadowUnavailable) as err:
        logger.error("%s", err)
        return 2

    directory = config.output_dir / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{source.stem}_predictions.csv"
    partial = directory / f".{output.name}.partial"
    quarantine_name = f"{source.stem}_predictions"
    quarantine_partial = f".{quarantine_name}.partial"
    quarantine_file = config.output_dir / "quarantine" / f"{quarantine_name}.csv"
    target = config.columns.target
    # For labelled files, metrics are accumulated chunk by chunk: memory stays flat.
    scores, challenger_scores = (
        RunningScores(config.metrics, service.classes, regression=not service.is_classification,
                      positive=config.positive_class) for _ in range(2))
    challenger_output = directory / f"{source.stem}_predictions_challenger.csv"
    challenger_partial = directory / f".{challenger_output.name}.partial"
    rows_in = rows_valid = rows_quarantined = agreed = 0
    written = shadow_written = False
    started = time.perf_counter()
    try:
        with tqdm(total=count_rows(source), unit="rows", desc="Scoring", file=sys.stderr,
                  disable=None) as progress:
            for number, chunk in enumerate(read_in_chunks(source, config)):
                scored = score_chunk(chunk, service, config)
                valid, quarantined, predictions = (scored.valid, scored.quarantined,
                                                   scored.predictions)
                if predictions is not None:
                    predictions.to_csv(partial, index=False, mode="a" if written else "w",
                                       header=not written)
                    written = True
                write_quarantine(quarantined, config, quarantine_partial, append=number > 0)
                if predictions is not None and target in valid.columns:  # labelled file
                    add_scores(scores, valid[target], predictions)
                if predictions is not None and challenger is not None:  # the same rows
                    shadowed = challenger.predict_frame(valid)
                    shadowed.to_csv(challenger_partial, index=False,
                                    mode="a" if shadow_written else "w",
                                    header=not shadow_written)
                    shadow_written = True
                    agreed += int((shadowed[PREDICTION_COLUMN].astype(str)
                                   == predictions[PREDICTION_COLUMN].astype(str)).sum())
                    if target in valid.columns:
                        add_scores(challenger_scores, valid[target], shadowed)
                rows_in += len(chunk)
                rows_valid += len(valid)
                rows_quarantined += len(quarantined)
                progress.update(len(chunk))
    except (FileNotFoundError, ValueError, DataValidationError) as err:
        logger.error("Cannot score %s: %s. No predictions file was written (%d rows had been "
                     "scored).", source, err, rows_in)
        partial.unlink(missing_ok=True)
        challenger_partial.unlink(missing_ok=True)
        (quarantine_file.parent / f"{quarantine_partial}.csv").unlink(missing_ok=True)
        return 2
    elapsed = time.perf_counter() - started
    if rows_valid + rows_quarantined != rows_in:  # the promise: nothing is silently dropped
        logger.error("Row accounting mismatch: %d in, %d valid, %d quarantined",
                     rows_in, rows_valid, rows_quarantined)
        return 1
    if not written:  # nothing valid (a header-only file): an empty result, with its header
        pd.DataFrame(columns=prediction_columns(service)).to_csv(partial, index=False)
    if rows_in == 0:
        write_quarantine(pd.DataFrame(), config, quarantine_partial)
    os.replace(partial, output)
    if challenger is not None and challenger_partial.exists():
        os.replace(challenger_partial, challenger_output)
    os.replace(quarantine_file.parent / f"{quarantine_partial}.csv", quarantine_file)
    logger.info("Scored %d rows in %.1f s (%.0f rows/s); %d quarantined",
                rows_in, elapsed, rows_in / max(elapsed, 1e-9), rows_quarantined)

    print(f"\nScored {rows_valid} of {rows_in} rows with {service.metadata.get('model_name')} "
          f"version {service.model_version} ({rows_in / max(elapsed, 1e-9):,.0f} rows/s)")
    print(f"  predictions: {output}")
    print(f"  quarantine:  {quarantine_file} ({rows_quarantined} rows)")
    if scores.rows:
        print(f"  metrics on the {scores.rows} labelled rows:")
        for name, value in scores.result().items():
            print(f"    {name}: {value:.4f}")
    if challenger is not None:
        print(f"  challenger version {challenger.model_version}: {challenger_output} (same "
              f"label on {agreed} of {rows_valid} rows)")
        for name, value in (challenger_scores.result() if challenger_scores.rows else {}).items():
            print(f"    {name}: {value:.4f}")
    return 0


def add_scores(scores: RunningScores, target: pd.Series, predictions: pd.DataFrame) -> None:
    """A chunk's labelled rows into `scores` (rows without a label left out)."""
    known = target.notna().to_numpy()
    probability_columns = [c for c in predictions.columns if c.startswith(PROBABILITY_PREFIX)]
    scores.add(target.to_numpy()[known], predictions[PREDICTION_COLUMN].to_numpy()[known],
               predictions[probability_columns].to_numpy()[known]
               if probability_columns else None)


if __name__ == "__main__":
    raise SystemExit(main())
