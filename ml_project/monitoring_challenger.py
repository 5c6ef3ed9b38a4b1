"""Champion vs challenger on the same production instances: what the shadow's answers show.

Each answer of the monitored champion in the window is paired with the challenger's answer to
the same instance (its shadow record: same request id and index, `serving/shadow.py`). On the
pairs: how many the challenger answered (coverage), how often both give the same label and how
far their probabilities are apart (agreement; for regression, how far their predictions are); on the pairs whose label has arrived, the primary
metric of each with a 95% interval, and the paired difference with its own (a percentile
bootstrap over instances, `metrics.bootstrap_interval`; the same resampled rows score both
models, so the interval is of the difference, not of two noisy numbers).

The rule (`recommend`): promote when at least `monitoring.min_labelled_records` pairs have
labels and the whole 95% interval of (challenger - champion) lies above zero: the challenger
is better on production data beyond what sampling explains. Keep the champion when the whole
interval lies below zero; otherwise wait for more labels. `--promote-challenger` acts on
"promote" only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ml_project.config import Config
from ml_project.metrics import bootstrap_interval, score_predictions
from ml_project.prediction_log.log import PredictionLog

logger = logging.getLogger(__name__)

PROMOTE, KEEP, WAIT = "promote", "keep the champion", "wait for more labels"
RESAMPLES = 500


@dataclass
class Comparison:
    """Champion vs challenger in a window: the summary's `challenger` section."""

    champion_version: str
    challenger_version: str | None
    answered: int  # champion answers in the window
    paired: int  # of which the challenger answered too
    agreement: float | None = None  # share of pairs with the same label (classification)
    # mean |difference| of the probabilities (classification) or of the predictions (regression)
    mean_abs_difference: float | None = None
    labelled: int = 0
    metric: str = ""
    champion: dict[str, float | None] = field(default_factory=dict)  # value, ci95_low/high
    challenger: dict[str, float | None] = field(default_factory=dict)
    difference: dict[str, float | None] = field(default_factory=dict)
    recommendation: str = WAIT
    reason: str = ""
    challenger_sha256: str | None = None
    other_challengers: list[str] = field(default_factory=list)  # earlier versions in the window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def paired_answers(config: Config, champion_sha256: str, *, last: int | None,
                   since: str | None, until: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's answers in the window and the shadow's answers to them: two frames of
    request_id, instance_index, instance_id, prediction, probabilities and model identity."""
    keep = ["request_id", "instance_index", "instance_id", "prediction", "probabilities",
            "model_version", "model_sha256", "logged_at"]

    def frame(chunks: Iterator[list[dict[str, Any]]]) -> pd.DataFrame:
        """The answered records, a chunk at a time: memory follows the window."""
        parts = [pd.DataFrame([{key: row[key] for key in keep} for row in chunk
                               if row["error"] is None and row["prediction"] is not None],
                              columns=keep) for chunk in chunks]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keep)

    log = PredictionLog.from_config(config)
    try:
        answers = frame(log.read_chunks(last=last, since=since, until=until,
                                        model_sha256=champion_sha256, shadow=False))
        first = answers["logged_at"].min() if len(answers) else None
        shadow = (frame(log.read_chunks(since=first, until=until, shadow=True))
                  if first is not None else pd.DataFrame(columns=keep))
    finally:
        log.close()
    return answers, shadow


def compare(config: Config, answers: pd.DataFrame, shadow: pd.DataFrame,
            labels: pd.DataFrame | None, champion_version: str, classes: list[Any]) -> Comparison:
    """The comparison of the latest challenger's shadow answers with the champion's answers."""
    shadow = shadow.merge(answers[["request_id", "instance_index"]],
                          on=["request_id", "instance_index"])  # only the window's answers
    versions = list(dict.fromkeys(shadow.sort_values("logged_at")["model_version"]))
    latest = versions[-1] if versions else None
    result = Comparison(champion_version, latest, len(answers), 0, metric=config.training.metric,
                        other_challengers=[str(v) for v in versions[:-1]])
    if latest is None:
        result.reason = "no shadow answers in the window (prediction.shadow: challenger?)"
        return result
    shadow = shadow[shadow["model_version"] == latest]
    result.challenger_sha256 = str(shadow["model_sha256"].iloc[0])
    pairs = answers.merge(shadow, on=["request_id", "instance_index"],
                          suffixes=("_champion", "_challenger"))
    result.paired = len(pairs)
    keys = [str(c) for c in classes]
    if not config.is_classification:  # same labels mean nothing for numbers: how far apart
        result.mean_abs_difference = float(np.abs(
            pairs["prediction_champion"].astype(float)
            - pairs["prediction_challenger"].astype(float)).mean())
    else:
        result.agreement = float((pairs["prediction_champion"].astype(str)
                                  == pairs["prediction_challenger"].astype(str)).mean())
        if keys and pairs["probabilities_champion"].notna().all():
            result.mean_abs_difference = float(np.abs(
                _probabilities(pairs["probabilities_champion"], keys)
                - _probabilities(pairs["probabilities_challenger"], keys)).mean())
    _score_labelled(config, pairs, labels, classes, result)
    result.recommendation, result.reason = recommend(result, config.monitoring.min_labelled_records)
    return result


def _probabilities(column: pd.Series, keys: list[str]) -> np.ndarray:
    return np.array([[float(row.get(key, math.nan)) for key in keys] for row in column])


def _score_labelled(config: Config, pairs: pd.DataFrame, labels: pd.DataFrame | None,
                    classes: list[Any], result: Comparison) -> None:
    if labels is None or pairs.empty:
        return
    id_column, target = config.columns.id, config.columns.target
    pairs = pairs.assign(**{id_column: pairs["instance_id_champion"]})
    # an instance answered more than once (a stream run twice) counts once, its latest answer
    labelled = (pairs.sort_values("logged_at_champion").drop_duplicates(id_column, keep="last")
                .merge(labels, on=id_column, how="inner"))
    result.labelled = len(labelled)
    if labelled.empty:
        return
    y = labelled[target].to_numpy()
    keys = [str(c) for c in classes]

    def outputs(side: str) -> tuple[np.ndarray, np.ndarray | None]:
        predicted = labelled[f"prediction_{side}"].to_numpy()
        if config.is_classification:
            predicted = predicted.astype(y.dtype)
        probabilities = (_probabilities(labelled[f"probabilities_{side}"], keys)
                         if keys and labelled[f"probabilities_{side}"].notna().all() else None)
        return predicted, probabilities

    scored = {side: outputs(side) for side in ("champion", "challenger")}

    def score(side: str, rows: np.ndarray) -> float:
        predicted, probabilities = scored[side]
        return score_predictions([result.metric], y[rows], predicted[rows],
                                 None if probabilities is None else probabilities[rows],
                                 classes, config.positive_class)[result.metric]

    everything, seed = np.arange(len(y)), config.training.random_seed
    result.champion = _interval(lambda rows: score("champion", rows), everything, seed)
    result.challenger = _interval(lambda rows: score("challenger", rows), everything, seed)
    result.difference = _interval(
        lambda rows: score("challenger", rows) - score("champion", rows), everything, seed)


def _interval(statistic: Callable[[np.ndarray], float], rows: np.ndarray, seed: int
              ) -> dict[str, float | None]:
    """The statistic on every row, and its 95% bootstrap interval over rows."""
    value = statistic(rows)
    low = high = math.nan
    if len(rows) >= 2 and math.isfinite(value):
        low, high = bootstrap_interval(statistic, len(rows), resamples=RESAMPLES, seed=seed)
    return {"value": _finite(value), "ci95_low": _finite(low), "ci95_high": _finite(high)}


def recommend(result: Comparison, min_labelled: int) -> tuple[str, str]:
    """The stated rule (module docstring): promote, keep the champion, or wait."""
    if result.labelled < min_labelled:
        return WAIT, (f"{result.labelled} labelled pairs, fewer than "
                      f"monitoring.min_labelled_records ({min_labelled})")
    low, high = result.difference.get("ci95_low"), result.difference.get("ci95_high")
    if low is None or high is None:
        return WAIT, f"the {result.metric} difference has no interval (one class only?)"
    span = f"95% interval of challenger - champion {result.metric}: [{low:+.4f}, {high:+.4f}]"
    if low > 0:
        return PROMOTE, f"the challenger is better beyond sampling noise ({span})"
    if high < 0:
        return KEEP, f"the champion is better beyond sampling noise ({span})"
    return WAIT, f"no difference beyond sampling noise yet ({span})"


def comparison_lines(comparison: Comparison) -> list[str]:
    """The summary table's lines for the comparison."""
    c = comparison
    if c.challenger_version is None:
        return [f"  challenger: {c.reason}"]
    lines = [f"  challenger version {c.challenger_version} in shadow of version "
             f"{c.champion_version}: {c.paired} of {c.answered} answers paired"]
    if c.agreement is not None:
        gap = ("" if c.mean_abs_difference is None
               else f", mean |probability difference| {c.mean_abs_difference:.4f}")
        lines.append(f"    same label on {c.agreement:.1%} of them{gap}")
    elif c.mean_abs_difference is not None:
        lines.append(f"    mean |prediction difference| {c.mean_abs_difference:.4f}")
    if c.labelled:
        def shown(values: dict[str, float | None]) -> str:
            value, low, high = (values.get(k) for k in ("value", "ci95_low", "ci95_high"))
            if value is None:
                return "n/a"
            interval = "" if low is None or high is None else f" [{low:.4f}, {high:.4f}]"
            return f"{value:.4f}{interval}"
        lines.append(f"    {c.metric} on {c.labelled} labelled: champion {shown(c.champion)}, "
                     f"challenger {shown(c.challenger)}, difference {shown(c.difference)}")
    lines.append(f"    recommendation: {c.recommendation.upper()}: {c.reason}")
    return lines
