"""executables/rename_project.sh (rename_project.py) on clones of the project: the names it
refuses whichever Python runs it, its refusal while models exist, the renamed copy passing its own tests, the undo it prints,
and kills at every stage leaving the old tree or the new one.

A clone is of the committed HEAD. "The system Python" is this interpreter with `-S -I` (no
site-packages: not one package of the project importable) in a clone without `.venv`, as on a
fresh clone; "the project's Python" is the shell script in a clone whose `.venv` points at this
interpreter's environment, as in a real project.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

SCRIPT = "executables/rename_project.py"
RECORD = PROJECT_ROOT / "executables" / "rename_project_modules.json"
# A few fast test files of the copy: config, schemas and the drafter import most of the package.
COPY_TESTS = ["tests/test_config.py", "tests/test_draft_config.py", "tests/test_engineer.py"]


def _git(copy: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=copy, check=True, capture_output=True,
                          text=True).stdout


def _clone(target: Path, *, with_venv: bool) -> Path:
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(target)], check=True,
                   capture_output=True)
    if with_venv:
        (target / ".venv").symlink_to(Path(sys.prefix))
    return target


def _rename(copy: Path, name: str, *, python: str) -> subprocess.CompletedProcess[str]:
    command = (["bash", "executables/rename_project.sh", name] if python == "project"
               else [sys.executable, "-S", "-I", SCRIPT, name])
    return subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=120)


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under `root` but .git's: a file's mode and sha256, a link's target, a
    folder's mode. Two trees with equal snapshots hold the same things."""
    found: dict[str, tuple[str, str]] = {}
    for directory, folders, files in os.walk(root):
        folders[:] = [name for name in folders if (directory, name) != (str(root), ".git")]
        for name in [*folders, *files]:
            path = Path(directory, name)
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("folder", oct(path.stat().st_mode))
            else:
                found[key] = (oct(path.stat().st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return found


# Names --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clone for each Python: refusals change nothing, so the tests share them."""
    root = tmp_path_factory.mktemp("rename_clones")
    return {"system": _clone(root / "system", with_venv=False),
            "project": _clone(root / "project", with_venv=True)}


@pytest.mark.parametrize(("name", "why"), [
    ("AcmeChurn", "not a lowercase Python identifier"),
    ("acme-churn", "not a lowercase Python identifier"),
    ("2churn", "not a lowercase Python identifier"),
    ("acme_", "not a lowercase Python identifier"),
    ("acme__churn", "not a lowercase Python identifier"),
    ("a" * 300, "300 characters long, more than 40"),
    ("a" * 41, "41 characters long, more than 40"),
    ("lambda", "keyword"),
    ("match", "keyword"),
    ("json", "standard library"),
    ("imp", "standard library"),  # Python 3.11's (the Pipfile's), though gone from 3.12's
    ("pandas", "a module of pandas (Pipfile.lock)"),
    ("sklearn", "a module of scikit-learn (Pipfile.lock)"),
    ("mlflow", "a module of mlflow, mlflow-skinny, mlflow-tracing (Pipfile.lock)"),
    ("yaml", "a module of pyyaml (Pipfile.lock)"),
    ("attr", "a module of attrs (Pipfile.lock)"),
    ("dateutil", "a module of python-dateutil (Pipfile.lock)"),
    ("google", "a module of functions-framework, google-auth, protobuf (Pipfile.lock)"),
    ("lightgbm", "a module of lightgbm (Pipfile.lock)"),  # the optional categories' too
    ("pyspark", "a module of pyspark (Pipfile.lock)"),
    ("runtime_client", "a module of awslambdaric (Pipfile.lock)"),
    ("pip", "a module of pip (Pipfile.lock)"),
    ("main", "deployment/google_app_engine/main.py lies beside the package at the root"),
    ("lambda_function", "deployment/aws_lambda/lambda_function.py lies beside the package"),
    ("serve", "deployment/aws_sagemaker/serve lies beside the package"),
    ("dockerfile", "deployment/aws_lambda/Dockerfile lies beside the package"),
    ("draft_config", "executables/draft_config.py is a script: running it puts executables/"),
    ("sitecustomize", "a module Python imports at start-up"),
    ("ml_project", "already called"),
    ("use_cases", "already exists"),
    ("data", "already exists"),
])
@pytest.mark.parametrize("python", ["system", "project"])
def test_rename_refuses_a_bad_name_whichever_python_runs_it_and_changes_nothing(
    clones: dict[str, Path], python: str, name: str, why: str
) -> None:
    """A fresh clone's system Python has none of the project's packages: the verdict comes from
    the project's environment (its recorded modules, its .venv, Python 3.11's standard library),
    not from whatever Python runs the script."""
    copy = clones[python]

    result = _rename(copy, name, python=python)

    assert result.returncode == 2, result.stdout
    assert why in result.stderr and "Traceback" not in result.stderr
    assert _git(copy, "status", "--porcelain") == ""
    assert not list(copy.parent.glob(".*.renaming"))


def test_the_module_record_is_what_the_installed_packages_hold() -> None:
    """rename_project_modules.json names each locked package's modules, so that a fresh clone
    knows them; for every recorded package installed here, it says what the package holds."""
    record = json.loads(RECORD.read_text())
    installed: dict[str, set[str]] = {}
    for module, names in importlib.metadata.packages_distributions().items():
        for name in names:
            installed.setdefault(re.sub(r"[-_.]+", "-", name).lower(), set()).add(module)
    checked = {name: modules for name, modules in record["distributions"].items()
               if name in installed or _installed(name)}

    assert {"scikit-learn", "pandas", "mlflow", "pyyaml"} <= set(checked)
    assert {name: {module for module in installed.get(name, set()) if module.isidentifier()}
            for name in checked} == {name: set(modules) for name, modules in checked.items()}
    assert set(record["stdlib"]) <= set(sys.stdlib_module_names) | {"imp", "distutils"}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# The rename, its undo ------------------------------------------------------------------------

@pytest.mark.slow
def test_rename_changes_every_reference_and_the_copy_passes_its_tests(tmp_path: Path) -> None:
    copy = _clone(tmp_path / "copy", with_venv=True)

    result = _rename(copy, "acme_churn", python="project")

    assert result.returncode == 0, result.stderr
    assert (copy / "acme_churn" / "config.py").is_file() and not (copy / "ml_project").exists()
    leftovers = subprocess.run(["git", "grep", "-n", "-e", r"\bml_project\b", "-e", "ml-project",
                                "-e", "ML_PROJECT_[A-Z*]", "-P"], cwd=copy, capture_output=True,
                               text=True).stdout
    assert leftovers == ""
    pyproject = (copy / "pyproject.toml").read_text()
    assert 'name = "acme_churn"' in pyproject and '"acme_churn*"' in pyproject
    assert "acme-churn = {path" in (copy / "Pipfile").read_text()
    assert all("from acme_churn." in path.read_text()
               for path in (copy / "use_cases").glob("[!_]*.py"))

    environment = {**os.environ, "PYTHONPATH": str(copy)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            *COPY_TESTS], cwd=copy, env=environment, capture_output=True,
                           text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout.splitlines()[-1]


def _with_untracked_files(copy: Path) -> Path:
    """What a worked-in project holds beside its tracked files: caches in the package, outputs,
    a link (untracked, so kept as it is), a read-only folder."""
    (copy / "ml_project" / "__pycache__").mkdir()
    (copy / "ml_project" / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"\x00cache")
    (copy / "output" / "run.log").write_text("a log line\n")
    (copy / "output" / "package").symlink_to("../ml_project")
    (copy / "output" / "locked").mkdir()
    (copy / "output" / "locked" / "kept.txt").write_text("kept\n")
    (copy / "output" / "locked").chmod(0o555)
    return copy


def test_rename_moves_untracked_files_with_the_package_and_its_undo_restores_the_tree(
    tmp_path: Path
) -> None:
    copy = _with_untracked_files(_clone(tmp_path / "copy", with_venv=False))
    (copy / "config_link.py").symlink_to("ml_project/config.py")  # a tracked link follows
    (copy / "windows.txt").write_bytes(b"import ml_project\r\nML_PROJECT_API_KEY\r\n")
    _git(copy, "add", "config_link.py", "windows.txt")
    _git(copy, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "link")
    before, head = snapshot(copy), _git(copy, "rev-parse", "HEAD")

    result = _rename(copy, "acme_churn", python="system")

    assert result.returncode == 0, result.stderr
    assert os.readlink(copy / "config_link.py") == "acme_churn/config.py"
    assert (copy / "windows.txt").read_bytes() == b"import acme_churn\r\nACME_CHURN_API_KEY\r\n"
    assert (copy / "acme_churn" / "__pycache__" / "config.cpython-311.pyc").is_file()
    assert os.readlink(copy / "output" / "package") == "../ml_project"  # untracked: as it was
    assert oct((copy / "output" / "locked").stat().st_mode)[-3:] == "555"
    assert not list(tmp_path.glob(".*.renaming"))
    undo = re.search(r"Undo, before you commit anything else: (.+)", result.stdout)
    assert undo is not None

    subprocess.run(["bash", "-c", undo.group(1)], cwd=tmp_path, check=True, timeout=60)

    assert snapshot(copy) == before
    assert _git(copy, "status", "--porcelain") == "" and _git(copy, "rev-parse", "HEAD") == head
    (copy / "output" / "locked").chmod(0o755)


def test_rename_refuses_a_dirty_tree(tmp_path: Path) -> None:
    copy = _clone(tmp_path / "copy", with_venv=False)
    (copy / "README.md").write_text("edited\n")

    result = _rename(copy, "acme_churn", python="system")

    assert result.returncode == 1 and "uncommitted changes" in result.stderr
    assert (copy / "ml_project").is_dir() and not (copy / "acme_churn").exists()


MODEL_STORES = ["data/model_artifacts", "mlflow.db", "mlruns", "mlartifacts", "output/deployment"]
RENAME_AND_RETRAIN = (
    "bash executables/clear_outputs.sh --yes && bash executables/rename_project.sh acme_churn && "
    "pipenv sync --dev && pipenv run python use_cases/modelling_historic_data_local.py")


@pytest.mark.slow
@pytest.mark.parametrize("store", MODEL_STORES)
def test_rename_refuses_while_models_exist_and_renames_once_the_printed_commands_cleared_them(
    tmp_path: Path, store: str
) -> None:
    """Pickled models name the package's modules: renamed under them they would not load. The
    refusal changes nothing and prints the commands; they clear the models, and the rename
    goes."""
    copy = _clone(tmp_path / "copy", with_venv=False)
    (copy / "data" / "model_artifacts").mkdir()  # empty: no model, no refusal
    path = copy / store
    if store.endswith(".db"):
        path.write_bytes(b"SQLite format 3\x00")
    else:
        (path / "champion").mkdir(parents=True, exist_ok=True)
        (path / "champion" / "metadata.json").write_text("{}\n")
    before = snapshot(copy)

    result = _rename(copy, "acme_churn", python="system")

    assert result.returncode == 1, result.stderr
    assert f"models saved under the package name 'ml_project' exist ({store})" in result.stderr
    assert result.stderr.rstrip().endswith(f"and retrain: {RENAME_AND_RETRAIN}")
    assert "Traceback" not in result.stderr
    assert snapshot(copy) == before and not list(tmp_path.glob(".*.renaming"))

    clear, rename = RENAME_AND_RETRAIN.split(" && ")[:2]
    subprocess.run(["bash", "-c", f"{clear} && {rename}"], cwd=copy, check=True,
                   capture_output=True, timeout=120)

    assert (copy / "acme_churn").is_dir() and not (copy / "ml_project").exists()
    assert not path.exists()


# Kills ---------------------------------------------------------------------------------------

# Runs the rename under an audit hook that sends this very process signal `number` at the
# `count`-th audit event named `event` whose arguments hold `part`: a real signal, at a
# chosen point of the rename.
KILLED_AT = """
import os, runpy, signal, sys
event, part, count, number = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seen = 0

def hook(name, arguments):
    global seen
    if name == event and part in repr(arguments):
        seen += 1
        if seen == count:
            os.kill(os.getpid(), number)

sys.argv = sys.argv[5:]
sys.addaudithook(hook)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# Runs the rename with an audit hook that counts the events named in argv[1] (JSON: name ->
# part) and prints the counts (JSON) to stderr at exit: how many links, writes and removals a
# rename of this very clone makes (its .git holds as many files as its packing left).
COUNTED = """
import atexit, json, runpy, sys
wanted = json.loads(sys.argv[1])
counts = dict.fromkeys(wanted, 0)

def hook(name, arguments):
    if name in wanted and wanted[name] in repr(arguments):
        counts[name] += 1

atexit.register(lambda: print(json.dumps(counts), file=sys.stderr))
sys.argv = sys.argv[2:]
sys.addaudithook(hook)
runpy.run_path(sys.argv[0], run_name="__main__")
"""
COUNTED_EVENTS = {"os.link": "", "os.remove": ""}


@pytest.fixture(scope="module")
def renamed_reference(tmp_path_factory: pytest.TempPathFactory
                      ) -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
    """The snapshot of a clone renamed without interruption (what "the new tree" holds) and
    how many of each counted event that rename made."""
    copy = _with_untracked_files(_clone(tmp_path_factory.mktemp("reference") / "copy",
                                        with_venv=False))
    result = subprocess.run([sys.executable, "-S", "-I", "-c", COUNTED,
                             json.dumps(COUNTED_EVENTS), SCRIPT, "acme_churn"], cwd=copy,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    counts: dict[str, int] = json.loads(result.stderr.strip().splitlines()[-1])
    reference = snapshot(copy)
    (copy / "output" / "locked").chmod(0o755)
    return reference, counts


@pytest.mark.slow
@pytest.mark.parametrize(("event", "part", "count", "number", "outcome"), [
    # building the renamed tree beside the project: linking files, writing changed ones
    # (a count of "half" is half of what an uninterrupted rename of the same clone makes)
    ("os.link", "", 1, signal.SIGKILL, "old"),
    ("os.link", "", "half", signal.SIGKILL, "old"),
    ("open", "acme_churn/", 10, signal.SIGKILL, "old"),
    ("ctypes.dlsym", "renameat2", 1, signal.SIGKILL, "old"),  # before the trial swap
    ("ctypes.dlsym", "renameat2", 2, signal.SIGKILL, "old"),  # just before the project's swap
    ("shutil.rmtree", ".renaming", 1, signal.SIGKILL, "new"),  # swapped: removing the old tree
    ("os.remove", "", "half", signal.SIGKILL, "new"),
    ("os.link", "", "half", signal.SIGTERM, "old"),  # a stop that can be handled cleans up at once
    ("os.link", "", "half", signal.SIGINT, "old"),
], ids=["link-1", "link-half", "write-10", "trial-swap", "swap", "removal", "remove-half",
        "sigterm", "sigint"])
def test_a_rename_killed_at_any_point_leaves_the_old_tree_or_the_new_one(
    tmp_path: Path,
    renamed_reference: tuple[dict[str, tuple[str, str]], dict[str, int]], event: str,
    part: str, count: int | str, number: int, outcome: str,
) -> None:
    """A kill before the swap leaves the project as it was, after it the renamed project;
    never a mix. What a SIGKILL leaves beside the project is removed by the next rename, which
    then succeeds."""
    reference, counts = renamed_reference
    if count == "half":
        assert counts[event] >= 20, counts  # enough events that half is mid-way
        count = counts[event] // 2
    copy = _with_untracked_files(_clone(tmp_path / "copy", with_venv=False))
    before = snapshot(copy)

    killed = subprocess.run([sys.executable, "-S", "-I", "-c", KILLED_AT, event, part,
                             str(count), str(number), SCRIPT, "acme_churn"], cwd=copy,
                            capture_output=True, text=True, timeout=120)

    assert killed.returncode != 0, (event, count, killed.stdout)
    assert snapshot(copy) == (before if outcome == "old" else reference)
    if number != signal.SIGKILL:
        assert not list(tmp_path.glob(".*.renaming"))
        assert "Interrupted: nothing was renamed" in killed.stderr
    if outcome == "old":
        again = _rename(copy, "acme_churn", python="system")
        assert again.returncode == 0, again.stderr
        assert snapshot(copy) == reference
    assert not list(tmp_path.glob(".*.renaming")) or number == signal.SIGKILL
    (copy / "output" / "locked").chmod(0o755)


def test_a_name_is_renamed_where_it_starts_a_word_or_follows_a_strings_escape(
    tmp_path: Path
) -> None:
    """`"...\\nold_pkg"` in a source file names the package after an escape (a word boundary
    misses it); `old_pkg_template`, `xold_pkg` and `MY_OLD_PKG_X` are other names, left as
    they are. (Another name than the package's: this file is renamed with the project.)"""
    from executables.rename_project import renamed_contents

    source = (b'print("a\\nold_pkg", "\\tOLD_PKG_API_KEY")\n'
              b"old_pkg.config OLD_PKG_API_KEY old-pkg==1\n"
              b"old_pkg_template xold_pkg MY_OLD_PKG_X my-old-pkg\n")
    (tmp_path / "code.py").write_bytes(source)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "code.py")

    assert renamed_contents(tmp_path, "old_pkg", "acme_churn") == {"code.py": (
        b'print("a\\nacme_churn", "\\tACME_CHURN_API_KEY")\n'
        b"acme_churn.config ACME_CHURN_API_KEY acme-churn==1\n"
        b"old_pkg_template xold_pkg MY_OLD_PKG_X my-old-pkg\n")}
