"""Faults the service and the use cases must survive, each caused for real.

- a missing, truncated or tampered artifact: nothing serves or scores it; the launcher and the
  stream and batch use cases stop with the same message, saying what to do;
- (the prediction log's faults: tests/test_prediction_log_faults.py);
- an MLflow tracking store that does not answer during modelling: a clear error, and the
  current champion left exactly as it was;
- an export killed (SIGKILL) between writing the artifact and replacing metadata.json, or at
  random moments: the artifact folder still loads, the previous model or the new one.
"""

from __future__ import annotations

import json
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from mlflow.tracking import MlflowClient

from ml_project.config import PROJECT_ROOT
from ml_project.export import METADATA_FILE, ArtifactError, load_pipeline, read_metadata
from tests.churn_data import write_example_data
from tests.conftest import write_project
from tests.serving import (
    free_port,
)
from use_cases import (
    modelling_historic_data_local,
    predicting_historic_data_local,
    predicting_production_data_local,
)


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    """A copy of the trained project, free to damage."""
    root = tmp_path / "project"
    shutil.copytree(trained_project, root)
    return root


def champion(root: Path) -> Path:
    return root / "data" / "model_artifacts" / "champion"


def artifact(root: Path) -> Path:
    return champion(root) / str(read_metadata(champion(root))["artifact_file"])


def remove_the_champion(root: Path) -> None:
    shutil.rmtree(champion(root))


def delete_the_artifact(root: Path) -> None:
    artifact(root).unlink()


def truncate_the_artifact(root: Path) -> None:
    path = artifact(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def tamper_with_the_artifact(root: Path) -> None:
    """One byte changed, the size kept: only the checksum can tell."""
    path = artifact(root)
    content = bytearray(path.read_bytes())
    content[len(content) // 3] ^= 0x01
    path.write_bytes(bytes(content))


@pytest.mark.parametrize(
    ("damage", "advice"),
    [
        (remove_the_champion, "run the modelling use case first"),
        (delete_the_artifact, "is missing"),
        (truncate_the_artifact, "does not match its checksum"),
        (tamper_with_the_artifact, "does not match its checksum"),
    ],
    ids=["no-artifact", "artifact-deleted", "truncated", "tampered"],
)
def test_damaged_artifact_stops_the_launcher_and_the_use_cases_with_one_message(
    project: Path, damage: Callable[[Path], None], advice: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage(project)
    with pytest.raises(ArtifactError) as refusal:
        load_pipeline(champion(project))
    message = str(refusal.value)
    assert advice in message
    arguments = ["--config", str(project / "project_config.yaml"), "--root", str(project)]

    launcher = subprocess.run(
        [sys.executable, "-m", "ml_project.serving.launcher", "fastapi", "--port", str(free_port()),
         *arguments],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )
    stream_code = predicting_production_data_local.main(arguments)
    stream_log = caplog.text
    caplog.clear()
    batch_code = predicting_historic_data_local.main(arguments)

    assert launcher.returncode == 2
    assert f"Cannot start the prediction service: {message}" in launcher.stderr
    assert "Traceback" not in launcher.stderr
    assert stream_code == 2 and message in stream_log
    assert batch_code == 2 and message in caplog.text
    assert not (project / "output" / "predictions").exists()
    assert not (project / "output" / "prediction_log.db").exists()


# Modelling with the tracking store down -----------------------------------------------------------


def test_unreachable_tracking_store_leaves_the_champion_untouched(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_example_data(project / "data", n_historic=600, n_production=50)  # a quicker retrain
    files_before = {path.name: path.read_bytes() for path in champion(project).iterdir()}
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed.getsockname()[1]}")
        code = modelling_historic_data_local.main(
            ["--config", str(project / "project_config.yaml"), "--root", str(project)]
        )

    assert code == 3
    assert "is unreachable" in caplog.text and "exported or promoted" in caplog.text
    artifacts = project / "data" / "model_artifacts"
    assert [path.name for path in artifacts.iterdir()] == ["champion"]
    files_after = {path.name: path.read_bytes() for path in champion(project).iterdir()}
    assert files_after == files_before
    load_pipeline(champion(project))


# Exports killed half-way --------------------------------------------------------------------------

# Loads the champion and exports variants of it (the Pipeline's `verbose` flag changes its bytes,
# whatever the estimator) into the same folder, reporting on stdout.
EXPORTER = """
import os, sys, time
from pathlib import Path
from ml_project import export

directory, mode = Path(sys.argv[1]), sys.argv[2]
pipeline, metadata = export.load_pipeline(directory)

if mode == "stop-before-metadata":
    replace = os.replace
    def replace_but_hang_before_metadata(source, target):
        if Path(target).name == export.METADATA_FILE:
            print("artifact written", flush=True)
            time.sleep(600)
        replace(source, target)
    export.os.replace = replace_but_hang_before_metadata
    export.export_pipeline(pipeline.set_params(verbose=True), {"model_version": "new"}, directory)
else:
    print("exporting", flush=True)
    for attempt in range(10_000):
        export.export_pipeline(pipeline.set_params(verbose=attempt % 2 == 0),
                               {"model_version": str(attempt % 2)}, directory)
"""


def start_exporter(directory: Path, mode: str) -> subprocess.Popen[str]:
    """The exporter, once it printed its first line (within a minute)."""
    process = subprocess.Popen([sys.executable, "-c", EXPORTER, str(directory), mode],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    assert ready and process.stdout.readline(), "the exporter did not start"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    if process.stdout:
        process.stdout.close()


def test_export_killed_before_metadata_is_replaced_leaves_the_previous_model(
    trained_project: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "champion"
    shutil.copytree(champion(trained_project), directory)
    before = read_metadata(directory)

    kill(start_exporter(directory, "stop-before-metadata"))

    pipeline, metadata = load_pipeline(directory)
    assert metadata == before
    assert not pipeline.verbose
    written = sorted(path.name for path in directory.glob("pipeline-*.joblib"))
    assert len(written) == 2 and before["artifact_file"] in written  # the kill hit the window


def test_export_killed_at_random_moments_always_leaves_a_loadable_model(
    trained_project: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "champion"
    shutil.copytree(champion(trained_project), directory)
    previous = read_metadata(directory)["model_version"]
    moments = random.Random(7)

    for _ in range(4):
        process = start_exporter(directory, "loop")
        time.sleep(moments.uniform(0.05, 0.6))
        kill(process)

        _, metadata = load_pipeline(directory)
        assert metadata["model_version"] in {previous, "0", "1"}
        assert json.loads((directory / METADATA_FILE).read_text()) == metadata


# Modelling killed or failing half-way through the promotion ------------------------------------

WEAK = {"training": {"candidates": [{"name": "prior", "estimator": "sklearn.dummy.DummyClassifier",
                                     "params": {"strategy": "prior"}}]}}
# Runs the modelling use case, SIGKILLed right after the local export, before the alias moves.
KILLED_AFTER_EXPORT = """
import os, signal, sys
from use_cases import modelling_historic_data_local as modelling
export = modelling.export_pipeline
def export_then_die(*args, **kwargs):
    export(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
modelling.export_pipeline = export_then_die
sys.exit(modelling.main(sys.argv[1:]))
"""


def registry(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def test_modelling_killed_between_export_and_alias_is_repaired_by_the_next_run(
    tmp_path: Path
) -> None:
    arguments = ["--config", str(tmp_path / "project_config.yaml"), "--root", str(tmp_path)]
    write_project(tmp_path, WEAK, n_historic=600, n_production=50)
    assert modelling_historic_data_local.main(arguments) == 0  # v1, a weak champion
    write_project(tmp_path, n_historic=600, n_production=50)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EXPORT, *arguments],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    local = read_metadata(champion(tmp_path))
    assert local["model_version"] == "2"  # v2 beat v1 and was exported ...
    assert str(registry(tmp_path).get_model_version_by_alias("churn_model", "champion").version) \
        == "1"

    assert modelling_historic_data_local.main(arguments) == 0  # ... the next run repairs

    client = registry(tmp_path)
    assert str(client.get_model_version_by_alias("churn_model", "champion").version) == \
        read_metadata(champion(tmp_path))["model_version"] == "2"
    assert client.get_run(local["mlflow_run_id"]).info.status == "FAILED"


def test_tracking_failing_mid_run_exits_3_with_one_message_and_marks_the_run_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The artifact store becomes unwritable after the run started (here a file stands where
    the folder was): exit 3, one error message, no traceback, the run FAILED, the local
    champion untouched."""
    arguments = ["--config", str(tmp_path / "project_config.yaml"), "--root", str(tmp_path)]
    write_project(tmp_path, n_historic=600, n_production=50)
    assert modelling_historic_data_local.main(arguments) == 0
    before = {path.name: path.read_bytes() for path in champion(tmp_path).iterdir()}
    shutil.rmtree(tmp_path / "mlruns")
    (tmp_path / "mlruns").write_text("not a folder")
    caplog.clear()

    code = modelling_historic_data_local.main(arguments)

    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert code == 3
    assert len(errors) == 1 and "failed during run" in errors[0].getMessage()
    assert "Traceback" not in caplog.text
    experiment = registry(tmp_path).get_experiment_by_name("churn")
    assert experiment is not None
    runs = registry(tmp_path).search_runs(
        [experiment.experiment_id],
        filter_string="attributes.run_name LIKE 'modelling-%'", order_by=["start_time DESC"])
    assert runs[0].info.status == "FAILED"
    assert {path.name: path.read_bytes() for path in champion(tmp_path).iterdir()} == before
