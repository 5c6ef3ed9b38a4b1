"""The leaderboard of a search: every candidate and setting, best first, as CSV, Markdown and a
chart, from a real (small) training run."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from ml_project.config import Config, load_config
from ml_project.ingest import load_historic_data
from ml_project.leaderboard import build_leaderboard, write_leaderboard
from ml_project.train import CandidateResult, split_holdout, train_candidates
from ml_project.validate import validate_production_data
from tests.conftest import write_project


@dataclass(frozen=True)
class Run:
    config: Config
    results: list[CandidateResult]


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("leaderboard")
    write_project(root, n_historic=600)
    config = load_config("modelling", "historic", "local",
                         config_file=root / "project_config.yaml", root=root)
    raw = validate_production_data(load_historic_data(config), config, with_target=True).valid
    train, _ = split_holdout(raw, config)
    return Run(config, train_candidates(train, config))


def test_build_leaderboard_has_every_candidate_setting_with_mean_and_std(binary_run: Run) -> None:
    board = build_leaderboard(binary_run.results, binary_run.config)

    assert sorted(zip(board["candidate"], board["params"])) == [
        ("hist_gradient_boosting", "learning_rate=0.1"),
        ("logistic_regression", "C=0.1"),
        ("logistic_regression", "C=1.0"),
    ]
    for metric in binary_run.config.metrics:
        assert board[f"mean_{metric}"].notna().all() and (board[f"std_{metric}"] >= 0).all()
    primary = board[f"mean_{binary_run.config.training.metric}"]
    assert primary.is_monotonic_decreasing
    assert board["rank"].tolist() == [1, 2, 3]


def test_write_leaderboard_writes_csv_markdown_and_chart(binary_run: Run) -> None:
    board = build_leaderboard(binary_run.results, binary_run.config)

    paths = write_leaderboard(board, binary_run.config)

    assert set(paths) == {"csv", "md", "png"}
    directory = binary_run.config.output_dir / "leaderboard"
    assert all(path.parent == directory for path in paths.values())
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), board, check_dtype=False)
    lines = paths["md"].read_text().splitlines()
    assert lines[0].startswith("| rank | candidate | params |") and len(lines) == 2 + len(board)
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
