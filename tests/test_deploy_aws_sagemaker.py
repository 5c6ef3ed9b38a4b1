"""The SageMaker endpoint, proven without an AWS account or a Docker engine: the bundle's `serve`
command, found on PATH in a virtualenv holding exactly the bundle's requirements.txt, honours
the inference contract (GET /ping, POST /invocations with JSON and CSV) on the port SageMaker
names and answers as the local API does, writing only where the image's environment says; the
Dockerfile lints and names only bundle files; the deploy script (run from the checkout on the
bundle, never shipped in it) takes the role and instance type from options or the environment
and prints the commands without an account."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterator

import pytest
import requests

from deployment.cloud_setup import bundle_dir
from ml_project.config import OUTPUT_DIR_ENV, PREDICTION_LOG_ENV, load_config
from ml_project.serving.sagemaker import DEFAULT_PORT, PORT_ENV
from tests.deployment_helpers import (
    PREDICT_REQUESTS,
    BundleVirtualenvs,
    answers,
    bundle_environment,
    git_status,
    run_cloud_setup,
    run_deploy_script,
    running,
    without_request_id,
)
from tests.provider_checks import (
    copy_sources,
    exec_form,
    hadolint,
    image_environment,
    installed_names,
    instructions,
    last,
    lock_python,
    requirement_names,
)
from tests.serving import free_port

# The provider's runtime in a virtualenv of the bundle's requirements: one worker builds them once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundle_virtualenvs")]

PROVIDER = "aws_sagemaker"


@pytest.fixture(scope="module")
def bundle(deployable_project: Path) -> Path:
    result = run_cloud_setup(deployable_project, PROVIDER, "--role-arn", "a-role",
                             "--instance-type", "ml.c5.xlarge")
    assert result.returncode == 0, result.stderr
    assert "not run (no --aws-account-id given" in result.stdout
    assert "InstanceType" in result.stdout and "ml.c5.xlarge" in result.stdout
    return bundle_dir(deployable_project, PROVIDER)


@pytest.fixture(scope="module")
def python(bundle: Path, bundle_virtualenvs: BundleVirtualenvs) -> Path:
    return bundle_virtualenvs.python_for(bundle / "requirements.txt")


def bundle_files(bundle: Path) -> dict[str, bytes]:
    return {path.relative_to(bundle).as_posix(): path.read_bytes() for path in bundle.rglob("*")
            if path.is_file()}


@pytest.fixture(scope="module")
def writable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the image's environment sends what the server writes (/tmp/ml_project there)."""
    return tmp_path_factory.mktemp("sagemaker_tmp") / "ml_project"


@pytest.fixture(scope="module")
def bundle_before(bundle: Path) -> dict[str, bytes]:
    return bundle_files(bundle)


@pytest.fixture(scope="module")
def url(bundle: Path, python: Path, writable: Path, bundle_before: dict[str, bytes],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`serve` as SageMaker runs it (`docker run IMAGE serve`: on PATH, in the WORKDIR, with the
    image's environment, its /tmp paths moved under the test's folder), on 127.0.0.1 and the
    port SAGEMAKER_BIND_TO_PORT names."""
    port = free_port()
    variables = {name: value for name, value in
                 image_environment(instructions(bundle / "Dockerfile")).items() if name != "PATH"}
    assert variables[OUTPUT_DIR_ENV] == "/tmp/ml_project"
    assert variables[PREDICTION_LOG_ENV] == "sqlite:////tmp/ml_project/prediction_log.db"
    variables |= {OUTPUT_DIR_ENV: str(writable),
                  PREDICTION_LOG_ENV: f"sqlite:///{writable / 'prediction_log.db'}"}
    environment = bundle_environment(python, **variables, **{PORT_ENV: str(port)})
    environment["PATH"] = f"{bundle}{os.pathsep}{environment['PATH']}"
    output = tmp_path_factory.mktemp("sagemaker_serve") / "serve.out"
    with running(["serve", "--host", "127.0.0.1"], bundle, environment, port, output) as base:
        yield base


def invoke(url: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    answer = requests.post(f"{url}/invocations", data=body, timeout=60,
                           headers={"Content-Type": content_type})
    return (answer.status_code, answer.headers["Content-Type"],
            without_request_id(answer.content))


def test_ping_answers_200_with_the_model_loaded(url: str) -> None:
    answer = requests.get(f"{url}/ping", timeout=30)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ready"


def test_json_invocations_answer_as_the_local_api_does_on_predict_and_batch(
    url: str, local_api_answers: list[tuple[int, str, bytes]]
) -> None:
    for (_, body), expected in zip(PREDICT_REQUESTS, local_api_answers):
        assert invoke(url, body, "application/json") == expected


def test_csv_invocations_give_the_predictions_of_the_same_rows_in_json(
    url: str, bundle: Path
) -> None:
    config = load_config("prediction", "production", "deployed",
                         config_file=bundle / "project_config.yaml", root=bundle)
    features = list(config.columns.features)
    batch_path, batch_body = PREDICT_REQUESTS[1]
    assert batch_path == "/predict/batch"
    instances = json.loads(batch_body)["instances"]
    text = io.StringIO()
    writer = csv.writer(text)
    for item in instances:
        writer.writerow(["" if item.get(name) is None else item[name] for name in features])
    rows = {"instances": [{name: item.get(name) for name in features} for item in instances]}

    by_csv = invoke(url, text.getvalue().encode(), "text/csv")
    by_json = invoke(url, json.dumps(rows).encode(), "application/json")

    assert by_csv[0] == 200
    assert by_csv == by_json
    assert len(json.loads(by_csv[2])["predictions"]) == len(instances)


def test_the_local_api_routes_answer_too(url: str,
                                         local_api_answers: list[tuple[int, str, bytes]]) -> None:
    """So the deployed-server use case can smoke-test a running container."""
    assert answers(url) == local_api_answers


def test_the_server_writes_only_where_the_images_environment_says(
    url: str, bundle: Path, writable: Path, bundle_before: dict[str, bytes]
) -> None:
    """The image's code is read-only for its user: logs and the prediction log go to /tmp."""
    assert requests.get(f"{url}/ping", timeout=30).status_code == 200
    assert list((writable / "logs").iterdir())
    assert bundle_files(bundle) == bundle_before


def test_serve_is_an_executable_on_the_images_path_and_the_port_is_8080_by_default(
    bundle: Path
) -> None:
    assert os.access(bundle / "serve", os.X_OK)
    assert DEFAULT_PORT == 8080
    parsed = instructions(bundle / "Dockerfile")
    assert exec_form(last(parsed, "CMD")) == ["serve"]
    workdir = last(parsed, "WORKDIR")
    assert f"PATH={workdir}:" in last(parsed, "ENV")
    assert last(parsed, "EXPOSE") == str(DEFAULT_PORT)


def test_dockerfile_lints_uses_the_locks_python_and_names_only_bundle_files(bundle: Path) -> None:
    linted = hadolint(bundle / "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    parsed = instructions(bundle / "Dockerfile")
    assert last(parsed, "FROM").startswith(f"python:{lock_python()}-")
    for source in copy_sources(parsed):
        assert (bundle / source).exists(), source
    assert last(parsed, "USER") not in ("root", "0")


def test_the_requirements_are_the_serving_set_exactly(bundle: Path, python: Path) -> None:
    requirements = set(requirement_names((bundle / "requirements.txt").read_text().splitlines()))
    assert installed_names(python) == requirements


def test_the_deploy_script_is_tooling_of_the_checkout_not_of_the_bundle(
    deployable_project: Path, bundle: Path
) -> None:
    assert (deployable_project / "deployment" / PROVIDER / "deploy.py").is_file()
    assert not (bundle / "deploy.py").exists()
    assert not (bundle / "deployment").exists()  # nor what it imports (aws_deploy.py)


@pytest.mark.parametrize("from_environment", [False, True], ids=["options", "environment"])
def test_the_deploy_script_takes_role_and_instance_type_from_options_or_environment(
    deployable_project: Path, bundle: Path, from_environment: bool
) -> None:
    role = "role-from-test"
    options = [] if from_environment else ["--role-arn", role, "--instance-type", "ml.g5.xlarge"]
    variables = {"SAGEMAKER_ROLE_ARN": role, "SAGEMAKER_INSTANCE_TYPE": "ml.g5.xlarge"} \
        if from_environment else {}
    result = run_deploy_script(deployable_project, PROVIDER, "--bundle", str(bundle),
                               "--region", "eu-west-1", *options, variables=variables)
    assert result.returncode == 0, result.stderr
    assert "not run (no --aws-account-id given)" in result.stdout
    assert f"--execution-role-arn {role}" in result.stdout
    assert '"InstanceType": "ml.g5.xlarge"' in result.stdout
    for command in ("aws sagemaker create-model", "aws sagemaker create-endpoint-config",
                    "aws sagemaker create-endpoint ", "aws sagemaker wait endpoint-in-service",
                    f"docker build --platform linux/amd64 -t ml-project:latest {bundle}",
                    "docker push YOUR_AWS_ACCOUNT_ID.dkr.ecr.eu-west-1.amazonaws.com/"):
        assert command in result.stdout, command
    assert git_status(deployable_project) == ""


def test_without_a_role_nothing_runs_even_with_an_account(
    deployable_project: Path, bundle: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.txt"
    (tmp_path / "bin").mkdir()
    for tool in ("docker", "aws"):  # stand-ins that record any call
        (tmp_path / "bin" / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        (tmp_path / "bin" / tool).chmod(0o755)
    result = run_deploy_script(deployable_project, PROVIDER, "--bundle", str(bundle),
                               "--aws-account-id", "000000000000", "--region", "eu-west-1",
                               tools=tmp_path / "bin", variables={"SAGEMAKER_ROLE_ARN": ""})
    assert result.returncode == 0, result.stderr
    assert "not run (no --role-arn (or SAGEMAKER_ROLE_ARN) given" in result.stdout
    ran = calls.read_text().splitlines() if calls.exists() else []
    assert set(ran) <= {"docker info"}  # at most the engine asked for, nothing pushed or made
