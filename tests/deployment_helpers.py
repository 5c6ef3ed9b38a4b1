"""Helpers for the deployment tests: a committed copy of the project to run cloud_setup.sh in,
one fresh virtualenv per distinct bundle requirements.txt, and provider runtimes as processes.

The fixtures that use them live in conftest.py (`deployable_project`, `bundle_python`,
`local_api_answers`), so every provider's test module shares one of each per session.
A bundle's entry point runs in its own virtualenv with the bundle folder as working directory
and no PYTHONPATH: it can import only what the bundle and its requirements.txt hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import requests

from ml_project.config import PROJECT_ROOT
from ml_project.serving.client import PredictionClient
from tests.serving import assert_serves, instance

# What cloud_setup.sh reads from a checkout, besides the config and the trained champion.
PROJECT_FILES = ("ml_project", "deployment", "executables", "Pipfile", "Pipfile.lock", ".gitignore")
IGNORED_WHEN_COPYING = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".tools")
# Variables that would let a bundle process import or configure from outside the bundle.
LEAKING_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIPENV_ACTIVE",
                     "ML_PROJECT_API_KEY", "ML_PROJECT_PREDICTION_LOG_URL", "ML_PROJECT_OUTPUT_DIR",
                     "MLFLOW_TRACKING_URI", "PORT", "HOST")
GIT = ("git", "-c", "user.name=tests", "-c", "user.email=tests@example.invalid",
       "-c", "commit.gpgsign=false")

# The request bodies every provider must answer as the local API does: one instance, a batch,
# a schema violation (422), a body that is not JSON (400).
PREDICT_REQUESTS: tuple[tuple[str, bytes], ...] = (
    ("/predict", json.dumps(instance()).encode()),
    ("/predict/batch", json.dumps({"instances": [
        instance(), instance(customer_id="C2", contract="two-year", tenure_months=3),
        instance(customer_id="C3", total_charges=None, internet_service=None)]}).encode()),
    ("/predict", json.dumps(instance(age=7)).encode()),
    ("/predict", b"{not json"),
)


def make_deployable_project(trained_project: Path, root: Path) -> Path:
    """`root` as a checkout of this project with `trained_project`'s config and champion, every
    file committed, so `git status` shows whatever a command leaves behind."""
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=IGNORED_WHEN_COPYING, symlinks=True)
        else:
            shutil.copy2(source, root / name)
    shutil.copy2(trained_project / "project_config.yaml", root / "project_config.yaml")
    shutil.copytree(trained_project / "data" / "model_artifacts", root / "data" / "model_artifacts")
    (root / "output").mkdir(exist_ok=True)
    (root / "output" / ".gitkeep").touch()
    for command in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "checkout")):
        subprocess.run([*GIT, *command], cwd=root, check=True, capture_output=True, timeout=60)
    return root


def run_cloud_setup(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`bash executables/cloud_setup.sh ARGUMENTS` in `project`, with this test run's Python."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in LEAKING_VARIABLES}
    environment["VIRTUAL_ENV"] = sys.prefix
    return subprocess.run(["bash", "executables/cloud_setup.sh", *arguments], cwd=project,
                          env=environment, capture_output=True, text=True, timeout=300)


def run_deploy_script(project: Path, provider: str, *arguments: str, tools: Path | None = None,
                      variables: Mapping[str, str] | None = None
                      ) -> subprocess.CompletedProcess[str]:
    """`python -m deployment.PROVIDER.deploy ARGUMENTS` as cloud_setup.sh runs it: from the
    checkout `project`, with this test run's Python (tooling, never shipped in a bundle), the
    `tools` folder first on PATH and `variables` set."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in LEAKING_VARIABLES}
    if tools is not None:
        environment["PATH"] = f"{tools}{os.pathsep}{environment.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", f"deployment.{provider}.deploy", *arguments],
                          cwd=project, env={**environment, **(variables or {})},
                          capture_output=True, text=True, timeout=120)


def git_status(project: Path, *options: str) -> str:
    return subprocess.run([*GIT, "status", "--porcelain", *options], cwd=project, check=True,
                          capture_output=True, text=True, timeout=60).stdout


class BundleVirtualenvs:
    """One fresh virtualenv per distinct requirements.txt content, built once per session:
    exactly those pins, no dependency pip would add on its own (`--no-deps`, then `pip check`
    proves the list is complete)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._built: dict[str, Path] = {}

    def python_for(self, requirements: Path) -> Path:
        key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
        if key not in self._built:
            venv = self.directory / key
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            python = venv / "bin" / "python"
            pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
            subprocess.run([*pip, "install", "--no-deps", "-r", str(requirements)], check=True,
                           timeout=1800, env=bundle_environment(python))
            check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=300)
            assert check.returncode == 0, f"{requirements} is incomplete:\n{check.stdout}"
            self._built[key] = python
        return self._built[key]


def bundle_environment(python: Path, **variables: str) -> dict[str, str]:
    """The environment of a process of the bundle's virtualenv: its bin first on PATH, nothing
    that points elsewhere (PYTHONPATH, the test run's venv, the project's variables)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in LEAKING_VARIABLES}
    environment["PATH"] = f"{python.parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["VIRTUAL_ENV"] = str(python.parent.parent)
    return {**environment, **variables}


@contextmanager
def running(command: Sequence[str] | str, cwd: Path, environment: dict[str, str], port: int,
            output: Path, api_key: str | None = None) -> Iterator[str]:
    """Run `command` (a string runs in `sh -c`, as platforms run a Procfile or an entrypoint)
    until /ready answers on `port` (to `api_key`, if the service requires one); yield the base
    URL; then SIGTERM its whole process group."""
    shell = isinstance(command, str)
    with output.open("w") as output_file:
        process = subprocess.Popen(command, shell=shell, cwd=cwd, env=environment,
                                   stdout=output_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            client = PredictionClient(url, max_retries=0, api_key=api_key)
            ready = client.wait_until_ready(180, give_up=lambda: process.poll() is not None)
            client.close()
            assert ready.ok, output.read_text()
            assert_serves(process, port, output)
            yield url
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group (a shell, honcho and the server under it), then wait."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # children that outlive the leader get the time it took
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)


def answers(base_url: str, calls: Sequence[tuple[str, bytes]] = PREDICT_REQUESTS
            ) -> list[tuple[int, str, bytes]]:
    """Status, content type and body bytes of each POST, the request id replaced by `<id>`
    (the one part that differs by design)."""
    result = []
    with requests.Session() as session:
        for path, body in calls:
            response = session.post(base_url + path, data=body,
                                    headers={"Content-Type": "application/json"}, timeout=60)
            result.append((response.status_code, response.headers.get("content-type", ""),
                           without_request_id(response.content)))
    return result


def without_request_id(body: bytes) -> bytes:
    try:
        request_id = json.loads(body).get("request_id")
    except (ValueError, AttributeError):
        return body
    return body.replace(str(request_id).encode(), b"<id>") if request_id else body
