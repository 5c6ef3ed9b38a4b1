"""What `copier copy` and `copier update` run in a project made from this template (copier.yml's
`_tasks`): name the package, name the project, draft the config from the user's data file.

    python executables/copier_tasks.py package NEW_NAME
    python executables/copier_tasks.py project-name NAME
    python executables/copier_tasks.py draft DATA_FILE --target COLUMN [--positive-class VALUE]
    (an option given an empty value is left out: copier passes every question's answer)

Copier renders the template with its package folder called `ml_project` (the repository stays
runnable as it is), then runs these in the new project. `package` converges the tree on the
chosen name: it renames the folder and every mention, as executables/rename_project.py does, and
it also runs where copier renders a later version over a project already renamed (`copier
update`), moving the freshly rendered modules into the package and renaming their mentions, so
that copier's three-way merge compares trees named alike. Standard library only: copier's own
Python runs it, before the project has an environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess  # nosec B404
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, by copier
from executables.rename_environment import Refused  # noqa: E402
from executables.rename_project import check_name, renamed_contents  # noqa: E402

SKIPPED = {".git", ".venv", ".tools", "__pycache__"}
PROJECT_NAME = re.compile(r"^project_name:.*$", re.M)
TRACKING_NAMES = {key: re.compile(rf"^(\s+){key}:.*$", re.M)  # indented: under tracking:
                  for key in ("experiment_name", "registered_model_name")}


def listed_files(root: Path) -> list[str]:
    """The project's files as git sees them (tracked, and untracked but not ignored): those of
    the repository `root` lies in, or, before `git init`, of `root` read with a throwaway git
    directory. Ignored files (outputs, environments, models) are never touched."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root,  # nosec
                            capture_output=True, text=True, check=False)
    with tempfile.TemporaryDirectory() as scratch:
        if inside.stdout.strip() != "true":
            subprocess.run(["git", "init", "-q", "--bare", scratch], check=True)  # nosec
            command[1:1] = [f"--git-dir={scratch}", f"--work-tree={root}"]
        result = subprocess.run(command, cwd=root, capture_output=True, check=False)  # nosec
    if result.returncode != 0:
        raise Refused(f"git ls-files failed in {root}: {result.stderr.decode().strip()}")
    return [name for name in result.stdout.decode().split("\0") if name]


def converge(root: Path, new: str) -> str:
    """Make `root` a project whose package is `new`; returns what was done, in a sentence.

    The package's current name is pyproject.toml's [project] name (what copier just rendered).
    A fresh copy holds only that folder: it is renamed. A project copier updated holds both the
    freshly rendered folder and the user's, already renamed: each rendered file replaces its
    counterpart (copier then applies the user's own changes on top), and files only the user
    has stay."""
    old = tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"]
    if old == new:
        return f"the package is {new}: nothing to rename"
    source, target = root / old, root / new
    if not source.is_dir():
        raise Refused(f"pyproject.toml names the package {old!r} but {source} is no folder")
    if not target.exists():
        check_name(new, old, root)
    contents = renamed_contents(root, old, new, listed_files(root))
    for name, content in contents.items():
        (root / name).write_bytes(content)
    moved = 0
    for directory, folders, files in os.walk(source):
        folders[:] = [name for name in folders if name not in SKIPPED]
        for name in files:
            path = Path(directory, name)
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
            moved += 1
    shutil.rmtree(source)
    return f"renamed the package {old} -> {new}: {moved} modules moved, {len(contents)} files"


def set_project_name(root: Path, name: str, package: str) -> str:
    """`project_name:` of project_config.yaml set to `name` (a JSON string is a YAML string),
    and the MLflow experiment and registered model named after the package (the example's
    `churn` would otherwise name another project's runs); every other line and comment kept."""
    if not name.strip():
        raise Refused("the project name is empty")
    path = root / "project_config.yaml"
    text = path.read_text(encoding="utf-8")
    settings = {PROJECT_NAME: f"project_name: {json.dumps(name)}",
                TRACKING_NAMES["experiment_name"]: f"experiment_name: {package}",
                TRACKING_NAMES["registered_model_name"]: f"registered_model_name: {package}_model"}
    for pattern, line in settings.items():
        found = pattern.search(text)
        if not found:
            raise Refused(f"{path} has no line {pattern.pattern!r} to set")
        indent = found[1] if found.groups() else ""
        text = text[:found.start()] + indent + line + text[found.end():]
    path.write_text(text, encoding="utf-8")
    return f"project_name: {name}; MLflow experiment {package}, registered model {package}_model"


def draft(root: Path, options: list[str]) -> str:
    """Draft project_config.yaml from the user's data file with executables/draft_config.py,
    in the project's environment: its .venv if it has one, else this interpreter if it can
    (copier installed beside the project's packages), else the environment is installed first
    (`pipenv sync`, what the quickstart does anyway)."""
    arguments = [option for option, value in zip(options, [*options[1:], ""])
                 if option != "" and not (option.startswith("--") and value == "")]
    if arguments and not arguments[0].startswith("--"):  # the data file: ~ as a shell reads it
        arguments[0] = os.path.expanduser(arguments[0])
    command = ["executables/draft_config.py", *arguments, "--update-config",
               "project_config.yaml", "--no-input"]
    if (root / ".venv" / "bin" / "python").is_file():
        run = [str(root / ".venv" / "bin" / "python"), *command]
    elif subprocess.run([sys.executable, "-c", "import pandas, pandera, yaml, sklearn"],  # nosec
                        capture_output=True, check=False).returncode == 0:
        run = [sys.executable, *command]
    else:
        print("Installing the project's environment to draft the config (pipenv sync)...",
              file=sys.stderr)
        run = ["bash", "-c", 'source executables/bootstrap_pipenv.sh && pipenv sync && '
               'exec pipenv run python "$@"', "draft", *command]
    environment = {**os.environ, "PYTHONPATH": str(root)}
    if subprocess.run(run, cwd=root, env=environment, check=False).returncode != 0:  # nosec
        # Not a failed copy (copier would delete the project): the example's config stays.
        return ("warning: project_config.yaml was NOT drafted (the reason is above); it is "
                "still the example's. Draft it again: pipenv run python "
                "executables/draft_config.py --help")
    return "project_config.yaml drafted from the data file: review its REVIEW comments"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("package", help="name the package").add_argument("name")
    naming = commands.add_parser("project-name", help="set project_name and the MLflow names")
    naming.add_argument("name")
    naming.add_argument("--package", required=True, help="the package's name")
    commands.add_parser("draft", help="draft project_config.yaml (draft_config.py's options)",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "draft":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    root = Path.cwd()
    try:
        if args.command == "package":
            done = converge(root, args.name)
        elif args.command == "project-name":
            done = set_project_name(root, args.name, args.package)
        else:
            done = draft(root, rest)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
