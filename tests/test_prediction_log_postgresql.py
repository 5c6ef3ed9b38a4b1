"""The prediction log on a real PostgreSQL server (tests/postgres.py): replicas on one log.

Several processes create the schema at once; two prediction services (FastAPI and Flask) and
the stream use case write concurrently, and every answered request is in the table exactly
once; monitoring reads the same URL; the server stopped mid-run loses nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from ml_project.config import PROJECT_ROOT
from ml_project.monitoring_summary import EXIT_BAD_INPUT
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord
from ml_project.serving.fastapi_app import create_app
from tests.conftest import prediction_config
from tests.postgres import PostgresServer
from tests.serving import (
    INSTANCE,
    instance,
    launch_server,
    load_serving_config,
    sample_size_and_rejections,
    serve_in_thread,
    write_serving_config,
)
from use_cases import monitoring_production_data_local
from use_cases.monitoring_production_data_local import SUMMARY_FILE

# A real PostgreSQL server, started once on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres_server")]

URL_VARIABLE = "ML_PROJECT_PREDICTION_LOG_URL"


@pytest.fixture
def database(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database of the session's server, named after the test; its URL."""
    return postgres_server.create_database(request.node.name.lower()[:60])


def test_a_bare_postgresql_url_stores_each_record_once_through_psycopg(
    database: str, tmp_path: Path
) -> None:
    log = PredictionLog(database, tmp_path / "spill")
    assert log.engine.dialect.driver == "psycopg"
    record = LogRecord(request_id="r1", source="test", input={"name": "a\x00b"},
                       model_version="1", instance_id="C\x00")  # NUL: PostgreSQL refuses it
    log.append([record])
    log.append([record])  # a replay of the same record: its key is stored already
    log.append([LogRecord(request_id="r2", source="test", input={}, model_version="1")])
    rows = log.read()
    counters = log.counters()
    log.close()

    assert [row["request_id"] for row in rows] == ["r1", "r2"]
    assert rows[0]["instance_id"] == "C\\x00" and rows[0]["input"] == {"name": "a\\x00b"}
    assert counters.get("rejected_rows", 0) == 0 and counters.get("lost", 0) == 0


def test_replicas_starting_at_once_on_an_empty_database_create_the_schema_once(
    database: str, tmp_path: Path
) -> None:
    """Logs with engines of their own (as replicas have) write their first records at the same
    moment: without a lock, several see no table, and all but one fail creating it."""
    logs = [PredictionLog(database, tmp_path / "spill") for _ in range(6)]
    start = threading.Barrier(len(logs))

    def first_records(name: str, log: PredictionLog) -> None:
        start.wait()
        log.append([LogRecord(request_id=f"{name}-{i}", source=name, input={"i": i},
                              model_version="1") for i in range(100)])
        assert log.flush(60)

    with ThreadPoolExecutor(len(logs)) as replicas:
        list(replicas.map(first_records, [f"r{n}" for n in range(len(logs))], logs))
    counters = [log.counters() for log in logs]
    total = logs[0].count()
    for log in logs:
        log.close()

    assert [counter.get("written") for counter in counters] == [100] * len(logs)
    assert total == 100 * len(logs)


def send_requests(base_url: str, count: int) -> Counter[str]:
    """`count` single predictions and batches of two; the records each answered request id
    must have in the log."""
    expected: Counter[str] = Counter()
    with requests.Session() as session:
        for i in range(count):
            if i % 4 == 3:
                answer = session.post(f"{base_url}/predict/batch", timeout=30,
                                      json={"instances": [INSTANCE, instance(age=70)]})
                size = 2
            else:
                answer = session.post(f"{base_url}/predict", timeout=30,
                                      json=instance(customer_id=f"C{i}"))
                size = 1
            assert answer.status_code == 200, answer.text
            expected[answer.json()["request_id"]] += size
    return expected


def test_two_services_and_the_stream_write_one_log_and_monitoring_reads_it(
    trained_project: Path, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    arguments = ["--config", str(config_file), "--root", str(tmp_path)]
    environment = {URL_VARIABLE: database}
    with launch_server(config_file, tmp_path / "fastapi.out", "fastapi", environment) as (
        fastapi_url, _
    ), launch_server(config_file, tmp_path / "flask.out", "flask", environment) as (flask_url, _):
        stream = subprocess.Popen(
            [sys.executable, "use_cases/predicting_production_data_local.py", *arguments],
            cwd=PROJECT_ROOT, env={**os.environ, **environment}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        with ThreadPoolExecutor(4) as clients:
            answered = sum(clients.map(send_requests, [fastapi_url, flask_url] * 2, [40] * 4),
                           Counter[str]())
        stream_output, _ = stream.communicate(timeout=300)
    assert stream.returncode == 0, stream_output

    monkeypatch.setenv(URL_VARIABLE, database)
    config = load_serving_config(config_file)
    log = PredictionLog.from_config(config)
    rows = log.read()
    log.close()
    stored = Counter(row["request_id"] for row in rows if row["source"] != "stream")
    streamed, _ = sample_size_and_rejections(config)

    assert stored == answered  # every answered request, each record once, nothing else
    assert sum(row["source"] == "stream" for row in rows) == streamed
    assert len({row["record_key"] for row in rows}) == len(rows) == sum(answered.values()) + streamed

    code = monitoring_production_data_local.main(arguments)  # the same URL, from the variable
    summary = json.loads((config.output_dir / "monitoring" / SUMMARY_FILE).read_text())
    assert code != EXIT_BAD_INPUT
    assert summary["window"]["requests"] == len(rows)


def test_postgresql_stopped_mid_run_spills_and_every_record_lands_once_when_back(
    trained_project: Path, postgres_server: PostgresServer, database: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = PredictionService.from_config(prediction_config(trained_project))
    log = PredictionLog(database, tmp_path / "spill", retry_seconds=0.2)
    with serve_in_thread(create_app(service, log)) as base_url:
        before = send_requests(base_url, 4)
        assert log.flush(30)
        postgres_server.stop()
        try:
            started = time.perf_counter()
            during = send_requests(base_url, 8)
            answered_in = time.perf_counter() - started
            assert log.flush(30)
            waiting = sum(path.read_text().count("\n") for path in log.spill_files())
        finally:
            postgres_server.start()
        after = send_requests(base_url, 4)
    rows = log.read()
    log.close()

    assert answered_in < 5  # answered at full speed while the database is down
    assert waiting == sum(during.values())
    assert "unavailable (OperationalError)" in caplog.text
    assert not log.spill_files()
    assert Counter(row["request_id"] for row in rows) == before + during + after
