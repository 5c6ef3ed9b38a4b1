"""The format versions of project_config.yaml: an older file is read as the current format (the
config loader), and rewritten in place with its comments kept (executables/migrate_config.py,
which `copier update` runs when it brings a project past a format change).

A file names its format with `config_version:`; a file without one predates the key (format 1).
Each step below turns a format into the next; a step only adds or sets keys, so the rewrite can
insert lines where a person would, and proves itself by reading the result back.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

CONFIG_VERSION = 2  # the format this code reads; a step below for every one before it
FIRST_VERSION = 1  # a file without config_version
MIGRATE_COMMAND = "python executables/migrate_config.py"

Content = dict[str, Any]
Key = tuple[str, ...]  # (top-level key,) or (section, key)
Step = Callable[[Content], tuple[Content, dict[Key, str]]]


class MigrationError(ValueError):
    """The file's format cannot be read or rewritten; the message says what to do."""


def _to_2(content: Content) -> tuple[Content, dict[Key, str]]:
    """Format 2: a binary task names its positive class; format 1 took the last target class."""
    columns = content.get("columns")
    if content.get("task") != "binary_classification" or not isinstance(columns, dict):
        return content, {}
    classes = columns.get("target_classes")
    if not isinstance(classes, list) or not classes or "positive_class" in columns:
        return content, {}
    return {**content, "columns": {**columns, "positive_class": classes[-1]}}, {
        ("columns", "positive_class"): "f1, ROC AUC and monitoring score this class"}


STEPS: dict[int, Step] = {1: _to_2}  # from format N to N + 1


def version_of(content: Content) -> int:
    """The file's format; a format this code cannot read is refused with what to do."""
    version = content.get("config_version", FIRST_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < FIRST_VERSION:
        raise MigrationError(f"config_version must be a whole number from {FIRST_VERSION} to "
                             f"{CONFIG_VERSION}, not {version!r}")
    if version > CONFIG_VERSION:
        raise MigrationError(
            f"config_version {version} is a format newer than this code reads ({CONFIG_VERSION}): "
            "the file was written for a later version of the template. Update the code "
            "(`copier update --trust` in a project made with copier, or pull the version that wrote it)")
    return version


def migrated(content: Content) -> tuple[Content, dict[Key, str]]:
    """`content` in the current format, and the keys the steps added or set, each with the
    comment that says why (empty if it was current)."""
    changed: dict[Key, str] = {}
    version = version_of(content)
    while version < CONFIG_VERSION:
        content, added = STEPS[version](content)
        changed |= added
        version += 1
        changed[("config_version",)] = "the format of this file (ml_project.config_migrations)"
        content = {**content, "config_version": version}
    return content, changed


def _value(content: Content, key: Key) -> Any:
    return content[key[0]] if len(key) == 1 else content[key[0]][key[1]]


def _inserted(lines: list[str], key: Key, text: str) -> list[str]:
    """`lines` with `key` set to the YAML `text` as a person would: a top-level key's line
    replaced, or a new one above the first key; a section's key first in its block."""
    top = re.compile(rf"^{re.escape(key[0])}\s*:")
    if len(key) == 1:
        for index, line in enumerate(lines):
            if top.match(line):
                return [*lines[:index], f"{key[0]}: {text}\n", *lines[index + 1:]]
        first = next((i for i, line in enumerate(lines) if re.match(r"^[^\s#]", line)), 0)
        return [*lines[:first], f"{key[0]}: {text}\n", *(["\n"] if first else []), *lines[first:]]
    for index, line in enumerate(lines):
        if top.match(line) and re.fullmatch(rf"{re.escape(key[0])}\s*:\s*(#.*)?\n?", line):
            block = [i for i in range(index + 1, len(lines)) if lines[i].strip()
                     and not lines[i].lstrip().startswith("#")]
            if block and lines[block[0]][:1] in (" ", "\t"):
                indent = lines[block[0]][:len(lines[block[0]]) - len(lines[block[0]].lstrip())]
                return [*lines[:index + 1], f"{indent}{key[1]}: {text}\n", *lines[index + 1:]]
    raise MigrationError(f"no block `{key[0]}:` section to add {key[1]} to")


def migrate_file(path: Path) -> list[str]:
    """Rewrite the config file `path` in the current format, comments and layout kept; returns
    the lines set (none if it was current). The result must read back as the migrated content,
    else nothing is written and the error lists the exact edits to make by hand."""
    text = path.read_text(encoding="utf-8")
    content = yaml.safe_load(text) or {}
    if not isinstance(content, dict):
        raise MigrationError(f"{path}: expected a mapping at the top level")
    new, changed = migrated(content)
    if not changed:
        return []
    settings = {key: json.dumps(_value(new, key)) for key in changed}
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        for key, comment in changed.items():
            lines = _inserted(lines, key, f"{settings[key]}  # {comment}")
        rewritten = "".join(lines)
        readable = yaml.safe_load(rewritten) == new
    except (MigrationError, yaml.YAMLError):
        readable = False
    if not readable:
        edits = "; ".join(f"set {'.'.join(key)}: {value}" for key, value in settings.items())
        raise MigrationError(f"{path}: its layout could not be rewritten safely; edit it by hand: "
                             f"{edits}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(rewritten)
    os.chmod(temporary, path.stat().st_mode & 0o777)
    os.replace(temporary, path)
    return [f"{'.'.join(key)}: {value}" for key, value in settings.items()]
