"""Who gets in, what the service will read, and where secrets go: real processes, real files.

- the API key: every wrong key is refused (a prefix, a longer key, another case, non-ASCII,
  blank), and neither it nor a wrong key is written anywhere: server output, log files,
  prediction log. The comparison is `hmac.compare_digest`, constant-time by construction; a
  wall-clock measurement on a shared machine could not prove it, so no test pretends to;
- a body that declares more than `max_body_bytes` is refused before it is read;
- no request makes the server open a path it names or unpickle anything: a Python audit hook in
  the server process records every file it opens and every class a pickle resolves;
- an artifact whose sha256 does not match metadata.json is never unpickled;
- secrets in the environment reach neither the logs and outputs nor the MLflow store.
"""

from __future__ import annotations

import http.client
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from ml_project.config import PROJECT_ROOT
from ml_project.export import ArtifactError, read_metadata
from ml_project.monitoring_data import read_prediction_window
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.client import PredictionClient
from ml_project.serving.endpoints import API_KEY_ENV, API_KEY_HEADER
from ml_project.serving.fastapi_app import create_app
from ml_project.serving.flask_app import create_flask_app
from tests.conftest import prediction_config, write_project
from tests.serving import (
    INSTANCE,
    assert_serves,
    free_port,
    instance,
    launch_server,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
)
from use_cases import modelling_historic_data_local

API_KEY = "s3cret-api-key-for-the-security-tests-7f3a9c"
WRONG_KEYS = [API_KEY[:-1], API_KEY + "0", API_KEY.upper(), "wrong-key-4d2e9b", "ключ", ""]


def files_containing(root: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Each file under `root` (databases and their journals included) that holds a secret."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            hits = [secret for secret in secrets if secret.encode() in content]
            if hits:
                found[str(path)] = hits
    return found


class Pwned:
    """Unpickling this creates `marker`: proof that someone unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.makedirs, (str(self.marker),)


# The API key --------------------------------------------------------------------------------------


def test_api_key_refuses_every_wrong_key_and_is_never_written_anywhere(
    trained_project: Path, tmp_path: Path
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    with launch_server(config_file, tmp_path / "server.out",
                       environment={API_KEY_ENV: API_KEY}) as (base_url, _):
        refused = {}
        for key in [None, *WRONG_KEYS]:
            headers = {} if key is None else {API_KEY_HEADER: key.encode()}
            for method, path, body in [("POST", "/predict", INSTANCE),
                                       ("POST", "/predict/batch", {"instances": [INSTANCE]}),
                                       ("GET", "/model", None), ("GET", "/model/card", None),
                                       ("GET", "/ready", None)]:
                answer = requests.request(method, base_url + path, json=body, headers=headers,
                                          timeout=30)
                refused[key, path] = (answer.status_code, answer.json()["detail"])
        accepted = requests.post(f"{base_url}/predict", json=INSTANCE, timeout=30,
                                 headers={API_KEY_HEADER: API_KEY})
        health = requests.get(f"{base_url}/health", timeout=30)
    config = load_serving_config(config_file)
    log = PredictionLog.from_config(config)
    records = log.read()
    log.close()
    window = read_prediction_window(config, last=config.monitoring.window_records)

    assert set(refused.values()) == {(401, "missing or wrong X-API-Key header")}
    assert accepted.status_code == 200 and health.status_code == 200
    assert health.json()["counters"]["refused_401"] == 5 * 7
    assert "API key required" in (tmp_path / "server.out").read_text()
    # Refusals at the door are counted, never stored: the log, and monitoring's window, hold
    # the authenticated prediction alone, however many strangers knocked.
    assert [r["request_id"] for r in records] == [accepted.json()["request_id"]]
    assert (window.requests, window.rejected, len(window.predictions)) == (1, 0, 1)
    assert files_containing(tmp_path, [API_KEY, *WRONG_KEYS[:5]]) == {}


# The body size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [create_app, create_flask_app], ids=["fastapi", "flask"])
def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(
    trained_project: Path, tmp_path: Path, factory: Any
) -> None:
    """Headers promising a gigabyte and no body at all: the answer cannot wait for it."""
    config = load_serving_config(write_serving_config(trained_project, tmp_path))
    log = PredictionLog.from_config(config)
    app = factory(PredictionService.from_config(config), log)
    with serve_in_thread(app) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: application/json\r\n"
                               b"Content-Length: 1000000000\r\n\r\n")
            answer = http.client.HTTPResponse(connection)
            answer.begin()  # raises socket.timeout if the server waits for the body
            body = json.loads(answer.read())
    log.close()

    assert answer.status == 413
    assert body["detail"] == f"the body is larger than {config.prediction.max_body_bytes} bytes"


# Nothing in a request is opened or unpickled ------------------------------------------------------

# Loads the model as the launcher does, then records from an audit hook every file opened, every
# class a pickle resolves and every process started, while serving.
AUDITED_SERVER = """
import json, sys
from pathlib import Path
from ml_project.serving import launcher
from ml_project.config import load_config
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog

config_file, framework, port, audit_file = sys.argv[1:]
config = load_config("prediction", "production", "local", config_file=Path(config_file),
                     root=Path(config_file).parent)
service = PredictionService.from_config(config)
log = PredictionLog.from_config(config)
audit = open(audit_file, "w", buffering=1)
WATCHED = ("open", "pickle.find_class", "os.system", "os.exec", "os.posix_spawn",
           "subprocess.Popen")

def record(event, arguments):
    if event.startswith(WATCHED):
        audit.write(json.dumps([event, [str(a) for a in arguments[:2]]]) + "\\n")

sys.addaudithook(record)
with launcher.loading_beside(log, log.start_loader_process()):
    launcher.serve_in_process(launcher.create_asgi_app(framework, service, log), "127.0.0.1",
                              int(port))
"""


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_no_request_makes_the_server_open_a_path_or_unpickle_anything(
    trained_project: Path, tmp_path: Path, framework: str
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    marker = tmp_path / "unpickled"
    pickled = pickle.dumps(Pwned(marker))
    bait = tmp_path / "model.pkl"
    bait.write_bytes(pickled)
    paths = [str(bait), f"file://{bait}", "/etc/passwd", f"../../{bait.name}"]
    # method, path, what else to send, the answer expected
    attempts: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/predict", {"data": pickled,
                              "headers": {"Content-Type": "application/octet-stream"}}, 400),
        ("POST", "/predict/batch", {"data": pickled,
                                    "headers": {"Content-Type": "application/python-pickle"}}, 400),
        ("POST", "/predict", {"json": instance(customer_id=paths[0])}, 200),
        ("POST", "/predict", {"json": instance(event_time=paths[1])}, 422),  # not ISO 8601
        ("POST", "/predict", {"json": instance(contract=paths[0], region=paths[3])}, 422),
        # unknown fields are ignored by default (validation.unknown_fields: ignore)
        ("POST", "/predict", {"json": {**INSTANCE, "model_path": paths[0], "pickle": paths[1]}},
         200),
        ("POST", "/predict/batch", {"json": {"instances": [INSTANCE], "model": paths[0]}}, 422),
        ("POST", f"/predict?model={paths[0]}&artifact_file={paths[2]}", {"json": INSTANCE}, 200),
        ("GET", f"/model?path={paths[0]}", {"headers": {"X-Model-Path": paths[0]}}, 200),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", {}, 404),
        ("GET", f"/{paths[3]}", {}, 404),
    ]
    port = free_port()
    audit_file = tmp_path / "audit.jsonl"
    with (tmp_path / "server.out").open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-c", AUDITED_SERVER, str(config_file), framework, str(port),
             str(audit_file)],
            cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            client = PredictionClient(f"http://127.0.0.1:{port}", max_retries=0)
            assert client.wait_until_ready(120, give_up=lambda: server.poll() is not None).ok
            client.close()
            assert_serves(server, port, tmp_path / "server.out")
            statuses = [requests.request(method, f"http://127.0.0.1:{port}{path}", timeout=30,
                                         **kwargs).status_code
                        for method, path, kwargs, _ in attempts]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    events = [json.loads(line) for line in audit_file.read_text().splitlines()]

    assert statuses == [expected for *_, expected in attempts]
    assert not marker.exists()
    assert events, "the audit hook recorded nothing, not even the server's own imports"
    assert [event for event in events if event[0] == "pickle.find_class"] == []
    assert [event for event in events if not event[0].startswith("open")] == []
    opened = [arguments[0] for _, arguments in events]
    assert [path for path in opened if bait.name in path or "passwd" in path] == []


# Artifacts ----------------------------------------------------------------------------------------


def test_an_artifact_is_unpickled_only_after_its_checksum_matches(
    trained_project: Path, tmp_path: Path
) -> None:
    """Swap the artifact for a pickle that acts when loaded: it is refused, never run."""
    root = tmp_path / "project"
    shutil.copytree(trained_project, root)
    champion = root / "data" / "model_artifacts" / "champion"
    marker = tmp_path / "unpickled"
    (champion / read_metadata(champion)["artifact_file"]).write_bytes(pickle.dumps(Pwned(marker)))

    with pytest.raises(ArtifactError, match="does not match its checksum.*refusing to load"):
        PredictionService.from_config(prediction_config(root))
    assert not marker.exists()


# Secrets ------------------------------------------------------------------------------------------

SECRETS = {
    API_KEY_ENV: "fake-api-key-5b1e8f0c",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-92ad",
    "MLFLOW_TRACKING_TOKEN": "fake-mlflow-token-0c77",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-61f4",
    "DATABASE_PASSWORD": "fake-db-password-e3b2",
}


def test_secrets_in_the_environment_reach_no_log_output_or_mlflow_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_file = write_project(tmp_path, n_historic=600, n_production=50)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    code = modelling_historic_data_local.main(["--config", str(config_file),
                                               "--root", str(tmp_path)])

    assert code == 0
    assert (tmp_path / "mlflow.db").is_file() and list((tmp_path / "output" / "logs").iterdir())
    secrets = list(SECRETS.values())
    assert files_containing(tmp_path, secrets) == {}
    captured = capsys.readouterr()
    for secret in secrets:
        assert secret not in captured.out + captured.err + caplog.text


def test_credentials_in_the_tracking_uri_are_not_logged_when_the_store_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "fake-tracking-password-4c1d"
    config_file = write_project(tmp_path, n_historic=600, n_production=50)
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI",
                           f"http://modeller:{password}@127.0.0.1:{closed.getsockname()[1]}")
        code = modelling_historic_data_local.main(["--config", str(config_file),
                                                   "--root", str(tmp_path)])

    assert code == 3
    assert "is unreachable" in caplog.text and "modeller:***@127.0.0.1" in caplog.text
    captured = capsys.readouterr()
    assert password not in captured.out + captured.err + caplog.text
    assert files_containing(tmp_path, [password]) == {}
