"""The Lambda function, proven without an AWS account or a Docker engine: the bundle's handler,
in a virtualenv holding exactly the bundle's requirements.txt (awslambdaric and Mangum
included), answers REST API (1.0), HTTP API (2.0), Function URL, load balancer and direct events
read from JSON files with the local API's bytes, and malformed events with a 4xx, never an
exception; the Dockerfile lints and names only bundle files; main.tf parses; the deploy script
(run from the checkout on the bundle, never shipped in it) pushes nothing without an explicit
account id and a Docker engine, and then the right commands run."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deployment.cloud_setup import bundle_dir
from tests.deployment_helpers import (
    PREDICT_REQUESTS,
    BundleVirtualenvs,
    bundle_environment,
    git_status,
    run_cloud_setup,
    run_deploy_script,
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
    CASES,
    KEY,
    Case,
    direct_event,
    function_url_event,
    http_api_event,
    limit_bundle,
    local_api,
    proxy_comparable,
    rest_api_event,
)

# The provider's runtime in a virtualenv of the bundle's requirements: one worker builds them once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundle_virtualenvs")]

PROVIDER = "aws_lambda"


def load_balancer_event(case: Case) -> dict[str, Any]:
    """An Application Load Balancer's event for a Lambda target (multi-value headers off); a
    body that is not text (gzip) base64-encoded."""
    try:
        body, encoded = case.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(case.body).decode("ascii"), True
    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:"
                                                     "000000000000:targetgroup/ml-project/0"}},
        "httpMethod": case.method, "path": case.path, "queryStringParameters": {},
        "headers": {name.lower(): value for name, value in case.headers.items()},
        "body": body, "isBase64Encoded": encoded,
    }


SHAPES = {"rest_api_v1": rest_api_event, "http_api_v2": http_api_event,
          "function_url": function_url_event, "load_balancer": load_balancer_event}


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


def invoke_local(python: Path, bundle: Path, events: list[Any], folder: Path,
                 **variables: str) -> tuple[list[dict[str, Any]], str]:
    """The bundle's invoke_local.py on `events` (one JSON file each), with these environment
    `variables`: the handler's responses, in order, and what it logged. It exits 0: no event
    raised out of the handler."""
    folder.mkdir()
    files = []
    for number, event in enumerate(events):
        files.append(folder / f"{number}.json")
        files[-1].write_text(json.dumps(event))
    result = subprocess.run([str(python), "invoke_local.py", *map(str, files)], cwd=bundle,
                            env=bundle_environment(python, **variables), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    responses = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(responses) == len(events), result.stdout
    return responses, result.stderr


def proxy_answer(response: dict[str, Any]) -> tuple[int, str, bytes]:
    """Status, content type and body of a proxy response, as `answers` reads an HTTP answer:
    header names in any case (HTTP's), the body decoded if the response says it is base64."""
    headers = {name.lower(): value for name, value in response["headers"].items()}
    body = response["body"].encode()
    if response["isBase64Encoded"]:
        body = base64.b64decode(body)
    return response["statusCode"], headers["content-type"], without_request_id(body)


def test_the_bundle_handler_answers_every_event_shape_as_the_local_api(
    bundle: Path, python: Path, local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    expected: list[tuple[str, tuple[int, str, bytes]]] = []
    for (path, body), answer in zip(PREDICT_REQUESTS, local_api_answers):
        for shape, event in events_for(path, body).items():
            events.append(event)
            expected.append((shape, answer))
    assert {shape for shape, _ in expected} == {*SHAPES, "direct"}

    responses, logged = invoke_local(python, bundle, events, tmp_path / "events")

    for response, (shape, answer) in zip(responses, expected):
        assert proxy_answer(response) == answer, shape
    assert logged.count("Serving ") == 1  # loaded once for all the events


def test_the_bundle_handler_answers_every_case_in_every_shape_as_the_local_api(
    bundle: Path, python: Path, tmp_path: Path
) -> None:
    """tests/serverless_cases.py's requests (odd paths, bodies in a content coding, integers
    past float range, ...), with an API key and small limits, in every event shape."""
    limited = limit_bundle(Path(shutil.copytree(bundle, tmp_path / "bundle")))
    events: list[dict[str, Any]] = []
    expected: list[tuple[str, str, str]] = []
    for case in CASES:
        shaped = {shape: build(case) for shape, build in SHAPES.items()}
        if (direct := direct_event(case)) is not None:
            shaped["direct"] = direct
        for shape, event in shaped.items():
            events.append(event)
            expected.append((case.name, shape, "POST" if shape == "direct" else case.method))

    responses, _ = invoke_local(python, limited, events, tmp_path / "events",
                                ML_PROJECT_API_KEY=KEY)

    with local_api(limited) as local:
        for response, (name, shape, method) in zip(responses, expected):
            assert proxy_comparable(response, method) == local[name], (name, shape)


def test_the_documented_local_run_answers_the_shipped_event_with_a_prediction(
    bundle: Path, python: Path
) -> None:
    """deployment.md's local run as written, `python invoke_local.py event.json` in the bundle
    folder: the event ships in the bundle and gets a 200 with a prediction."""
    result = subprocess.run([str(python), "invoke_local.py", "event.json"], cwd=bundle,
                            env=bundle_environment(python), capture_output=True, text=True,
                            timeout=300)

    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["statusCode"] == 200, response
    answer = json.loads(response["body"])
    assert str(answer["prediction"]) in answer["probabilities"]


PREDICT_CASE = Case("/predict", "POST", "/predict", PREDICT_REQUESTS[0][1],
                    {"Content-Type": "application/json"})


def changed(event: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `event` with the field at `path` set to `value`, or removed for `...`."""
    copy: dict[str, Any] = json.loads(json.dumps(event))
    target = copy
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy


# Events no source sends: each field of the wrong type (or missing) that the handler reads.
MALFORMED: dict[str, Any] = {
    "rest-headers-not-a-mapping": changed(rest_api_event(PREDICT_CASE), ("headers",), ["x"]),
    "http-headers-not-a-mapping": changed(http_api_event(PREDICT_CASE), ("headers",), "x"),
    "direct-headers-not-a-mapping": {"instance": {}, "headers": ["X-API-Key"]},
    "rest-multi-value-headers-a-list": changed(rest_api_event(PREDICT_CASE),
                                               ("multiValueHeaders",), [["Content-Type"]]),
    # A REST API event carries each header twice, and multiValueHeaders is what is read.
    "rest-int-header-value": changed(changed(rest_api_event(PREDICT_CASE),
                                             ("headers", "Content-Type"), 41),
                                     ("multiValueHeaders", "Content-Type"), [41]),
    "http-int-header-value": changed(http_api_event(PREDICT_CASE), ("headers", "content-type"),
                                     41),
    "load-balancer-int-header-value": changed(load_balancer_event(PREDICT_CASE),
                                              ("headers", "content-type"), 41),
    "http-without-method": changed(http_api_event(PREDICT_CASE),
                                   ("requestContext", "http", "method"), ...),
    "http-base64-flag-a-string": changed(http_api_event(PREDICT_CASE), ("isBase64Encoded",),
                                         "false"),
    "rest-base64-flag-a-string": changed(rest_api_event(PREDICT_CASE), ("isBase64Encoded",),
                                         "false"),
    "an-array": [PREDICT_REQUESTS[0][1].decode()],
    "a-string": "POST /predict",
    "a-number": 41,
    "null": None,
    "a-boolean": True,
    "an-object-of-no-known-shape": {"body": PREDICT_REQUESTS[0][1].decode()},
}


def test_malformed_events_get_a_4xx_proxy_response_never_an_exception(
    bundle: Path, python: Path, tmp_path: Path
) -> None:
    responses, _ = invoke_local(python, bundle, list(MALFORMED.values()), tmp_path / "events")

    for name, response in zip(MALFORMED, responses):
        status, content_type, body = proxy_answer(response)
        assert 400 <= status < 500, (name, response)
        assert content_type == "application/json", name
        assert json.loads(body)["detail"], name


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


def test_the_deploy_script_is_tooling_of_the_checkout_not_of_the_bundle(
    deployable_project: Path, bundle: Path
) -> None:
    assert (deployable_project / "deployment" / PROVIDER / "deploy.py").is_file()
    assert not (bundle / "deploy.py").exists()
    assert not (bundle / "deployment").exists()  # nor what it imports (aws_deploy.py)


@pytest.mark.parametrize("docker_engine", [False, True], ids=["no-engine", "engine"])
def test_an_account_id_pushes_and_deploys_only_with_a_docker_engine(
    deployable_project: Path, bundle: Path, tmp_path: Path, docker_engine: bool
) -> None:
    calls = fake_tools(tmp_path / "bin", docker_engine)
    account = "000000000000"  # a stand-in, not an account
    before = snapshot(bundle)

    result = run_deploy_script(deployable_project, PROVIDER, "--bundle", str(bundle),
                               "--aws-account-id", account, "--region", "eu-west-1",
                               tools=tmp_path / "bin")

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
    assert f"docker build --platform linux/amd64 -t ml-project:latest {bundle}" in ran
    assert f"docker push {image}" in ran
    assert snapshot(bundle) == before  # nothing written: the account id is in no file
    assert git_status(deployable_project) == ""  # nor in the checkout
