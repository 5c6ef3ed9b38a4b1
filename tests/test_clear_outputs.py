"""executables/clear_outputs.sh: what runs leave behind goes; config, data and code stay."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ml_project.config import PROJECT_ROOT


def _project(root: Path) -> Path:
    (root / "executables").mkdir()
    shutil.copy(PROJECT_ROOT / "executables/clear_outputs.sh", root / "executables")
    for folder in ("output/logs", "mlruns/1", "data/model_artifacts/champion"):
        (root / folder).mkdir(parents=True)
    for path in ("output/.gitkeep", "output/prediction_log.db", "output/logs/run.log",
                 "mlflow.db", "data/historic_data.csv", "project_config.yaml"):
        (root / path).write_text("x")
    return root / "executables/clear_outputs.sh"


def _left(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_clear_outputs_removes_run_leftovers_only(tmp_path: Path) -> None:
    script = _project(tmp_path)

    subprocess.run(["bash", str(script), "--yes"], check=True, capture_output=True)

    assert _left(tmp_path) == {"executables/clear_outputs.sh", "output/.gitkeep",
                               "data/historic_data.csv", "project_config.yaml"}


def test_clear_outputs_asks_and_removes_nothing_when_told_no(tmp_path: Path) -> None:
    script = _project(tmp_path)
    before = _left(tmp_path)

    result = subprocess.run(["bash", str(script)], input="n\n", text=True, capture_output=True)

    assert result.returncode == 1 and "Nothing removed" in result.stdout
    assert _left(tmp_path) == before
