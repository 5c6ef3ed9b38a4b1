"""executables/copier_tasks.py on copies of this repository as copier leaves them: a fresh
render renamed, a later version rendered over a renamed project converged file by file, ignored
files untouched, names refused as the rename refuses them, the project name written as given."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_project.config import PROJECT_ROOT

SCRIPT = str(PROJECT_ROOT / "executables" / "copier_tasks.py")


def task(root: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *arguments], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The committed tree as copier renders it: no .git (copier copies files, not history)."""
    root = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(root)], check=True)
    shutil.rmtree(root / ".git")
    return root


def mentions(root: Path, name: str) -> list[str]:
    """Python files naming `name` as an import."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.py")
                  if f"from {name}." in path.read_text() or f"import {name}\n" in path.read_text())


def test_a_fresh_render_is_renamed_and_its_ignored_files_are_left_alone(rendered: Path) -> None:
    (rendered / "output" / "note.txt").write_text("from ml_project.config import Config\n")
    modules = sorted(p.relative_to(rendered / "ml_project") for p in
                     (rendered / "ml_project").rglob("*.py"))

    result = task(rendered, "package", "acme_churn")

    assert result.returncode == 0, result.stderr
    assert "renamed the package ml_project -> acme_churn" in result.stdout
    assert not (rendered / "ml_project").exists()
    assert sorted(p.relative_to(rendered / "acme_churn") for p in
                  (rendered / "acme_churn").rglob("*.py")) == modules
    assert mentions(rendered, "ml_project") == [] and mentions(rendered, "acme_churn")
    assert 'name = "acme_churn"' in (rendered / "pyproject.toml").read_text()
    assert (rendered / "output" / "note.txt").read_text().startswith("from ml_project")  # ignored
    assert task(rendered, "package", "acme_churn").stdout.startswith("the package is acme_churn")


def test_a_later_version_rendered_over_a_renamed_project_converges_on_the_users_name(
    rendered: Path
) -> None:
    """What copier update leaves before it merges: the user's renamed package, with a module of
    their own, and the new version rendered over it as `ml_project` (with a new module)."""
    assert task(rendered, "package", "acme_churn").returncode == 0
    renamed = (rendered / "acme_churn" / "config.py").read_text()
    (rendered / "acme_churn" / "mine.py").write_text("from acme_churn.config import Config\n")
    (rendered / "acme_churn" / "config.py").write_text(renamed + "# the user's line\n")
    subprocess.run(["git", "init", "-q"], cwd=rendered, check=True)
    subprocess.run(["git", "add", "-A"], cwd=rendered, check=True)
    for name in ("ml_project", "pyproject.toml", "README.md"):  # the new version, rendered
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, rendered / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, rendered / name)
    (rendered / "ml_project" / "new_stage.py").write_text("from ml_project.config import Config\n")

    result = task(rendered, "package", "acme_churn")

    assert result.returncode == 0, result.stderr
    assert not (rendered / "ml_project").exists()
    assert (rendered / "acme_churn" / "new_stage.py").read_text() == (
        "from acme_churn.config import Config\n")
    assert (rendered / "acme_churn" / "mine.py").is_file()  # the user's own module stays
    # the rendered module replaces the user's (copier then merges the user's changes back in)
    assert (rendered / "acme_churn" / "config.py").read_text() == renamed
    assert 'name = "acme_churn"' in (rendered / "pyproject.toml").read_text()


@pytest.mark.parametrize(("name", "message"), [
    ("pandas", "'pandas' is a module of pandas"),
    ("Acme", "is not a lowercase Python identifier"),
    ("json", "'json' is a standard library module"),
])
def test_a_name_the_rename_refuses_is_refused_and_nothing_changes(
    rendered: Path, name: str, message: str
) -> None:
    before = {path: path.read_bytes() for path in rendered.rglob("*") if path.is_file()}

    result = task(rendered, "package", name)

    assert result.returncode == 2 and message in result.stderr
    assert {path: path.read_bytes() for path in rendered.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("name", ["Loans at ACME", 'a "quoted": #name', "ünïcode ✓"])
def test_the_project_name_is_written_as_given_and_the_rest_of_the_config_kept(
    rendered: Path, name: str
) -> None:
    config = rendered / "project_config.yaml"
    before = config.read_text().splitlines()

    assert task(rendered, "project-name", name, "--package", "acme_churn").returncode == 0

    after = config.read_text().splitlines()
    written = yaml.safe_load(config.read_text())
    assert written["project_name"] == name
    assert written["tracking"]["experiment_name"] == "acme_churn"
    assert written["tracking"]["registered_model_name"] == "acme_churn_model"
    named = ("project_name:", "  experiment_name:", "  registered_model_name:")
    assert [line for line in after if not line.startswith(named)] == [
        line for line in before if not line.startswith(named)]


def test_the_rename_script_carries_the_copier_answers_to_the_new_name(tmp_path: Path) -> None:
    """Renamed after `copier copy`: the answers name the new package, so updates keep it."""
    root = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(root)], check=True)
    (root / ".copier-answers.yml").write_text("_commit: v1.0.0\npackage_name: ml_project\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@e", "commit", "-qm", "a"],
                   cwd=root, check=True)

    renamed = subprocess.run([sys.executable, "-S", "-I", "executables/rename_project.py",
                              "acme_churn"], cwd=root, capture_output=True, text=True, check=False)

    assert renamed.returncode == 0, renamed.stderr
    assert yaml.safe_load((root / ".copier-answers.yml").read_text())["package_name"] == (
        "acme_churn")
