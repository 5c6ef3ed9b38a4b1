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
Every file the bundle will hold is found first (`bundle_files.py`) and must be inside the project:
a symlink leaving it (to ~/.aws/credentials, say), dangling or in a loop is refused, naming it,
before anything is written; a link inside the project is copied as its target's content.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess  # nosec B404
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from deployment.bundle_files import (
    OutsideProject,
    entry_modules,
    inside,
    provider_files,
    serving_modules,
)

if TYPE_CHECKING:
    from ml_project.config import Config

PROVIDERS = ("heroku", "google_app_engine", "google_cloud_function", "aws_lambda",
             "aws_sagemaker", "container")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = Path("output") / "deployment"
SERVING_CATEGORY = "serving"
ALIAS = "champion"
CONFIG_FILE = "project_config.yaml"
REQUIREMENTS_FILE = "requirements.txt"
MODELLING_HINT = "pipenv run python use_cases/modelling_historic_data_local.py"
# Pipfile sections that are not package categories, and the lock's name for [dev-packages].
PIPFILE_SECTIONS = {"source", "requires", "scripts", "pipenv"}
LOCK_NAMES = {"packages": "default", "dev-packages": "develop"}


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
    """The champion's folder, the files to ship (metadata.json and the files it names: model,
    reference sample, model card), after their checksums match and the model loads here (a
    bundle never carries a model that would not load: one saved under another package name,
    say), and its metadata."""
    from ml_project.export import ArtifactError, load_pipeline, read_metadata, sha256_of

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
        if path.name != str(metadata[key]):
            raise SetupError(f"{directory}/metadata.json: {key} {metadata[key]!r} is not a file "
                             "name in the folder: re-run the modelling use case")
        if not path.is_file() or sha256_of(path) != metadata.get(checksum_key):
            raise SetupError(f"{path} is missing or does not match its checksum: re-run the "
                             f"modelling use case ({MODELLING_HINT})")
        names.append(path.name)
    for name, checksum in (metadata.get("model_card_files") or {}).items():  # the model card
        path = directory / str(name)
        if path.name != str(name) or not path.is_file() or sha256_of(path) != checksum:
            raise SetupError(f"{path} (the model card) is missing or does not match its "
                             f"checksum: re-run the modelling use case ({MODELLING_HINT})")
        names.append(path.name)
    try:
        load_pipeline(directory)
    except ArtifactError as err:
        raise SetupError(str(err)) from err
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


def build(root: Path, provider: str, config_file: Path) -> Bundle:
    """The bundle for `provider`, built from scratch (a previous one is removed first). Every
    file it will hold is found and checked first (inside the project, no clash), so a refusal
    leaves no half-built bundle."""
    from ml_project.config import ConfigError, load_config  # here: --clean imports nothing

    folder = root / "deployment" / provider
    if not folder.is_dir():
        raise SetupError(f"{folder} does not exist: this checkout has no files for {provider}")
    try:
        config = load_config("prediction", "production", "deployed", config_file=config_file,
                             root=root)
    except ConfigError as err:
        raise SetupError(str(err)) from err
    champion, names, metadata = champion_files(config)
    artifacts = artifacts_location(config) / ALIAS
    try:
        checked_config = _within_project(config_file, root)
        extras = provider_files(folder, root)
        package = serving_modules(root, entry_modules(extras.values(), metadata))
        sources = {path.relative_to(root): inside(path, root) for path in package}
        sources |= {artifacts / name: _within_project(champion / name, root) for name in names}
    except OutsideProject as err:
        raise SetupError(str(err)) from err
    generated = [*sources, Path(CONFIG_FILE), Path(REQUIREMENTS_FILE)]
    for relative, source in extras.items():
        clash = next((path for path in generated if relative == path or relative in path.parents
                      or path in relative.parents), None)
        if clash is not None:
            raise SetupError(f"{folder / relative} would overwrite the bundle's own {clash}")
        sources[relative] = source
    pipfile, lock = read_pipfile(root)
    requirements = serving_requirements(pipfile, lock, provider)

    directory = bundle_dir(root, provider)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(bundle_config_text(checked_config, config))
    (directory / REQUIREMENTS_FILE).write_text(
        "# Serving dependencies only, pinned from Pipfile.lock by executables/cloud_setup.sh\n"
        + "\n".join(requirements) + "\n")
    for relative, source in sources.items():  # content and mode bits; a link's target's
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, directory / relative)
    return Bundle(provider, root, directory, config)


def _within_project(path: Path, root: Path) -> Path:
    """`path` resolved: inside the project if it is named inside it (a link there must not leave
    it); a file named outside the project (`--config /etc/app.yaml`, an outside model folder in
    paths.model_artifacts) is the user's explicit choice."""
    if Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        return inside(path, root)
    return path.resolve()


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
