"""The container image and its Kubernetes manifests, proven without a Docker engine: the
Dockerfile is linted (hadolint) and its COPY sources and CMD checked against the bundle (the
build context); the image's command runs as a local process with the image's environment in a
fresh virtualenv holding only the bundle's requirements.txt and answers as the local API does,
and so do its HEALTHCHECK and the Kubernetes readiness probe; the manifests are valid against
the Kubernetes schemas."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployment.cloud_setup import bundle_dir
from ml_project.config import OUTPUT_DIR_ENV, PREDICTION_LOG_ENV, PROJECT_ROOT
from ml_project.monitoring_summary import (
    EXIT_BAD_INPUT,
    EXIT_DRIFT,
    EXIT_DRIFT_AND_ESTIMATED_DROP,
    EXIT_DRIFT_AND_PERFORMANCE_DROP,
    EXIT_ESTIMATED_DROP,
    EXIT_PERFORMANCE_DROP,
    EXIT_RETRAINING_FAILED,
)
from tests.deployment_helpers import (
    BundleVirtualenvs,
    answers,
    bundle_environment,
    run_cloud_setup,
    running,
)
from tests.provider_checks import image_environment, instructions
from tests.serving import free_port

# The provider's runtime in a virtualenv of the bundle's requirements: one worker builds them once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundle_virtualenvs")]

KUBERNETES = PROJECT_ROOT / "deployment" / "kubernetes"
TOOLS = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle(deployable_project: Path) -> Path:
    result = run_cloud_setup(deployable_project, "container")
    assert result.returncode == 0, result.stderr
    return bundle_dir(deployable_project, "container")


def exec_form(arguments: str) -> list[str]:
    """A JSON-array CMD/HEALTHCHECK CMD, options before it dropped."""
    command: list[str] = json.loads(arguments[arguments.index("["):])
    return command


def manifests() -> dict[str, dict[str, Any]]:
    documents = [yaml.safe_load(path.read_text()) for path in sorted(KUBERNETES.glob("*.yaml"))]
    return {document["kind"]: document for document in documents}


def test_dockerfile_passes_hadolint_and_hadolint_can_fail(bundle: Path, tmp_path: Path) -> None:
    hadolint = str(TOOLS / "hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nCMD python\n")

    result = subprocess.run([hadolint, str(bundle / "Dockerfile")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert subprocess.run([hadolint, str(bad)], capture_output=True, timeout=120).returncode != 0


def test_dockerfile_is_multi_stage_non_root_and_its_paths_are_in_the_bundle(bundle: Path) -> None:
    parsed = instructions(bundle / "Dockerfile")
    stages = [arguments for name, arguments in parsed if name == "FROM"]
    assert len(stages) >= 2 and all(re.match(r"\S+:\S+", stage) for stage in stages)
    python = json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())["_meta"]["requires"][
        "python_version"]
    assert all(stage.startswith(f"python:{python}-") for stage in stages)  # the trained Python
    ignored = (bundle / ".dockerignore").read_text().splitlines()

    for name, arguments in parsed:
        if name == "COPY" and "--from=" not in arguments:
            *sources, _ = [part for part in shlex.split(arguments) if not part.startswith("--")]
            for source in sources:
                assert (bundle / source).exists(), source
    for shipped in ("ml_project", "project_config.yaml", "data", "requirements.txt"):
        assert not any(line.strip("/") == shipped for line in ignored)
    user = [arguments for name, arguments in parsed if name == "USER"][-1]
    assert user not in ("root", "0")
    command = exec_form([arguments for name, arguments in parsed if name == "CMD"][-1])
    assert command[:3] == ["python", "-m", "ml_project.serving.launcher"]
    assert (bundle / command[2].replace(".", "/")).with_suffix(".py").is_file()
    healthcheck = [arguments for name, arguments in parsed if name == "HEALTHCHECK"][-1]
    assert "/health" in healthcheck
    exposed = [arguments for name, arguments in parsed if name == "EXPOSE"][-1]
    assert exposed == image_environment(parsed)["PORT"]


def test_image_command_with_the_image_environment_answers_as_the_local_api(
    bundle: Path, bundle_virtualenvs: BundleVirtualenvs,
    local_api_answers: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    """WORKDIR /app holds the bundle (COPY . /app): the bundle folder stands in for it."""
    parsed = instructions(bundle / "Dockerfile")
    python = bundle_virtualenvs.python_for(bundle / "requirements.txt")
    port = free_port()
    variables = {name: value for name, value in image_environment(parsed).items()
                 if name != "PATH"}  # the image's venv: here the bundle's virtualenv
    assert variables[OUTPUT_DIR_ENV].startswith("/app/")
    variables |= {"PORT": str(port), "HOST": "127.0.0.1", OUTPUT_DIR_ENV: str(tmp_path / "out"),
                  PREDICTION_LOG_ENV: f"sqlite:///{tmp_path / 'out' / 'prediction_log.db'}"}
    environment = bundle_environment(python, **variables)
    command = exec_form([arguments for name, arguments in parsed if name == "CMD"][-1])
    healthcheck = exec_form([arguments for name, arguments in parsed if name == "HEALTHCHECK"][-1])
    readiness = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0][
        "readinessProbe"]["exec"]["command"]

    with running(command, bundle, environment, port, tmp_path / "image.out") as url:
        assert answers(url) == local_api_answers
        for probe in (healthcheck, [part.replace("8080", str(port)) for part in readiness]):
            result = subprocess.run(probe, env=environment, capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr


def test_kubernetes_manifests_are_valid_against_the_schemas_and_invalid_ones_fail(
    tmp_path: Path
) -> None:
    validate = str(TOOLS / "kubernetes-validate")
    result = subprocess.run([validate, "--strict", *map(str, sorted(KUBERNETES.rglob("*.yaml")))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "deployment.yaml"
    shutil.copy(KUBERNETES / "deployment.yaml", broken)
    broken.write_text(broken.read_text().replace("replicas: 2", "replicas: two"))
    assert subprocess.run([validate, "--strict", str(broken)], capture_output=True,
                          timeout=300).returncode != 0


def test_kubernetes_deployment_probes_resources_and_user_match_the_image(bundle: Path) -> None:
    documents = manifests()
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    parsed = instructions(bundle / "Dockerfile")
    port = int(image_environment(parsed)["PORT"])

    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert any(f"127.0.0.1:{port}/ready" in part for part in
               container["readinessProbe"]["exec"]["command"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == [a for n, a in parsed if n == "USER"][-1]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    output = image_environment(parsed)[OUTPUT_DIR_ENV]
    assert output in [mount["mountPath"] for mount in container["volumeMounts"]]
    labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert documents["Service"]["spec"]["selector"].items() <= labels.items()
    assert documents["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    target = documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment",
                                                documents["Deployment"]["metadata"]["name"])


def test_kubernetes_jobs_run_the_use_cases_as_the_deployment_runs_serving() -> None:
    """The monitoring CronJob and the retraining Job (deployment/kubernetes/jobs/, apart so that
    applying the serving manifests starts no retraining): their commands run, alert exit codes
    fail the Job without a retry, the pods are hardened as the Deployment's are, and the
    schedule and webhook variable are the ones documentation/monitoring.md gives."""
    serving = manifests()["Deployment"]["spec"]["template"]["spec"]
    cronjob = yaml.safe_load((KUBERNETES / "jobs" / "monitoring-cronjob.yaml").read_text())
    job = yaml.safe_load((KUBERNETES / "jobs" / "retraining-job.yaml").read_text())
    monitoring = cronjob["spec"]["jobTemplate"]["spec"]
    documentation = (PROJECT_ROOT / "documentation" / "monitoring.md").read_text()

    for spec, script in ((monitoring, "monitoring_production_data_local.py"),
                         (job["spec"], "modelling_historic_data_local.py")):
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        assert container["command"] == ["python", f"use_cases/{script}"]
        result = subprocess.run([sys.executable, *container["command"][1:], "--help"],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"] == serving["securityContext"]
        assert container["securityContext"] == serving["containers"][0]["securityContext"]
        assert "/app/data" in [mount["mountPath"] for mount in container["volumeMounts"]]
    [verdicts, _] = monitoring["podFailurePolicy"]["rules"]
    assert verdicts["action"] == "FailJob" and verdicts["onExitCodes"]["values"] == [
        EXIT_BAD_INPUT, EXIT_DRIFT, EXIT_PERFORMANCE_DROP, EXIT_DRIFT_AND_PERFORMANCE_DROP,
        EXIT_RETRAINING_FAILED, EXIT_ESTIMATED_DROP, EXIT_DRIFT_AND_ESTIMATED_DROP]
    assert f"{cronjob['spec']['schedule']} " in documentation  # the crontab line's schedule
    [webhook] = monitoring["template"]["spec"]["containers"][0]["env"]
    assert f"url_env: {webhook['name']}" in documentation
