"""The quickstart leaves the README's `pipenv run ...` commands working without a system pipenv.

Runs the real bootstrap script in a copy of the project whose `.tools/bin/pipenv` is a real pipenv
(the one this machine's CI installed), so no package is downloaded; the shell that follows the
printed line is a fresh one, as the user's would be.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

BARE_PATH = "/usr/bin:/bin"  # what a machine without pipenv offers


def _real_pipenv() -> Path | None:
    found = shutil.which("pipenv") or PROJECT_ROOT / ".tools" / "bin" / "pipenv"
    return Path(found) if Path(found).is_file() else None


def _project_copy(root: Path, pipenv: Path | None) -> Path:
    (root / "executables").mkdir(parents=True)
    for name in ("bootstrap_pipenv.sh", "quickstart.sh"):
        shutil.copy(PROJECT_ROOT / "executables" / name, root / "executables" / name)
    shutil.copy(PROJECT_ROOT / "Pipfile", root / "Pipfile")
    (root / ".venv").symlink_to(Path(sys.prefix))  # stands for the venv `pipenv sync` builds
    if pipenv is not None:
        (root / ".tools" / "bin").mkdir(parents=True)
        (root / ".tools" / "bin" / "pipenv").symlink_to(pipenv)
    return root


def _bash(script: str, cwd: Path, path: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": path, "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture()
def pipenv() -> Path:
    real = _real_pipenv()
    if real is None:
        pytest.skip("no pipenv on this machine (cicd_pipeline.sh installs one first)")
    if shutil.which("pipenv", path=BARE_PATH):
        pytest.skip(f"a system pipenv is on {BARE_PATH}: cannot play a machine without one")
    return real


def test_quickstart_ends_with_the_path_line_that_makes_pipenv_run_work(
    tmp_path: Path, pipenv: Path
) -> None:
    project = _project_copy(tmp_path / "project", pipenv)

    hint = _bash("source executables/bootstrap_pipenv.sh && pipenv_path_hint", project, BARE_PATH)
    export_lines = [line.strip() for line in hint.stdout.splitlines()
                    if line.strip().startswith("export PATH=")]
    before = _bash("pipenv --version", project, BARE_PATH)
    # A new shell, as the user's: only the printed line, then the README's form of command.
    after = _bash(f"{export_lines[0]} && pipenv run python -c 'print(6 * 7)'", project, BARE_PATH)

    assert hint.returncode == 0, hint.stderr
    assert len(export_lines) == 1 and str(project / ".tools" / "bin") in export_lines[0]
    assert before.returncode != 0  # the problem the line solves
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip().splitlines()[-1] == "42"
    assert (PROJECT_ROOT / "executables" / "quickstart.sh").read_text().rstrip().endswith(
        "pipenv_path_hint")


def test_no_path_line_when_pipenv_is_already_on_the_path(tmp_path: Path, pipenv: Path) -> None:
    project = _project_copy(tmp_path / "project", None)
    system_bin = tmp_path / "system_bin"
    system_bin.mkdir()
    (system_bin / "pipenv").symlink_to(pipenv)

    hint = _bash("source executables/bootstrap_pipenv.sh && pipenv_path_hint && pipenv --version",
                 project, f"{system_bin}:{BARE_PATH}")

    assert hint.returncode == 0, hint.stderr
    assert "export PATH" not in hint.stdout
    assert not (project / ".tools").exists()
