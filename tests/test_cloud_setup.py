"""executables/cloud_setup.sh and deployment/cloud_setup.py: the bundle every provider deploys.

Run in a committed copy of the project (tests/deployment_helpers.py), so `git status` shows
anything a run leaves behind. The providers' own runtimes are tested in test_deploy_*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
import yaml

from deployment.cloud_setup import (
    PROVIDERS,
    bundle_config_text,
    bundle_dir,
    main,
    read_pipfile,
    serving_requirements,
)
from ml_project.config import PROJECT_ROOT, load_config
from tests.conftest import write_project
from tests.deployment_helpers import git_status, make_deployable_project, run_cloud_setup

# Packages of training, tracking, monitoring, plotting: never on a deployed server.
TRAINING_PACKAGES = {"mlflow", "mlflow-skinny", "mlflow-tracing", "evidently", "pandera",
                     "matplotlib", "skops", "tqdm", "lightgbm", "ml-project"}
PROVIDERS_HERE = [name for name in PROVIDERS if (PROJECT_ROOT / "deployment" / name).is_dir()]


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
        assert copy.read_bytes() == source.read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(source.stat().st_mode)
    package = deployable_project / "ml_project"
    assert sorted(p.relative_to(bundle) for p in (bundle / "ml_project").rglob("*")
                  if p.is_file()) == sorted(p.relative_to(deployable_project)
                                            for p in package.rglob("*.py"))
    config_file = deployable_project / "project_config.yaml"
    assert (bundle / "project_config.yaml").read_bytes() == config_file.read_bytes()
    champion = deployable_project / "data" / "model_artifacts" / "champion"
    metadata = json.loads((champion / "metadata.json").read_text())
    shipped = sorted(path.name for path in (bundle / "data/model_artifacts/champion").iterdir())
    assert shipped == sorted(["metadata.json", metadata["artifact_file"],
                              metadata["reference_file"]])
    for name in shipped:
        assert (bundle / "data/model_artifacts/champion" / name).read_bytes() == (
            champion / name).read_bytes()


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
