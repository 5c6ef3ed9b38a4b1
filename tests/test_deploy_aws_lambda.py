"""The Lambda function, proven without an AWS account or a Docker engine: the bundle's handler,
in a virtualenv holding exactly the bundle's requirements.txt (awslambdaric included), answers
REST API (1.0), HTTP API (2.0), Function URL and direct events read from JSON files with the
local API's bytes; the Dockerfile lints and names only bundle files; main.tf parses; nothing is
pushed without an explicit account id and a Docker engine, and then the right commands run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deployment.cloud_setup import bundle_dir
from tests.deployment_helpers import (
    PREDICT_REQUESTS,
    BundleVirtualenvs,
    bundle_environment,
    run_cloud_setup,
    without_request_id,
)
from tests.provider_checks import (
    copy_sources,
    exec_form,
    hadolint,
    installed_names,
    instructions,
    last,
    lock_python,
    python_with_extras,
    requirement_names,
    resources,
    terraform,
    unquoted,
    variables,
)
from tests.serverless_cases import (
    Case,
    direct_event,
    function_url_event,
    http_api_event,
    rest_api_event,
)

PROVIDER = "aws_lambda"
SHAPES = {"rest_api_v1": rest_api_event, "http_api_v2": http_api_event,
          "function_url": function_url_event}


@pytest.fixture(scope="module")
def setup_output(deployable_project: Path) -> str:
    result = run_cloud_setup(deployable_project, PROVIDER)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def bundle(deployable_project: Path, setup_output: str) -> Path:
    return bundle_dir(deployable_project, PROVIDER)


@pytest.fixture(scope="module")
def python(bundle: Path, bundle_virtualenvs: BundleVirtualenvs,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    return python_with_extras(bundle_virtualenvs, bundle / "requirements.txt", PROVIDER,
                              tmp_path_factory.mktemp("lambda_venv"))


def events_for(path: str, body: bytes) -> dict[str, dict[str, Any]]:
    case = Case(path, "POST", path, body, {"Content-Type": "application/json"})
    events = {shape: build(case) for shape, build in SHAPES.items()}
    direct = direct_event(case)
    if direct is not None:
        events["direct"] = direct
    return events


def test_the_bundle_handler_answers_every_event_shape_as_the_local_api(
    bundle: Path, python: Path, local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    files: list[Path] = []
    expected: list[tuple[str, tuple[int, str, bytes]]] = []
    for (path, body), answer in zip(PREDICT_REQUESTS, local_api_answers):
        for shape, event in events_for(path, body).items():
            file = tmp_path / f"{len(files)}-{shape}.json"
            file.write_text(json.dumps(event))
            files.append(file)
            expected.append((shape, answer))
    assert {shape for shape, _ in expected} == {*SHAPES, "direct"}

    result = subprocess.run([str(python), "invoke_local.py", *map(str, files)], cwd=bundle,
                            env=bundle_environment(python), capture_output=True, text=True,
                            timeout=300)

    assert result.returncode == 0, result.stderr
    responses = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(responses) == len(files)
    for response, (shape, (status, content_type, body)) in zip(responses, expected):
        got = (response["statusCode"], response["headers"]["Content-Type"],
               without_request_id(response["body"].encode()))
        assert got == (status, content_type, body), shape
    assert result.stderr.count("Serving ") == 1  # loaded once for all the events


def test_the_handler_loads_the_model_at_init_inside_lambda(bundle: Path, python: Path) -> None:
    """AWS_LAMBDA_FUNCTION_NAME (set by the runtime): the model loads when the module is
    imported, in the init phase; elsewhere by the first event."""
    for inside in (False, True):
        variables = {"AWS_LAMBDA_FUNCTION_NAME": "test"} if inside else {}
        result = subprocess.run([str(python), "-c", "import lambda_function"], cwd=bundle,
                                capture_output=True, text=True, timeout=300,
                                env=bundle_environment(python, **variables))
        assert result.returncode == 0, result.stderr
        assert ("Serving " in result.stderr) is inside


def test_the_runtime_interface_client_is_importable_and_the_list_is_exact(
    bundle: Path, python: Path
) -> None:
    requirements = set(requirement_names((bundle / "requirements.txt").read_text().splitlines()))
    assert "awslambdaric" in requirements
    assert installed_names(python) == requirements
    result = subprocess.run([str(python), "-c", "import awslambdaric.bootstrap"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_dockerfile_lints_uses_the_locks_python_and_names_only_bundle_files(bundle: Path) -> None:
    linted = hadolint(bundle / "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    parsed = instructions(bundle / "Dockerfile")
    assert last(parsed, "FROM") == f"public.ecr.aws/lambda/python:{lock_python()}"
    for source in copy_sources(parsed):
        assert (bundle / source).exists(), source
    module, _, function = exec_form(last(parsed, "CMD"))[0].rpartition(".")
    assert re.search(rf"^def {function}\(", (bundle / f"{module}.py").read_text(), re.M)
    ignored = (bundle / ".dockerignore").read_text().splitlines()
    assert "*.tf" in ignored and not {"ml_project", "project_config.yaml", "data"} & set(ignored)


def test_main_tf_parses_and_runs_the_image_behind_a_function_url(bundle: Path) -> None:
    found = resources(terraform(bundle / "main.tf"))
    function = found["aws_lambda_function.serving"]
    assert unquoted(function["package_type"]) == "Image"
    assert "aws_ecr_repository.serving.repository_url" in function["image_uri"]
    assert {"aws_ecr_repository.serving", "aws_lambda_function_url.serving",
            "aws_apigatewayv2_api.serving"} <= set(found)
    declared = variables(terraform(bundle / "main.tf"))
    assert {"region", "function_name", "image_tag"} <= set(declared)


def test_without_an_account_id_the_exact_commands_are_printed_and_nothing_runs(
    setup_output: str
) -> None:
    assert "not run (no --aws-account-id given" in setup_output
    for command in ("terraform -chdir=", "apply -target=aws_ecr_repository.serving",
                    "aws ecr get-login-password", "docker build --platform linux/amd64",
                    "docker push YOUR_AWS_ACCOUNT_ID.dkr.ecr.YOUR_REGION.amazonaws.com/"):
        assert command in setup_output, command


def snapshot(bundle: Path) -> dict[str, bytes]:
    """The bundle's files and contents, the service's own output aside."""
    return {path.relative_to(bundle).as_posix(): path.read_bytes() for path in bundle.rglob("*")
            if path.is_file() and "output" not in path.relative_to(bundle).parts}


def fake_tools(directory: Path, docker_engine: bool) -> Path:
    """docker, aws and terraform stand-ins that record their arguments; `docker info` fails
    unless `docker_engine`."""
    directory.mkdir()
    calls = directory / "calls.txt"
    for tool in ("docker", "aws", "terraform"):
        failing = 'if [ "$1" = info ]; then exit 1; fi\n' if tool == "docker" and not \
            docker_engine else ""
        script = directory / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n{failing}')
        script.chmod(0o755)
    return calls


@pytest.mark.parametrize("docker_engine", [False, True], ids=["no-engine", "engine"])
def test_an_account_id_pushes_and_deploys_only_with_a_docker_engine(
    bundle: Path, python: Path, tmp_path: Path, docker_engine: bool
) -> None:
    calls = fake_tools(tmp_path / "bin", docker_engine)
    environment = bundle_environment(python)
    environment["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{environment['PATH']}"
    account = "000000000000"  # a stand-in, not an account
    before = snapshot(bundle)

    result = subprocess.run(
        [str(python), "deploy.py", "--aws-account-id", account, "--region", "eu-west-1"],
        cwd=bundle, env=environment, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    ran = calls.read_text().splitlines() if calls.exists() else []
    if not docker_engine:
        assert ran == ["docker info"]
        assert "no Docker engine answers `docker info`" in result.stdout
        return
    image = f"{account}.dkr.ecr.eu-west-1.amazonaws.com/ml-project:latest"
    assert [line.split(" ", 2)[:2] for line in ran] == [
        ["docker", "info"], ["terraform", f"-chdir={bundle}"], ["terraform", f"-chdir={bundle}"],
        ["aws", "ecr"], ["docker", "login"], ["docker", "build"], ["docker", "tag"],
        ["docker", "push"], ["terraform", f"-chdir={bundle}"], ["terraform", f"-chdir={bundle}"]]
    assert f"docker push {image}" in ran
    assert snapshot(bundle) == before  # nothing written: the account id is in no file
