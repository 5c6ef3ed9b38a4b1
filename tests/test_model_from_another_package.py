"""A model pickled under another package name (the package renamed after the first modelling
run): every path that loads it stops with the one message of `export.unpickled`, naming the old
package and the commands to run, in real processes, never a traceback of the missing module;
modelling replaces such a champion, which could not serve either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deployment.cloud_setup import SetupError, champion_files
from ml_project.config import PROJECT_ROOT
from ml_project.export import PACKAGE, ArtifactError, load_pipeline, read_metadata
from ml_project.registry import load_registered_pipeline
from tests.conftest import prediction_config
from tests.deployment_helpers import stop_group
from tests.foreign_package import OLD_PACKAGE, train_under_package
from tests.serving import assert_serves, free_port

pytestmark = pytest.mark.slow
START_FAILED = "Cannot start the prediction service: "


@pytest.fixture(scope="module")
def renamed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature project trained under OLD_PACKAGE, its config now naming this package's
    steps, as after a rename. Read-only: copy it to change it."""
    root = tmp_path_factory.mktemp("renamed") / "project"
    root.mkdir()
    train_under_package(root)
    return root


def _message(root: Path) -> str:
    with pytest.raises(ArtifactError) as refusal:
        load_pipeline(root / "data" / "model_artifacts" / "champion")
    return str(refusal.value)


def _run(command: list[str], cwd: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **environment})


def test_the_message_names_the_old_package_and_the_commands(renamed_project: Path) -> None:
    message = _message(renamed_project)

    assert f"saved under the package name '{OLD_PACKAGE}'" in message
    assert f"this project's package is '{PACKAGE}' now" in message
    assert f"bash executables/rename_project.sh {OLD_PACKAGE}" in message
    assert "pipenv run python use_cases/modelling_historic_data_local.py" in message
    assert read_metadata(renamed_project / "data" / "model_artifacts" / "champion")[
        "package"] == OLD_PACKAGE


@pytest.mark.parametrize("command", [
    ["use_cases/predicting_historic_data_local.py"],
    ["use_cases/predicting_production_data_local.py"],
    ["use_cases/predicting_historic_data_spark.py"],
    ["use_cases/monitoring_production_data_local.py"],
    ["use_cases/predicting_production_data_local_fastapi.py"],
], ids=["batch", "stream", "spark", "monitoring", "stream-through-the-api"])
def test_every_use_case_that_loads_the_model_stops_with_the_message(
    renamed_project: Path, command: list[str]
) -> None:
    message = _message(renamed_project)
    arguments = ["--config", str(renamed_project / "project_config.yaml"),
                 "--root", str(renamed_project)]

    result = _run([sys.executable, *command, *arguments], PROJECT_ROOT)

    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_start_prediction_service_fails_to_start_with_the_message(
    renamed_project: Path, framework: str
) -> None:
    message = _message(renamed_project)

    result = _run(["bash", "executables/start_prediction_service.sh", framework,
                   str(free_port()), "--config", str(renamed_project / "project_config.yaml"),
                   "--root", str(renamed_project)], PROJECT_ROOT)

    assert result.returncode == 2
    assert f"{START_FAILED}{message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_registry_copy_stops_with_the_same_message(renamed_project: Path) -> None:
    config = prediction_config(renamed_project)

    with pytest.raises(ArtifactError) as refusal:
        load_registered_pipeline(config)

    message = str(refusal.value)
    assert message.startswith("cannot load models:/")
    assert message.partition(": ")[2] == _message(renamed_project).partition(": ")[2]


def _as_bundle(renamed_project: Path, tmp_path: Path, *entry_files: str) -> Path:
    """The project as a bundle is laid out (its config and champion at the root), with a
    provider's entry files beside them."""
    bundle = tmp_path / "bundle"
    shutil.copytree(renamed_project, bundle, ignore=shutil.ignore_patterns("mlruns", "mlflow.db*"))
    for name in entry_files:
        shutil.copy2(PROJECT_ROOT / "deployment" / name, bundle / Path(name).name)
    return bundle


def test_cloud_setup_refuses_to_bundle_it(renamed_project: Path) -> None:
    config = prediction_config(renamed_project)

    with pytest.raises(SetupError) as refusal:
        champion_files(config)

    assert str(refusal.value) == _message(renamed_project)


def test_the_lambda_entry_fails_its_init_with_the_message(
    renamed_project: Path, tmp_path: Path
) -> None:
    bundle = _as_bundle(renamed_project, tmp_path, "aws_lambda/lambda_function.py")
    message = _message(bundle)

    result = _run([sys.executable, "-c", "import lambda_function"], bundle,
                  AWS_LAMBDA_FUNCTION_NAME="churn")  # inside Lambda: loaded at init

    assert result.returncode == 1
    assert result.stderr.count(f"{START_FAILED}{message}") == 1
    assert result.stderr.rstrip().endswith(f"ArtifactError: {message}")  # Lambda's errorMessage
    assert "ModuleNotFoundError" not in result.stderr


def test_the_sagemaker_entry_fails_to_start_with_the_message(
    renamed_project: Path, tmp_path: Path
) -> None:
    bundle = _as_bundle(renamed_project, tmp_path, "aws_sagemaker/serve")
    message = _message(bundle)

    result = _run([sys.executable, "serve", "--workers", "1"], bundle,
                  SAGEMAKER_BIND_TO_PORT=str(free_port()))

    assert result.returncode == 2
    assert f"{START_FAILED}{message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cloud_function_answers_500_and_logs_the_message(
    renamed_project: Path, tmp_path: Path
) -> None:
    bundle = _as_bundle(renamed_project, tmp_path, "google_cloud_function/main.py")
    message = _message(bundle)
    port = free_port()
    output = tmp_path / "function.out"
    with output.open("w") as output_file:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "functions-framework"), "--target",
             "prediction_service", "--source", "main.py", "--host", "127.0.0.1", "--port",
             str(port)], cwd=bundle, stdout=output_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    answer = requests.get(f"http://127.0.0.1:{port}/ready", timeout=30)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline and process.poll() is None, \
                        output.read_text()
                    time.sleep(0.2)
            assert_serves(process, port, output)
        finally:
            stop_group(process)

    assert answer.status_code == 500
    assert f"{START_FAILED}{message}" in output.read_text()


def test_modelling_replaces_a_champion_it_cannot_load(renamed_project: Path,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(renamed_project, root)
    message = _message(root).partition(": ")[2]  # after the artifact's name

    result = _run([sys.executable, "use_cases/modelling_historic_data_local.py", "--config",
                   str(root / "project_config.yaml"), "--root", str(root)], PROJECT_ROOT)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "The champion, version 1, cannot be loaded here, so the new model replaces it" \
        in result.stderr
    assert message in result.stderr
    config = prediction_config(root)
    pipeline, metadata = load_pipeline(config.model_artifacts_dir / "champion")
    assert (metadata["package"], metadata["model_version"], metadata["alias"]) == (
        PACKAGE, "2", "champion")
    _, registered, _ = load_registered_pipeline(config)
    assert registered["model_version"] == "2"
