"""The launcher and the start command: real processes, real ports, stopped by the test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ml_project.client import PredictionClient
from ml_project.config import PROJECT_ROOT
from tests.serving import INSTANCE, free_port, write_serving_config

HEAVY_MODULES = ("mlflow", "evidently", "pandera", "matplotlib")


def test_serving_path_imports_no_mlflow_evidently_pandera_or_plotting(
    trained_project: Path, tmp_path: Path
) -> None:
    """In a fresh interpreter: import the serving modules, load the model, answer a request."""
    config_file = write_serving_config(trained_project, tmp_path)
    code = f"""
import json, sys
from ml_project import api, endpoints, flask_api, serve
from ml_project.config import load_config
from ml_project.predict import PredictionService
config = load_config("prediction", "production", "local", config_file={str(config_file)!r},
                     root={str(tmp_path)!r})
service = PredictionService.from_config(config)
app = api.create_app(service)
flask_api.create_flask_app(service)
reply = app.state.endpoints.predict(json.dumps({INSTANCE!r}).encode(), None)
assert reply.status == 200, reply
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY_MODULES!r})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_launcher_without_a_model_says_to_run_the_modelling_use_case(
    trained_project: Path, tmp_path: Path
) -> None:
    config_file = write_serving_config(
        trained_project, tmp_path, {"paths": {"model_artifacts": str(tmp_path / "no_models")}}
    )

    result = subprocess.run(
        [sys.executable, "-m", "ml_project.serve", "--port", str(free_port()),
         "--config", str(config_file), "--root", str(tmp_path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )

    assert result.returncode == 2
    assert "run the modelling use case first" in result.stderr
    assert "Traceback" not in result.stderr


def _pipenv_available() -> bool:
    return bool(shutil.which("pipenv")) or (PROJECT_ROOT / ".tools" / "bin" / "pipenv").is_file()


@pytest.mark.skipif(not _pipenv_available(), reason="pipenv is not installed")
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_start_command_serves_in_the_foreground_until_interrupted(
    trained_project: Path, tmp_path: Path, framework: str
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    port = free_port()
    output = (tmp_path / "server.out").open("w")
    process = subprocess.Popen(
        ["bash", "executables/start_prediction_service.sh", framework, str(port),
         "--config", str(config_file), "--root", str(tmp_path)],
        cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        client = PredictionClient(f"http://127.0.0.1:{port}", max_retries=0)
        ready = client.wait_until_ready(90, give_up=lambda: process.poll() is not None)
        answer = client.predict(INSTANCE)
        client.close()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        code = process.wait(timeout=30)
        output.close()
    server_output = (tmp_path / "server.out").read_text()

    assert ready.ok, server_output
    assert answer.ok and answer.body["model_version"] == ready.body["model_version"]
    assert code == 0, server_output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
