"""What one monitoring run concluded: the drift of each column and of the predictions, the
performance next to the holdout's, the exit code that says which alert was raised, the JSON
summary for schedulers and dashboards, and the table a person reads.

`monitor.py` makes these verdicts with Evidently; nothing here calls it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from ml_project.config import Config
from ml_project.estimate import EstimatedPerformance
from ml_project.metrics import relative_drop
from ml_project.monitoring_data import PredictionWindow, Reference
from ml_project.predict import PredictionService

if TYPE_CHECKING:
    from evidently import Run

# Exit codes of the monitoring use case, for schedulers and CI.
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_DRIFT = 10
EXIT_PERFORMANCE_DROP = 11
EXIT_DRIFT_AND_PERFORMANCE_DROP = 12
EXIT_RETRAINING_FAILED = 13
# No realised verdict for the window (too few labels), but the metric estimated from the served
# probabilities (`estimate.py`) dropped past the threshold; and with data drift too.
EXIT_ESTIMATED_DROP = 14
EXIT_DRIFT_AND_ESTIMATED_DROP = 15
EXIT_PROMOTION_FAILED = 16  # --promote-challenger: the evidence cleared the rule, the move failed


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """Per-column drift of the inputs and of the predictions; the share counts inputs only."""

    features: tuple[ColumnDrift, ...]
    predictions: tuple[ColumnDrift, ...]
    drifted_share: float
    threshold: float
    reference_rows: int
    current_rows: int
    report: Run = field(repr=False, compare=False)

    @property
    def detected(self) -> bool:
        """Evidently's rule, so the verdict here and the report's headline always agree."""
        return self.drifted_share >= self.threshold

    @property
    def drifted_features(self) -> list[str]:
        return [drift.column for drift in self.features if drift.drifted]

    def to_dict(self) -> dict[str, Any]:
        return json_object(
            {
                "detected": self.detected,
                "drifted_share": self.drifted_share,
                "threshold": self.threshold,
                "drifted_features": self.drifted_features,
                "reference_rows": self.reference_rows,
                "current_rows": self.current_rows,
                "features": [asdict(drift) for drift in self.features],
                "predictions": [asdict(drift) for drift in self.predictions],
            }
        )


@dataclass(frozen=True)
class PerformanceSummary:
    """Every configured metric on labelled production predictions and on the holdout.

    Metrics follow scikit-learn's sign convention (greater is better), so a drop is always
    `baseline - production`; it is judged relative to the baseline's size (`relative_drop`), so
    one threshold means the same for ROC AUC, accuracy and an RMSE in any unit.
    """

    metric: str
    production: dict[str, float]
    baseline: dict[str, float]
    baseline_source: str
    labelled_rows: int
    threshold: float
    report: Run | None = field(repr=False, compare=False)
    report_left_out: str | None = None  # why there is no Evidently report (`report` is None)

    @property
    def drop(self) -> float:
        return self.baseline[self.metric] - self.production[self.metric]

    @property
    def relative_drop(self) -> float:
        """The drop as a share of the baseline's magnitude (0.05: 5% worse than the holdout)."""
        return relative_drop(self.baseline[self.metric], self.production[self.metric])

    @property
    def verdict(self) -> bool:
        """The labels give one: the primary metric is defined (not NaN) on them."""
        return math.isfinite(self.production[self.metric])

    @property
    def degraded(self) -> bool:
        """False when the metric is undefined (NaN), e.g. labels of one class only."""
        return bool(self.relative_drop > self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return json_object(
            {
                "metric": self.metric,
                "degraded": self.degraded,
                "drop": self.drop,
                "relative_drop": self.relative_drop,
                "threshold": self.threshold,
                "labelled_rows": self.labelled_rows,
                "production": self.production,
                "baseline": self.baseline,
                "baseline_source": self.baseline_source,
                "report_left_out": self.report_left_out,
            }
        )


def json_object(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): json_safe(value) for key, value in values.items()}


def json_safe(value: Any) -> Any:
    """NaN is not JSON: an undefined metric is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return json_object(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def exit_code(drift: DriftSummary, performance: PerformanceSummary | None,
              estimated: EstimatedPerformance | None = None) -> int:
    """EXIT_OK, or the code of the alert raised: drift, a performance drop, or both. Where labels
    gave a verdict (`performance`), it decides; only without one does the estimated drop."""
    realised = performance is not None and performance.verdict
    if not realised and estimated is not None and estimated.degraded:
        return EXIT_DRIFT_AND_ESTIMATED_DROP if drift.detected else EXIT_ESTIMATED_DROP
    degraded = performance is not None and performance.degraded
    if drift.detected and degraded:
        return EXIT_DRIFT_AND_PERFORMANCE_DROP
    if drift.detected:
        return EXIT_DRIFT
    return EXIT_PERFORMANCE_DROP if degraded else EXIT_OK


def monitoring_summary(
    window: PredictionWindow,
    drift: DriftSummary,
    performance: PerformanceSummary | None,
    reference: Reference,
    service: PredictionService,
    estimated: EstimatedPerformance | None = None,
) -> dict[str, Any]:
    """What a scheduler, a dashboard or a person needs from one monitoring run, as JSON."""
    first, last = window.period
    return json_object(
        {
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "model": {
                "name": service.metadata.get("model_name"),
                "version": service.model_version,
                "mlflow_run_id": service.metadata.get("mlflow_run_id"),
            },
            "window": {
                "requests": window.requests,
                "predicted": len(window.predictions),
                "rejected": window.rejected,
                "first_logged_at": first,
                "last_logged_at": last,
                "model_versions": window.model_versions,
                "pending_in_journal": window.pending,
                "future_timestamps": window.future,
                "repeated_instances": window.repeated_ids,
                "repeated_instance_records": window.repeated_records,
            },
            "reference": {"rows": len(reference.sample), "source": reference.source},
            "drift": drift.to_dict(),
            "performance": performance.to_dict() if performance else None,
            "estimated_performance": estimated.to_dict() if estimated else None,
        }
    )


def window_warnings(window: Mapping[str, Any]) -> list[str]:
    """What makes the window less than the whole truth, in words (a summary written before
    these were counted has none of them)."""
    warnings = []
    if window.get("pending_in_journal"):
        warnings.append(f"{window['pending_in_journal']} records are still in the prediction "
                        "journal, not in the database (is it reachable?): this window lacks them")
    if window.get("future_timestamps"):
        warnings.append(f"{window['future_timestamps']} records are time-stamped in the future "
                        f"(latest {window['last_logged_at']}): a clock is wrong, or records were "
                        "written by hand")
    if window.get("repeated_instances"):
        warnings.append(f"{window['repeated_instances']} instances (ids) were predicted more "
                        f"than once ({window['repeated_instance_records']} records): drift "
                        "counts every request, performance each instance once (its latest)")
    return warnings


def summary_table(summary: Mapping[str, Any], drift: DriftSummary,
                  performance: PerformanceSummary | None, code: int, config: Config,
                  estimated: EstimatedPerformance | None = None) -> str:
    """The short table a person reads in the terminal; the JSON summary has everything."""
    lines: list[str] = []
    line = lines.append
    model, window = summary["model"], summary["window"]
    line(f"\nMonitoring {model['name']} version {model['version']}: {window['requests']} "
          f"requests logged {window['first_logged_at']} .. {window['last_logged_at']} "
          f"({window['predicted']} predicted, {window['rejected']} rejected)")
    for warning in window_warnings(window):
        line(f"  warning: {warning}")
    rows = (*drift.features, *drift.predictions)
    width = max([22, *(len(column.column) for column in rows)])  # a long name keeps its row
    line(f"  {'column':<{width}} {'method':<32} {'score':>7} {'threshold':>9}  drift")
    for column in rows:
        line(f"  {column.column:<{width}} {column.method:<32} {column.score:>7.3f} "
              f"{column.threshold:>9.3f}  {'DRIFT' if column.drifted else 'ok'}")
    verdict = "DATA DRIFT" if drift.detected else "ok"
    line(f"  drifted features: {len(drift.drifted_features)} of {len(drift.features)} "
          f"(share {drift.drifted_share:.2f}, threshold {drift.threshold:.2f}): {verdict}")
    if performance is None:
        line(f"  performance: no verdict (fewer than {config.monitoring.min_labelled_records} "
              "labelled predictions in the window)")
    else:
        metric = performance.metric
        verdict = "PERFORMANCE DROP" if performance.degraded else "ok"
        line(f"  performance ({metric}, {performance.labelled_rows} labelled): production "
              f"{performance.production[metric]:.4f} vs holdout {performance.baseline[metric]:.4f},"
              f" drop {performance.drop:.4f} = {performance.relative_drop:.1%} of the holdout's"
              f" (threshold {performance.threshold:.1%}): {verdict}")
        if performance.report_left_out:
            line(f"  performance report: none, {performance.report_left_out}")
    if estimated is not None:
        lines.extend(estimate_lines(estimated, realised=bool(performance and performance.verdict)))
    if code in (EXIT_DRIFT, EXIT_DRIFT_AND_PERFORMANCE_DROP, EXIT_DRIFT_AND_ESTIMATED_DROP):
        line(f"ALERT: data drift in {', '.join(drift.drifted_features)}: the production data no "
              "longer looks like the training data.")
    if code in (EXIT_PERFORMANCE_DROP, EXIT_DRIFT_AND_PERFORMANCE_DROP):
        line("ALERT: the model performs worse in production than on its holdout.")
    if code in (EXIT_ESTIMATED_DROP, EXIT_DRIFT_AND_ESTIMATED_DROP):
        line("ALERT: the model's estimated performance (no labels yet) is worse than on its "
             "holdout.")
    return "\n".join(lines)


def estimate_lines(estimated: EstimatedPerformance, *, realised: bool) -> list[str]:
    """The estimated metric with its interval and verdict, and how calibration was judged."""
    metric, lines = estimated.metric, []
    if metric not in estimated.estimated:
        why = estimated.not_estimated.get(metric, "not estimated")
        lines.append(f"  estimated performance ({metric}): {why}")
    else:
        low, high = estimated.intervals.get(metric, (math.nan, math.nan))
        if realised:
            verdict = "the realised metric decides"
        elif not estimated.verdict:
            verdict = f"no verdict (fewer than {estimated.min_rows} predictions)"
        else:
            verdict = "ESTIMATED DROP" if estimated.degraded else "ok"
        lines.append(
            f"  estimated performance ({metric}, {estimated.rows} predictions, no labels needed):"
            f" {estimated.estimated[metric]:.4f} (95% {low:.4f} .. {high:.4f}) vs holdout "
            f"{estimated.baseline[metric]:.4f}, drop {estimated.relative_drop:.1%} (threshold "
            f"{estimated.threshold:.1%}): {verdict}")
    others = [name for name in estimated.not_estimated if name != metric]
    if others:
        lines.append(f"  not estimated: {', '.join(others)}")
    calibration = estimated.calibration
    if calibration is not None:
        how = (calibration.note or ("probabilities mapped (isotonic, fitted on the reference) "
                                    "for the estimate" if calibration.mapped else
                                    "probabilities calibrated on the reference, used as served"))
        lines.append(f"  calibration: Brier {calibration.brier_served:.4f} as served, "
                     f"{calibration.brier_mapped:.4f} mapped out of fold: {how}")
    return lines
