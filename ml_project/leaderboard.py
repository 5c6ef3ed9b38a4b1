"""The leaderboard: every candidate and setting of a modelling run's search, best first, as a
table (CSV and Markdown, for people and for diffs) and a chart (PNG)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from ml_project.config import Config
from ml_project.train import CandidateResult

logger = logging.getLogger(__name__)


def build_leaderboard(results: list[CandidateResult], config: Config) -> pd.DataFrame:
    """Every candidate and setting: mean and std of each metric and fit time, best first."""
    rows = []
    for result in results:
        cv = result.search.cv_results_
        for i, params in enumerate(cv["params"]):
            row: dict[str, Any] = {
                "candidate": result.name,
                "params": ", ".join(
                    f"{k.removeprefix('model__')}={v}" for k, v in sorted(params.items())
                ) or "(defaults)",
            }
            for metric in config.metrics:
                row[f"mean_{metric}"] = float(cv[f"mean_test_{metric}"][i])
                row[f"std_{metric}"] = float(cv[f"std_test_{metric}"][i])
            row["mean_fit_seconds"] = float(cv["mean_fit_time"][i])
            rows.append(row)
    board = pd.DataFrame(rows).sort_values(
        f"mean_{config.training.metric}", ascending=False, ignore_index=True
    )
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def write_leaderboard(leaderboard: pd.DataFrame, config: Config) -> dict[str, Path]:
    """The leaderboard as CSV, Markdown and a PNG chart in output/leaderboard/."""
    directory = config.output_dir / "leaderboard"
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": directory / "leaderboard.csv",
        "md": directory / "leaderboard.md",
        "png": directory / "leaderboard.png",
    }
    leaderboard.to_csv(paths["csv"], index=False)
    paths["md"].write_text(_markdown_table(leaderboard))
    _plot_leaderboard(leaderboard, config.training.metric, paths["png"])
    logger.info("Leaderboard written to %s", directory)
    return paths


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plot_leaderboard(leaderboard: pd.DataFrame, metric: str, path: Path) -> None:
    from matplotlib.figure import Figure  # here: training without a leaderboard needs no plots

    board = leaderboard.iloc[::-1]
    labels = [f"{c} ({p})" for c, p in zip(board["candidate"], board["params"])]
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(leaderboard["candidate"]))}
    figure = Figure(figsize=(9, 0.4 * len(board) + 1.5))
    axis = figure.subplots()
    axis.barh(
        labels,
        board[f"mean_{metric}"],
        xerr=board[f"std_{metric}"],
        color=[colours[c] for c in board["candidate"]],
    )
    low = (board[f"mean_{metric}"] - 2 * board[f"std_{metric}"]).min()
    high = (board[f"mean_{metric}"] + 2 * board[f"std_{metric}"]).max()
    margin = 0.05 * (high - low) or 0.01  # one setting with zero spread still gets a visible axis
    axis.set_xlim(low - margin, high + margin)
    axis.set_xlabel(f"CV {metric} (mean +/- std)")
    axis.set_title("Leaderboard: every candidate and setting")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
