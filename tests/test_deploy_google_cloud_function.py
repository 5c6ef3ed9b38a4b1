"""The Cloud Function, proven without a Google account: function.zip, unpacked, runs under
functions-framework (the runtime Cloud Functions runs it with) in a virtualenv holding exactly
the bundle's requirements.txt, and answers as the local API does; main.tf parses and reads only
files the bundle has."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests

from deployment.cloud_setup import FUNCTION_ZIP, bundle_dir, main
from tests.deployment_helpers import (
    BundleVirtualenvs,
    answers,
    bundle_environment,
    run_cloud_setup,
    running,
)
from tests.provider_checks import (
    installed_names,
    lock_python,
    module_files,
    python_with_extras,
    requirement_names,
    resources,
    terraform,
    unquoted,
    variables,
)
from tests.serverless_cases import CASES, KEY, http_answer, limit_bundle, local_api
from tests.serving import free_port

# The provider's runtime in a virtualenv of the bundle's requirements: one worker builds them once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundle_virtualenvs")]

PROVIDER = "google_cloud_function"


@pytest.fixture(scope="module")
def bundle(deployable_project: Path) -> Path:
    result = run_cloud_setup(deployable_project, PROVIDER)
    assert result.returncode == 0, result.stderr
    assert "terraform" in result.stdout and "-var project=YOUR_PROJECT_ID" in result.stdout
    return bundle_dir(deployable_project, PROVIDER)


@pytest.fixture(scope="module")
def python(bundle: Path, bundle_virtualenvs: BundleVirtualenvs,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exactly the bundle's requirements.txt (functions-framework included)."""
    return python_with_extras(bundle_virtualenvs, bundle / "requirements.txt", PROVIDER,
                              tmp_path_factory.mktemp("function_venv"))


def test_the_zip_holds_what_the_function_runs_and_nothing_of_terraform(bundle: Path) -> None:
    with zipfile.ZipFile(bundle / FUNCTION_ZIP) as archive:
        names = set(archive.namelist())
    shipped = {path.relative_to(bundle).as_posix() for path in bundle.rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert {"main.py", "requirements.txt", "project_config.yaml", "ml_project/serving/bundle.py",
            "ml_project/serving/flask_app.py"} <= names
    assert any(name.endswith("/champion/metadata.json") for name in names)
    assert names == shipped - {FUNCTION_ZIP, "main.tf", ".gcloudignore"}


def test_the_zip_is_the_same_bytes_for_the_same_bundle(deployable_project: Path,
                                                       bundle: Path) -> None:
    """Terraform names the uploaded object by the zip's hash: an unchanged bundle must not
    upload (and rebuild) the function again."""
    first = (bundle / FUNCTION_ZIP).read_bytes()
    assert main([PROVIDER], root=deployable_project) == 0
    assert (bundle / FUNCTION_ZIP).read_bytes() == first


def test_functions_framework_serves_the_unpacked_zip_as_the_local_api_answers(
    bundle: Path, python: Path, local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    assert installed_names(python) == set(requirement_names(
        (bundle / "requirements.txt").read_text().splitlines()))
    source = tmp_path / "function"
    with zipfile.ZipFile(bundle / FUNCTION_ZIP) as archive:
        archive.extractall(source)
    port = free_port()
    command = [str(python.parent / "functions-framework"), "--target", "prediction_service",
               "--source", "main.py", "--host", "127.0.0.1", "--port", str(port)]

    with running(command, source, bundle_environment(python), port, tmp_path / "ff.out") as url:
        assert answers(url) == local_api_answers
        unknown = requests.get(f"{url}/no-such-route", timeout=30)
        assert (unknown.status_code, unknown.content) == (404, b'{"detail":"Not Found"}')
        wrong = requests.get(f"{url}/predict", timeout=30)
        assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")
    log = (tmp_path / "ff.out").read_text()
    assert log.count("Serving ") == 1, log  # loaded once, by the first request


def test_functions_framework_answers_every_case_as_the_local_api_and_a_leaving_client_quietly(
    bundle: Path, python: Path, tmp_path: Path
) -> None:
    """tests/serverless_cases.py's requests (paths the framework would answer itself, bodies in
    a content coding, integers past float range, ...) with an API key and small limits, as
    every provider runs them; and a client that leaves mid-body is one INFO line."""
    source = tmp_path / "function"
    with zipfile.ZipFile(bundle / FUNCTION_ZIP) as archive:
        archive.extractall(source)
    limit_bundle(source)
    port = free_port()
    command = [str(python.parent / "functions-framework"), "--target", "prediction_service",
               "--source", "main.py", "--host", "127.0.0.1", "--port", str(port)]
    environment = bundle_environment(python, ML_PROJECT_API_KEY=KEY)

    with local_api(source) as local, running(command, source, environment, port,
                                             tmp_path / "ff.out", api_key=KEY) as url:
        for case in CASES:
            assert http_answer(url, case) == local[case.name], case.name
        for reset in (False, True):  # a close, then a reset (SO_LINGER 0)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                                   "Content-Length: 900\r\n\r\n{".encode())
                time.sleep(0.5)
                if reset:
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
        time.sleep(1)
    log = (tmp_path / "ff.out").read_text()
    assert log.count("Client left before its body of POST /predict arrived") == 2, log
    assert "Traceback" not in log and "ERROR" not in log, log


def test_main_tf_parses_and_deploys_the_zip_with_the_entry_point_and_the_locks_python(
    bundle: Path
) -> None:
    parsed = terraform(bundle / "main.tf")
    found = resources(parsed)
    function = found["google_cloudfunctions2_function.prediction"]
    build = function["build_config"][0] if isinstance(function["build_config"], list) \
        else function["build_config"]
    assert unquoted(build["entry_point"]) == "prediction_service"
    assert "def prediction_service(" in (bundle / "main.py").read_text()
    assert unquoted(build["runtime"]) == "python" + lock_python().replace(".", "")
    assert {"google_storage_bucket.source", "google_storage_bucket_object.source"} <= set(found)
    for name in module_files(bundle / "main.tf"):
        assert (bundle / name).is_file(), name
    assert module_files(bundle / "main.tf") == [FUNCTION_ZIP, FUNCTION_ZIP]
    declared = variables(parsed)
    assert {"project", "region", "function_name"} <= set(declared)
    assert "default" not in declared["project"]  # no project id in any file


def test_terraform_cannot_parse_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "main.tf"
    broken.write_text('resource "x" "y" {\n  a = \n')
    with pytest.raises(Exception):  # noqa: B017  (the parser's own error types vary)
        terraform(broken)


def test_the_function_imports_no_training_or_monitoring_package(bundle: Path,
                                                               python: Path) -> None:
    requirements = set(requirement_names((bundle / "requirements.txt").read_text().splitlines()))
    assert "functions-framework" in requirements
    assert not {"mlflow", "evidently", "pandera", "matplotlib"} & requirements
    result = subprocess.run(
        [str(python), "-c", "import json, sys; import main; print(json.dumps(sorted(sys.modules)))"],
        cwd=bundle, env=bundle_environment(python), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert "functions_framework" in imported
    assert not {"mlflow", "evidently", "pandera", "matplotlib", "fastapi"} & imported
