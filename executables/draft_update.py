"""Write a draft's sections into a project's config file in place, for `draft_config.py`.

Only what a data file can tell changes: the `data`, `columns` and `task` sections,
`engineering.steps`, and `split`, `metric` and `candidates` of `training`. Every other line, comments
included, stays as it was. PyYAML's composer gives the line of every key, so a section is
replaced as the lines from its key to the next one (the comments just above a key describe it
and stay with it). The result replaces the file only once it loads with the project's Config
and the data file validates against it; otherwise the file is left untouched.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import yaml

from ml_project.config import REASON_COLUMN, load_config
from ml_project.ingest import read_table
from ml_project.validate import validate_production_data

# The sections drafted, whole (None) or only some of their keys: a training section's holdout,
# folds, seed and n_jobs are the user's, as are the comments above engineering's steps.
SECTIONS: dict[str, tuple[str, ...] | None] = {
    "data": None, "columns": None, "task": None, "engineering": ("steps",),
    "training": ("split", "metric", "candidates")}
DRAFT_INDENT = 2  # the draft's indentation of a section's keys


class ConfigRefused(ValueError):
    """The drafted config does not load or does not fit its data: the file is unchanged."""


def _aside(line: str) -> bool:
    """A blank or comment line: between two keys, it belongs to the one after it."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _spans(node: yaml.Node, lines: list[str], end: int) -> dict[str, tuple[int, int]] | None:
    """Each key of a block mapping and its lines [first, last), up to `end`; None for any other
    node (a flow mapping `{...}` has no lines of its own per key)."""
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return None
    keys = [(str(key.value), key.start_mark.line) for key, _ in node.value]
    spans = {}
    for index, (name, first) in enumerate(keys):
        last = keys[index + 1][1] if index + 1 < len(keys) else end
        while last > first + 1 and _aside(lines[last - 1]):
            last -= 1
        spans[name] = (first, last)
    return spans


def _value(node: yaml.Node, key: str) -> yaml.Node:
    value: yaml.Node = next(value for name, value in node.value if name.value == key)
    return value


def _keys(name: str, keys: tuple[str, ...], old: yaml.Node, old_lines: list[str],
          span: tuple[int, int], new: yaml.Node, new_lines: list[str],
          new_span: tuple[int, int]) -> list[tuple[int, int, list[str]]]:
    """The replacements of a section's drafted `keys`, its other keys and comments kept; a
    section in flow style (`training: {...}`) is rewritten as a block, its other values kept."""
    old_keys = _spans(old, old_lines, span[1])
    new_keys = _spans(new, new_lines, new_span[1]) or {}  # the draft writes block mappings
    if not old_keys:
        kept = (yaml.safe_load("".join(old_lines[span[0]:span[1]])) or {}).get(name)
        drafted = yaml.safe_load("".join(new_lines[new_span[0]:new_span[1]]))[name]
        block = yaml.safe_dump({name: {**(kept if isinstance(kept, dict) else {}), **drafted}},
                               sort_keys=False, allow_unicode=True)
        return [(*span, block.splitlines(keepends=True))]
    indent = " " * min(key.start_mark.column for key, _ in old.value)
    replacements, missing = [], []
    for key in (key for key in keys if key in new_keys):
        drafted = [indent + line[DRAFT_INDENT:] for line in new_lines[slice(*new_keys[key])]]
        if key in old_keys:
            replacements.append((*old_keys[key], drafted))
        else:
            missing += drafted
    end = max(last for _, last in old_keys.values())
    return replacements + ([(end, end, missing)] if missing else [])


def merge_sections(existing: str, draft: str) -> str:
    """`existing` with the drafted sections of `draft` in place of its own, or added at the
    end where it has none."""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    old_lines, new_lines = existing.splitlines(keepends=True), draft.splitlines(keepends=True)
    old_root = yaml.compose(existing) or yaml.MappingNode("tag:yaml.org,2002:map", [])
    new_root = yaml.compose(draft)
    old = _spans(old_root, old_lines, len(old_lines))
    new = _spans(new_root, new_lines, len(new_lines)) if new_root is not None else None
    if old is None or new is None or new_root is None:
        raise ConfigRefused("the config file's top level is not a mapping of sections")
    replacements: list[tuple[int, int, list[str]]] = []
    added: list[str] = []
    for name, keys in SECTIONS.items():
        if name not in new:
            continue
        drafted = new_lines[slice(*new[name])]
        if name not in old:
            added += ["\n", *drafted]
        elif keys:
            replacements += _keys(name, keys, _value(old_root, name), old_lines, old[name],
                                  _value(new_root, name), new_lines, new[name])
        else:
            replacements.append((*old[name], drafted))
    for first, last, lines in sorted(replacements, key=lambda item: item[0], reverse=True):
        old_lines[first:last] = lines
    return "".join(old_lines + added)


def update_config(config_file: Path, draft: str, root: Path) -> str:
    """Write the draft's sections into `config_file` (atomically) once the result loads with
    the project's Config and its historic file validates; a summary to print.

    Raises:
        ConfigRefused: the result does not load, or the data does not fit it; nothing written.
    """
    if yaml.safe_load(draft)["columns"]["id"] is None:
        raise ConfigRefused("no column of the data file is unique in every row and never "
                            "missing, and the config needs an id: add one to your files (e.g. "
                            "table.insert(0, 'row_id', range(len(table)))) or name it with --id; "
                            f"{config_file} is unchanged")
    try:
        text = merge_sections(config_file.read_text(encoding="utf-8"), draft)
    except yaml.YAMLError as err:
        raise ConfigRefused(f"{config_file}: not valid YAML: {err}") from err
    handle, temporary = tempfile.mkstemp(dir=config_file.parent, suffix=".yaml",
                                         prefix=f".{config_file.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        config = load_config("modelling", "historic", "local", config_file=temporary, root=root)
        historic = config.resolve(config.data.historic)
        result = validate_production_data(read_table(historic, config), config,
                                          with_target=True)
        os.chmod(temporary, stat.S_IMODE(config_file.stat().st_mode))
        os.replace(temporary, config_file)
    except (ValueError, OSError, KeyError) as err:
        raise ConfigRefused(f"{str(err).replace(temporary, str(config_file))}\n"
                            f"{config_file} is unchanged") from err
    finally:
        Path(temporary).unlink(missing_ok=True)
    rows = len(result.valid) + len(result.quarantined)
    quarantined = (f"; {len(result.quarantined):,} quarantined, first reason: "
                   f"{result.quarantined.iloc[0][REASON_COLUMN]}"
                   if len(result.quarantined) else "")
    drafted = ", ".join(name + (f" ({', '.join(keys)})" if keys else "")
                        for name, keys in SECTIONS.items())
    return (f"Updated {config_file}: {drafted}, from {historic}: {len(result.valid):,} of {rows:,} "
            f"rows valid{quarantined}. Review every line marked REVIEW.")
