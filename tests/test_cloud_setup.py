"""executables/cloud_setup.sh and deployment/cloud_setup.py: the bundle every provider deploys.

Run in a committed copy of the project (tests/deployment_helpers.py), so `git status` shows
anything a run leaves behind. The providers' own runtimes are tested in test_deploy_*.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployment.bundle_files import entry_modules, provider_files, serving_modules
from deployment.cloud_setup import (
    PROVIDERS,
    bundle_config_text,
    bundle_dir,
    main,
    read_pipfile,
    serving_requirements,
)
from ml_project.config import OUTPUT_DIR_ENV, PREDICTION_LOG_ENV, PROJECT_ROOT, load_config
from tests import entry_modes
from tests.conftest import write_project
from tests.deployment_helpers import (
    PREDICT_REQUESTS,
    BundleVirtualenvs,
    bundle_environment,
    git_status,
    make_deployable_project,
    run_cloud_setup,
)
from tests.provider_checks import python_with_extras

# Packages of training, tracking, monitoring, plotting: never on a deployed server.
TRAINING_PACKAGES = {"mlflow", "mlflow-skinny", "mlflow-tracing", "evidently", "pandera",
                     "matplotlib", "skops", "tqdm", "lightgbm", "ml-project"}
# The package's modules of training, tracking and monitoring: never in a bundle either.
TRAINING_MODULES = {f"ml_project.{name}" for name in (
    "train", "tracking", "registry", "monitor", "monitoring_data", "validate", "batch", "ingest",
    "metrics", "estimate")}
# Provider files that are tooling, run from the checkout on the bundle: never in it.
TOOLING = {"deploy.py"}
PROVIDERS_HERE = [name for name in PROVIDERS if (PROJECT_ROOT / "deployment" / name).is_dir()]
# Every way a provider's files run the bundle (tests/entry_modes.py runs each): the launcher in
# both frameworks wherever a file runs it (a Procfile, app.yaml's entrypoint, a CMD, `serve`),
# and each imported entry point (a handler, a function, a WSGI `main:app`).
ENTRY_MODES = {
    "heroku": ("launcher:fastapi", "launcher:flask"),
    "google_app_engine": ("launcher:fastapi", "launcher:flask", "wsgi_main"),
    "google_cloud_function": ("cloud_function",),
    "aws_lambda": ("lambda_handler",),
    "aws_sagemaker": ("sagemaker_serve", "launcher:flask"),
    "container": ("launcher:fastapi", "launcher:flask"),
}
# The provider file each imported entry mode runs (the launcher modes run the package's own).
MODE_FILES = {"sagemaker_serve": "serve", "lambda_handler": "lambda_function.py",
              "cloud_function": "main.py", "wsgi_main": "main.py"}
MODULE_NAME = re.compile(r"\bml_project(?:\.[A-Za-z_]\w*)+")


def lock() -> dict[str, dict[str, dict[str, str]]]:
    return json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())  # type: ignore[no-any-return]


def requirement_pins(requirements: Path) -> dict[str, str]:
    """name -> `==version` of a requirements.txt cloud_setup wrote."""
    pins = {}
    for line in requirements.read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = line.split(";")[0].strip()
            name, _, version = requirement.partition("==")
            pins[name] = f"=={version}"
    return pins


def test_unknown_provider_lists_the_providers_and_exits_2(deployable_project: Path) -> None:
    result = run_cloud_setup(deployable_project, "digital_ocean")

    assert result.returncode == 2
    assert all(provider in result.stderr for provider in PROVIDERS)
    assert "'digital_ocean'" in result.stderr


def test_without_a_champion_it_says_to_run_the_modelling_use_case_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(tmp_path)
    shutil.copytree(PROJECT_ROOT / "deployment", tmp_path / "deployment")

    assert main(["heroku"], root=tmp_path) == 2

    error = capsys.readouterr().err
    assert "modelling use case" in error and "modelling_historic_data_local.py" in error
    assert not bundle_dir(tmp_path, "heroku").exists()


@pytest.mark.parametrize("provider", PROVIDERS_HERE)
def test_setup_twice_then_clean_twice_leaves_the_checkout_as_it_was(
    provider: str, trained_project: Path, tmp_path: Path
) -> None:
    project = make_deployable_project(trained_project, tmp_path)
    ignored_before = git_status(project, "--ignored")

    for _ in range(2):
        result = run_cloud_setup(project, provider)
        assert result.returncode == 0, result.stderr
        assert (bundle_dir(project, provider) / "requirements.txt").is_file()
        assert git_status(project) == ""
    for _ in range(2):
        assert run_cloud_setup(project, provider, "--clean").returncode == 0

    assert not (project / "output" / "deployment").exists()
    assert git_status(project) == ""
    assert git_status(project, "--ignored") == ignored_before


@pytest.fixture(scope="module", params=PROVIDERS_HERE)
def built(request: pytest.FixtureRequest, deployable_project: Path) -> tuple[str, Path]:
    """(provider, bundle folder), built once per provider for this module's checks."""
    provider: str = request.param
    result = run_cloud_setup(deployable_project, provider)
    assert result.returncode == 0, result.stderr
    return provider, bundle_dir(deployable_project, provider)


def test_bundle_holds_the_provider_files_the_package_the_config_and_the_champion(
    built: tuple[str, Path], deployable_project: Path
) -> None:
    provider, bundle = built

    provider_files = deployable_project / "deployment" / provider
    for source in (path for path in provider_files.rglob("*") if path.is_file()):
        copy = bundle / source.relative_to(provider_files)
        if source.name in TOOLING:
            assert not copy.exists(), copy  # run from the checkout, on the bundle
            continue
        assert copy.read_bytes() == source.read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(source.stat().st_mode)
    assert not (bundle / "deployment").exists()  # nor the tooling it imports
    shipped = package_files(bundle)
    assert shipped and all(name.endswith(".py") for name in shipped)
    for name in shipped:  # the checkout's own files, unchanged
        assert (bundle / name).read_bytes() == (deployable_project / name).read_bytes(), name
    for name in named_modules(provider_files):  # what a provider file runs is there
        path = name.replace(".", "/")
        assert {f"{path}.py", f"{path}/__init__.py"} & shipped, name
    assert not TRAINING_MODULES & shipped_modules(shipped)
    config_file = deployable_project / "project_config.yaml"
    assert (bundle / "project_config.yaml").read_bytes() == config_file.read_bytes()
    champion = deployable_project / "data" / "model_artifacts" / "champion"
    metadata = json.loads((champion / "metadata.json").read_text())
    shipped_artifacts = sorted(path.name for path in
                               (bundle / "data/model_artifacts/champion").iterdir())
    assert shipped_artifacts == sorted(["metadata.json", metadata["artifact_file"],
                                        metadata["reference_file"],
                                        *metadata["model_card_files"]])  # the model card too
    for name in shipped_artifacts:
        assert (bundle / "data/model_artifacts/champion" / name).read_bytes() == (
            champion / name).read_bytes()


def package_files(bundle: Path) -> set[str]:
    """The bundle's files of the package, relative to the bundle (`ml_project/cli.py`)."""
    return {path.relative_to(bundle).as_posix() for path in (bundle / "ml_project").rglob("*")
            if path.is_file()}


def is_module(name: str) -> bool:
    """A file Python imports as a module (`gunicorn.conf.py` is read by path instead)."""
    return all(part.isidentifier() for part in name.removesuffix(".py").split("/"))


def shipped_modules(files: set[str]) -> set[str]:
    """The module names of package files; a package's `__init__.py` is the package."""
    return {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for name in files if is_module(name)}


def named_modules(provider_files: Path) -> set[str]:
    """The package's modules the provider's shipped files name (imports, commands)."""
    return {name for path in provider_files.rglob("*")
            if path.is_file() and path.name not in TOOLING
            for name in MODULE_NAME.findall(path.read_text(errors="replace"))}


def test_every_provider_has_its_entry_modes() -> None:
    """Each provider's modes are the ways its files run the bundle, every mode is used."""
    assert set(ENTRY_MODES) == set(PROVIDERS_HERE)
    assert {mode for modes in ENTRY_MODES.values() for mode in modes} == set(entry_modes.MODES)
    for provider, modes in ENTRY_MODES.items():
        provider_files = PROJECT_ROOT / "deployment" / provider
        runs_launcher = "ml_project.serving.launcher" in named_modules(provider_files)
        frameworks = {mode for mode in modes if mode.startswith("launcher:")}
        if "sagemaker_serve" in modes:  # `serve` runs the launcher with FastAPI
            frameworks.add("launcher:fastapi")
        assert runs_launcher == (frameworks == {"launcher:fastapi", "launcher:flask"}), provider
        for mode in modes:
            if mode in MODE_FILES:
                assert (provider_files / MODE_FILES[mode]).is_file(), (provider, mode)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in folder.rglob("*") if path.is_file()}


def run_entry_mode(python: Path, bundle: Path, mode: str, output: Path) -> dict[str, Any]:
    """tests/entry_modes.py MODE in the bundle's virtualenv, the bundle as working directory;
    what it writes goes to `output`."""
    output.mkdir()
    environment = bundle_environment(python, **{
        OUTPUT_DIR_ENV: str(output), PREDICTION_LOG_ENV: f"sqlite:///{output / 'log.db'}",
        "PYTHONDONTWRITEBYTECODE": "1"})
    code = f"import runpy; runpy.run_path({entry_modes.__file__!r}, run_name='__main__')"
    result = subprocess.run([str(python), "-c", code, mode, PREDICT_REQUESTS[0][1].decode()],
                            cwd=bundle, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{mode}:\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stdout.splitlines()
             if line.startswith(entry_modes.RESULT_MARKER)]
    assert lines, f"{mode}:\n{result.stdout}\n{result.stderr}"
    outcome: dict[str, Any] = json.loads(lines[-1].removeprefix(entry_modes.RESULT_MARKER))
    return outcome


@pytest.mark.slow
@pytest.mark.xdist_group("bundle_virtualenvs")
def test_a_bundle_ships_only_what_serving_imports(
    built: tuple[str, Path], bundle_virtualenvs: BundleVirtualenvs, tmp_path: Path
) -> None:
    """Each entry mode the provider's files offer, run in the bundle's own virtualenv until it
    answered a prediction: together they import every module the bundle ships, and the bundle
    ships nothing else (a file beside them only if the launcher reads it)."""
    provider, bundle = built
    python = python_with_extras(bundle_virtualenvs, bundle / "requirements.txt", provider,
                                tmp_path)
    shipped = package_files(bundle)
    assert not TRAINING_MODULES & shipped_modules(shipped)
    before = snapshot(bundle)

    imported: set[str] = set()
    read: set[str] = set()
    for mode in ENTRY_MODES[provider]:
        outcome = run_entry_mode(python, bundle, mode, tmp_path / mode.replace(":", "-"))
        assert outcome["status"] == 200, mode
        assert outcome["package_file"] == str((bundle / "ml_project" / "__init__.py").resolve())
        imported |= set(outcome["modules"])
        read |= set(outcome["files"])

    modules = shipped_modules(shipped)
    assert imported == modules, (f"shipped, never imported: {sorted(modules - imported)}; "
                                 f"imported, not shipped: {sorted(imported - modules)}")
    assert read == {name for name in shipped if not is_module(name)}
    assert snapshot(bundle) == before  # every mode wrote where the environment said


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_serving_modules_follow_every_import_of_the_entry_modules_but_the_registry(
    tmp_path: Path
) -> None:
    """Relative and absolute imports, at the top, in functions or for type checking only; the
    packages of each module; a file a module names beside it. Not the registry (a bundle always
    serves the champion it carries), nor what only it imports, nor anything not imported."""
    write_files(tmp_path, {
        "ml_project/__init__.py": "",
        "ml_project/serving/__init__.py": "",
        "ml_project/serving/entry.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "from . import core\n"
            "from ..config import Config\n"
            "SETTINGS = 'server.conf.py'\n"
            "if TYPE_CHECKING:\n"
            "    from ml_project.typing_only import Alias\n"
            "def later():\n"
            "    import ml_project.lazy\n"
            "    from ml_project.registry import load\n"),
        "ml_project/serving/core.py": "import json\nfrom ml_project import helpers\n",
        "ml_project/serving/server.conf.py": "workers = 2\n",
        "ml_project/serving/unused.py": "",
        "ml_project/config.py": "",
        "ml_project/helpers.py": "from ml_project.helpers import *  # itself: no loop\n",
        "ml_project/lazy.py": "",
        "ml_project/typing_only.py": "",
        "ml_project/registry.py": "import ml_project.train\n",
        "ml_project/train.py": "",
    })

    files = serving_modules(tmp_path, {"ml_project.serving.entry"})

    assert sorted(path.relative_to(tmp_path).as_posix() for path in files) == [
        "ml_project/__init__.py", "ml_project/config.py", "ml_project/helpers.py",
        "ml_project/lazy.py", "ml_project/serving/__init__.py", "ml_project/serving/core.py",
        "ml_project/serving/entry.py", "ml_project/serving/server.conf.py",
        "ml_project/typing_only.py"]


def test_entry_modules_are_what_the_provider_files_name_and_the_models_package_types(
    tmp_path: Path
) -> None:
    """A model whose pickle refers to a module of the package (a custom feature step) gets it
    shipped; the deploy tooling's imports, compiled caches (which the bundle does not get) and
    other libraries' types do not count."""
    provider = tmp_path / "deployment" / "somewhere"
    write_files(provider, {
        "Procfile": "web: python -m ml_project.serving.launcher fastapi --port $PORT\n",
        "handler.py": "from ml_project.serving.bundle import app_of\n",
        "deploy.py": "from ml_project.tracking import log_run\n",
        "__pycache__/handler.cpython-311.pyc": "ml_project.monitor (a stale compiled copy)",
    })
    metadata = {"skops_trusted_types": ["ml_project.custom_steps.Ratio", "sklearn.pipeline.Pipeline",
                                        "ml_project.engineer.tenure_band", "numpy.dtype"]}

    names = entry_modules(provider_files(provider, tmp_path).values(), metadata)

    assert {"ml_project.serving.launcher", "ml_project.serving.bundle", "ml_project.custom_steps",
            "ml_project.engineer"} <= names
    assert all(name.startswith("ml_project.") for name in names)
    assert not any(name.startswith(("ml_project.tracking", "ml_project.monitor"))
                   for name in names)
    shipped = serving_modules(PROJECT_ROOT, names)
    assert PROJECT_ROOT / "ml_project" / "engineer.py" in shipped
    assert not {PROJECT_ROOT / "ml_project" / f"{name.split('.')[-1]}.py"
                for name in TRAINING_MODULES} & set(shipped)


def test_requirements_are_the_serving_set_pinned_at_the_trained_versions(
    built: tuple[str, Path]
) -> None:
    provider, bundle = built
    pins = requirement_pins(bundle / "requirements.txt")
    locked = lock()
    default = locked["default"]
    dev_only = set(locked["develop"]) - set(default)

    assert not TRAINING_PACKAGES & set(pins)
    assert not dev_only & set(pins)
    pipfile = tomllib.loads((PROJECT_ROOT / "Pipfile").read_text())
    assert {name.lower() for name in pipfile["serving"]} <= set(pins)
    for name, version in pins.items():
        expected = default.get(name) or locked[f"serving_{provider}"][name]
        assert version == expected["version"], name
    assert pins["scikit-learn"] == default["scikit-learn"]["version"]


def test_serving_set_is_locked_within_the_default_versions() -> None:
    """The [serving] category names only packages the default section pins, at its versions:
    otherwise a bundle would serve with versions the model was never trained with."""
    locked = lock()

    for name, entry in locked["serving"].items():
        assert entry["version"] == locked["default"][name]["version"], name


def test_a_serving_dependency_missing_from_the_default_section_is_refused() -> None:
    pipfile, locked = read_pipfile(PROJECT_ROOT)
    locked = {**locked, "serving": {**locked["serving"], "untrained-package": {"version": "==6.0.0"}}}

    with pytest.raises(RuntimeError, match="untrained-package.*not in Pipfile.lock's default"):
        serving_requirements(pipfile, locked, "heroku")


def test_a_provider_category_adds_its_extras_with_their_own_pins() -> None:
    pipfile, locked = read_pipfile(PROJECT_ROOT)
    pipfile = {**pipfile, "serving_heroku": {"extra-server": "*"}}
    locked = {**locked, "serving_heroku": {
        "extra-server": {"version": "==1.2.3", "markers": "python_version >= '3.9'"},
        "flask": {"version": "==0.1"},  # the default section's pin wins
    }}

    lines = serving_requirements(pipfile, locked, "heroku")

    assert "extra-server==1.2.3; python_version >= '3.9'" in lines
    assert [line for line in lines if line.startswith("flask==")] == [
        f"flask{locked['default']['flask']['version']}; {locked['default']['flask']['markers']}"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),
        ({"prediction": {"model_source": "registry"}},
         {"model_source": "local", "model_artifacts": "data/model_artifacts"}),
        ({"paths": {"model_artifacts": "/srv/models"}},
         {"model_source": "local", "model_artifacts": "model_artifacts"}),
    ],
)
def test_bundle_config_is_the_project_file_unless_the_bundle_must_differ(
    tmp_path: Path, overrides: dict[str, dict[str, str]], expected: dict[str, str] | None
) -> None:
    config_file = write_project(tmp_path, overrides)
    config = load_config("prediction", "production", "deployed", config_file=config_file,
                         root=tmp_path)

    text = bundle_config_text(config_file, config)

    if expected is None:
        assert text == config_file.read_text()
        return
    content = yaml.safe_load(text)
    assert content["prediction"]["model_source"] == expected["model_source"]
    assert content["paths"]["model_artifacts"] == expected["model_artifacts"]
    assert content["columns"] == yaml.safe_load(config_file.read_text())["columns"]


def test_wrapper_is_executable_and_passes_the_options_on(deployable_project: Path) -> None:
    assert os.access(deployable_project / "executables" / "cloud_setup.sh", os.X_OK)
    result = run_cloud_setup(deployable_project, "heroku", "--help")

    assert result.returncode == 0
    assert "--clean" in result.stdout


# Links that would put something outside the project into a bundle: where, relative to the
# project, and what to, in a folder beside the project: a secret, the folder itself, or an
# outside copy of the file the link replaces (so that only where it lies is wrong).
LEAVING_LINKS = {
    "provider-file-to-a-secret": ("deployment/heroku/credentials", "secret.txt"),
    "provider-folder-to-outside": ("deployment/heroku/conf", "."),
    "package-module-to-outside": ("ml_project/serving/gunicorn.conf.py", "gunicorn.conf.py"),
    "champion-file-to-outside": ("data/model_artifacts/champion/metadata.json", "metadata.json"),
    "config-to-outside": ("project_config.yaml", "project_config.yaml"),
}
SECRET = "aws_secret_access_key = not-for-a-bundle\n"


@pytest.mark.parametrize("case", list(LEAVING_LINKS))
def test_a_symlink_leaving_the_project_is_refused_and_nothing_is_built(
    case: str, trained_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link in the provider's folder, the package, the champion or the config to a file or
    folder outside the project would copy its content into a bundle meant for a cloud."""
    (tmp_path / "project").mkdir()
    project = make_deployable_project(trained_project, tmp_path / "project")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    where, target = LEAVING_LINKS[case]
    link = project / where
    if link.exists():
        shutil.copy2(link, outside / target)
        link.unlink()
    link.symlink_to(outside / target)

    code = main(["heroku"], root=project)

    error = capsys.readouterr().err
    assert code == 2
    assert f"{link} links to {(outside / target).resolve()}, outside the project" in error
    assert not bundle_dir(project, "heroku").exists()


@pytest.mark.parametrize(("links", "problem"), [
    ({"loop": "."}, "a folder that holds it: a loop of links"),
    ({"up": "../heroku"}, "a folder that holds it: a loop of links"),
    ({"a": "b", "b": "a"}, "a symlink that cannot be followed"),
    ({"gone": "no_such_file"}, "a symlink that cannot be followed"),
], ids=["to-itself", "to-its-parent", "two-files", "dangling"])
def test_a_loop_of_links_or_a_dangling_link_is_refused_by_name_not_a_traceback(
    links: dict[str, str], problem: str, trained_project: Path, tmp_path: Path
) -> None:
    project = make_deployable_project(trained_project, tmp_path)
    for name, target in links.items():
        (project / "deployment" / "heroku" / name).symlink_to(target)

    result = run_cloud_setup(project, "heroku")

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert problem in result.stderr and "deployment/heroku/" in result.stderr
    assert not bundle_dir(project, "heroku").exists()


def test_a_symlink_inside_the_project_is_copied_as_its_content(
    trained_project: Path, tmp_path: Path
) -> None:
    project = make_deployable_project(trained_project, tmp_path)
    (project / "deployment" / "heroku" / "NOTICE.md").symlink_to("../../Pipfile")
    (project / "deployment" / "heroku" / "tools").symlink_to("../../executables")

    result = run_cloud_setup(project, "heroku")

    assert result.returncode == 0, result.stderr
    bundle = bundle_dir(project, "heroku")
    assert not (bundle / "NOTICE.md").is_symlink()
    assert (bundle / "NOTICE.md").read_text() == (project / "Pipfile").read_text()
    assert (bundle / "tools" / "cloud_setup.sh").read_text() == (
        project / "executables" / "cloud_setup.sh").read_text()


@pytest.mark.parametrize(("name", "clash"), [
    ("project_config.yaml", "project_config.yaml"),
    ("requirements.txt", "requirements.txt"),
    ("data", "data/model_artifacts/champion/metadata.json"),  # a file where a folder goes
    ("ml_project/serving/launcher.py", "ml_project/serving/launcher.py"),
])
def test_a_provider_file_that_would_overwrite_a_generated_one_is_refused_before_anything_is_built(
    name: str, clash: str, trained_project: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_deployable_project(trained_project, tmp_path)
    path = project / "deployment" / "heroku" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("the provider's own\n")

    code = main(["heroku"], root=project)

    assert code == 2
    assert f"{path} would overwrite the bundle's own {clash}" in capsys.readouterr().err
    assert not bundle_dir(project, "heroku").exists()
