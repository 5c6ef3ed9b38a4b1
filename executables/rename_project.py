"""Rename the package (ml_project, or whatever pyproject.toml's [project] name is now) to NEW_NAME:
the folder, imports, pyproject.toml, the Pipfile entry and its lock, configs, deployment files,
docs, scripts and tests; environment variables (ML_PROJECT_API_KEY...) too.

    bash executables/rename_project.sh NEW_NAME   # or python3 executables/rename_project.py NEW_NAME

- Refused: a name that would shadow, or be shadowed by, a module of the project's environment,
  whichever Python runs this (the standard library; every package of Pipfile.lock, its modules
  recorded in rename_project_modules.json, plus what the project's .venv reports; the bundles'
  and scripts' own modules), or that is no lowercase identifier, or longer than MAX_LENGTH.
- Atomic: the renamed project is built beside the project folder (unchanged files hard-linked),
  then the two are swapped in one system call: a kill at any moment leaves one or the other.
- Refused while models exist (exported artifacts, the MLflow store, deployment bundles): pickled,
  they name the old package's modules. The refusal prints the commands: clear, rename, retrain.
- Undone exactly: the tree must be clean, and the undo printed moves the folder back and resets
  the tracked files to the commit. (`--record-modules` rewrites the record from this environment.)
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import keyword
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess  # nosec B404
import sys
from collections.abc import Iterable
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # before Python 3.11
    raise SystemExit("error: run it with Python 3.11 or later, as the project") from None

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as a file (`python executables/rename_project.py`, -I too)
    sys.path.insert(0, str(ROOT))
    sys.dont_write_bytecode = True  # no __pycache__ left in the tree it renames (or refuses)
from executables.rename_environment import (  # noqa: E402  (the project is on the path now)
    Refused,
    importable_modules,
    record_modules,
)

MAX_LENGTH = 40  # a SageMaker model is NAME-TAG-TIMESTAMP, 63 characters at most
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
# Module names Python or its tools give a meaning of their own, though no package installs them.
SPECIAL = {"sitecustomize": "a module Python imports at start-up", "usercustomize": "a module "
           "Python imports at start-up", "conftest": "pytest's name for its plugin files"}
# Folders whose scripts run as `python FOLDER/script.py`, which puts FOLDER first on the path.
SCRIPT_FOLDERS = ("use_cases", "executables")
STAGE = ".{name}.renaming"  # beside the project: the renamed tree, then the old one
# What runs leave that holds models (the exported artifacts, the MLflow store and its files, the
# deployment bundles), each removed by executables/clear_outputs.sh.
MODEL_STORES = ("data/model_artifacts", "mlflow.db", "mlruns", "mlartifacts", "output/deployment")
MODELLING = "pipenv run python use_cases/modelling_historic_data_local.py"


def entry_modules(root: Path) -> dict[str, str]:
    """Names that sit beside the package where it runs, each with where it comes from: every
    module, file and folder of a deployment bundle's root (main.py, lambda_function.py, serve;
    compared case-insensitively, as some file systems do) and the modules of the folders whose
    scripts run directly (use_cases/, executables/)."""
    found: dict[str, str] = {"model_artifacts": "a bundle's folder for an outside champion"}
    for provider in sorted(path for path in (root / "deployment").iterdir() if path.is_dir()):
        for path in sorted(provider.iterdir()):  # modules, and names a folder cannot share
            name = path.stem if path.suffix == ".py" else path.name
            found.setdefault(name.lower(), f"{path.relative_to(root)} lies beside the package "
                                           f"at the root of the {provider.name} bundle")
    for folder in SCRIPT_FOLDERS:
        for path in sorted((root / folder).glob("*.py")):
            found.setdefault(path.stem.lower(), (
                f"{path.relative_to(root)} is a script: running it puts {folder}/ first on "
                "the import path"))
    return found


def check_name(new: str, old: str, root: Path) -> None:
    """Refuse any name the project cannot take safely, saying why (exit code 2)."""
    if not NAME.fullmatch(new):
        raise Refused(f"{new!r} is not a lowercase Python identifier of words joined by single "
                      "underscores (a-z and 0-9, starting with a letter): dashed, it also names "
                      "the distribution and cloud resources")
    if len(new) > MAX_LENGTH:
        raise Refused(f"{new[:20]!r}... is {len(new)} characters long, more than {MAX_LENGTH}: "
                      "dashed, it names cloud resources (a SageMaker model NAME-TAG-TIMESTAMP, "
                      "Kubernetes objects, a Lambda's role), which allow 63")
    if keyword.iskeyword(new) or keyword.issoftkeyword(new):
        raise Refused(f"{new!r} is a Python keyword")
    if new == old:
        raise Refused(f"the package is already called {old!r}")
    taken = {path.name.lower() for path in root.iterdir()} | {
        path.stem.lower() for path in root.glob("*.py")}
    if new in taken:
        raise Refused(f"{new!r} already exists in the project folder")
    if new in SPECIAL:
        raise Refused(f"{new!r} is {SPECIAL[new]}")
    entries = entry_modules(root)
    if new in entries:
        raise Refused(f"{new!r} would be shadowed: {entries[new]}")
    stdlib, installed = importable_modules(root)
    if new in stdlib:
        raise Refused(f"{new!r} is a standard library module: imports of it would be ambiguous")
    if new in installed:
        raise Refused(f"{new!r} is a module of {', '.join(sorted(installed[new]))} "
                      "(Pipfile.lock): imports of it would be ambiguous")


def check_no_models(root: Path, old: str, new: str) -> None:
    """Refuse while models exist (exit code 1): pickled, they name the classes and feature steps
    of `old`'s modules, and would not load under `new`. Re-exporting them would mean new
    registry versions, with checksums and trusted types of their own: a retrain's work."""
    found = [name for name in MODEL_STORES if _holds_anything(root / name)]
    if found:
        raise Refused(
            f"models saved under the package name {old!r} exist ({', '.join(found)}): they refer "
            f"to its modules by name and would not load once it is {new!r}. Remove them, rename, "
            f"and retrain: bash executables/clear_outputs.sh --yes && bash "
            f"executables/rename_project.sh {new} && pipenv sync --dev && {MODELLING}", code=1)


def _holds_anything(path: Path) -> bool:
    try:
        return path.is_file() or path.is_dir() and any(path.iterdir())
    except OSError:  # unreadable: it may hold models
        return True


def pipfile_hash(text: str) -> str:
    """Pipenv's hash of a Pipfile (plette's Pipfile.get_hash), kept in Pipfile.lock's _meta."""
    pipfile = tomllib.loads(text)
    data = {"_meta": {"sources": pipfile["source"], "requires": pipfile.get("requires", {})},
            "default": pipfile.get("packages", {}), "develop": pipfile.get("dev-packages", {})}
    content = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(content.encode("utf8")).hexdigest()


def git(root: Path, *arguments: str) -> bytes:
    result = subprocess.run(["git", *arguments], cwd=root, capture_output=True,  # nosec B603 B607
                            check=False)
    if result.returncode != 0:
        raise Refused(f"git {' '.join(arguments)} failed in {root}: "
                      f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def renamed_contents(root: Path, old: str, new: str,
                     names: Iterable[str] | None = None) -> dict[str, bytes]:
    """The new bytes of every text file the rename changes (the tracked ones, or `names`), by
    its path (as it is now), line endings kept; Pipfile.lock's hash of the Pipfile updated if
    it was in sync."""
    # A name starts a word, or follows a string's escape (the `ml_project` of "...\nml_project").
    escape = r"(?<=\\[abfnrtv])"
    start, dashed_start = rf"(?:(?<!\w)|{escape})", rf"(?:(?<![\w-])|{escape})"
    replacements = [
        (re.compile(rf"{start}{old}\b"), new),  # imports, paths, settings; not ml_project_template
        (re.compile(rf"{dashed_start}{re.escape(old.replace('_', '-'))}(?![\w-])"),
         new.replace("_", "-")),  # the distribution name in Pipfile and Pipfile.lock
        (re.compile(rf"{start}{old.upper()}_(?=[A-Z*])"), f"{new.upper()}_"),  # ML_PROJECT_API_KEY
    ]
    changed: dict[str, bytes] = {}
    if names is None:
        names = git(root, "ls-files", "-z").decode().split("\0")
    for name in names:
        path = root / name
        if not name or path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # images and other binaries
            continue
        renamed = text
        for pattern, replacement in replacements:
            renamed = pattern.sub(replacement, renamed)
        if renamed != text:
            changed[name] = renamed.encode("utf-8")
    if "Pipfile" in changed and (root / "Pipfile.lock").is_file():
        lock = changed.get("Pipfile.lock", (root / "Pipfile.lock").read_bytes()).decode()
        before = pipfile_hash((root / "Pipfile").read_text())
        if json.loads(lock)["_meta"]["hash"]["sha256"] == before:  # else a stale lock stays stale
            after = pipfile_hash(changed["Pipfile"].decode())
            changed["Pipfile.lock"] = lock.replace(before, after).encode()
    return changed


def moved(relative: Path, old: str, new: str) -> Path:
    """Where a path relative to the project lies once the package folder is renamed."""
    return Path(new, *relative.parts[1:]) if relative.parts[:1] == (old,) else relative


def build_renamed_tree(root: Path, tree: Path, old: str, new: str, contents: dict[str, bytes],
                       links: dict[str, str]) -> None:
    """`root` as it will be, at `tree`: the package folder (untracked files and all) under its
    new name, changed files written anew, changed links relinked, every other file hard-linked
    (the same file, no copy), other links and modes as they are."""
    modes: list[tuple[Path, int]] = []
    for directory, folders, files in os.walk(root):  # links to folders are listed, not walked
        relative = Path(directory).relative_to(root)
        target = tree / moved(relative, old, new)
        target.mkdir()
        modes.append((target, stat.S_IMODE(os.stat(directory).st_mode)))
        for name in [*folders, *files]:
            source, destination = Path(directory, name), target / name
            if source.is_symlink():
                key = (relative / name).as_posix()
                os.symlink(links.get(key) or os.readlink(source), destination)
            elif name in files:
                key = (relative / name).as_posix()
                if key in contents:
                    destination.write_bytes(contents[key])
                    shutil.copymode(source, destination)
                else:
                    _link(source, destination)
    for path, mode in reversed(modes):  # after filling them: a read-only folder takes no file
        os.chmod(path, mode)


def renamed_links(root: Path, old: str, new: str) -> dict[str, str]:
    """The new target of every tracked symlink into the package folder, by its path: it follows
    the folder, absolute or relative as it was. (git restores tracked links on undo; an
    untracked link is the user's, and kept as it is, as untracked files are.)"""
    changed: dict[str, str] = {}
    for line in git(root, "ls-files", "-s", "-z").decode().split("\0"):
        mode, _, rest = line.partition(" ")
        name = rest.partition("\t")[2]
        if mode != "120000" or not (root / name).is_symlink():
            continue
        link = root / name
        target = os.readlink(link)
        resolved = Path(os.path.normpath(link.parent / target))
        if not resolved.is_relative_to(root / old):
            continue
        renamed = root / moved(resolved.relative_to(root), old, new)
        changed[name] = str(renamed) if os.path.isabs(target) else os.path.relpath(
            renamed, root / moved(link.parent.relative_to(root), old, new))
    return changed


def _link(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except PermissionError:  # another user's file (protected_hardlinks): a copy is as good
        shutil.copy2(source, destination)
    except OSError as err:  # EXDEV: a mount inside the project
        raise Refused(f"cannot link {source} into the renamed tree: {err}") from err


AT_FDCWD = -100
RENAME_EXCHANGE = 2  # Linux renameat2's flag
RENAME_SWAP = 2  # macOS renamex_np's flag


def exchange(first: Path, second: Path) -> None:
    """Swap two paths in one system call: each process sees one tree or the other, never both
    nor neither, whenever this one is killed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):  # Linux
        result = libc.renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second),
                                RENAME_EXCHANGE)
    elif hasattr(libc, "renamex_np"):  # macOS
        result = libc.renamex_np(os.fsencode(first), os.fsencode(second), RENAME_SWAP)
    else:
        raise Refused("this system has no call that swaps two folders atomically (Linux "
                      "renameat2, macOS renamex_np): nothing was renamed")
    if result != 0:
        code = ctypes.get_errno()
        raise Refused(f"cannot swap {first} and {second} atomically ({os.strerror(code)}): "
                      "nothing was renamed")


def _remove(folder: Path) -> None:
    """Remove `folder` and all in it, read-only folders too (made writable first: only folders,
    never a file, whose inode the other tree shares)."""
    if not folder.exists():
        return
    os.chmod(folder, 0o700)
    for directory, folders, _ in os.walk(folder):
        for name in folders:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o700)
    shutil.rmtree(folder)


def rename(root: Path, old: str, new: str, contents: dict[str, bytes],
           links: dict[str, str]) -> None:
    """Build the renamed tree beside `root`, swap the two, remove the old one."""
    stage = root.parent / STAGE.format(name=root.name)
    marker = stage / "rename.json"
    if stage.exists() and not marker.is_file():
        raise Refused(f"{stage} exists and is not a rename's: remove it first")
    _remove(stage)  # what a killed rename left, outside the project
    if not os.access(root.parent, os.W_OK) or os.stat(root).st_dev != os.stat(root.parent).st_dev:
        raise Refused(f"the renamed project is built beside it, in {root.parent}, and swapped "
                      "with it: that folder must be writable and on the project's file system "
                      "(the project folder may not be a mount point)")
    for number in (signal.SIGTERM, signal.SIGHUP):  # stop by unwinding: the stage is removed
        signal.signal(number, lambda received, frame: sys.exit(128 + received))
    try:
        stage.mkdir()
        marker.write_text(json.dumps({"project": str(root), "old": old, "new": new}))
        (stage / "a").mkdir()
        (stage / "b").mkdir()
        exchange(stage / "a", stage / "b")  # refused here, before seconds of work, if unsupported
        build_renamed_tree(root, stage / "tree", old, new, contents, links)
        exchange(root, stage / "tree")
    finally:
        _remove(stage)  # the new tree if it was not swapped in, else the old one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("new_name", nargs="?", help="the package's new name")
    parser.add_argument("--record-modules", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.new_name or args.record_modules):
        parser.error("NEW_NAME is required")
    new = args.new_name
    try:
        if args.record_modules:
            return record_modules()
        old = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
        check_name(new, old, ROOT)
        check_no_models(ROOT, old, new)
        if git(ROOT, "status", "--porcelain"):
            raise Refused("the git tree has uncommitted changes: commit or stash them first, "
                          "so the rename can be reviewed and undone on its own", code=1)
        commit = git(ROOT, "rev-parse", "--short", "HEAD").decode().strip()
        contents = renamed_contents(ROOT, old, new)
        links = renamed_links(ROOT, old, new)
        rename(ROOT, old, new, contents, links)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except (KeyboardInterrupt, SystemExit):
        renamed = (ROOT / new).is_dir() and not (ROOT / old).exists()
        print(f"\nInterrupted: {'the rename is complete' if renamed else 'nothing was renamed'}.",
              file=sys.stderr)
        return 130
    print(f"Renamed {old} -> {new}: the folder and {len(contents) + len(links)} files. Review "
          "it with `git add -A && git diff --staged -M`.")
    print(f"Undo, before you commit anything else: cd {shlex.quote(str(ROOT))} && mv {new} {old} "
          f"&& git reset -q --hard {commit}")
    print("The project folder was replaced by the renamed one: in a shell that was in it, run "
          "`cd \"$PWD\"`. Next: `pipenv sync --dev` (the package under its new name), "
          "`bash cicd_pipeline.sh`, and commit.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
