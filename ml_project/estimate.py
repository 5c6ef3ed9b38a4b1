"""Performance estimated before labels arrive: the expected value of each metric of a classifier
on an unlabelled window, from the probabilities it served (confidence-based performance
estimation, NannyML's CBPE).

If the probabilities are calibrated, a row served the label y^ with probabilities p is of class
k with probability p[k]. Each row is scored as one row per class, of weight p[k] (scikit-learn's
`sample_weight`, through the same metric definitions as the realised scores, `metrics.py`):
that is the expected confusion matrix. Accuracy and log loss come out as their exact expected
values; f1 (binary or macro) as the ratio of expected counts, NannyML's estimate, within
O(1/rows) of the expected f1; ROC AUC as the area under the expected TPR/FPR curve of the served
scores. The labels are the served predictions and the scores the served probabilities, never
recomputed; only the weights come from the calibration map below.

**Calibration**, checked on the reference sample (holdout rows: labels and the probabilities the
same model served for them). A map is fitted as `CalibratedClassifierCV` fits one: on the
positive class's probability for a binary task, one-vs-rest per class then renormalised for
multiclass; two kinds, scikit-learn's `IsotonicRegression` (any monotone distortion) and a
sigmoid of the log-odds (`LogisticRegression`, Platt's: over- or under-confidence, a shift). The
rule: each kind is cross-validated on the reference (5 folds); the one with the lower Brier
score out of fold is used only when it beats the served probabilities by more than two standard
errors of the per-row difference (isotonic alone overfits the ends: AUC 0.014 too high on 5,000
overconfident rows), else the served ones are. The map serves estimation only.

**Uncertainty**: labels drawn from the calibrated probabilities (a Monte Carlo of
`MONTE_CARLO_DRAWS` draws) give the standard deviation of the metric the window would realise
(`sampling_error`); when a map is used, so does the map refitted on bootstrap resamples of the
reference (a map fitted on a few thousand rows is off by as much as a window's noise), the two
added in quadrature. The interval is the estimate +-1.96 of them (95% if about normal, as
these metrics are on a window of a hundred rows or more).

**Assumption**: P(label | probability) is the reference's (covariate shift only); concept drift
and label shift break it unseen (documentation/monitoring.md). **Regression** is not estimated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence, TypeAlias

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX, Config
from ml_project.metrics import relative_drop, score_predictions
from ml_project.schemas import label_key

logger = logging.getLogger(__name__)

MONTE_CARLO_DRAWS = 100  # a standard deviation to about +-7%
# A larger window's spread is drawn on this many of its rows and scaled by sqrt(rows / window):
# a second or two at any window size (every metric here is asymptotically normal).
MONTE_CARLO_ROWS = 5000
# The map's own error: refitted on this many bootstrap resamples of the reference, each scored
# on this many of the window's rows (the map's error hardly depends on the window's size).
MAP_RESAMPLES = 40
MAP_ROWS = 2000
NORMAL_95 = 1.959964
CALIBRATION_FOLDS = 5
MAP_KINDS = ("sigmoid", "isotonic")
MIN_CALIBRATION_ROWS = 50  # fewer reference rows: the check cannot tell, the map cannot be fitted
Map: TypeAlias = IsotonicRegression | LogisticRegression
REGRESSION_REASON = ("not estimated: a regressor serves no distribution of its error, so its "
                     "metrics cannot be expected without labels")


@dataclass(frozen=True)
class Calibration:
    """Whether the served probabilities are calibrated on the reference, and the map that
    corrects them for estimation when they are not (`maps` empty: used as served)."""

    rows: int
    brier_served: float  # mean Brier score (summed over classes) of the served probabilities
    brier_mapped: float  # the same, mapped out of fold (cross-validated)
    standard_error: float  # of the per-row difference of the two
    max_gap: float | None  # the largest gap of the reliability curve (10 quantile bins)
    method: str | None = None  # the map's kind, None when used as served
    maps: tuple[Map, ...] = field(default=(), repr=False, compare=False)
    positive: int | None = None  # binary: the positive class's column the one map is fitted on
    note: str | None = None  # why the check could not be made
    # the reference's probabilities and one-hot labels, to refit the map on resamples
    fitted_on: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False,
                                                            compare=False)

    @property
    def mapped(self) -> bool:
        return bool(self.maps)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The probabilities estimation uses: mapped when a map was fitted, else as served."""
        if not self.maps:
            return probabilities
        return _mapped(self.maps, probabilities, self.positive)

    def resampled(self, generator: np.random.Generator) -> Calibration:
        """The same kind of map refitted on a bootstrap resample of the reference: one draw of
        what the map could have been (itself when no map is used)."""
        if not self.maps or self.fitted_on is None or self.method is None:
            return self
        served, outcome = self.fitted_on
        rows = generator.integers(0, len(served), len(served))
        maps = _fit_maps(self.method, served[rows], outcome[rows], self.positive)
        return replace(self, maps=maps)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "calibrated_as_served": not self.mapped,
                "map": self.method,
                "brier_served": self.brier_served, "brier_mapped_out_of_fold": self.brier_mapped,
                "standard_error": self.standard_error, "max_gap": self.max_gap,
                "note": self.note}


@dataclass(frozen=True)
class EstimatedPerformance:
    """The metrics expected on a window without its labels, next to the holdout's; `degraded`
    when the primary metric's estimated drop, relative to the holdout's, passes the threshold."""

    metric: str
    estimated: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # where the realised metric falls, 95%
    sampling_error: dict[str, float]  # standard deviation of the realised metric
    not_estimated: dict[str, str]  # metric -> why not
    baseline: dict[str, float]
    rows: int
    min_rows: int
    threshold: float
    calibration: Calibration | None

    @property
    def verdict(self) -> bool:
        """An estimate to judge: the primary metric estimated on enough rows."""
        return self.metric in self.estimated and self.rows >= self.min_rows

    @property
    def drop(self) -> float:
        return (self.baseline.get(self.metric, float("nan"))
                - self.estimated.get(self.metric, float("nan")))

    @property
    def relative_drop(self) -> float:
        return relative_drop(self.baseline.get(self.metric, float("nan")),
                             self.estimated.get(self.metric, float("nan")))

    @property
    def degraded(self) -> bool:
        return self.verdict and bool(self.relative_drop > self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "degraded": self.degraded, "verdict": self.verdict,
            "drop": self.drop, "relative_drop": self.relative_drop,
            "threshold": self.threshold, "rows": self.rows, "min_rows": self.min_rows,
            "estimated": self.estimated,
            "interval_95": {name: list(bounds) for name, bounds in self.intervals.items()},
            "sampling_error": self.sampling_error, "not_estimated": self.not_estimated,
            "baseline": self.baseline,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "assumption": "P(label | served probability) as on the reference: covariate shift "
                          "only, no concept drift, no label shift",
        }


def served_outputs(frame: pd.DataFrame, config: Config
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The classes (config order), each row's served label as a class index, and the served
    probabilities (one column per class, in that order).

    Raises:
        ValueError: a probability column is missing or empty, or a label is none of the classes.
    """
    classes = np.asarray(config.columns.target_classes)
    columns = [f"{PROBABILITY_PREFIX}{label}" for label in config.columns.target_classes]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"no served probabilities {missing} to estimate from")
    index = {label_key(label): i for i, label in enumerate(config.columns.target_classes)}
    keys = [label_key(value) for value in frame[PREDICTION_COLUMN]]
    unknown = sorted({key for key in keys if key not in index})
    if unknown:
        raise ValueError(f"served labels {unknown} are none of the classes {list(classes)}")
    probabilities = frame[columns].to_numpy(float)
    if not np.isfinite(probabilities).all():
        raise ValueError(f"{int((~np.isfinite(probabilities)).any(axis=1).sum())} rows have no "
                         "served probabilities")
    return classes, np.array([index[key] for key in keys], dtype=np.int64), probabilities


def _log_odds(probability: np.ndarray) -> np.ndarray:
    """The sigmoid map's input, one column (Platt's scaling of the decision function)."""
    clipped = np.clip(probability, 1e-12, 1 - 1e-12)
    log_odds: np.ndarray = np.log(clipped / (1 - clipped))
    return log_odds.reshape(-1, 1)


def _fit_map(kind: str, probability: np.ndarray, outcome: np.ndarray) -> Map:
    """One class's map; a class absent from these rows maps to a constant (isotonic's)."""
    model: Map
    if kind == "isotonic" or outcome.min() == outcome.max():
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        return model.fit(probability, outcome)
    model = LogisticRegression()
    return model.fit(_log_odds(probability), outcome)


def _apply_map(model: Map, probability: np.ndarray) -> np.ndarray:
    mapped: np.ndarray
    if isinstance(model, IsotonicRegression):
        mapped = np.clip(model.predict(probability), 0.0, 1.0)
    else:
        mapped = model.predict_proba(_log_odds(probability))[:, 1]
    return mapped


def _fit_maps(kind: str, probabilities: np.ndarray, outcome: np.ndarray,
              positive: int | None) -> tuple[Map, ...]:
    """Maps as CalibratedClassifierCV fits them: the positive class's alone (binary), one per
    class otherwise (one-vs-rest)."""
    columns = [positive] if positive is not None else range(probabilities.shape[1])
    return tuple(_fit_map(kind, probabilities[:, k], outcome[:, k]) for k in columns)


def _mapped(maps: Sequence[Map], probabilities: np.ndarray, positive: int | None
            ) -> np.ndarray:
    """Mapped probabilities; one-vs-rest rows renormalised (a row mapped to all zeros becomes
    uniform, as in CalibratedClassifierCV)."""
    if positive is not None:
        mapped = _apply_map(maps[0], probabilities[:, positive])
        out = np.empty_like(probabilities)
        out[:, positive], out[:, 1 - positive] = mapped, 1.0 - mapped
        return out
    out = np.column_stack([_apply_map(m, probabilities[:, k]) for k, m in enumerate(maps)])
    total = out.sum(axis=1, keepdims=True)
    uniform = np.full_like(out, 1.0 / out.shape[1])
    normalised: np.ndarray = np.divide(out, total, out=uniform, where=total > 0)
    return normalised


def _positive_column(config: Config) -> int | None:
    positive = config.positive_class
    if config.task != "binary_classification" or positive is None:
        return None
    return list(config.columns.target_classes).index(positive)


def check_calibration(reference: pd.DataFrame, config: Config) -> Calibration:
    """The calibration rule of the module docstring, on the reference sample's labelled rows."""
    _, predicted, served = served_outputs(reference, config)
    truth = reference[config.columns.target].map(label_key)
    index = {label_key(label): i for i, label in enumerate(config.columns.target_classes)}
    known = truth.isin(index.keys()).to_numpy()
    served, predicted = served[known], predicted[known]
    outcome = np.eye(served.shape[1])[truth[known].map(index).to_numpy(np.int64)]
    positive = _positive_column(config)
    brier = ((served - outcome) ** 2).sum(axis=1)
    right = (predicted == outcome.argmax(axis=1)).astype(float)
    confidence = served[np.arange(len(served)), predicted]
    gap = None
    if len(served) >= MIN_CALIBRATION_ROWS:
        observed, mean_predicted = calibration_curve(right, confidence, n_bins=10,
                                                     strategy="quantile")
        gap = float(np.max(np.abs(observed - mean_predicted)))
    if len(served) < MIN_CALIBRATION_ROWS:
        note = (f"{len(served)} labelled reference rows, fewer than {MIN_CALIBRATION_ROWS}: "
                "calibration not checked, probabilities used as served")
        return Calibration(len(served), float(brier.mean()), float("nan"), float("nan"), gap,
                           note=note)
    folds = list(KFold(CALIBRATION_FOLDS, shuffle=True,
                       random_state=config.training.random_seed).split(served))
    gains = {}
    for kind in MAP_KINDS:
        out_of_fold = np.empty_like(served)
        for fit_rows, map_rows in folds:
            maps = _fit_maps(kind, served[fit_rows], outcome[fit_rows], positive)
            out_of_fold[map_rows] = _mapped(maps, served[map_rows], positive)
        gains[kind] = brier - ((out_of_fold - outcome) ** 2).sum(axis=1)
    kind = max(MAP_KINDS, key=lambda name: float(gains[name].mean()))
    gain = gains[kind]
    error = float(gain.std(ddof=1) / np.sqrt(len(gain)))
    needed = bool(gain.mean() > 2 * error)
    calibration = Calibration(
        len(served), float(brier.mean()), float(brier.mean() - gain.mean()), error, gap,
        method=kind if needed else None,
        maps=_fit_maps(kind, served, outcome, positive) if needed else (), positive=positive,
        fitted_on=(served, outcome))
    logger.info("Calibration on %d reference rows: Brier %.4f as served, %.4f mapped (%s) out "
                "of fold (+-%.4f): %s", len(served), calibration.brier_served,
                calibration.brier_mapped, kind, error,
                f"{kind} map fitted for estimation" if needed else "used as served")
    return calibration


def expected_scores(names: Sequence[str], classes: np.ndarray, predicted: np.ndarray,
                    served: np.ndarray, calibrated: np.ndarray, positive: Any
                    ) -> dict[str, float]:
    """Each metric over every possible label of every row, weighted by its probability."""
    rows, width = calibrated.shape
    weight = calibrated.reshape(-1)
    keep = weight > 0
    repeat = np.repeat(np.arange(rows), width)[keep]
    return score_predictions(names, np.tile(classes, rows)[keep], classes[predicted[repeat]],
                             served[repeat], list(classes), positive, sample_weight=weight[keep])


def _deviation(values: list[float], scale: float = 1.0) -> float:
    array = np.asarray(values)
    array = array[np.isfinite(array)]
    return float(array.std(ddof=1) * scale) if len(array) > 1 else float("nan")


def sampling_errors(names: Sequence[str], classes: np.ndarray, predicted: np.ndarray,
                    served: np.ndarray, calibration: Calibration, positive: Any, seed: int
                    ) -> dict[str, float]:
    """The standard deviation of each metric realised on the window: labels drawn from the
    calibrated probabilities (`MONTE_CARLO_DRAWS` draws, scaled to the window's size) and,
    when a map is used, the map refitted on bootstrap resamples of the reference (the same
    `MAP_RESAMPLES`), the two independent; NaN where the draws leave a metric undefined."""
    generator = np.random.default_rng(seed)
    total = len(predicted)
    rows = np.arange(total) if total <= MONTE_CARLO_ROWS else np.sort(
        generator.choice(total, MONTE_CARLO_ROWS, replace=False))
    labels_served, scores_served = classes[predicted[rows]], served[rows]
    calibrated = calibration.apply(scores_served)
    cumulative = np.cumsum(calibrated, axis=1)
    cumulative[:, -1] = 1.0
    drawn: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(MONTE_CARLO_DRAWS):
        labels = (generator.random(len(rows))[:, None] > cumulative).sum(axis=1)
        scores = score_predictions(names, classes[labels], labels_served, scores_served,
                                   list(classes), positive)
        for name in names:
            drawn[name].append(scores[name])
    mapped: dict[str, list[float]] = {name: [] for name in names}
    few = rows[:MAP_ROWS] if len(rows) <= MAP_ROWS else np.sort(
        generator.choice(rows, MAP_ROWS, replace=False))
    for _ in range(MAP_RESAMPLES if calibration.mapped else 0):
        expected = expected_scores(names, classes, predicted[few], served[few],
                                   calibration.resampled(generator).apply(served[few]), positive)
        for name in names:
            mapped[name].append(expected[name])
    scale = np.sqrt(len(rows) / total)
    return {name: float(np.hypot(_deviation(drawn[name], scale),
                                 _deviation(mapped[name]) if calibration.mapped else 0.0))
            for name in names}


def estimate_performance(reference: pd.DataFrame, current: pd.DataFrame, config: Config,
                         baseline: Mapping[str, float],
                         calibration: Calibration | None = None) -> EstimatedPerformance:
    """Every configured metric expected on `current` (served labels and probabilities, no
    target needed), next to `baseline` (the holdout's); what cannot be estimated is named
    with the reason, never given a number.

    Args:
        reference: the reference sample (holdout rows with target, served labels and
            probabilities), on which calibration is checked unless `calibration` is given.
        current: one row per instance.
    """
    names = list(config.metrics)

    def summary(estimated: dict[str, float], errors: dict[str, float],
                not_estimated: dict[str, str], used: Calibration | None
                ) -> EstimatedPerformance:
        intervals = {name: (estimated[name] - NORMAL_95 * error,
                            estimated[name] + NORMAL_95 * error)
                     for name, error in errors.items()}
        return EstimatedPerformance(
            metric=config.training.metric, estimated=estimated, intervals=intervals,
            sampling_error=errors, not_estimated=not_estimated, baseline=dict(baseline),
            rows=len(current), min_rows=config.monitoring.min_labelled_records,
            threshold=config.monitoring.performance_drop_threshold, calibration=used)

    if not config.is_classification:
        return summary({}, {}, dict.fromkeys(names, REGRESSION_REASON), None)
    if current.empty:
        return summary({}, {}, dict.fromkeys(names, "not estimated: no predictions"), None)
    try:  # a reference without probabilities (an older artifact), records without them
        calibration = calibration or check_calibration(reference, config)
        classes, predicted, served = served_outputs(current, config)
    except ValueError as err:
        return summary({}, {}, dict.fromkeys(names, f"not estimated: {err}"), calibration)
    expected = expected_scores(names, classes, predicted, served, calibration.apply(served),
                               config.positive_class)
    spread = sampling_errors(names, classes, predicted, served, calibration,
                             config.positive_class, config.training.random_seed)
    undefined = {name: "not estimated: undefined on this window (one class only)"
                 for name in names if not np.isfinite(expected[name])}
    estimated = {name: value for name, value in expected.items() if name not in undefined}
    errors = {name: spread[name] for name in estimated if np.isfinite(spread[name])}
    result = summary(estimated, errors, undefined, calibration)
    metric = config.training.metric
    if metric in estimated:
        low, high = result.intervals.get(metric, (np.nan, np.nan))
        logger.info("Estimated %s %.4f (95%% %.4f .. %.4f) on %d predictions without labels, "
                    "holdout %.4f", metric, estimated[metric], low, high, len(current),
                    baseline.get(metric, np.nan))
    return result
