"""Faults the service and the use cases must survive, each caused for real.

- a missing, truncated or tampered artifact: nothing serves or scores it; the launcher and the
  stream and batch use cases stop with the same message, saying what to do;
- a prediction log that is locked, or cannot be written at all, while the API serves: every
  request is still answered, the failure is logged, the records wait in the fallback file and
  are replayed, none lost and none twice;
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
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests
from mlflow.tracking import MlflowClient

from ml_project.config import PROJECT_ROOT
from ml_project.export import METADATA_FILE, ArtifactError, load_pipeline, read_metadata
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.fastapi_app import create_app
from tests.churn_data import write_example_data
from tests.conftest import prediction_config, write_project
from tests.serving import (
    INSTANCE,
    free_port,
    instance,
    launch_server,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
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


# The prediction log failing while the API serves --------------------------------------------------


@pytest.fixture(scope="module")
def service(trained_project: Path) -> PredictionService:
    return PredictionService.from_config(prediction_config(trained_project))


def predict_all(base_url: str, count: int) -> list[str]:
    """`count` single predictions and one batch of two, all answered 200; returns the request
    id of each record the log must hold (a batch logs one record per instance)."""
    answers = [requests.post(f"{base_url}/predict", json=instance(customer_id=f"C{i}"),
                             timeout=30) for i in range(count)]
    batch = requests.post(f"{base_url}/predict/batch",
                          json={"instances": [INSTANCE, instance(age=70)]}, timeout=30)
    assert [answer.status_code for answer in [*answers, batch]] == [200] * (count + 1)
    return [answer.json()["request_id"] for answer in answers] + [batch.json()["request_id"]] * 2


def logged_request_ids(log: PredictionLog) -> list[str]:
    return [record["request_id"] for record in log.read()]


def spilled_lines(log: PredictionLog) -> list[str]:
    assert log.flush(30)
    return [line for path in log.spill_files() for line in path.read_text().splitlines()]


def test_locked_prediction_log_keeps_answering_and_replays_every_record(
    service: PredictionService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer holds the database's write lock far longer than the log waits: every
    request is answered at full speed (the project's client timeout is never near), the
    records wait in the spill file and are stored once the lock is released."""
    database = tmp_path / "prediction_log.db"
    log = PredictionLog(f"sqlite:///{database}", tmp_path / "spill", lock_timeout_seconds=2,
                        retry_seconds=0.2)
    with serve_in_thread(create_app(service, log)) as base_url:
        before = predict_all(base_url, 2)
        assert log.flush(30)  # stored before the lock is taken
        holder = sqlite3.connect(database, timeout=0)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            started = time.perf_counter()
            during = predict_all(base_url, 8)
            answered_in = time.perf_counter() - started
            waiting = spilled_lines(log)
        finally:
            holder.rollback()
            holder.close()
        after = predict_all(base_url, 1)
    logged = logged_request_ids(log)
    log.close()

    assert answered_in < 2  # 9 requests in less than one wait for the lock
    assert len(waiting) == len(during)
    assert "unavailable (OperationalError)" in caplog.text
    assert not log.spill_files()
    assert sorted(logged) == sorted(before + during + after)  # each once, none lost


def test_unwritable_prediction_log_keeps_answering_and_replays_once_writable(
    service: PredictionService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log's folder cannot be created (here a file stands in its place, as an unmounted
    volume or a wrong path would), then is fixed while the service keeps serving."""
    blocker = tmp_path / "logs"
    blocker.write_text("not a folder")
    log = PredictionLog(f"sqlite:///{blocker / 'prediction_log.db'}", tmp_path / "spill",
                        retry_seconds=0.2)
    with serve_in_thread(create_app(service, log)) as base_url:
        during = predict_all(base_url, 3)
        waiting = spilled_lines(log)
        blocker.unlink()
        after = predict_all(base_url, 1)
    logged = logged_request_ids(log)
    log.close()

    assert len(waiting) == len(during)
    assert "Prediction log" in caplog.text and "unavailable" in caplog.text
    assert not log.spill_files()
    assert sorted(logged) == sorted(during + after)  # each once, none lost


def test_full_disk_and_unwritable_spill_never_fail_a_request_and_are_reported(
    service: PredictionService, tmp_path: Path
) -> None:
    """Neither the database nor the spill folder can be written (a full or read-only disk):
    every request is still answered 200, and /health reports the records held and lost."""
    blocker = tmp_path / "full"
    blocker.write_text("")
    log = PredictionLog(f"sqlite:///{blocker / 'log.db'}", blocker / "spill", queue_size=4,
                        retry_seconds=0.2)
    with serve_in_thread(create_app(service, log)) as base_url:
        predict_all(base_url, 10)
        log.flush(10)
        health = requests.get(f"{base_url}/health", timeout=10).json()
    log.close()
    assert health["status"] == "alive"
    assert health["counters"]["log_spill_failures"] > 0
    assert health["counters"]["log_lost"] + health["counters"].get("log_dropped_queue_full", 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_a_server_killed_while_the_log_is_locked_loses_nothing_after_a_restart(
    framework: str, trained_project: Path, tmp_path: Path
) -> None:
    """As found: while another writer locks the log, a batch whose id and a key hold lone
    surrogates is spilled; the server is SIGKILLed; a torn line is left at the end of its
    spill file. After the lock and a restart, every request is answered and every record of
    the first server is stored once (the torn line moved aside)."""
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    database = Path(config.resolve(config.prediction.prediction_log_url).removeprefix("sqlite:///"))
    poisoned = json.dumps({"instances": [{**instance(customer_id="X"), "Y": 1}]}).encode()
    poisoned = poisoned.replace(b'"X"', b'"\\ud800"').replace(b'"Y"', b'"\\udfff"')
    with launch_server(config_file, tmp_path / "first.out", framework) as (url, server):
        assert requests.post(f"{url}/predict", json=INSTANCE, timeout=10).status_code == 200
        time.sleep(1.5)  # the writer has stored it (and created the table)
        holder = sqlite3.connect(database, timeout=0)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            answers = [requests.post(f"{url}/predict/batch", data=poisoned, timeout=10,
                                     headers={"Content-Type": "application/json"}),
                       *[requests.post(f"{url}/predict", json=instance(customer_id=f"K{i}"),
                                       timeout=10) for i in range(5)]]
            spill = config.output_dir / "prediction_log_spill"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and sum(
                    path.read_text().count("\n") for path in spill.glob("*.jsonl")) < 6:
                time.sleep(0.2)
            for child in server.children(recursive=True):
                child.kill()
            server.kill()
        finally:
            holder.rollback()
            holder.close()
    waiting = list(spill.glob("*.jsonl"))  # spill-* or, if a replay had begun, claimed-*
    with waiting[0].open("ab") as handle:
        handle.write(b'{"record_key": "torn-by-a-kil')
    with launch_server(config_file, tmp_path / "second.out", framework) as (url, _):
        after = requests.post(f"{url}/predict", json=INSTANCE, timeout=10)
    log = PredictionLog.from_config(config)
    records = log.read()
    log.close()

    # the unknown key is ignored (validation.unknown_fields: ignore), the surrogate id is text
    assert [answer.status_code for answer in answers] == [200] * 6
    assert after.status_code == 200
    ids = [record["request_id"] for record in records]
    assert len(ids) == 1 + 1 + 5 + 1 and len(set(ids)) == 1 + 1 + 5 + 1
    assert {answer.json()["request_id"] for answer in [*answers, after]} <= set(ids)
    assert not list(spill.glob("*.jsonl"))
    assert "torn line" in (spill / "prediction_log.rejected").read_text()


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
