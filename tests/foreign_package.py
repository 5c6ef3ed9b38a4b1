"""A miniature project whose models were trained under another package name, as a project
renamed after its first modelling run holds them: the package copied under `package` (every
`ml_project` in its code replaced), the modelling use case run with that copy, in a process of
its own. Its local champion and its registered version (MLflow store at <root>/mlflow.db) refer
to `package.engineer...`, which this package cannot import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ml_project.config import PROJECT_ROOT
from tests.conftest import write_project

OLD_PACKAGE = "churn_before_rename"
MODELLING = PROJECT_ROOT / "use_cases" / "modelling_historic_data_local.py"


def renamed_copy(code: Path, package: str) -> Path:
    """This package's modules and the modelling use case under `code`, as `package`; returns the
    copied use case."""
    def rename(text: str) -> str:
        return re.sub(r"\bml_project\b", package, text)

    for source in (PROJECT_ROOT / "ml_project").rglob("*.py"):
        target = code / package / source.relative_to(PROJECT_ROOT / "ml_project")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rename(source.read_text()))
    use_case = code / f"{package}_modelling.py"
    use_case.write_text(rename(MODELLING.read_text()))
    return use_case


def train_under_package(root: Path, package: str = OLD_PACKAGE) -> Path:
    """Lay out a miniature project in `root` and run its modelling use case with the package
    named `package`; then the config names this package's steps, as after a rename. Returns the
    config file."""
    steps = ["charges_per_tenure_month", "support_calls_per_year", "tenure_band"]
    config_file = write_project(root, {"engineering": {
        "steps": [f"{package}.engineer.{step}" for step in steps]}})
    code = root.parent / f"{root.name}_code"
    use_case = renamed_copy(code, package)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, str(use_case), "--config", str(config_file), "--root", str(root)],
        cwd=code, env=environment | {"PYTHONPATH": str(code)}, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(code)  # gone, as the old package is after a rename
    config_file.write_text(re.sub(rf"\b{package}\b", "ml_project", config_file.read_text()))
    return config_file
