"""A bundle's app for the cloud entry points: loaded once per process, the model read from the
bundle, everything written where the process may write, and nothing imported that the app does
not run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ml_project.export import ArtifactError
from ml_project.serving.bundle import app_of, load_bundle
from ml_project.serving.endpoints import API_KEY_ENV
from ml_project.serving.fastapi_app import create_app
from ml_project.serving.flask_app import create_flask_app
from tests.serverless_cases import write_bundle
from tests.serving import INSTANCE


@pytest.fixture(scope="module")
def bundle(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(trained_project, tmp_path_factory.mktemp("bundle"))


def test_app_of_makes_each_app_of_a_bundle_once_per_process(bundle: Path) -> None:
    first = app_of(bundle, create_app)
    flask_app = app_of(bundle, create_flask_app)

    assert app_of(bundle / ".." / bundle.name, create_app) is first
    assert app_of(bundle, create_flask_app) is flask_app
    first.state.endpoints.log.close()
    flask_app.extensions["prediction_endpoints"].log.close()


def test_writes_go_to_the_work_dir_and_the_model_is_read_from_the_bundle(
    trained_project: Path, tmp_path: Path
) -> None:
    """A read-only bundle (Lambda's /var/task): the prediction log lands in the work dir."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_project / "data" / "model_artifacts",
                    bundle / "data" / "model_artifacts")
    shutil.copy(trained_project / "project_config.yaml", bundle)
    work_dir = tmp_path / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(API_KEY_ENV, raising=False)
        service, log = load_bundle(bundle, work_dir)
    app = create_app(service, log)
    try:
        assert app.state.endpoints.predict(json.dumps(INSTANCE).encode(), None).status == 200
        assert log.flush()
        assert log.count() == 1
    finally:
        log.close()
    assert (work_dir / "output" / "prediction_log.db").is_file()
    assert not (bundle / "output").exists()


def test_a_bundle_without_a_model_fails_to_load_naming_the_fix(
    trained_project: Path, tmp_path: Path
) -> None:
    shutil.copy(trained_project / "project_config.yaml", tmp_path)
    with pytest.raises(ArtifactError, match="run the modelling use case first"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(("entry", "absent"), [
    ("from ml_project.serving.fastapi_app import create_app as factory",
     ["flask", "werkzeug", "a2wsgi", "gunicorn"]),
    ("from ml_project.serving.flask_app import create_flask_app as factory",
     ["fastapi", "starlette", "uvicorn", "a2wsgi", "gunicorn"]),
], ids=["fastapi", "flask"])
def test_a_bundle_app_imports_no_training_package_nor_the_other_framework(
    bundle: Path, entry: str, absent: list[str]
) -> None:
    """In a fresh interpreter: make the app, answer a prediction and a SageMaker invocation.
    Cold starts pay for nothing the cloud entry point does not run."""
    code = f"""
import json, sys
from pathlib import Path
from ml_project.serving.bundle import app_of
from ml_project.serving.sagemaker import invocations
{entry}
app = app_of(Path({str(bundle)!r}), factory)
endpoints = app.state.endpoints if hasattr(app, "state") else app.extensions["prediction_endpoints"]
body = json.dumps({INSTANCE!r}).encode()
assert endpoints.predict(body, None).status == 200
assert invocations(endpoints, body, "application/json", None).status == 200
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=bundle, timeout=120, env={**os.environ, API_KEY_ENV: ""})

    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not imported & {"mlflow", "evidently", "pandera", "matplotlib", *absent}, imported
    assert "sklearn" in imported  # the check sees what was imported
