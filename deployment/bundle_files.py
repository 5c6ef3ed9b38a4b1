"""Which files of the project a deployment bundle carries, found before anything is written:
the package's modules a provider's entry point runs (`serving_modules`), the provider's own
files (`provider_files`), each checked to stay inside the project (`inside`).

A symlink is followed only while it stays inside the project: a link in `deployment/PROVIDER/`
to `~/.aws/credentials` would otherwise ship that file's content to a cloud. A link leaving the
project, a dangling link or a loop of links is refused by name; an outside folder (a model
store on another disk) is named in the config instead, where it is explicit.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any, Iterable

PACKAGE = "ml_project"
# Provider files that are tooling, run from the checkout (`run_deploy_script`), never shipped.
NOT_SHIPPED = ("deploy.py",)
# The one import on the serving path a bundle never takes: `prediction.model_source: registry`
# (the bundle's config always serves the local champion it carries, `bundle_config_text`).
NOT_FOLLOWED = ("ml_project.registry",)
MODULE_NAME = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class OutsideProject(ValueError):
    """A file a bundle would carry is, or links to, something outside the project."""


def inside(path: Path, root: Path) -> Path:
    """The file or folder `path` resolves to, when that is inside `root`.

    Raises:
        OutsideProject: a link (anywhere along `path`) leaving `root`, dangling, or in a loop.
    """
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # RuntimeError: a loop, before Python 3.13
        raise OutsideProject(f"{path}: a symlink that cannot be followed ({err})") from err
    if not resolved.is_relative_to(root.resolve()):
        raise OutsideProject(
            f"{path} links to {resolved}, outside the project {root}: a bundle carries the "
            "project's own files only; copy the file into the project (or name an outside "
            "model folder in the config's paths.model_artifacts)")
    return resolved


def provider_files(folder: Path, root: Path) -> dict[Path, Path]:
    """Every file of `folder` (a provider's), by its path relative to it, as the file inside
    `root` it resolves to: links inside the project followed, folders too, loops refused."""
    found: dict[Path, Path] = {}
    chains: dict[str, tuple[Path, ...]] = {str(folder): (inside(folder, root),)}  # ancestry
    for directory, folders, files in os.walk(folder, followlinks=True):
        chain = chains[directory]
        folders[:] = [name for name in folders if name != "__pycache__"]
        for name in folders:
            resolved = inside(Path(directory, name), root)
            if resolved in chain:
                raise OutsideProject(f"{Path(directory, name)} links to {resolved}, a folder "
                                     "that holds it: a loop of links")
            chains[os.path.join(directory, name)] = (*chain, resolved)
        for name in files:
            path = Path(directory, name)
            if name not in NOT_SHIPPED:
                found[path.relative_to(folder)] = inside(path, root)
    return dict(sorted(found.items()))


def module_file(package_root: Path, name: str) -> Path | None:
    """The file of module `name` (`ml_project.serving.launcher`) under the folder holding the
    package, a package's `__init__.py` for a package; None if `name` is no module of it (a
    name after the module, as in `ml_project.engineer.tenure_band`)."""
    path = package_root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, name: str) -> tuple[set[str], set[Path]]:
    """The package's modules that module `name` (at `path`) imports anywhere in it, functions
    included (`import ml_project.x`, `from ml_project.x import y`: y itself, if a module), and
    the files beside it that it names (`gunicorn.conf.py`, which the launcher reads)."""
    found: set[str] = set()
    files: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.endswith(".py") and "/" not in node.value \
                and (path.parent / node.value).is_file():
            files.add(path.parent / node.value)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against this module's package, a level up per dot
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module.split(".")[0] == PACKAGE}, files


def serving_modules(package_root: Path, roots: set[str]) -> list[Path]:
    """The package's files that the modules `roots` import, directly or not (the packages'
    `__init__.py` files included, and the files a module names beside it), without following
    NOT_FOLLOWED."""
    seen: set[str] = set()
    files: set[Path] = set()
    waiting = sorted(roots)
    while waiting:
        name = waiting.pop()
        if name in seen or name in NOT_FOLLOWED:
            continue
        seen.add(name)
        path = module_file(package_root, name)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        waiting += [".".join(parts[:end]) for end in range(1, len(parts))]  # its packages
        modules, named = imported_modules(path, name)
        files.update(named)
        waiting += sorted(modules - seen)
    return sorted(files)


def entry_modules(files: Iterable[Path], metadata: dict[str, Any]) -> set[str]:
    """What a bundle's entry point runs of the package: every module the provider's `files`
    name (a Procfile's command, an app.yaml entrypoint, a handler's imports), and every module
    of the package the artifact's pickle refers to (a feature step's, a custom estimator's: the
    types skops would have to trust, recorded at training)."""
    names: set[str] = set()
    for path in files:
        names.update(MODULE_NAME.findall(path.read_text(errors="replace")))
    for type_name in metadata.get("skops_trusted_types") or ():
        parts = str(type_name).split(".")
        names.update(".".join(parts[:end]) for end in range(2, len(parts)) if parts[0] == PACKAGE)
    return names
