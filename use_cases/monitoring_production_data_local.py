"""Monitoring of production predictions, locally: data drift, prediction drift and performance.

    pipenv run python use_cases/monitoring_production_data_local.py [--last N]
        [--since ISO] [--until ISO] [--retrain-on-drift] [--promote-challenger]

Compares a window of the prediction log (current) with the served model's training data
(reference), and, where labels have arrived, production quality with the holdout's. Writes
Evidently HTML reports and a JSON summary to output/monitoring/, attaches them to the model's
MLflow run and prints a summary table.

Exit codes, for schedulers and CI:
    0   every check passed
    2   bad input: arguments, config, no model, no predictions in the window, unreadable data
    10  data drift: the share of drifted features reached monitoring.drift_share_threshold
    11  performance drop: the primary metric is worse than the holdout's by more than
        monitoring.performance_drop_threshold (relative: 0.05 = 5% worse)
    12  data drift and a performance drop
    13  --retrain-on-drift was given and retraining failed
    14  estimated performance drop: no performance verdict from labels, and the primary metric
        estimated from the served probabilities (ml_project/estimate.py) is worse than the
        holdout's by more than monitoring.performance_drop_threshold
    15  data drift and an estimated performance drop
    16  --promote-challenger was given, the evidence cleared the rule and the promotion failed
Where labels give a verdict, it decides (0, 10, 11, 12), the estimate reported beside it. An
estimated drop alone (14) does not retrain: there are no labels to learn from yet.
An alert code stays the exit code after a successful retraining: the alert was real.

With the challenger in shadow (`prediction.shadow: challenger`), the summary also compares it
with the champion on the same production instances (ml_project/monitoring_challenger.py), and
`--promote-challenger` makes it the champion when the evidence clears the rule stated there.
With `monitoring.alerts` configured, the summary also goes to a webhook and/or by e-mail
(ml_project/alerts.py); a failure to send is a warning and changes no exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ml_project.alerts import send_alerts
from ml_project.cli import base_parser, start_run
from ml_project.config import Config, load_config
from ml_project.estimate import EstimatedPerformance, estimate_performance
from ml_project.export import ArtifactError
from ml_project.monitor import (
    detect_drift,
    evaluate_performance,
    holdout_baseline,
    write_report_html,
)
from ml_project.monitoring_challenger import (
    PROMOTE,
    Comparison,
    compare,
    comparison_lines,
    paired_answers,
)
from ml_project.monitoring_data import (
    MonitoringInputError,
    PredictionWindow,
    Reference,
    attach_labels,
    labelled_production_data,
    latest_predictions,
    load_reference_data,
    read_prediction_window,
    read_production_labels,
)
from ml_project.monitoring_summary import (
    EXIT_BAD_INPUT,
    EXIT_ESTIMATED_DROP,
    EXIT_OK,
    EXIT_PROMOTION_FAILED,
    EXIT_RETRAINING_FAILED,
    DriftSummary,
    PerformanceSummary,
    exit_code,
    monitoring_summary,
    summary_table,
)
from ml_project.predict import PredictionService
from ml_project.registry import CHAMPION, TrackingError
from ml_project.tracking import log_artifacts_to_run
from ml_project.train import check_training_config
from use_cases.modelling_historic_data_local import model

logger = logging.getLogger("monitoring")

DRIFT_REPORT = "drift_report.html"
PERFORMANCE_REPORT = "performance_report.html"
SUMMARY_FILE = "monitoring_summary.json"
LABELLED_PRODUCTION_FILE = "labelled_production_data.csv"


def utc_timestamp(value: str) -> str:
    """An ISO 8601 time as the log stores it (UTC); a time without offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--last", type=positive_int, default=None,
                        help="the last N requests (default: monitoring.window_records, or all "
                             "requests in --since/--until when a time range is given)")
    parser.add_argument("--since", type=utc_timestamp, default=None,
                        help="only requests logged at or after this ISO time (UTC if no offset)")
    parser.add_argument("--until", type=utc_timestamp, default=None,
                        help="only requests logged before this ISO time (UTC if no offset)")
    parser.add_argument("--retrain-on-drift", action="store_true",
                        help="on drift or a performance drop, retrain on historic plus labelled "
                             "production data; the promotion rule decides the champion")
    parser.add_argument("--promote-challenger", action="store_true",
                        help="make the challenger in shadow the champion when its production "
                             "evidence clears the rule (ml_project/monitoring_challenger.py)")
    args = parser.parse_args(argv)
    config, _ = start_run(parser, args, "prediction", "production", "local", "monitoring")
    started = time.perf_counter()
    time_range = args.since is not None or args.until is not None
    last = args.last or (None if time_range else config.monitoring.window_records)

    try:
        service = PredictionService.from_config(config)
        window = read_prediction_window(config, last=last, since=args.since, until=args.until,
                                        model_sha256=service.model_sha256)
        if window.predictions.empty:
            raise MonitoringInputError(
                f"no predictions of model version {service.model_version} (sha256 "
                f"{service.model_sha256[:12]}) in the window ({window.requests} of its requests "
                "logged there): run the prediction use case first, or widen "
                "--last/--since/--until"
            )
        if window.model_versions != [service.model_version]:
            logger.warning("The window holds predictions of model versions %s; the served model "
                           "is version %s", window.model_versions, service.model_version)
        reference = load_reference_data(service)
        labels = read_production_labels(config)
    except (ArtifactError, FileNotFoundError, ValueError) as err:  # MonitoringInputError too
        logger.error("Cannot monitor: %s", err)
        return EXIT_BAD_INPUT

    drift = detect_drift(reference.sample, window.predictions, config)
    performance = check_performance(config, service, reference, window, labels)
    estimated = estimate(config, service, reference, window)
    directory = config.output_dir / "monitoring"
    reports = write_reports(directory, drift, performance)
    code = exit_code(drift, performance, estimated)
    summary = monitoring_summary(window, drift, performance, reference, service, estimated)
    print(summary_table(summary, drift, performance, code, config, estimated))
    challenger = None
    if config.prediction.shadow != "off" or args.promote_challenger:
        challenger = compare_with_challenger(config, service, labels, last=last,
                                             since=args.since, until=args.until)
        print("\n".join(comparison_lines(challenger)))
        summary["challenger"] = challenger.to_dict()

    retraining = None
    if args.retrain_on_drift and code not in (EXIT_OK, EXIT_ESTIMATED_DROP):
        retraining = retrain(config, args, directory)
        code = code if retraining else EXIT_RETRAINING_FAILED
    if args.promote_challenger and challenger is not None:
        if retraining is not None:  # the registry has moved on: the evidence is of another pair
            print("NOT PROMOTED: this run retrained; compare the new pair in shadow first.")
            summary["promotion"] = {"promoted": False, "reason": "retrained in this run"}
        else:
            summary["promotion"] = promote_challenger(config, challenger)
            if summary["promotion"].get("failed"):
                code = EXIT_PROMOTION_FAILED
    summary_file = directory / SUMMARY_FILE
    summary = {**summary, "exit_code": code, "retraining": retraining}
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    artifacts = attach_to_model_run(config, service.metadata.get("mlflow_run_id"),
                                    [*reports, summary_file])
    # Sending never fails the run: a channel that fails is a warning, the exit code stands.
    send_alerts({**summary, "reports": {"files": [str(path.resolve()) for path in reports],
                                        "mlflow_artifacts": artifacts}},
                config.monitoring.alerts)

    print(f"  reports: {', '.join(str(path) for path in reports)}")
    print(f"  summary: {summary_file}")
    print(f"  exit code {code} after {time.perf_counter() - started:.1f} s")
    return code


def compare_with_challenger(config: Config, service: PredictionService,
                            labels: pd.DataFrame | None, *, last: int | None, since: str | None,
                            until: str | None) -> Comparison:
    answers, shadow = paired_answers(config, service.model_sha256, last=last, since=since,
                                     until=until)
    return compare(config, answers, shadow, labels, service.model_version, service.classes)


def promote_challenger(config: Config, comparison: Comparison) -> dict[str, Any]:
    """The challenger made champion if the evidence clears the rule, through the registry's
    aliases and the local artifact as modelling promotes (`promotion.promote_version`)."""
    version = comparison.challenger_version
    if comparison.recommendation != PROMOTE or version is None:
        print(f"NOT PROMOTED: {comparison.recommendation}: {comparison.reason}.")
        return {"promoted": False, "reason": comparison.reason}
    from ml_project.promotion import PromotionRefused, promote_version

    try:
        promoted = promote_version(config, version, alias=CHAMPION, reason=comparison.reason,
                                   by="monitoring --promote-challenger")
    except (PromotionRefused, TrackingError) as err:
        logger.error("The challenger was not promoted: %s", err)
        return {"promoted": False, "failed": True, "reason": str(err)}
    print(f"PROMOTED: version {promoted.version} is the champion (was version "
          f"{promoted.previous}): {comparison.reason}. Restart the prediction service.")
    return {"promoted": True, "version": promoted.version, "previous": promoted.previous,
            "reason": comparison.reason}


def check_performance(config: Config, service: PredictionService, reference: Reference,
                      window: PredictionWindow, labels: pd.DataFrame | None
                      ) -> PerformanceSummary | None:
    """Production quality where enough labels have arrived; None (no verdict) otherwise."""
    if labels is None:
        return None
    labelled = attach_labels(window.predictions, labels, config)
    needed = config.monitoring.min_labelled_records
    if len(labelled) < needed:
        logger.warning("Only %d of %d predictions have labels (monitoring.min_labelled_records "
                       "is %d): no performance verdict", len(labelled), len(window.predictions),
                       needed)
        return None
    return evaluate_performance(reference.sample, labelled, config,
                                service.metadata.get("holdout_metrics"))


def estimate(config: Config, service: PredictionService, reference: Reference,
             window: PredictionWindow) -> EstimatedPerformance:
    """The metrics expected on the whole window from its served probabilities, labels or not
    (each instance once, as performance counts it)."""
    baseline, _ = holdout_baseline(reference.sample, config,
                                   service.metadata.get("holdout_metrics"))
    return estimate_performance(reference.sample, latest_predictions(window.predictions, config),
                                config, baseline)


def write_reports(directory: Path, drift: DriftSummary,
                  performance: PerformanceSummary | None) -> list[Path]:
    reports = [write_report_html(drift.report, directory / DRIFT_REPORT)]
    if performance and performance.report is not None:
        reports.append(write_report_html(performance.report, directory / PERFORMANCE_REPORT))
    else:
        (directory / PERFORMANCE_REPORT).unlink(missing_ok=True)  # never show a stale verdict
    return reports


def retrain(config: Config, args: argparse.Namespace, directory: Path) -> dict[str, Any] | None:
    """The modelling use case on historic plus labelled production data; the promotion rule
    decides whether the new version becomes champion. Returns the outcome, None on failure."""
    extra = labelled_production_data(config)
    if extra.empty:
        logger.error("Cannot retrain: no production rows have labels in %s",
                     config.resolve(config.data.production_labels))
        return None
    extra_file = directory / LABELLED_PRODUCTION_FILE
    extra.to_csv(extra_file, index=False)
    logger.info("Retraining on historic data plus %d labelled production rows", len(extra))
    try:
        modelling = load_config("modelling", "historic", "local", config_file=args.config,
                                root=config.root)
        check_training_config(modelling)
        modelled = model(modelling, extra_file)
    except Exception:  # whatever failed, this run's verdict stands and is reported
        logger.exception("Retraining failed")
        return None
    metric, previous = modelled.metric, modelled.champion_score
    beaten = f"the champion (holdout {metric} {previous:.4f})" if previous is not None \
        else "no comparable champion"
    verdict = (f"beats {beaten}: it is the new champion; restart the prediction service"
               if modelled.alias == CHAMPION else f"does not beat {beaten}: it is the challenger")
    print(f"RETRAINED: version {modelled.model_version} (holdout {metric} "
          f"{modelled.holdout_score:.4f}) {verdict}.")
    return {
        "extra_labelled_rows": len(extra),
        "model_version": modelled.model_version,
        "alias": modelled.alias,
        "metric": metric,
        "holdout_score": modelled.holdout_score,
        "previous_champion_score": previous,
    }


def attach_to_model_run(config: Config, run_id: str | None, paths: list[Path]) -> str | None:
    """Log the reports to the served model's MLflow run; monitoring never fails for tracking.
    Returns where they are (`runs:/<run id>/monitoring/<time>`), None if not logged."""
    if not run_id:
        logger.warning("The model's metadata names no MLflow run: reports are only in %s",
                       paths[0].parent)
        return None
    artifact_path = f"monitoring/{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        log_artifacts_to_run(run_id, paths, artifact_path, config)
    except TrackingError as err:
        logger.warning("Reports not logged to MLflow (%s); they are in %s", err, paths[0].parent)
        return None
    logger.info("Reports logged to MLflow run %s under %s", run_id, artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


if __name__ == "__main__":
    raise SystemExit(main())
