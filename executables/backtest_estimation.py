"""Backtest of performance estimated without labels (ml_project/estimate.py) on a labelled table
with a time column: is the estimate close to the metric the labels later show?

    python executables/backtest_estimation.py DATA [DATA ...] --config project_config.yaml
        [--labels FILE] [--time-column COL] [--windows 6]
        [--train-fraction 0.5 | --train-until ISO] [--candidate NAME ...] [--output DIR]
    python executables/backtest_estimation.py DATA --target COL --time-column COL [--id COL]
        [--positive-class VALUE] ...

Without `--config`, a config is drafted from the first data file as `draft_config.py` drafts one
(into a copy of the project's config; every guess unreviewed) and written beside the results.

The data files (CSV or Parquet, read and validated as the modelling run reads them; a file
without the target takes it from `--labels` by id) are put in time order. The earliest part
(`--train-fraction` of the rows, or those before `--train-until`) is the historic data: split,
searched, selected and scored on its holdout by the project's own training stages (`train.py`,
the config's candidates, or those named by `--candidate`), nothing registered or tracked. The
holdout's reference sample is the reference, as in an exported artifact. The later rows are cut
into `--windows` windows of equal size, in time order; each is scored by the selected Pipeline
(served labels and probabilities) and its metrics estimated without its labels, then realised
with them. Printed: a table per window and the mean and maximum absolute error; written to
`--output` (default output/backtest/<first data file's name>/): backtest.json and backtest.png
(estimated with its 95% interval and realised, per window, beside the holdout's).

Exit codes: 0 done, 2 bad arguments, config or data (a regression task: nothing is estimated).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ml_project.config import (
    DEFAULT_CONFIG_FILE,
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    PROJECT_ROOT,
    Config,
    load_config,
)
from ml_project.estimate import check_calibration, estimate_performance, served_outputs
from ml_project.ingest import read_table
from ml_project.metrics import score_predictions
from ml_project.train import (
    build_reference_sample,
    check_training_config,
    evaluate_holdout,
    features_and_target,
    select_best,
    split_holdout,
    train_candidates,
)
from ml_project.validate import validate_production_data

if __package__:  # imported as executables.backtest_estimation (the tests)
    from executables import draft_config, draft_update
else:  # run as `python executables/backtest_estimation.py`: executables/ is first on the path
    import draft_config  # type: ignore[no-redef]
    import draft_update  # type: ignore[no-redef]

logger = logging.getLogger("backtest")


def say(message: str) -> None:
    print(message, flush=True)


def drafted_config(args: argparse.Namespace, work: Path) -> Path:
    """A config for the first data file, drafted into a copy of the project's own config."""
    if not (args.target and args.time_column):
        raise ValueError("without --config, give --target and --time-column (a config is "
                         "drafted from the data file)")
    config_file = work / DEFAULT_CONFIG_FILE
    shutil.copyfile(PROJECT_ROOT / DEFAULT_CONFIG_FILE, config_file)
    draft = draft_config.draft_config(
        args.data[0].resolve(), args.target, id_column=args.id, timestamp=args.time_column,
        positive_class=args.positive_class, root=work,
        production={"production": None, "production_labels": None})
    say(draft_update.update_config(config_file, draft, work).splitlines()[0])
    return config_file


def training_config(args: argparse.Namespace) -> Config:
    """The project's config, its candidates narrowed to `--candidate` when given."""
    root = Path(args.root or Path(args.config).resolve().parent)
    config = load_config("modelling", "historic", "local", config_file=args.config, root=root)
    if args.candidate:
        candidates = [c.model_dump() for c in config.training.candidates
                      if c.name in args.candidate]
        unknown = sorted(set(args.candidate) - {c["name"] for c in candidates})
        if unknown:
            raise ValueError(f"--candidate {unknown}: not among training.candidates "
                             f"{[c.name for c in config.training.candidates]}")
        config = load_config("modelling", "historic", "local", config_file=args.config,
                             root=root, overrides={"training": {"candidates": candidates}})
    check_training_config(config)
    return config


def labelled_rows(paths: list[Path], labels: Path | None, config: Config) -> pd.DataFrame:
    """The files' rows with their target (from `labels` by id where a file has none),
    validated as the modelling run validates historic rows; invalid ones are left out."""
    columns = config.columns
    frames = []
    for path in paths:
        frame = read_table(str(path.resolve()), config)
        if columns.target not in frame.columns:
            if labels is None:
                raise ValueError(f"{path} has no {columns.target!r} column: give --labels")
            truth = read_table(str(labels.resolve()), config)[[columns.id, columns.target]]
            frame = frame.merge(truth.drop_duplicates(columns.id, keep="last"), on=columns.id)
        frames.append(frame)
    validation = validate_production_data(pd.concat(frames, ignore_index=True), config,
                                          with_target=True)
    if len(validation.quarantined):
        say(f"  {len(validation.quarantined)} invalid rows left out (as modelling quarantines)")
    return validation.valid


def served(pipeline: Any, rows: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The rows with what serving would answer: the label and each class's probability."""
    features, _ = features_and_target(rows, config)
    probabilities = pipeline.predict_proba(features)
    return rows.assign(**{PREDICTION_COLUMN: pipeline.predict(features)},
                       **{f"{PROBABILITY_PREFIX}{label}": probabilities[:, i]
                          for i, label in enumerate(pipeline.classes_)})


def realised(window: pd.DataFrame, config: Config) -> dict[str, float]:
    classes, predicted, probabilities = served_outputs(window, config)
    return score_predictions(config.metrics, window[config.columns.target].to_numpy(),
                             classes[predicted], probabilities, list(classes),
                             config.positive_class)


def backtest(rows: pd.DataFrame, config: Config, time_column: str, windows: int,
             train_fraction: float, train_until: str | None) -> dict[str, Any]:
    times = pd.to_datetime(rows[time_column], utc=True, format="mixed")
    order = np.argsort(times.to_numpy(), kind="stable")
    rows, times = rows.iloc[order].reset_index(drop=True), times.iloc[order].reset_index(drop=True)
    cut = (int(np.searchsorted(times.to_numpy(), pd.Timestamp(train_until, tz="UTC").to_datetime64()))
           if train_until else int(round(len(rows) * train_fraction)))
    if cut < 10 or len(rows) - cut < windows:
        raise ValueError(f"{cut} rows to train on and {len(rows) - cut} to backtest in {windows} "
                         "windows: too few; move --train-fraction/--train-until")
    historic = rows.iloc[:cut]
    say(f"Training on {cut} rows ({times.iloc[0]} .. {times.iloc[cut - 1]}) with "
        f"{[c.name for c in config.training.candidates]}")
    started = time.perf_counter()
    train, holdout = split_holdout(historic, config)
    best = select_best(train_candidates(train, config))
    holdout_metrics = evaluate_holdout(best.pipeline, holdout, config)
    reference = build_reference_sample(best.pipeline, holdout, config)
    calibration = check_calibration(reference, config)
    metric = config.training.metric
    say(f"  {best.name} in {time.perf_counter() - started:.0f} s; holdout {metric} "
        f"{holdout_metrics[metric]:.4f}; calibration on {calibration.rows} reference rows: "
        + (f"{calibration.method} map (Brier {calibration.brier_served:.4f} -> "
           f"{calibration.brier_mapped:.4f} out of fold)" if calibration.mapped else
           f"used as served (Brier {calibration.brier_served:.4f})"))
    results = []
    for number, window in enumerate(np.array_split(np.arange(cut, len(rows)), windows), start=1):
        frame = served(best.pipeline, rows.iloc[window], config)
        estimate = estimate_performance(reference, frame, config, holdout_metrics, calibration)
        truth = realised(frame, config)
        results.append({
            "window": number, "rows": len(frame),
            "first": str(times.iloc[window[0]]), "last": str(times.iloc[window[-1]]),
            "estimated": estimate.estimated, "interval_95": estimate.intervals,
            "sampling_error": estimate.sampling_error, "realised": truth,
            "absolute_error": {name: abs(value - truth[name])
                               for name, value in estimate.estimated.items()},
            "not_estimated": estimate.not_estimated,
            "positive_share": (float((frame[config.columns.target] == config.positive_class)
                                     .mean()) if config.positive_class is not None else None),
        })
        say(window_line(results[-1], metric))
    return {"metric": metric, "candidate": best.name, "training_rows": cut,
            "holdout": holdout_metrics, "calibration": calibration.to_dict(),
            "windows": results, "errors": error_summary(results, config.metrics)}


def window_line(result: dict[str, Any], metric: str) -> str:
    value = result["estimated"].get(metric)
    if value is None:
        return f"  window {result['window']}: {metric} {result['not_estimated'][metric]}"
    low, high = result["interval_95"].get(metric, (np.nan, np.nan))
    truth = result["realised"][metric]
    return (f"  window {result['window']:>2} {result['first'][:10]} .. {result['last'][:10]} "
            f"{result['rows']:>6} rows: {metric} estimated {value:.4f} ({low:.4f} .. "
            f"{high:.4f}), realised {truth:.4f}, error {abs(value - truth):.4f}"
            + ("" if low <= truth <= high else "  (outside the interval)"))


def error_summary(results: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    """Per metric: mean and maximum absolute error, and how often the interval held the truth."""
    summary = {}
    for name in names:
        errors = [r["absolute_error"][name] for r in results if name in r["absolute_error"]]
        inside = [r["interval_95"][name][0] <= r["realised"][name] <= r["interval_95"][name][1]
                  for r in results if name in r["interval_95"]]
        if errors:
            summary[name] = {"mean_absolute_error": float(np.mean(errors)),
                             "max_absolute_error": float(np.max(errors)),
                             "inside_interval": f"{sum(inside)} of {len(inside)}"}
    return summary


def figure(result: dict[str, Any], title: str) -> Figure:
    """Estimated (with its 95% interval) and realised primary metric per window."""
    metric, windows = result["metric"], result["windows"]
    shown = [w for w in windows if metric in w["estimated"]]
    x = np.array([w["window"] for w in shown])
    estimated = np.array([w["estimated"][metric] for w in shown])
    intervals = np.array([w["interval_95"].get(metric, (np.nan, np.nan)) for w in shown])
    plot = Figure(figsize=(8, 4.6))
    axis = plot.subplots()
    axis.axhline(result["holdout"][metric], color="grey", linestyle="--", label="holdout")
    axis.errorbar(x - 0.06, estimated, yerr=np.abs(intervals.T - estimated), fmt="o",
                  capsize=4, label="estimated without labels (95% interval)")
    axis.plot(x + 0.06, [w["realised"][metric] for w in shown], "s", color="black",
              label="realised with labels")
    axis.set_xticks(x, [w["first"][:10] for w in shown], rotation=30, ha="right")
    axis.set_xlabel("window (first time stamp)")
    axis.set_ylabel(metric)
    errors = result["errors"].get(metric, {})
    axis.set_title(f"{title}: mean |error| {errors.get('mean_absolute_error', np.nan):.4f}, "
                   f"max {errors.get('max_absolute_error', np.nan):.4f}", fontsize=10)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=3)
    plot.tight_layout()
    return plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path, help="labelled CSV/Parquet file(s)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the project config (default: drafted from the data file)")
    parser.add_argument("--target", default=None, help="without --config: the target column")
    parser.add_argument("--id", default=None, help="without --config: the id column")
    parser.add_argument("--positive-class", default=None,
                        help="without --config: a binary target's positive class")
    parser.add_argument("--root", type=Path, default=None,
                        help="relative paths of the config resolve here (default: its folder)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="id and target for the rows of a file without the target")
    parser.add_argument("--time-column", default=None,
                        help="the time order (default: columns.timestamp)")
    parser.add_argument("--windows", type=int, default=6, help="later windows (default 6)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--train-fraction", type=float, default=0.5,
                       help="the earliest share of rows to train on (default 0.5)")
    split.add_argument("--train-until", default=None, help="train on rows before this time")
    parser.add_argument("--candidate", action="append", default=None,
                        help="train only this candidate of the config (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the results")
    parser.add_argument("--title", default=None, help="the figure's title")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="backtest-"))
    try:
        if args.config is None:
            args.config = drafted_config(args, work)
        config = training_config(args)
        if not config.is_classification:
            raise ValueError("the task is regression: its performance is not estimated without "
                             "labels (ml_project/estimate.py), so there is nothing to backtest")
        time_column = args.time_column or config.columns.timestamp
        if not time_column:
            raise ValueError("no time column: give --time-column or set columns.timestamp")
        say(f"Reading {', '.join(str(path) for path in args.data)}")
        rows = labelled_rows(args.data, args.labels, config)
        if time_column not in rows.columns:
            raise ValueError(f"no column {time_column!r} in the validated rows")
        result = backtest(rows, config, time_column, args.windows, args.train_fraction,
                          args.train_until)
    except (OSError, ValueError) as err:  # ConfigError, DataValidationError, ConfigRefused too
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        drafted = work / DEFAULT_CONFIG_FILE
        kept = drafted.read_text() if drafted.is_file() else None
        shutil.rmtree(work, ignore_errors=True)
    default = (PROJECT_ROOT / "output" if kept else config.output_dir) / "backtest"
    output = args.output or default / args.data[0].stem
    output.mkdir(parents=True, exist_ok=True)
    if kept:
        (output / "drafted_config.yaml").write_text(kept)
    (output / "backtest.json").write_text(json.dumps(result, indent=2) + "\n")
    figure(result, args.title or args.data[0].stem).savefig(output / "backtest.png", dpi=100)
    say(f"\n  {'metric':<14} {'mean |error|':>12} {'max |error|':>12}  inside the 95% interval")
    for name, errors in result["errors"].items():
        say(f"  {name:<14} {errors['mean_absolute_error']:>12.4f} "
            f"{errors['max_absolute_error']:>12.4f}  {errors['inside_interval']}")
    say(f"  written: {output / 'backtest.json'}, {output / 'backtest.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
