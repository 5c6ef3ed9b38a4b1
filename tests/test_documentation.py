"""The documentation cannot drift from the tree: the Layout in documentation/architecture.md names
every folder at the top, every module of the package, every use case, script and deployment file
(and nothing that does not exist); the README's Layout names every folder at the top. And
deployment.md's local runs use what ships: the Heroku Procfile it quotes, honcho from the dev
packages, the Lambda event file it names."""

from __future__ import annotations

import re
import subprocess  # nosec B404: git, on the project's own checkout
import tomllib
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
ARCHITECTURE = PROJECT_ROOT / "documentation" / "architecture.md"
DEPLOYMENT = PROJECT_ROOT / "documentation" / "deployment.md"
PACKAGE = "ml_project"
INDENT = 2  # spaces per level of the Layout's tree


def section(document: Path, heading: str) -> str:
    """The text under `## heading`, up to the next heading of the same level or higher."""
    text = document.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert found, f"{document.name} has no '## {heading}' section"
    return found.group(1)


def layout(document: Path) -> list[str]:
    """The paths the first code block of the document's Layout section names: one entry a line,
    its name the first word, nested under the folder above it by two spaces of indent."""
    block = re.search(r"^```\n(.*?)^```", section(document, "Layout"), re.M | re.S)
    assert block, f"{document.name}: the Layout section has no code block"
    named: list[str] = []
    parents: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % INDENT == 0 and indent // INDENT <= len(parents), (
            f"{document.name}: Layout line out of the tree: {line!r}")
        parents = parents[: indent // INDENT]
        name = line.split()[0]
        named.append("".join(parents) + name)
        if name.endswith("/"):
            parents.append(name)
    return named


def top_level_folders() -> set[str]:
    """The folders at the top of the checkout that git tracks or would (not the ignored ones:
    .venv, mlruns/, caches)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()}): the tracked folders are "
                    "unknown")
    return {path.split("/")[0] + "/" for path in listed.stdout.splitlines() if "/" in path}


def named_in_full() -> set[str]:
    """What the full Layout must name: the top folders, the package's modules and subpackages,
    the use cases, every file of executables/ and everything directly in deployment/."""
    required = top_level_folders()
    package = PROJECT_ROOT / PACKAGE
    for path in package.rglob("*"):
        if "__pycache__" in path.parts or path.name == "__init__.py":
            continue
        if path.is_dir() or path.suffix == ".py":
            required.add(path.relative_to(PROJECT_ROOT).as_posix() + ("/" if path.is_dir() else ""))
    for folder, pattern in (("use_cases", "*.py"), ("executables", "*"), ("deployment", "*")):
        for path in (PROJECT_ROOT / folder).glob(pattern):
            if path.name in ("__init__.py", "__pycache__"):
                continue
            required.add(path.relative_to(PROJECT_ROOT).as_posix() + ("/" if path.is_dir() else ""))
    return required


@pytest.mark.parametrize("document", [README, ARCHITECTURE], ids=lambda path: path.name)
def test_the_layout_names_only_what_exists(document: Path) -> None:
    missing = [name for name in layout(document) if not (PROJECT_ROOT / name).exists()
               or name.endswith("/") != (PROJECT_ROOT / name).is_dir()]
    assert not missing, f"{document.name}'s Layout names what does not exist: {missing}"


def test_the_readme_layout_names_every_top_level_folder() -> None:
    unnamed = top_level_folders() - set(layout(README))
    assert not unnamed, f"README.md's Layout does not name {sorted(unnamed)}"


def test_the_architecture_layout_names_every_module_script_and_deployment_file() -> None:
    unnamed = named_in_full() - set(layout(ARCHITECTURE))
    assert not unnamed, f"documentation/architecture.md's Layout does not name {sorted(unnamed)}"


def test_the_layout_parser_reads_nesting_and_refuses_a_line_out_of_the_tree(
    tmp_path: Path
) -> None:
    """The checks above are only as good as the reading of the tree."""
    document = tmp_path / "doc.md"
    document.write_text("## Layout\n\n```\na/    x\n  b.py  y\n  c/\n    d.py\ne.txt\n```\n"
                        "## Next\n\n```\nnot/\n```\n")
    assert layout(document) == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e.txt"]

    document.write_text("## Layout\n\n```\na.py\n    b.py\n```\n")
    with pytest.raises(AssertionError, match="out of the tree"):
        layout(document)


def test_deployment_md_quotes_the_heroku_procfile_and_honcho_is_a_dev_package() -> None:
    heroku = section(DEPLOYMENT, "heroku")
    procfile = [line for line in (PROJECT_ROOT / "deployment" / "heroku" / "Procfile")
                .read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert procfile
    for line in procfile:
        assert f"\n{line}\n" in heroku, f"deployment.md's heroku section does not quote {line!r}"
    assert "honcho start" in heroku
    pipfile = tomllib.loads((PROJECT_ROOT / "Pipfile").read_text())
    assert "honcho" in pipfile["dev-packages"]


def test_deployment_md_names_the_lambda_event_that_ships() -> None:
    aws_lambda = section(DEPLOYMENT, "aws_lambda")
    assert "python invoke_local.py event.json" in aws_lambda
    assert (PROJECT_ROOT / "deployment" / "aws_lambda" / "event.json").is_file()
