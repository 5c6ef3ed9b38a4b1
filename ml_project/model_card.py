"""The model card of a registered version: what the model is for, what it was trained on, how
well it does (overall, per slice, with bootstrap intervals), how calibrated it is, what it
relies on and where it is weak, as JSON (for programs) and Markdown (for people, with PNG
figures drawn from the card's own numbers).

Every number is computed from the artifact's reference sample (holdout rows with the model's
own predictions, `train.build_reference_sample`): anyone can recompute the card from the files
the artifact ships. The modelling run writes the card beside the model (`export.py` records
its files' checksums in metadata.json), logs it to the MLflow run and sets the registered
version's description to its summary; serving only reads the JSON and Markdown files.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from ml_project.config import PREDICTION_COLUMN, PROBABILITY_PREFIX, Config
from ml_project.export import CARD_JSON, CARD_MARKDOWN, native
from ml_project.metrics import cv_scorers, score_predictions
from ml_project.train import features_and_target

TOO_SMALL = "too small"
QUANTILE_BINS = 4
MAX_CATEGORIES = 30  # slices per categorical feature, the largest first: the rest are summed up
WEAKEST_SLICES = 3
CALIBRATION_BINS = 10
# A feature whose shuffling moves the primary metric by less than this share of the largest
# feature's importance is one the model barely uses.
BARELY_USED_SHARE = 0.01
CALIBRATION_FIGURE = "model_card_calibration.png"
IMPORTANCE_FIGURE = "model_card_importance.png"


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (ROC AUC of a one-class slice) is null, anywhere
    in the card (a leaderboard's NaN standard deviation too)."""
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    value = native(value)
    return None if isinstance(value, float) and not math.isfinite(value) else value


class CardInputs:
    """The reference sample split into what every section scores: features, labels,
    predictions and, for classification, the probability columns in the model's class order."""

    def __init__(self, config: Config, pipeline: Pipeline, reference: pd.DataFrame) -> None:
        self.config = config
        self.pipeline = pipeline
        self.features, target = features_and_target(reference, config)
        self.target = target.to_numpy()
        self.predicted = reference[PREDICTION_COLUMN].to_numpy()
        self.classes = [native(c) for c in getattr(pipeline, "classes_", [])]
        columns = [f"{PROBABILITY_PREFIX}{label}" for label in self.classes]
        self.probabilities = (reference[columns].to_numpy(dtype=float)
                              if self.classes and all(c in reference for c in columns) else None)

    def score(self, rows: np.ndarray | slice = slice(None)) -> dict[str, float]:
        """Every configured metric on `rows` of the sample (the holdout's definitions)."""
        probabilities = None if self.probabilities is None else self.probabilities[rows]
        return score_predictions(self.config.metrics, self.target[rows], self.predicted[rows],
                                 probabilities, self.classes, self.config.positive_class)


def bootstrap_metrics(inputs: CardInputs, resamples: int, seed: int) -> dict[str, Any]:
    """Each metric on the whole sample with a percentile bootstrap 95% interval: `resamples`
    draws of as many rows, with replacement, from a seeded generator (the same card twice)."""
    point = inputs.score()
    generator = np.random.default_rng(seed)
    size = len(inputs.target)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(resamples):
        for name, value in inputs.score(generator.integers(0, size, size)).items():
            if math.isfinite(value):
                draws[name].append(value)
    result = {}
    for name, value in point.items():
        low, high = (np.percentile(draws[name], [2.5, 97.5]) if draws[name]
                     else (math.nan, math.nan))
        result[name] = {"value": _finite(value), "ci95_low": _finite(float(low)),
                        "ci95_high": _finite(float(high))}
    return result


def _slice_masks(column: pd.Series, categorical: bool) -> list[tuple[str, np.ndarray]]:
    """(label, rows) of each slice of one feature: each category (the MAX_CATEGORIES largest,
    the rest as one), or quantile bins of a number; missing values as a slice of their own."""
    missing = column.isna().to_numpy()
    slices: list[tuple[str, np.ndarray]] = []
    if categorical:
        counts = column.value_counts()
        kept = list(counts.index[:MAX_CATEGORIES])
        slices = [(str(value), (column == value).to_numpy()) for value in kept]
        others = ~column.isin(kept).to_numpy() & ~missing
        if others.any():
            slices.append((f"{len(counts) - len(kept)} other categories", others))
    elif (~missing).any():
        binned, edges = pd.qcut(column.astype(float), QUANTILE_BINS, labels=False,
                                retbins=True, duplicates="drop")
        codes = np.asarray(binned)
        slices = [(f"{'[' if i == 0 else '('}{edges[i]:.4g}, {edges[i + 1]:.4g}]", codes == i)
                  for i in range(len(edges) - 1)] or [(f"{edges[0]:.4g}", ~missing)]  # constant
    if missing.any():
        slices.append(("missing", missing))
    return slices


def slice_metrics(inputs: CardInputs, min_rows: int) -> list[dict[str, Any]]:
    """The metrics per slice of each feature, with its row count; a slice under `min_rows` rows
    is listed as TOO_SMALL, its metrics left out (noise, not evidence)."""
    rows = []
    categorical = set(inputs.config.columns.categorical)
    for feature in inputs.config.columns.features:
        for label, mask in _slice_masks(inputs.features[feature], feature in categorical):
            count = int(mask.sum())
            entry: dict[str, Any] = {"feature": feature, "slice": label, "rows": count}
            if count < min_rows:
                entry["status"] = TOO_SMALL
            else:
                entry["metrics"] = {k: _finite(v) for k, v in inputs.score(mask).items()}
            rows.append(entry)
    return rows


def calibration(inputs: CardInputs) -> dict[str, Any] | None:
    """Reliability curve and Brier score: of the positive class (binary), of the predicted
    class's probability against being right (multiclass); None for regression."""
    if inputs.probabilities is None:
        return None
    if len(inputs.classes) == 2:
        positive = inputs.config.positive_class
        column = inputs.classes.index(positive) if positive is not None else 1
        outcome = (inputs.target == inputs.classes[column]).astype(float)
        confidence = inputs.probabilities[:, column]
        about = f"probability of {inputs.classes[column]!r}"
    else:
        chosen = inputs.probabilities.argmax(axis=1)
        outcome = (np.asarray(inputs.classes, dtype=object)[chosen] == inputs.target).astype(float)
        confidence = inputs.probabilities.max(axis=1)
        about = "probability of the predicted class"
    observed, predicted = calibration_curve(outcome, confidence, n_bins=CALIBRATION_BINS,
                                            strategy="quantile")
    one_hot = (np.asarray(inputs.target)[:, None] == np.asarray(inputs.classes)[None, :])
    brier = float(np.mean(np.sum((inputs.probabilities - one_hot) ** 2, axis=1)))
    return {"of": about, "mean_predicted": [float(v) for v in predicted],
            "observed_frequency": [float(v) for v in observed],
            "brier_score": brier if len(inputs.classes) > 2 else brier / 2,
            "max_gap": float(np.max(np.abs(observed - predicted))) if len(observed) else None}


def residuals(inputs: CardInputs) -> dict[str, float] | None:
    """Regression: the spread of actual - predicted (classification: None)."""
    if inputs.config.is_classification:
        return None
    error = inputs.target.astype(float) - inputs.predicted.astype(float)
    quantiles = np.percentile(error, [5, 25, 50, 75, 95])
    return {"mean": float(error.mean()), "std": float(error.std()),
            **{f"p{q}": float(v) for q, v in zip((5, 25, 50, 75, 95), quantiles)}}


def importance(inputs: CardInputs, rows: int, seed: int) -> list[dict[str, Any]]:
    """Permutation importance of each input column for the primary metric, on at most `rows`
    sample rows and 3 seeded repeats (seconds, not minutes, at any table size)."""
    metric = inputs.config.training.metric  # scored as the search scored it (text labels too)
    take = np.random.default_rng(seed).permutation(len(inputs.target))[:rows]
    result = permutation_importance(
        inputs.pipeline, inputs.features.iloc[take], inputs.target[take],
        scoring=cv_scorers([metric], inputs.config.positive_class, inputs.classes)[metric],
        n_repeats=3, random_state=seed, n_jobs=1)
    order = np.argsort(-result.importances_mean)
    return [{"feature": str(inputs.features.columns[i]),
             "mean": float(result.importances_mean[i]), "std": float(result.importances_std[i])}
            for i in order]


def limitations(card: Mapping[str, Any], metric: str) -> list[str]:
    """Known limitations read off the card: the weakest slices on the primary metric, features
    the model barely uses, slices too small to judge, a poor calibration."""
    found = []
    overall = card["holdout"]["metrics"][metric]["value"]
    scored = [s for s in card["slices"] if s.get("metrics", {}).get(metric) is not None]
    for entry in sorted(scored, key=lambda s: s["metrics"][metric])[:WEAKEST_SLICES]:
        if overall is not None and entry["metrics"][metric] < overall:
            found.append(f"weaker on {entry['feature']} = {entry['slice']} ({entry['rows']} rows):"
                         f" {metric} {entry['metrics'][metric]:.4f} against {overall:.4f} overall")
    top = max((abs(f["mean"]) for f in card["importance"]), default=0.0)
    barely = [f["feature"] for f in card["importance"] if f["mean"] <= BARELY_USED_SHARE * top]
    if barely:
        found.append(f"barely used (shuffling them changes {metric} by under "
                     f"{BARELY_USED_SHARE:.0%} of the top feature's change): "
                     + ", ".join(barely))
    small = [f"{s['feature']} = {s['slice']}" for s in card["slices"] if s.get("status")]
    if small:
        found.append(f"{len(small)} slices have fewer than {card['min_slice_rows']} holdout rows: "
                     "no metrics for them (" + ", ".join(small[:10])
                     + (", ..." if len(small) > 10 else "") + ")")
    gap = (card.get("calibration") or {}).get("max_gap")
    if gap is not None and gap > 0.1:
        rows = card["holdout"]["rows"] // CALIBRATION_BINS
        found.append(f"probabilities are off by up to {gap:.2f} in a reliability bin (~{rows} "
                     "rows each): read them as scores, not frequencies")
    return found


def training_data(config: Config, train: pd.DataFrame, quarantined_rows: int) -> dict[str, Any]:
    """Rows, time range and class balance of the training rows, and how many were quarantined."""
    data: dict[str, Any] = {"rows": len(train), "quarantined_rows": quarantined_rows}
    timestamp = config.columns.timestamp
    if timestamp and timestamp in train:
        times = pd.to_datetime(train[timestamp], errors="coerce")
        data["time_range"] = [str(times.min()), str(times.max())]
    if config.is_classification:
        counts = train[config.columns.target].value_counts()
        data["class_balance"] = {str(k): int(v) for k, v in counts.items()}
    return data


def build_card(config: Config, pipeline: Pipeline, reference: pd.DataFrame, *,
               metadata: Mapping[str, Any], train: pd.DataFrame, quarantined_rows: int,
               leaderboard: pd.DataFrame) -> dict[str, Any]:
    """The card of the model `metadata` describes, its numbers computed from `reference`."""
    settings = config.model_card
    seed = config.training.random_seed
    inputs = CardInputs(config, pipeline, reference)
    card: dict[str, Any] = {
        "model": {key: metadata.get(key) for key in (
            "model_name", "model_version", "candidate", "params", "task", "target", "classes",
            "trained_at", "mlflow_run_id")},
        "about": settings.model_dump(include={"purpose", "owner", "intended_use",
                                              "out_of_scope"}),
        "training_data": training_data(config, train, quarantined_rows)
        | {"sha256": metadata.get("training_data_sha256"),
           "extra_labelled_data": metadata.get("extra_labelled_data")},
        "features": metadata.get("schema", []),
        "leaderboard": leaderboard.to_dict(orient="records"),
        "metric": config.training.metric,
        "holdout": {"rows": len(reference), "bootstrap_resamples": settings.bootstrap_resamples,
                    "metrics": bootstrap_metrics(inputs, settings.bootstrap_resamples, seed)},
        "min_slice_rows": settings.min_slice_rows,
        "slices": slice_metrics(inputs, settings.min_slice_rows),
        "calibration": calibration(inputs),
        "residuals": residuals(inputs),
        "importance": importance(inputs, settings.importance_rows, seed),
        "libraries": metadata.get("libraries", {}),
        "git_commit": metadata.get("git_commit"),
    }
    card["limitations"] = limitations(card, config.training.metric)
    finite: dict[str, Any] = _finite(card)
    return finite


def summary(card: Mapping[str, Any]) -> str:
    """A few lines for the registered version's description in MLflow."""
    model, metric = card["model"], card["metric"]
    score = card["holdout"]["metrics"][metric]
    def number(value: float | None) -> str:
        return "undefined" if value is None else f"{value:.4f}"
    lines = [f"{model['candidate']} for {card['about']['purpose']} (owner: "
             f"{card['about']['owner']}).",
             f"Holdout {metric}: {number(score['value'])} (95% CI {number(score['ci95_low'])} "
             f"to {number(score['ci95_high'])}, {card['holdout']['rows']} rows)."]
    lines += [f"Limitation: {text}" for text in card["limitations"]]
    return "\n".join(lines + ["Full card: the run's model_card/ artifacts, GET /model/card."])


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))
        return text.replace("|", "\\|").replace("\n", " ")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]


def markdown(card: Mapping[str, Any], figures: Sequence[str]) -> str:
    """The card for people: the same content as the JSON, figures linked by file name."""
    model, about, data = card["model"], card["about"], card["training_data"]
    names = list(card["holdout"]["metrics"])
    out = [f"# Model card: {model['model_name']} version {model['model_version']}", ""]
    out += [f"- **{key.replace('_', ' ').capitalize()}**: {value}" for key, value in about.items()]
    out += [f"- **Model**: {model['candidate']} {model['params']}, task {model['task']}, "
            f"trained {model['trained_at']}", "", "## Training data", ""]
    out += [f"- **{key.replace('_', ' ').capitalize()}**: {value}" for key, value in data.items()]
    out += ["", "## Features", ""] + _table(
        [(f["name"], f["kind"], ", ".join(f"{k}={v}" for k, v in f.items()
                                          if k not in ("name", "kind") and v not in (None, [])))
         for f in card["features"]], ("feature", "kind", "rules"))
    out += ["## Leaderboard (cross-validation)", ""] + _table(
        [list(row.values()) for row in card["leaderboard"]], list(card["leaderboard"][0])
        if card["leaderboard"] else [])
    out += [f"## Holdout ({card['holdout']['rows']} rows, bootstrap 95% intervals)", ""] + _table(
        [(name, m["value"], m["ci95_low"], m["ci95_high"])
         for name, m in card["holdout"]["metrics"].items()], ("metric", "value", "low", "high"))
    out += [f"## Slices (under {card['min_slice_rows']} rows: {TOO_SMALL})", ""] + _table(
        [(s["feature"], s["slice"], s["rows"],
          *[s["metrics"][n] if "metrics" in s else TOO_SMALL for n in names])
         for s in card["slices"]], ("feature", "slice", "rows", *names))
    if card["calibration"]:
        out += ["## Calibration", "", f"Brier score {card['calibration']['brier_score']:.4f} "
                f"({card['calibration']['of']}).", ""]
    if card["residuals"]:
        out += ["## Residuals (actual - predicted)", ""] + _table(
            [list(card["residuals"].values())], list(card["residuals"]))
    out += ["## Permutation importance", ""] + _table(
        [(f["feature"], f["mean"], f["std"]) for f in card["importance"]],
        ("feature", f"drop in {card['metric']}", "std"))
    out += [f"![{name}]({name})" for name in figures] + ["", "## Known limitations", ""]
    out += [f"- {text}" for text in card["limitations"]] or ["- none found"]
    out += ["", "## Provenance", "", f"- **Git commit**: {card['git_commit']}"]
    out += [f"- **{name}**: {version}" for name, version in card["libraries"].items()]
    return "\n".join(out) + "\n"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def card_figures(card: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name, for the sections the card has: the reliability curve of a
    classifier, the permutation importance. Figures, not pyplot: nothing left open in a global
    registry."""
    figures = {}
    curve = card.get("calibration")
    if curve:
        figure = Figure(figsize=(5, 4))
        axis = figure.subplots()
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
        axis.plot(curve["mean_predicted"], curve["observed_frequency"], marker="o",
                  label=f"model (Brier {curve['brier_score']:.3f})")
        axis.set_xlabel(f"mean predicted {curve['of']}")
        axis.set_ylabel("observed frequency")
        axis.set_title("Reliability curve (holdout)")
        axis.legend()
        figures[CALIBRATION_FIGURE] = _png(figure)
    rows = list(reversed(card.get("importance", [])))
    if rows:
        figure = Figure(figsize=(6, 0.35 * len(rows) + 1.5))
        axis = figure.subplots()
        axis.barh([r["feature"] for r in rows], [r["mean"] for r in rows],
                  xerr=[r["std"] for r in rows])
        axis.set_xlabel(f"drop in {card['metric']} when shuffled")
        axis.set_title("Permutation importance (holdout)")
        figures[IMPORTANCE_FIGURE] = _png(figure)
    return figures


def card_files(card: Mapping[str, Any]) -> dict[str, bytes]:
    """The card's files by name: JSON, Markdown and its PNG figures."""
    figures = card_figures(card)
    return {CARD_JSON: json.dumps(card, indent=2, default=str, allow_nan=False).encode(),
            CARD_MARKDOWN: markdown(card, list(figures)).encode(), **figures}
