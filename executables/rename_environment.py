"""The modules the project's environment can import, which a new package name must not shadow
(rename_project.py's refusals), and the record of those of every locked distribution
(rename_project_modules.json, rewritten by `python executables/rename_project.py
--record-modules`): a fresh clone's Python has none of them installed, and gives the same verdict.
"""

from __future__ import annotations

import json
import re
import subprocess  # nosec B404
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).with_name("rename_project_modules.json")
BOOTSTRAP = ("pip", "setuptools", "wheel")  # in every virtualenv, locked or not
# The project's environment, asked for what it can import (it knows the installed packages).
ENVIRONMENT_QUERY = """
import importlib.metadata, json, sys
installed = {dist.metadata["Name"]: [] for dist in importlib.metadata.distributions()}
for module, names in importlib.metadata.packages_distributions().items():
    for name in names:
        installed.setdefault(name, []).append(module)
print(json.dumps({"stdlib": sorted(sys.stdlib_module_names), "distributions": installed}))
"""


class Refused(Exception):
    """The rename cannot be done safely; the message says why."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def normalised(distribution: str) -> str:
    """A distribution's name as PEP 503 compares them: scikit_learn, Scikit-Learn: scikit-learn."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def locked_distributions(root: Path) -> dict[str, dict[str, Any]]:
    """Every package of Pipfile.lock, any category, by normalised name; not the project itself
    (the editable `path = "."` entry, which is what is renamed)."""
    lock = json.loads((root / "Pipfile.lock").read_text())
    return {normalised(name): entry for section, packages in lock.items() if section != "_meta"
            for name, entry in packages.items() if entry.get("path") != "."}


def environment_modules(root: Path, python: Path) -> dict[str, Any]:
    """What the environment of `python` reports: its standard library and each installed
    distribution's top-level modules; nothing if it does not exist (a fresh clone's .venv)."""
    if not python.exists():
        return {"stdlib": [], "distributions": {}}
    answer = subprocess.run([str(python), "-I", "-c", ENVIRONMENT_QUERY], cwd=root,  # nosec B603
                            capture_output=True, text=True, timeout=120, check=False)
    if answer.returncode != 0:
        raise Refused(f"{python} cannot list its packages: {answer.stderr.strip()[-500:]}")
    reported: dict[str, Any] = json.loads(answer.stdout)
    return reported


def importable_modules(root: Path) -> tuple[set[str], dict[str, set[str]]]:
    """The project environment's standard library, and the distributions installing each module
    (the record's, the .venv's, and each locked distribution's own name, which most use).

    Raises:
        Refused: a locked distribution neither recorded nor installed: its modules are unknown.
    """
    record = json.loads(RECORD.read_text())
    environment = environment_modules(root, root / ".venv" / "bin" / "python")
    stdlib = {*sys.stdlib_module_names, *record["stdlib"], *environment["stdlib"]}
    known: dict[str, set[str]] = {}
    for source in (record["distributions"], environment["distributions"]):
        for distribution, modules in source.items():
            known.setdefault(normalised(distribution), set()).update(modules)
    locked = [*locked_distributions(root), *BOOTSTRAP]
    unknown = sorted(name for name in locked if name not in known and name not in BOOTSTRAP)
    if unknown:
        raise Refused(f"Pipfile.lock has packages whose modules are unknown here: "
                      f"{', '.join(unknown)} (not in {RECORD.name}, not installed in .venv): "
                      "install them (pipenv sync --dev, and --categories for the others), or run "
                      "`python executables/rename_project.py --record-modules` in an "
                      "environment that has them all")
    by_module: dict[str, set[str]] = {}
    for distribution in locked:
        for module in {*known.get(distribution, ()), distribution.replace("-", "_")}:
            by_module.setdefault(module, set()).add(distribution)
    return stdlib, by_module


def record_modules() -> int:
    """Rewrite RECORD from this environment, which must hold every locked distribution."""
    locked = [*locked_distributions(ROOT), *BOOTSTRAP]
    environment = environment_modules(Path(sys.prefix), Path(sys.executable))
    installed = {normalised(name): modules for name, modules in environment["distributions"].items()}
    missing = [name for name in locked if name not in installed and name not in BOOTSTRAP]
    if missing:
        raise Refused(f"not installed here: {', '.join(missing)}; install every category first")
    RECORD.write_text(json.dumps({
        "written_by": "python executables/rename_project.py --record-modules",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "stdlib": environment["stdlib"],
        "distributions": {name: sorted(module for module in installed[name] if module.isidentifier())
                          for name in sorted(set(locked) & set(installed))}}, indent=1) + "\n")
    print(f"Wrote {RECORD.relative_to(ROOT)}")
    return 0
