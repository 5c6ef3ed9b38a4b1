"""cicd_pipeline.sh installs the system packages its tests need (PostgreSQL, Java) with apt-get
as root, else through sudo, else stops naming the package, as the README says: never apt-get's
lock error for a user who is not root. Its function runs here on stand-ins of id, sudo and
apt-get that record their calls."""

from __future__ import annotations

import re
import subprocess  # nosec B404: bash, on the project's own script
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "cicd_pipeline.sh"


def install_function() -> str:
    found = re.search(r"^install_system_package\(\) \{\n.*?^\}\n", SCRIPT.read_text(), re.M | re.S)
    assert found, "cicd_pipeline.sh has no install_system_package function"
    return found.group(0)


def run(tmp_path: Path, uid: int, tools: tuple[str, ...]) -> tuple[int, str, list[str]]:
    """install_system_package postgresql with only these stand-ins on PATH, as user `uid`: the
    exit status, stderr, and the calls the stand-ins recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    scripts = {"id": f'echo {uid}', "apt-get": f'echo "apt-get $*" >> "{calls}"',
               "sudo": f'echo "sudo $*" >> "{calls}"; exec "$@"'}
    for tool in ("id", *tools):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{scripts[tool]}\n")
        (bin_dir / tool).chmod(0o755)
    result = subprocess.run(["/bin/bash", "-c", install_function()
                             + "set -euo pipefail; install_system_package postgresql"],
                            env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30)
    recorded = calls.read_text().splitlines() if calls.exists() else []
    return result.returncode, result.stderr, recorded


def test_as_root_apt_get_installs_the_package(tmp_path: Path) -> None:
    status, _, calls = run(tmp_path, 0, ("apt-get",))
    assert status == 0
    assert calls == ["apt-get update -qq", "apt-get install -y -qq postgresql"]


def test_a_user_with_sudo_installs_through_sudo(tmp_path: Path) -> None:
    status, _, calls = run(tmp_path, 1000, ("apt-get", "sudo"))
    assert status == 0
    assert calls == ["sudo apt-get update -qq", "apt-get update -qq",
                     "sudo apt-get install -y -qq postgresql", "apt-get install -y -qq postgresql"]


@pytest.mark.parametrize(("uid", "tools"), [(1000, ("apt-get",)), (0, ()), (1000, ("sudo",))],
                         ids=["user-without-sudo", "root-without-apt-get", "sudo-without-apt-get"])
def test_without_a_way_to_install_it_stops_naming_the_package(
    tmp_path: Path, uid: int, tools: tuple[str, ...]
) -> None:
    status, stderr, calls = run(tmp_path, uid, tools)
    assert status == 1
    assert "the tests need postgresql" in stderr and "install it, then run again" in stderr
    assert calls == []
