"""Build (or remove) a provider's deployment bundle: one folder that holds all a deployed server
needs, and nothing of training, tracking or monitoring.

    bash executables/cloud_setup.sh PROVIDER [--clean] [provider options]

The bundle, `output/deployment/PROVIDER/` (output/ is git-ignored, so the checkout stays clean):
    every file of deployment/PROVIDER/    copied as is, modes kept (Procfile, app.yaml, Dockerfile),
                                          but deploy.py, which runs from the checkout
    ml_project/                           the package's modules the provider's entry point can
                                          import (`serving_modules`): serving, never training,
                                          tracking or monitoring
    project_config.yaml                   the project's config (see `bundle_config_text`)
    <paths.model_artifacts>/champion/     the exported champion: metadata.json and the files it
                                          names, checksums verified, at the config's own path
    requirements.txt                      the Pipfile's [serving] category (plus
                                          [serving_PROVIDER] if the Pipfile has one) and their
                                          dependencies, pinned at the versions of Pipfile.lock's
                                          default section: the versions the model was trained with

A provider that needs more (a zip, printed commands, a push) registers a `ProviderHooks` entry in
`HOOKS`: extra command-line options, and a step run after the bundle is complete. `--clean`
removes the bundle folder; building always starts from an empty folder, so running twice is safe.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import re
import shutil
import subprocess  # nosec B404
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

if TYPE_CHECKING:
    from ml_project.config import Config

PROVIDERS = ("heroku", "google_app_engine", "google_cloud_function", "aws_lambda",
             "aws_sagemaker", "container")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = Path("output") / "deployment"
SERVING_CATEGORY = "serving"
PACKAGE = "ml_project"
ALIAS = "champion"
CONFIG_FILE = "project_config.yaml"
REQUIREMENTS_FILE = "requirements.txt"
MODELLING_HINT = "pipenv run python use_cases/modelling_historic_data_local.py"
# Pipfile sections that are not package categories, and the lock's name for [dev-packages].
PIPFILE_SECTIONS = {"source", "requires", "scripts", "pipenv"}
LOCK_NAMES = {"packages": "default", "dev-packages": "develop"}
# Provider files that are tooling, run from the checkout (`run_deploy_script`), never shipped.
NOT_SHIPPED = ("deploy.py",)
# The one import on the serving path a bundle never takes: `prediction.model_source: registry`
# (the bundle's config always serves the local champion it carries, `bundle_config_text`).
NOT_FOLLOWED = ("ml_project.registry",)
MODULE_NAME = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class SetupError(RuntimeError):
    """The bundle cannot be built; the message says what to do. Exit code 2."""


@dataclass(frozen=True)
class Bundle:
    """What a provider hook gets: the project it was built from and the finished bundle."""

    provider: str
    root: Path
    directory: Path
    config: Config


@dataclass(frozen=True)
class ProviderHooks:
    """A provider's additions to the common build: options of its own (e.g. --aws-account-id),
    and a step after the bundle is complete (a zip, a push, printed commands) returning an
    exit code. Anything it writes belongs inside the bundle folder, so `--clean` removes it."""

    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    after_build: Callable[[Bundle, argparse.Namespace], int] | None = None


HOOKS: dict[str, ProviderHooks] = {}


def bundle_dir(root: Path, provider: str) -> Path:
    return root / BUNDLES / provider


def serving_requirements(pipfile: dict[str, Any], lock: dict[str, Any], provider: str
                         ) -> list[str]:
    """`name==version; markers` lines for the serving categories and their dependencies.

    Which packages: the lock's sections for [serving] and [serving_PROVIDER] (the closure of
    what those categories name). Which versions: the default section's wherever it has the
    package, since the model was trained with those; only a provider's own extras that the
    default section lacks keep their category's pin.
    """
    categories = [SERVING_CATEGORY] + [
        name for name in (f"{SERVING_CATEGORY}_{provider}",) if name in pipfile
    ]
    default = lock.get("default", {})
    pins: dict[str, dict[str, Any]] = {}
    for category in categories:
        if category not in lock:
            raise SetupError(f"Pipfile.lock has no [{category}] section: the Pipfile changed "
                             "since it was locked; run `pipenv lock`")
        for name, entry in lock[category].items():
            if category == SERVING_CATEGORY and name not in default:
                raise SetupError(f"{name} (a dependency of [{SERVING_CATEGORY}]) is not in "
                                 "Pipfile.lock's default section: add it to [packages] and run "
                                 "`pipenv lock`, so the served versions are the trained ones")
            pins[name] = default.get(name, entry)
    lines = []
    for name in sorted(pins):
        entry = pins[name]
        if "version" not in entry:
            raise SetupError(f"{name} is not pinned to a version in Pipfile.lock (a path or VCS "
                             "requirement cannot go into requirements.txt)")
        markers = f"; {entry['markers']}" if entry.get("markers") else ""
        lines.append(f"{name}{entry['version']}{markers}")
    return lines


def read_pipfile(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Pipfile's package categories (by their lock names) and the parsed Pipfile.lock."""
    try:
        pipfile = tomllib.loads((root / "Pipfile").read_text())
        lock: dict[str, Any] = json.loads((root / "Pipfile.lock").read_text())
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise SetupError(f"cannot read the Pipfile or Pipfile.lock in {root}: {err}") from err
    categories = {LOCK_NAMES.get(name, name): value for name, value in pipfile.items()
                  if name not in PIPFILE_SECTIONS}
    return categories, lock


def champion_files(config: Config) -> tuple[Path, list[str], dict[str, Any]]:
    """The champion's folder, the files to ship (metadata.json and the files it names), after
    their checksums match (a bundle never carries a model that would not load), and its
    metadata."""
    from ml_project.export import ArtifactError, read_metadata, sha256_of

    directory = config.model_artifacts_dir / ALIAS
    try:
        metadata = read_metadata(directory)
    except ArtifactError as err:
        raise SetupError(f"no exported {ALIAS} model in {directory}: run the modelling use case "
                         f"first ({MODELLING_HINT})") from err
    names = ["metadata.json"]
    for key, checksum_key in (("artifact_file", "sha256"), ("reference_file", "reference_sha256")):
        if key not in metadata:
            continue
        path = directory / str(metadata[key])
        if not path.is_file() or sha256_of(path) != metadata.get(checksum_key):
            raise SetupError(f"{path} is missing or does not match its checksum: re-run the "
                             f"modelling use case ({MODELLING_HINT})")
        names.append(path.name)
    return directory, names, metadata


def artifacts_location(config: Config) -> Path:
    """Where the artifact folder goes in the bundle: the config's own relative path, or
    `model_artifacts` for a folder outside the project (the bundle's config then says so)."""
    directory = config.model_artifacts_dir
    try:
        return directory.relative_to(config.root)
    except ValueError:
        return Path("model_artifacts")


def bundle_config_text(config_file: Path, config: Config) -> str:
    """The project's config file as it is, unless the bundle must differ: a registry-served
    model (the bundle ships the local champion, not mlflow) or an artifact folder outside the
    project (moved into the bundle). Then the YAML is rewritten, without its comments."""
    text = config_file.read_text()
    changes: dict[str, Any] = {}
    if config.prediction.model_source != "local":
        changes["prediction"] = {"model_source": "local"}
    location = artifacts_location(config)
    if Path(config.paths.model_artifacts) != location:
        changes["paths"] = {"model_artifacts": str(location)}
    if not changes:
        return text
    content = yaml.safe_load(text)
    for section, values in changes.items():
        content.setdefault(section, {}).update(values)
    header = (f"# Written by executables/cloud_setup.sh from {config_file.name}: {changes}\n"
              "# (the bundle serves the exported champion it carries).\n")
    return header + yaml.safe_dump(content, sort_keys=False)


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


def entry_modules(provider_files: Path, metadata: dict[str, Any]) -> set[str]:
    """What a bundle's entry point runs of the package: every module the provider's files name
    (a Procfile's command, an app.yaml entrypoint, a handler's imports), and every module of the
    package the artifact's pickle refers to (a feature step's, a custom estimator's: the types
    skops would have to trust, recorded at training)."""
    names: set[str] = set()
    for path in provider_files.rglob("*"):
        if path.is_file() and path.name not in NOT_SHIPPED and "__pycache__" not in path.parts:
            names.update(MODULE_NAME.findall(path.read_text(errors="replace")))
    for type_name in metadata.get("skops_trusted_types") or ():
        parts = str(type_name).split(".")
        names.update(".".join(parts[:end]) for end in range(2, len(parts)) if parts[0] == PACKAGE)
    return names


def copy_package(root: Path, files: list[Path], target: Path) -> None:
    """The package's files given, at their place under `target`."""
    for path in files:
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def build(root: Path, provider: str, config_file: Path) -> Bundle:
    """The bundle for `provider`, built from scratch (a previous one is removed first)."""
    from ml_project.config import ConfigError, load_config  # here: --clean imports nothing

    provider_files = root / "deployment" / provider
    if not provider_files.is_dir():
        raise SetupError(f"{provider_files} does not exist: this checkout has no files for "
                         f"{provider}")
    try:
        config = load_config("prediction", "production", "deployed", config_file=config_file,
                             root=root)
    except ConfigError as err:
        raise SetupError(str(err)) from err
    champion, names, metadata = champion_files(config)
    package = serving_modules(root, entry_modules(provider_files, metadata))
    pipfile, lock = read_pipfile(root)
    requirements = serving_requirements(pipfile, lock, provider)

    directory = bundle_dir(root, provider)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    copy_package(root, package, directory)
    (directory / CONFIG_FILE).write_text(bundle_config_text(config_file, config))
    artifacts = directory / artifacts_location(config) / ALIAS
    artifacts.mkdir(parents=True)
    for name in names:
        shutil.copy2(champion / name, artifacts / name)
    (directory / REQUIREMENTS_FILE).write_text(
        "# Serving dependencies only, pinned from Pipfile.lock by executables/cloud_setup.sh\n"
        + "\n".join(requirements) + "\n")
    for path in sorted(provider_files.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.name in NOT_SHIPPED:
            continue
        destination = directory / path.relative_to(provider_files)
        if destination.exists():
            raise SetupError(f"{path} would overwrite the bundle's own {destination.name}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
    return Bundle(provider, root, directory, config)


def clean(root: Path, provider: str) -> None:
    """Remove the provider's bundle, and output/deployment/ once no bundle is left."""
    shutil.rmtree(bundle_dir(root, provider), ignore_errors=True)
    parent = root / BUNDLES
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


# Provider hooks -------------------------------------------------------------------------------

FUNCTION_ZIP = "function.zip"
# Bundle files the Cloud Function does not run: Terraform's, and the zip itself.
NOT_ZIPPED = ("*.tf", "*.tfvars", "*.tfstate", "*.tfstate.*", ".terraform", ".terraform.lock.hcl",
              ".gcloudignore", FUNCTION_ZIP, "__pycache__")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same bundle gives the same bytes (and object name)


def zip_function(bundle: Bundle, args: argparse.Namespace) -> int:
    """function.zip: what Cloud Functions builds and runs, main.py and requirements.txt at its
    root; byte-identical for an identical bundle, so Terraform uploads it only when it changed."""
    target = bundle.directory / FUNCTION_ZIP
    files = sorted(path for path in bundle.directory.rglob("*") if path.is_file() and not any(
        fnmatch.fnmatch(part, pattern)
        for part in path.relative_to(bundle.directory).parts for pattern in NOT_ZIPPED))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(bundle.directory).as_posix(), ZIP_TIME)
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    relative = bundle.directory.relative_to(bundle.root)
    print(f"Wrote {relative / FUNCTION_ZIP} ({len(files)} files). Deploy it with Terraform:\n"
          f"  terraform -chdir={relative} init\n"
          f"  terraform -chdir={relative} apply -var project=YOUR_PROJECT_ID -var region=YOUR_REGION")
    return 0


def add_aws_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aws-account-id", default=None,
                        help="push and deploy to this account (needs a Docker engine); without "
                             "it the commands are only printed")
    parser.add_argument("--region", default=None, help="AWS region (default: $AWS_REGION)")
    parser.add_argument("--name", default=None, help="ECR repository and resource name")
    parser.add_argument("--image-tag", default=None, help="image tag (default: latest)")


def add_sagemaker_options(parser: argparse.ArgumentParser) -> None:
    add_aws_options(parser)
    parser.add_argument("--role-arn", default=None,
                        help="SageMaker execution role (default: $SAGEMAKER_ROLE_ARN)")
    parser.add_argument("--instance-type", default=None,
                        help="endpoint instance type (default: $SAGEMAKER_INSTANCE_TYPE, else "
                             "ml.m5.large)")


def run_deploy_script(bundle: Bundle, args: argparse.Namespace) -> int:
    """The provider's deploy.py, from the checkout, on the bundle, with the options given: it
    pushes and deploys only with an explicit --aws-account-id and a Docker engine, else it
    prints the commands (exit 0)."""
    forwarded = ["--bundle", str(bundle.directory)]
    for option in ("aws_account_id", "region", "name", "image_tag", "role_arn", "instance_type"):
        value = getattr(args, option, None)
        if value is not None:
            forwarded += [f"--{option.replace('_', '-')}", str(value)]
    module = f"deployment.{bundle.provider}.deploy"
    return subprocess.run([sys.executable, "-m", module, *forwarded],  # nosec B603
                          cwd=bundle.root).returncode


HOOKS.update({
    "google_cloud_function": ProviderHooks(after_build=zip_function),
    "aws_lambda": ProviderHooks(add_options=add_aws_options, after_build=run_deploy_script),
    "aws_sagemaker": ProviderHooks(add_options=add_sagemaker_options,
                                   after_build=run_deploy_script),
})


def parser_for(provider: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"cloud_setup.sh {provider}",
        description=f"Build the {provider} deployment bundle in {BUNDLES / provider}/.")
    parser.add_argument("--clean", action="store_true",
                        help="remove everything this script built for the provider")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"config file to ship, relative to the project root "
                             f"(default: {CONFIG_FILE})")
    hooks = HOOKS.get(provider)
    if hooks and hooks.add_options:
        hooks.add_options(parser)
    return parser


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments or arguments[0] not in PROVIDERS:
        given = repr(arguments[0]) if arguments else "none"
        print(f"usage: cloud_setup.sh PROVIDER [--clean] [options]\n"
              f"PROVIDER must be one of: {', '.join(PROVIDERS)} (given: {given})",
              file=sys.stderr)
        return 2
    provider = arguments[0]
    args = parser_for(provider).parse_args(arguments[1:])
    if args.clean:
        clean(root, provider)
        print(f"Removed {BUNDLES / provider}/")
        return 0
    try:
        bundle = build(root, provider, root / (args.config or CONFIG_FILE))
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Bundle ready: {bundle.directory.relative_to(root)}/ (deploy steps: "
          f"documentation/deployment.md#{provider})")
    hooks = HOOKS.get(provider)
    if hooks and hooks.after_build:
        return hooks.after_build(bundle, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
