"""The config file's formats: an older file is read as the current format (and the loader says
how to rewrite it), rewritten in place with its comments kept, or refused with what to do."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_project.config import PROJECT_ROOT, ConfigError, load_config
from ml_project.config_migrations import (
    CONFIG_VERSION,
    MigrationError,
    migrate_file,
    migrated,
    version_of,
)

FIXTURE = Path(__file__).with_name("fixture_config.yaml")


def format_1(text: str) -> str:
    """The tests' config as format 1 wrote it: no config_version, no positive_class."""
    lines = [line for line in text.splitlines(keepends=True)
             if not line.startswith("config_version:") and "positive_class:" not in line]
    return "".join(lines)


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "project_config.yaml"
    path.write_text(format_1(FIXTURE.read_text()))
    return path


def test_format_1_becomes_format_2_with_the_positive_class_it_used_to_imply() -> None:
    binary = {"task": "binary_classification", "columns": {"target_classes": ["ok", "fraud"]}}

    current, changed = migrated(binary)

    assert current == {"task": "binary_classification", "config_version": 2,
                       "columns": {"target_classes": ["ok", "fraud"], "positive_class": "fraud"}}
    assert set(changed) == {("columns", "positive_class"), ("config_version",)}
    assert migrated(current) == (current, {})
    regression = {"task": "regression", "columns": {"target_classes": []}}
    assert migrated(regression)[0] == {**regression, "config_version": 2}


@pytest.mark.parametrize(("version", "message"), [
    (CONFIG_VERSION + 1, "newer than this code reads .*copier update"),
    (0, "whole number from 1"),
    ("2", "whole number from 1"),
    (True, "whole number from 1"),
    (1.5, "whole number from 1"),
])
def test_a_format_this_code_cannot_read_is_refused_with_what_to_do(version: Any,
                                                                    message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        version_of({"config_version": version})


def test_the_rewrite_keeps_every_line_and_comment_and_reads_back_as_the_migrated_file(
    old_file: Path
) -> None:
    before = old_file.read_text()
    old_file.chmod(0o640)

    changed = migrate_file(old_file)

    after = old_file.read_text()
    assert changed == ["columns.positive_class: 1", "config_version: 2"]
    assert yaml.safe_load(after) == migrated(yaml.safe_load(before))[0]
    remaining = iter(after.splitlines())
    assert all(line in remaining for line in before.splitlines())  # each, in order
    assert stat.S_IMODE(old_file.stat().st_mode) == 0o640
    assert migrate_file(old_file) == [] and old_file.read_text() == after


def test_a_layout_the_rewrite_cannot_follow_is_left_unchanged_with_the_edits_to_make(
    tmp_path: Path
) -> None:
    path = tmp_path / "project_config.yaml"
    content = yaml.safe_load(format_1(FIXTURE.read_text()))
    path.write_text(yaml.safe_dump(content, default_flow_style=True))  # one flow mapping
    before = path.read_text()

    with pytest.raises(MigrationError, match=r"edit it by hand: set columns\.positive_class: 1; "
                                             r"set config_version: 2"):
        migrate_file(path)
    assert path.read_text() == before


def test_the_loader_reads_format_1_as_format_2_and_names_the_command_that_rewrites_it(
    old_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="ml_project.config"):
        config = load_config("modelling", "historic", "local", config_file=old_file,
                             root=tmp_path)

    assert config.positive_class == 1
    assert f"read as format {CONFIG_VERSION}" in caplog.text
    assert f"python executables/migrate_config.py {old_file}" in caplog.text


def test_the_loader_refuses_a_newer_format_naming_the_file(old_file: Path, tmp_path: Path) -> None:
    old_file.write_text(f"config_version: {CONFIG_VERSION + 1}\n" + old_file.read_text())

    with pytest.raises(ConfigError, match=rf"{old_file}: config_version {CONFIG_VERSION + 1} "
                                          "is a format newer"):
        load_config("modelling", "historic", "local", config_file=old_file, root=tmp_path)


def test_the_script_rewrites_a_file_and_says_so(old_file: Path) -> None:
    script = [sys.executable, str(PROJECT_ROOT / "executables" / "migrate_config.py")]

    first = subprocess.run([*script, str(old_file)], capture_output=True, text=True, check=False)
    second = subprocess.run([*script, str(old_file)], capture_output=True, text=True, check=False)
    missing = subprocess.run([*script, str(old_file.with_name("nothing.yaml"))],
                             capture_output=True, text=True, check=False)

    assert first.returncode == 0 and "rewritten in format 2: columns.positive_class: 1" in first.stdout
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert missing.returncode == 2 and "nothing.yaml" in missing.stderr
