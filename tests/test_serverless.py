"""The serverless router answers every request as the local FastAPI app does (request id aside),
loads its service once per process, and writes only where it may."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ml_project.serving.endpoints import API_KEY_ENV, Reply
from ml_project.export import ArtifactError
from ml_project.serving.serverless import Request, ServerlessApp, app_for, header_map
from tests.serverless_cases import (
    CASE_IDS,
    CASES,
    KEY,
    Case,
    Comparable,
    comparable,
    keyed_app,
    local_api,
    write_bundle,
)
from tests.serving import INSTANCE


@pytest.fixture(scope="module")
def bundle(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(trained_project, tmp_path_factory.mktemp("serverless"))


@pytest.fixture(scope="module")
def local(bundle: Path) -> Iterator[dict[str, Comparable]]:
    with local_api(bundle) as answers:
        yield answers


@pytest.fixture(scope="module")
def app(bundle: Path) -> ServerlessApp:
    return keyed_app(bundle)


def routed(app: ServerlessApp, case: Case) -> Comparable:
    reply: Reply = app.handle(Request(case.method, case.path, header_map(case.headers.items()),
                                      case.body))
    body = b"" if case.method == "HEAD" else reply.body  # HTTP sends no body with HEAD
    return comparable(reply.status, reply.media_type, reply.allow, body)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_router_answers_like_the_local_api(
    app: ServerlessApp, local: dict[str, Comparable], case: Case
) -> None:
    assert routed(app, case) == local[case.name]


def test_every_case_answers_below_500(local: dict[str, Comparable]) -> None:
    """The table covers each status a client can act on, so the parity above means something."""
    statuses = {answer[0] for answer in local.values()}
    assert statuses == {200, 400, 401, 404, 405, 413, 422}


def test_header_names_are_case_insensitive_and_repeats_joined(app: ServerlessApp) -> None:
    assert header_map([("X-API-KEY", KEY), ("Content-Type", "a")]) == {
        "x-api-key": KEY, "content-type": "a"}
    twice = header_map([("x-api-key", KEY), ("X-Api-Key", KEY)])
    assert twice == {"x-api-key": f"{KEY},{KEY}"}
    assert app.handle(Request("GET", "/ready", twice, b"")).status == 401  # as WSGI joins them


def test_a_fault_no_route_caught_is_the_local_apis_json_500(bundle: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(API_KEY_ENV, raising=False)
        broken = ServerlessApp.load(bundle)
    # The server's own state broken: the served model replaced by an object that is no model.
    broken.endpoints.service = object()  # type: ignore[assignment]
    reply = broken.handle(Request("POST", "/predict", {}, b"{}"))
    assert (reply.status, reply.body) == (500, b'{"detail":"Internal Server Error"}')


def test_app_for_loads_a_bundle_once_per_process(bundle: Path) -> None:
    first = app_for(bundle)
    assert app_for(bundle / ".." / bundle.name) is first
    first.endpoints.log.close()  # type: ignore[union-attr]


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
        app = ServerlessApp.load(bundle, work_dir)
    try:
        assert app.handle(Request("POST", "/predict", {}, json.dumps(INSTANCE).encode())).status == 200
        assert app.endpoints.log is not None
        assert app.endpoints.log.flush()
        assert app.endpoints.log.count() == 1
    finally:
        app.endpoints.log.close()  # type: ignore[union-attr]
    assert (work_dir / "output" / "prediction_log.db").is_file()
    assert not (bundle / "output").exists()


def test_a_bundle_without_a_model_fails_to_load_naming_the_fix(
    trained_project: Path, tmp_path: Path
) -> None:
    shutil.copy(trained_project / "project_config.yaml", tmp_path)
    with pytest.raises(ArtifactError, match="run the modelling use case first"):
        ServerlessApp.load(tmp_path)


def test_the_serverless_path_imports_no_web_framework_or_training_package(bundle: Path) -> None:
    """In a fresh interpreter: load the app, answer a Lambda event and a SageMaker invocation.
    Cold starts pay for nothing the serverless path does not run."""
    code = f"""
import json, sys
from pathlib import Path
from ml_project.serving.lambda_events import handle_event
from ml_project.serving.sagemaker import SAGEMAKER_ROUTES
from ml_project.serving.serverless import Request, ServerlessApp
app = ServerlessApp.load(Path({str(bundle)!r}), routes=SAGEMAKER_ROUTES)
body = json.dumps({INSTANCE!r})
assert handle_event(app, {{"instance": {INSTANCE!r}}})["statusCode"] == 200
reply = app.handle(Request("POST", "/invocations", {{"content-type": "application/json"}},
                           body.encode()))
assert reply.status == 200, reply
print(sorted({{name.split(".")[0] for name in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=bundle, timeout=120, env={**os.environ, API_KEY_ENV: ""})

    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert not imported & {"mlflow", "evidently", "pandera", "matplotlib", "fastapi", "starlette",
                           "flask", "werkzeug", "uvicorn", "gunicorn"}
    assert "sklearn" in imported  # the check sees what was imported
