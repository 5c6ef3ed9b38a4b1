"""The documentation names tests as its evidence (reliability.md's tables, above all): each one
named must exist, or a promise would stand on a test that was renamed or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

DOCUMENTS = sorted([PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "documentation").glob("*.md")])
# `tests/test_x.py::test_name[param]`, or `::test_name` continuing the file named before it.
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?(?:\[[^\]`]*\])?`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _references(document: Path) -> list[tuple[str, str | None]]:
    """(test file, test name or None) for each reference, `::name` resolved against the last
    file named in the same line."""
    found = []
    for line in document.read_text(encoding="utf-8").splitlines():
        current = None
        for match in REFERENCE.finditer(line):
            file, name = match.group(1), match.group(2)
            current = file or current
            if current is not None and (file or name):
                found.append((current, name))
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_test_the_documentation_names_exists(document: Path) -> None:
    missing = []
    for file, name in _references(document):
        paths = sorted(PROJECT_ROOT.glob(file)) if "*" in file else [PROJECT_ROOT / file]
        if not paths or not all(path.is_file() for path in paths):
            missing.append(file)
        elif name is not None and not any(name in _test_names(path) for path in paths):
            missing.append(f"{file}::{name}")
    assert not missing, f"{document.name} names tests that do not exist: {missing}"
