"""executables/rename_project.sh on a clone of the project: the renamed copy's own tests pass.

The clone is of the committed HEAD, with `.venv` pointing at this interpreter's environment
as in a real project, so the installed-module check sees the installed packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

# A clone of the project, renamed, runs tests of its own.
pytestmark = pytest.mark.slow

# A few fast test files of the copy: config, schemas and the drafter import most of the package.
COPY_TESTS = ["tests/test_config.py", "tests/test_draft_config.py", "tests/test_engineer.py"]


def _git(copy: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=copy, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(target)], check=True,
                   capture_output=True)
    (target / ".venv").symlink_to(Path(sys.prefix))
    return target


def _rename(copy: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "executables/rename_project.sh", name], cwd=copy,
                          capture_output=True, text=True, timeout=120)


def test_rename_changes_every_reference_and_the_copy_passes_its_tests(copy: Path) -> None:
    result = _rename(copy, "acme_churn")

    assert result.returncode == 0, result.stderr
    assert (copy / "acme_churn" / "config.py").is_file() and not (copy / "ml_project").exists()
    leftovers = subprocess.run(["git", "grep", "-n", "-e", r"\bml_project\b", "-e", "ml-project",
                                "-e", "ML_PROJECT_[A-Z*]", "-P"], cwd=copy, capture_output=True,
                               text=True).stdout
    assert leftovers == ""
    pyproject = (copy / "pyproject.toml").read_text()
    assert 'name = "acme_churn"' in pyproject and '"acme_churn*"' in pyproject
    assert "acme-churn = {path" in (copy / "Pipfile").read_text()
    assert all("from acme_churn." in path.read_text()
               for path in (copy / "use_cases").glob("[!_]*.py"))

    environment = {**os.environ, "PYTHONPATH": str(copy)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            *COPY_TESTS], cwd=copy, env=environment, capture_output=True,
                           text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout.splitlines()[-1]


@pytest.mark.parametrize(("name", "why"), [
    ("AcmeChurn", "not a lowercase Python identifier"),
    ("acme-churn", "not a lowercase Python identifier"),
    ("2churn", "not a lowercase Python identifier"),
    ("lambda", "keyword"),
    ("json", "standard library"),
    ("pandas", "installed module"),
    ("ml_project", "already called"),
    ("use_cases", "already exists"),
])
def test_rename_refuses_a_bad_name_and_changes_nothing(copy: Path, name: str, why: str) -> None:
    result = _rename(copy, name)

    assert result.returncode == 2
    assert why in result.stderr
    assert _git(copy, "status", "--porcelain") == ""


def test_rename_refuses_a_dirty_tree(copy: Path) -> None:
    (copy / "README.md").write_text("edited\n")

    result = _rename(copy, "acme_churn")

    assert result.returncode == 1 and "uncommitted changes" in result.stderr
    assert (copy / "ml_project").is_dir() and not (copy / "acme_churn").exists()
