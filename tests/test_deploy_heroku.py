"""Heroku: the bundle's Procfile, run by honcho (Heroku's process model, locally) in a fresh
virtualenv holding only the bundle's requirements.txt, answers as the local API does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deployment.cloud_setup import bundle_dir
from ml_project.config import PROJECT_ROOT
from tests.deployment_helpers import (
    BundleVirtualenvs,
    answers,
    bundle_environment,
    run_cloud_setup,
    running,
)
from tests.serving import free_port

# The provider's runtime in a virtualenv of the bundle's requirements: one worker builds them once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundle_virtualenvs")]


@pytest.fixture(scope="module")
def bundle(deployable_project: Path) -> Path:
    result = run_cloud_setup(deployable_project, "heroku")
    assert result.returncode == 0, result.stderr
    return bundle_dir(deployable_project, "heroku")


def test_procfile_starts_the_local_launcher_on_herokus_port(bundle: Path) -> None:
    processes = dict(line.split(":", 1) for line in (bundle / "Procfile").read_text().splitlines()
                     if line.strip() and not line.startswith("#"))

    assert list(processes) == ["web"]
    assert "python -m ml_project.serving.launcher fastapi" in processes["web"]
    assert "--host 0.0.0.0" in processes["web"] and "--port $PORT" in processes["web"]


def test_python_version_is_the_one_pipfile_lock_was_resolved_for(bundle: Path) -> None:
    lock = json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())

    assert (bundle / ".python-version").read_text().strip() == (
        lock["_meta"]["requires"]["python_version"])
    assert not (bundle / "runtime.txt").exists()  # deprecated by Heroku; one source only
    package_manager_files = {"requirements.txt", "Pipfile", "Pipfile.lock", "poetry.lock",
                             "uv.lock", "pyproject.toml"}
    assert {path.name for path in bundle.iterdir()} & package_manager_files == {"requirements.txt"}


def test_procfile_under_honcho_in_a_fresh_virtualenv_answers_as_the_local_api(
    bundle: Path, bundle_virtualenvs: BundleVirtualenvs,
    local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    python = bundle_virtualenvs.python_for(bundle / "requirements.txt")
    port = free_port()
    honcho = str(Path(sys.executable).with_name("honcho"))

    with running([honcho, "start", "--port", str(port), "web"], bundle,
                 bundle_environment(python), port, tmp_path / "honcho.out") as url:
        assert answers(url) == local_api_answers
