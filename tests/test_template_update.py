"""This repository as a copier template (copier.yml), offline: `copier copy` makes a project (the
package named, the config drafted from the user's own data file, a first model trained), and
`copier update` takes a project made from the previous release, renamed, and adapted as a user
adapts it (another table, its config, a feature module of its own, a trained champion) to this
version: no conflicts, the user's files kept, the template's changes in, and its own use cases
and contract tests green. The template is a clone of this repository's HEAD with a tag for every
release CHANGELOG.md lists (a clone without tags gets them from the commits it names).

(copier.yml leaves this file out of the projects it makes: it tests the template.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_project.config import PROJECT_ROOT
from ml_project.config_migrations import migrated
from tests.tables import loans

RELEASE = re.compile(r"^## (\d+\.\d+\.\d+) \([^)]*\)(?:[^\n]*?commit ([0-9a-f]{7,40}))?", re.M)
IDENTITY = {"GIT_AUTHOR_NAME": "User", "GIT_AUTHOR_EMAIL": "user@example.com",
            "GIT_COMMITTER_NAME": "User", "GIT_COMMITTER_EMAIL": "user@example.com"}
PACKAGE = "acme_loans"
FEATURES = f'''"""The loans' own feature: a module the user adds to the package."""

import numpy as np

from {PACKAGE}.engineer import Columns, feature_step


@feature_step(inputs=("amount", "income"), outputs={{"amount_to_income": "numerical"}})
def amount_to_income(columns: Columns) -> dict[str, np.ndarray]:
    """The loan as a share of the yearly income."""
    income = np.maximum(columns["income"].astype(float), 1.0)
    return {{"amount_to_income": columns["amount"].astype(float) / income}}
'''
# What the user made or changed: left out of the comparison with a fresh copy of the template.
USERS = ("project_config.yaml", "data/", f"{PACKAGE}/loan_features.py")


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **IDENTITY, "PYTHONPATH": str(cwd)}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)


def git(cwd: Path, *arguments: str) -> str:
    result = run(["git", *arguments], cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def copier(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "copier", *arguments], cwd)


def releases() -> list[tuple[str, str | None]]:
    """(version, commit or None) of every release CHANGELOG.md lists, newest first."""
    return [(found[1], found[2]) for found in
            RELEASE.finditer((PROJECT_ROOT / "CHANGELOG.md").read_text())]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The template repository, and the tag of the release before HEAD."""
    path = tmp_path_factory.mktemp("template") / "ml_project_template"
    git(PROJECT_ROOT, "clone", "-q", str(PROJECT_ROOT), str(path))
    listed = releases()
    assert len(listed) >= 2, "CHANGELOG.md lists fewer than two releases"
    head = git(path, "rev-parse", "HEAD").strip()
    tags = set(git(path, "tag").split())
    (newest, _), *older = listed
    if f"v{newest}" not in tags:  # the newest release is being made: HEAD
        git(path, "tag", f"v{newest}", head)
    for version, commit in older:
        if f"v{version}" not in tags:
            assert commit, f"the clone has no tag v{version} and CHANGELOG.md names no commit"
            if run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], path).returncode != 0:
                _fetch_history(path)
            git(path, "tag", f"v{version}", commit)
    at_head = git(path, "rev-parse", f"v{newest}^{{commit}}").strip() == head
    previous = older[0][0] if at_head else newest
    return path, f"v{previous}"


def _fetch_history(clone: Path) -> None:
    """A shallow checkout has no older release to update from: its history is fetched from
    where the checkout came from, if that can be reached; else the test cannot run here."""
    origin = run(["git", "remote", "get-url", "origin"], PROJECT_ROOT).stdout.strip()
    if not origin or run(["git", "fetch", "-q", "--unshallow", origin], clone).returncode != 0:
        pytest.skip(f"{PROJECT_ROOT} is a shallow clone whose history cannot be fetched "
                    f"(origin {origin or 'none'}): the previous release is not here to update from")


def files(root: Path) -> dict[str, bytes]:
    """The project's files as git sees them (ignored ones left out), with their bytes."""
    git(root, "add", "-A")
    listed = git(root, "ls-files", "-z").split("\0")
    return {name: (root / name).read_bytes() for name in listed if name}


def format_of(project: Path) -> int:
    """The config format the project's code reads (1 before the key existed)."""
    module = project / PACKAGE / "config_migrations.py"
    found = re.search(r"^CONFIG_VERSION = (\d+)", module.read_text(), re.M) if module.is_file() \
        else None
    return int(found[1]) if found else 1


def adapt(project: Path) -> dict[str, Any]:
    """What a user does with a new project: their table, its config (in the format this version
    reads), a feature of their own, a trained champion, a commit. Returns the config."""
    table = loans()
    table.write(project)
    config = dict(table.config)
    config["tracking"] = {**config["tracking"], "tracking_uri": "sqlite:///mlflow.db"}
    config["engineering"] = {"steps": [f"{PACKAGE}.loan_features.amount_to_income"]}
    version = format_of(project)
    columns = dict(config["columns"])
    if version == 1:
        columns.pop("positive_class")
    else:
        config = {"config_version": version, **config}
    config["columns"] = columns
    (project / "project_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (project / PACKAGE / "loan_features.py").write_text(FEATURES)
    trained = run([sys.executable, "use_cases/modelling_historic_data_local.py"], project)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (project / "data" / "model_artifacts" / "champion").is_dir()
    git(project, "add", "-A")
    git(project, "commit", "-qm", "my loans project")
    return config


@pytest.mark.slow
def test_a_project_of_the_previous_release_adapted_by_its_user_updates_to_head(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    """The user names the package at the copy, then renames it (rename_project.sh, which
    carries the new name into copier's answers) before adapting the project."""
    source, previous = template
    project = tmp_path / "loans"
    made = copier(tmp_path, "copy", "--trust", "--defaults", "--vcs-ref", previous,
                  "--data", "project_name=loans", "--data", "package_name=loans_first",
                  str(source), str(project))
    assert made.returncode == 0, made.stderr[-3000:]
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "From ml_project_template")
    renamed = run([sys.executable, "-S", "-I", "executables/rename_project.py", PACKAGE], project)
    assert renamed.returncode == 0, renamed.stderr
    config = adapt(project)
    before = files(project)

    updated = copier(project, "update", "--trust", "--defaults", "--vcs-ref", "HEAD")

    assert updated.returncode == 0, updated.stderr[-3000:]
    after = files(project)
    conflicts = sorted(name for name, content in after.items()
                       if name.endswith(".rej") or b"<<<<<<< before updating" in content)
    assert conflicts == [] and git(project, "ls-files", "--unmerged") == ""
    assert not (project / "ml_project").exists()
    for name in [*before]:
        if name.startswith(USERS[1:]):  # the user's data and feature module: as they were
            assert after[name] == before[name], name
    # The config: the user's, only brought to the current format (by copier's migration).
    written = yaml.safe_load(after["project_config.yaml"])
    assert written == migrated(config)[0]
    # Everything else is what a fresh copy of HEAD would hold, under the user's package name.
    fresh = tmp_path / "fresh" / "loans"
    remade = copier(tmp_path, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD",
                    "--data", "project_name=loans", "--data", f"package_name={PACKAGE}",
                    str(source), str(fresh))
    assert remade.returncode == 0, remade.stderr[-3000:]
    git(fresh, "init", "-q")
    expected = {name: content for name, content in files(fresh).items()
                if not name.startswith(USERS)}
    kept = {name: content for name, content in after.items() if not name.startswith(USERS)}
    assert sorted(kept) == sorted(expected)
    assert [name for name in kept if kept[name] != expected[name]] == []
    # The updated project works: its champion (trained before the update) scores the data, and
    # its own contract tests pass on the user's table.
    scored = run([sys.executable, "use_cases/predicting_historic_data_local.py"], project)
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    contract = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                    "tests/test_contract.py"], project)
    assert contract.returncode == 0, contract.stdout[-3000:]


@pytest.mark.slow
def test_copier_copy_names_the_package_drafts_the_config_and_trains_a_first_model(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    """A user's CSV with a text target whose rarer class is the one that matters."""
    source, _ = template
    table = loans()
    data = tmp_path / "mine" / "loans.csv"
    data.parent.mkdir()
    table.historic.to_csv(data, index=False)
    project = tmp_path / "loans"
    started = time.monotonic()

    made = copier(tmp_path, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD",
                  "--data", "project_name=Loans at ACME", "--data", f"data_file={data}",
                  "--data", "target=outcome", "--data", "positive_class=defaulted",
                  str(source), str(project))

    assert made.returncode == 0, made.stderr[-3000:]
    assert not (project / "ml_project").exists() and (project / "loans_at_acme").is_dir()
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["package_name"] == "loans_at_acme" and answers["target"] == "outcome"
    config = yaml.safe_load((project / "project_config.yaml").read_text())
    assert config["project_name"] == "Loans at ACME"
    assert config["tracking"]["registered_model_name"] == "loans_at_acme_model"
    assert config["data"]["historic"] == str(data)
    assert config["columns"]["target"] == "outcome"
    assert config["columns"]["positive_class"] == "defaulted"
    trained = run([sys.executable, "use_cases/modelling_historic_data_local.py"], project)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (project / "data" / "model_artifacts" / "champion" / "metadata.json").is_file()
    assert time.monotonic() - started < 300  # copy to a first model within five minutes


@pytest.mark.slow
def test_copier_copy_refuses_a_package_name_that_would_shadow_a_module(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    source, _ = template
    made = copier(tmp_path, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD",
                  "--data", "package_name=pandas", str(source), str(tmp_path / "p"))

    assert made.returncode != 0
    assert "'pandas' is a module of pandas" in made.stderr
    assert not (tmp_path / "p").exists()  # copier removes what it made


@pytest.mark.slow
def test_copier_copy_asks_for_the_data_files_absolute_path(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    """The drafter runs in the new project's folder: a relative path would name another file."""
    source, _ = template
    made = copier(tmp_path, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD",
                  "--data", "data_file=mine/loans.csv", "--data", "target=outcome",
                  str(source), str(tmp_path / "p"))

    assert made.returncode != 0 and "The file's absolute path" in made.stderr
    assert not (tmp_path / "p").exists()
