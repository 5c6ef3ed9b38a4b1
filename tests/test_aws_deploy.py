"""`deployment.aws_deploy`, the AWS deploy scripts' shared steps, run in this process (the bundle
tests run the same scripts as subprocesses): without an account, a region or a Docker engine the
exact commands are printed and nothing runs; with all three, every step runs in order and the
first failure stops them. Stand-in `docker`, `aws` and `terraform` programs record their calls.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

from ml_project.config import PROJECT_ROOT


def deploy_script(provider: str) -> ModuleType:
    """`deployment.PROVIDER.deploy`, the module `python -m` runs from the checkout."""
    assert (PROJECT_ROOT / "deployment" / provider / "deploy.py").is_file()
    return importlib.import_module(f"deployment.{provider}.deploy")


def stand_ins(folder: Path, calls: Path, failing: str = "") -> None:
    """`docker`, `aws` and `terraform` that append their arguments to `calls`; `failing` exits 1."""
    folder.mkdir()
    for program in ("docker", "aws", "terraform"):
        status = 1 if program == failing else 0
        script = folder / program
        script.write_text(f'#!/bin/sh\necho "{program} $*" >> "{calls}"\nexit {status}\n')
        script.chmod(0o755)


@pytest.mark.parametrize("provider", ["aws_lambda", "aws_sagemaker"])
def test_without_an_account_the_commands_are_printed_and_nothing_runs(
    provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = tmp_path / "calls.txt"
    stand_ins(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN", raising=False)

    assert deploy_script(provider).main([]) == 0

    printed = capsys.readouterr().out
    assert "not run (" in printed and "no --aws-account-id given" in printed
    assert "docker push" in printed
    assert not calls.exists()


def test_without_a_docker_engine_the_commands_are_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    calls = tmp_path / "calls.txt"
    stand_ins(tmp_path / "bin", calls, failing="docker")  # `docker info` fails: no engine
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    code = deploy_script("aws_lambda").main(["--aws-account-id", "123456789012",
                                             "--region", "eu-west-1"])

    assert code == 0
    assert "no Docker engine answers" in capsys.readouterr().out
    assert calls.read_text().splitlines() == ["docker info"]


def test_with_account_region_and_engine_every_step_runs_and_a_failure_stops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    calls = tmp_path / "calls.txt"
    stand_ins(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    arguments = ["--aws-account-id", "123456789012", "--region", "eu-west-1"]

    assert deploy_script("aws_lambda").main(arguments) == 0
    ran = calls.read_text().splitlines()
    assert ran[0] == "docker info" and any(line.startswith("docker push") for line in ran)
    assert ran[-1].startswith("terraform") and "output" in ran[-1]

    calls.unlink()
    stand_ins(tmp_path / "failing", calls, failing="terraform")
    monkeypatch.setenv("PATH", str(tmp_path / "failing"))
    assert deploy_script("aws_lambda").main(arguments) == 1
    assert "error: failed: terraform" in capsys.readouterr().err


@pytest.mark.parametrize("provider", ["aws_lambda", "aws_sagemaker"])
def test_the_bundle_is_the_build_context_by_default_the_checkouts_own(
    provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run from the checkout: --bundle names the folder cloud_setup.sh built, by default
    output/deployment/PROVIDER; the image is built from it (and Terraform runs in it)."""
    stand_ins(tmp_path / "bin", tmp_path / "calls.txt")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    elsewhere = tmp_path / "bundle"

    for arguments, folder in (([], f"output/deployment/{provider}"),
                              (["--bundle", str(elsewhere)], str(elsewhere))):
        assert deploy_script(provider).main(["--region", "eu-west-1", *arguments]) == 0
        printed = capsys.readouterr().out
        assert f"docker build --platform linux/amd64 -t ml-project:latest {folder}\n" in printed
        if provider == "aws_lambda":
            assert f"terraform -chdir={folder} apply" in printed
    assert not (tmp_path / "calls.txt").exists()
