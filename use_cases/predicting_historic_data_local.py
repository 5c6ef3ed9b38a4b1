"""Prediction run on historic data, locally: score a file in chunks with the exported champion.

    pipenv run python use_cases/predicting_historic_data_local.py [--input PATH]

Writes output/predictions/<input>_predictions.csv (id, prediction, probabilities, model version)
and quarantines invalid rows with their reasons: valid + quarantined = input rows, always.
Memory stays flat for files larger than memory; labelled files also get holdout-style metrics.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ml_project.cli import base_parser, start_run
from ml_project.export import ArtifactError
from ml_project.ingest import count_rows, read_in_chunks
from ml_project.metrics import score_predictions
from ml_project.predict import PREDICTION_COLUMN, PROBABILITY_PREFIX, PredictionService
from ml_project.validate import DataValidationError, validate_production_data, write_quarantine

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
    except ArtifactError as err:
        logger.error("%s", err)
        return 2

    directory = config.output_dir / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{source.stem}_predictions.csv"
    quarantine_name = f"{source.stem}_predictions"
    target = config.columns.target
    # For labelled files, metrics need the label, prediction and probabilities of each row:
    # a few numbers per row, kept as compact arrays (the rows themselves are not kept).
    labels: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    rows_in = rows_valid = rows_quarantined = 0
    started = time.perf_counter()
    try:
        with tqdm(total=count_rows(source), unit="rows", desc="Scoring", file=sys.stderr,
                  disable=None) as progress:
            for number, chunk in enumerate(read_in_chunks(source, config)):
                result = validate_production_data(chunk, config, with_target=False)
                predictions = service.predict_frame(result.valid)
                predictions.to_csv(output, index=False, mode="w" if number == 0 else "a",
                                   header=number == 0)
                write_quarantine(result.quarantined, config, quarantine_name, append=number > 0)
                if target in result.valid.columns:  # labelled file: keep what metrics need
                    known = result.valid[target].notna().to_numpy()
                    labels.append(result.valid[target].to_numpy()[known])
                    predicted.append(predictions[PREDICTION_COLUMN].to_numpy()[known])
                    probability_columns = [
                        c for c in predictions.columns if c.startswith(PROBABILITY_PREFIX)
                    ]
                    probabilities.append(predictions[probability_columns].to_numpy()[known])
                rows_in += len(chunk)
                rows_valid += len(result.valid)
                rows_quarantined += len(result.quarantined)
                progress.update(len(chunk))
    except (FileNotFoundError, ValueError, DataValidationError) as err:
        logger.error("Cannot score %s: %s", source, err)
        return 2
    elapsed = time.perf_counter() - started
    if rows_valid + rows_quarantined != rows_in:  # the promise: nothing is silently dropped
        logger.error("Row accounting mismatch: %d in, %d valid, %d quarantined",
                     rows_in, rows_valid, rows_quarantined)
        return 1
    logger.info("Scored %d rows in %.1f s (%.0f rows/s); %d quarantined",
                rows_in, elapsed, rows_in / max(elapsed, 1e-9), rows_quarantined)

    print(f"\nScored {rows_valid} of {rows_in} rows with {service.metadata.get('model_name')} "
          f"version {service.model_version} ({rows_in / max(elapsed, 1e-9):,.0f} rows/s)")
    print(f"  predictions: {output}")
    print(f"  quarantine:  {config.output_dir / 'quarantine' / (quarantine_name + '.csv')} "
          f"({rows_quarantined} rows)")
    if labels:
        print("  metrics on the labelled rows:")
        metrics = score_predictions(
            config.metrics,
            np.concatenate(labels),
            np.concatenate(predicted),
            np.concatenate(probabilities) if service.is_classification else None,
            service.classes,
            config.positive_class,
        )
        for name, value in metrics.items():
            print(f"    {name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
