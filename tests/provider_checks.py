"""Helpers for the serverless providers' tests (Cloud Function, Lambda, SageMaker).

- `python_with_extras`: a provider whose requirements.txt adds its own extras to the serving set
  gets the session's serving virtualenv plus only those extras, installed in an overlay
  virtualenv (the serving one's site-packages on its path, the extras in its own), so CI builds
  the heavy serving set once. What the overlay holds is then exactly the bundle's list, and
  `pip check` proves the list complete, as in a fresh virtualenv.
- Dockerfile and Terraform readers, to check the paths they name against the bundle.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2

from ml_project.config import PROJECT_ROOT
from tests.deployment_helpers import BundleVirtualenvs, bundle_environment

TOOLS = Path(sys.executable).parent


def requirement_names(lines: list[str]) -> list[str]:
    return [line.split(";")[0].split("==")[0].strip().lower() for line in lines
            if line.strip() and not line.startswith("#")]


def python_with_extras(virtualenvs: BundleVirtualenvs, requirements: Path, provider: str,
                       directory: Path) -> Path:
    """A Python whose packages are exactly `requirements` (a bundle's requirements.txt): the
    serving virtualenv (its lines without the provider's extras) plus an overlay holding
    the extras (Pipfile.lock's [serving_PROVIDER] packages the [serving] set lacks)."""
    lock = json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())
    extras = set(lock.get(f"serving_{provider}", {})) - set(lock["serving"])
    lines = requirements.read_text().splitlines(keepends=True)
    extra_lines = [line for line in lines if requirement_names([line]) and
                   requirement_names([line])[0] in extras]
    if not extra_lines:
        return virtualenvs.python_for(requirements)
    serving = directory / "serving-requirements.txt"
    serving.write_text("".join(line for line in lines if line not in extra_lines))
    base = virtualenvs.python_for(serving)
    overlay = directory / f"overlay-{provider}"
    python = overlay / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(overlay)], check=True, timeout=300)
        base_site = subprocess.run(
            [str(base), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        own_site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        (Path(own_site) / "serving_virtualenv.pth").write_text(base_site + "\n")
        extras_file = directory / f"extras-{provider}.txt"
        extras_file.write_text("".join(extra_lines))
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run([*pip, "install", "--no-deps", "-r", str(extras_file)], check=True,
                       timeout=1800, env=bundle_environment(python))
        check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, f"{requirements} is incomplete:\n{check.stdout}"
    return python


def installed_names(python: Path) -> set[str]:
    """The distributions `python` sees, pip and setuptools aside. Isolated (-I): the working
    directory (a project root holds an editable install's egg-info) and PYTHONPATH don't count."""
    names = subprocess.run(
        [str(python), "-I", "-c", "import importlib.metadata as m, json; "
         "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))"],
        check=True, capture_output=True, text=True, timeout=120).stdout
    return {name.lower().replace("_", "-") for name in json.loads(names)} - {"pip", "setuptools"}


def lock_python() -> str:
    """The Python version Pipfile.lock was locked for, e.g. "3.11"."""
    lock = json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())
    return str(lock["_meta"]["requires"]["python_version"])


# Dockerfiles ------------------------------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            logical.append(current.strip())
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def image_environment(parsed: list[tuple[str, str]]) -> dict[str, str]:
    """The final stage's ENV (KEY=VALUE pairs)."""
    final = parsed[max(i for i, (name, _) in enumerate(parsed) if name == "FROM"):]
    environment: dict[str, str] = {}
    for name, arguments in final:
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                environment[key] = value
    return environment


def copy_sources(parsed: list[tuple[str, str]]) -> list[str]:
    """The build-context paths the COPY instructions read (not those from other stages)."""
    sources = []
    for name, arguments in parsed:
        if name == "COPY" and "--from=" not in arguments:
            *from_context, _ = [part for part in shlex.split(arguments)
                                if not part.startswith("--")]
            sources += from_context
    return sources


def last(parsed: list[tuple[str, str]], instruction: str) -> str:
    return [arguments for name, arguments in parsed if name == instruction][-1]


def exec_form(arguments: str) -> list[str]:
    command: list[str] = json.loads(arguments[arguments.index("["):])
    return command


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOLS / "hadolint"), str(dockerfile)], capture_output=True,
                          text=True, timeout=120)


# Terraform --------------------------------------------------------------------------------------

def terraform(path: Path) -> dict[str, Any]:
    """A .tf file parsed by python-hcl2 (raises on a syntax error)."""
    with path.open() as handle:
        parsed: dict[str, Any] = hcl2.load(handle)
    return parsed


def resources(parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`type.name` -> the resource's body."""
    found = {}
    for block in parsed.get("resource", []):
        for kind, named in block.items():
            for name, body in named.items():
                found[f"{kind.strip(chr(34))}.{name.strip(chr(34))}"] = body
    return found


def variables(parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name.strip('"'): body for block in parsed.get("variable", [])
            for name, body in block.items()}


def unquoted(value: Any) -> Any:
    """python-hcl2 keeps a string's quotes: `"python311"` -> python311."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def module_files(tf_file: Path) -> list[str]:
    """The files a .tf file reads next to itself (`${path.module}/NAME`)."""
    return re.findall(r"\$\{path\.module\}/([^\"}\s]+)", tf_file.read_text())
