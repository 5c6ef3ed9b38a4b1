"""Build, push and deploy a bundle's image on AWS, or print the exact commands to do it.

Used by `deployment/aws_lambda/deploy.py` and `deployment/aws_sagemaker/deploy.py`, which run
from the checkout on a bundle that `cloud_setup.sh` built (tooling: never shipped in one). Nothing runs unless the caller
named an account (`--aws-account-id`) and a Docker engine answers (`docker info`): otherwise
every command is printed, with the values given and placeholders for the rest, and the exit
code is 0, the files being ready. No account id, role or credential is ever written to a file.
Commands run as argument lists, never through a shell.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess  # nosec B404
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Plain words, so the printed commands need no quoting: replace them and run.
ACCOUNT_PLACEHOLDER = "YOUR_AWS_ACCOUNT_ID"
REGION_PLACEHOLDER = "YOUR_REGION"


@dataclass(frozen=True)
class Step:
    """One command; `stdin_from` pipes another command's output into it (docker login)."""

    command: list[str]
    stdin_from: list[str] | None = None

    def text(self) -> str:
        line = shlex.join(self.command)
        return f"{shlex.join(self.stdin_from)} | {line}" if self.stdin_from else line


def add_bundle_option(parser: argparse.ArgumentParser, provider: str) -> None:
    """--bundle: the folder `cloud_setup.sh PROVIDER` built."""
    default = Path("output") / "deployment" / provider
    parser.add_argument("--bundle", type=Path, default=default,
                        help="the bundle folder cloud_setup.sh built (default: %(default)s)")


def add_image_options(parser: argparse.ArgumentParser, default_name: str) -> None:
    """The options every AWS deploy takes: the account (explicit, never guessed), the region,
    the repository name and the image tag."""
    parser.add_argument("--aws-account-id", default=None,
                        help="the account to push to; without it the commands are only printed")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION")
                        or os.environ.get("AWS_DEFAULT_REGION"),
                        help="AWS region (default: $AWS_REGION, else $AWS_DEFAULT_REGION)")
    parser.add_argument("--name", default=default_name,
                        help="ECR repository and resource name (default: %(default)s)")
    parser.add_argument("--image-tag", default="latest", help="default: %(default)s")


def registry(account_id: str | None, region: str | None) -> str:
    return (f"{account_id or ACCOUNT_PLACEHOLDER}.dkr.ecr.{region or REGION_PLACEHOLDER}"
            ".amazonaws.com")


def image_uri(args: argparse.Namespace) -> str:
    return f"{registry(args.aws_account_id, args.region)}/{args.name}:{args.image_tag}"


def push_steps(bundle: Path, args: argparse.Namespace, *, create_repository: bool = True
               ) -> list[Step]:
    """Create the repository (if missing; else Terraform owns it), log in, build for x86_64,
    tag and push."""
    region = args.region or REGION_PLACEHOLDER
    local = f"{args.name}:{args.image_tag}"
    create = [Step(["aws", "ecr", "create-repository", "--repository-name", args.name,
                    "--region", region])] if create_repository else []
    return [
        *create,
        Step(["docker", "login", "--username", "AWS", "--password-stdin",
              registry(args.aws_account_id, args.region)],
             stdin_from=["aws", "ecr", "get-login-password", "--region", region]),
        Step(["docker", "build", "--platform", "linux/amd64", "-t", local, str(bundle)]),
        Step(["docker", "tag", local, image_uri(args)]),
        Step(["docker", "push", image_uri(args)]),
    ]


def docker_ready() -> bool:
    """True if a Docker engine answers (`docker info`), not merely the client is installed."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True,  # nosec B603
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing_for_running(args: argparse.Namespace) -> list[str]:
    """Why the steps would only be printed: the account not named, no region, no engine."""
    reasons = []
    if not args.aws_account_id:
        reasons.append("no --aws-account-id given")
    if not args.region:
        reasons.append("no --region (or AWS_REGION) given")
    if not reasons and not docker_ready():
        reasons.append("no Docker engine answers `docker info`")
    return reasons


def run_or_print(steps: Sequence[Step], reasons: Sequence[str], title: str) -> int:
    """Run the steps in order (stop at the first failure) if nothing is missing; else print
    them and return 0: the bundle is ready and the commands say what is left to do."""
    if reasons:
        print(f"{title}: not run ({'; '.join(reasons)}). These commands do it:\n")
        for step in steps:
            print(f"  {step.text()}")
        print()
        return 0
    for step in steps:
        print(f"+ {step.text()}", flush=True)
        if _run(step) != 0:
            print(f"error: failed: {step.text()}", file=sys.stderr)
            return 1
    return 0


def _run(step: Step) -> int:
    if step.command[:3] == ["aws", "ecr", "create-repository"]:
        described = subprocess.run(  # nosec B603 B607
            ["aws", "ecr", "describe-repositories", "--repository-names",
             step.command[4], "--region", step.command[6]], capture_output=True)
        if described.returncode == 0:
            return 0  # the repository exists already: nothing to create
    if step.stdin_from is None:
        return subprocess.run(step.command).returncode  # nosec B603
    source = subprocess.run(step.stdin_from, capture_output=True)  # nosec B603
    if source.returncode != 0:
        return source.returncode
    return subprocess.run(step.command, input=source.stdout).returncode  # nosec B603
