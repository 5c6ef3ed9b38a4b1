"""Google App Engine: app.yaml's entrypoint, run as App Engine runs it (a shell, $PORT and the
file's env_variables set, the bundle as working directory), and App Engine's default entry
(`gunicorn -b :$PORT main:app`), each in a fresh virtualenv holding only the bundle's
requirements.txt, answer as the local API does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployment.cloud_setup import bundle_dir
from ml_project.config import OUTPUT_DIR_ENV, PREDICTION_LOG_ENV, PROJECT_ROOT
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
    result = run_cloud_setup(deployable_project, "google_app_engine")
    assert result.returncode == 0, result.stderr
    return bundle_dir(deployable_project, "google_app_engine")


@pytest.fixture(scope="module")
def app_yaml(bundle: Path) -> dict[str, Any]:
    content: dict[str, Any] = yaml.safe_load((bundle / "app.yaml").read_text())
    return content


def app_engine_environment(app_yaml: dict[str, Any], python: Path, port: int, tmp_path: Path
                           ) -> dict[str, str]:
    """What App Engine sets: PORT and app.yaml's env_variables, the /tmp paths moved under
    tmp_path (tests write nowhere else)."""
    variables = {name: str(value) for name, value in app_yaml["env_variables"].items()}
    assert variables[OUTPUT_DIR_ENV].startswith("/tmp/")
    assert variables[PREDICTION_LOG_ENV].startswith("sqlite:////tmp/")
    variables[OUTPUT_DIR_ENV] = str(tmp_path / "writable")
    variables[PREDICTION_LOG_ENV] = f"sqlite:///{tmp_path / 'writable' / 'prediction_log.db'}"
    return bundle_environment(python, PORT=str(port), **variables)


def test_app_yaml_names_the_locked_python_and_the_local_launcher(
    app_yaml: dict[str, Any], bundle: Path
) -> None:
    lock = json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())
    python_version = lock["_meta"]["requires"]["python_version"]

    assert app_yaml["runtime"] == "python" + python_version.replace(".", "")
    assert app_yaml["entrypoint"].startswith("python -m ml_project.serving.launcher fastapi ")
    assert "$PORT" in app_yaml["entrypoint"]
    ignored = (bundle / ".gcloudignore").read_text().splitlines()
    for shipped in ("ml_project/", "project_config.yaml", "requirements.txt", "data/", "main.py"):
        assert shipped not in ignored


def test_entrypoint_as_app_engine_runs_it_answers_as_the_local_api(
    bundle: Path, app_yaml: dict[str, Any], bundle_virtualenvs: BundleVirtualenvs,
    local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    python = bundle_virtualenvs.python_for(bundle / "requirements.txt")
    port = free_port()
    environment = app_engine_environment(app_yaml, python, port, tmp_path)
    entrypoint = app_yaml["entrypoint"].replace("0.0.0.0", "127.0.0.1")  # tests bind loopback

    with running(entrypoint, bundle, environment, port, tmp_path / "entrypoint.out") as url:
        assert answers(url) == local_api_answers
    assert list((tmp_path / "writable" / "logs").iterdir())  # logs went where app.yaml says
    assert not (bundle / "output").exists()  # nothing written into the read-only bundle


def test_default_entry_gunicorn_main_app_answers_as_the_local_api(
    bundle: Path, app_yaml: dict[str, Any], bundle_virtualenvs: BundleVirtualenvs,
    local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    python = bundle_virtualenvs.python_for(bundle / "requirements.txt")
    port = free_port()
    environment = app_engine_environment(app_yaml, python, port, tmp_path)

    with running(f"gunicorn -b 127.0.0.1:{port} main:app", bundle, environment, port,
                 tmp_path / "gunicorn.out") as url:
        assert answers(url) == local_api_answers
