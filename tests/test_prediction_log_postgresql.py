"""The prediction log on a real PostgreSQL server (tests/postgres.py): replicas on one log,
and the database's own faults.

Several processes create the schema at once; two prediction services (FastAPI and Flask) and
the stream use case write concurrently, and every answered request is in the table exactly
once; monitoring reads the same URL; the server stopped mid-run, the table locked (ACCESS
EXCLUSIVE) while serving and while stopping, its schema changed by hand: nothing answered is
lost or stored twice. A password in any form of the URL is never printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
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
    """A fresh database of the session's server, named after the test (and a digest of its
    whole name, so that parametrized tests sharing a prefix get one each); its URL."""
    name = request.node.name.lower()
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return postgres_server.create_database(f"{name[:50]}_{digest}")


def test_a_bare_postgresql_url_stores_each_record_once_through_psycopg(
    database: str, tmp_path: Path
) -> None:
    log = PredictionLog(database, tmp_path / "journal")
    assert log.loader.engine.dialect.driver == "psycopg"
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
    assert counters["rejected"] == 0 and counters["loaded"] == 3  # 3 lines, 2 records


def test_replicas_starting_at_once_on_an_empty_database_create_the_schema_once(
    database: str, tmp_path: Path
) -> None:
    """Logs with engines and journals of their own (as replicas on several machines have) load
    their first records at the same moment: without a lock, several see no table, and all but
    one fail creating it."""
    logs = [PredictionLog(database, tmp_path / f"journal{n}") for n in range(6)]
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

    assert [counter.get("journaled") for counter in counters] == [100] * len(logs)
    assert [counter.get("database_unavailable") for counter in counters] == [0] * len(logs)
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


def test_postgresql_stopped_mid_run_keeps_answering_and_every_record_lands_once_when_back(
    trained_project: Path, postgres_server: PostgresServer, database: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = PredictionService.from_config(prediction_config(trained_project))
    log = PredictionLog(database, tmp_path / "journal", lock_timeout_seconds=1)
    with serve_in_thread(create_app(service, log)) as base_url:
        before = send_requests(base_url, 4)
        assert log.flush(30)
        postgres_server.stop()
        try:
            started = time.perf_counter()
            during = send_requests(base_url, 8)
            answered_in = time.perf_counter() - started
            assert not log.flush(30)
            waiting = log.pending().records
        finally:
            postgres_server.start()
        after = send_requests(base_url, 4)
    rows = log.read()
    log.close()

    assert answered_in < 5  # answered at full speed while the database is down
    assert waiting == sum(during.values())
    assert "takes no records now (OperationalError" in caplog.text
    assert log.pending().records == 0
    assert Counter(row["request_id"] for row in rows) == before + during + after


# The database's own faults -----------------------------------------------------------------------


def execute(url: str, statement: str) -> None:
    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1), autocommit=True) as db:
        db.execute(statement)


@contextmanager
def table_locked(url: str) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on the table (as a migration would)."""
    with psycopg.connect(url) as session:
        session.execute("LOCK TABLE prediction_records IN ACCESS EXCLUSIVE MODE")
        yield
        session.rollback()


def stored_counter(config_file: Path, database: str, monkeypatch: pytest.MonkeyPatch
                   ) -> Counter[str]:
    monkeypatch.setenv(URL_VARIABLE, database)
    log = PredictionLog.from_config(load_serving_config(config_file))
    try:
        assert log.flush(60)
        return Counter(row["request_id"] for row in log.read())
    finally:
        log.close()


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_a_table_locked_while_serving_and_while_stopping_loses_nothing_and_holds_nothing_up(
    framework: str, trained_project: Path, tmp_path: Path, database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As found: ACCESS EXCLUSIVE for longer than the loader's lock timeout, requests flowing,
    then SIGTERM while the table is still locked. Every request is answered at full speed, the
    stop takes seconds (not the lock's duration), and every record is stored once after."""
    config_file = write_serving_config(trained_project, tmp_path)
    output = tmp_path / "server.out"
    with launch_server(config_file, output, framework, {URL_VARIABLE: database}, workers=2) as (
            url, server):
        before = send_requests(url, 4)
        time.sleep(1)
        with table_locked(database):
            started = time.perf_counter()
            during = send_requests(url, 60)
            answered_in = time.perf_counter() - started
            time.sleep(6)  # past the loader's lock timeout (5 s)
            health = requests.get(f"{url}/health", timeout=10).json()["counters"]
            stopping = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            stopped_in = time.monotonic() - stopping
    assert answered_in < 15
    assert health["log_database_unavailable"] == 1
    assert "lock timeout" in output.read_text()
    assert stopped_in < 20
    assert "records wait in" in output.read_text()
    assert stored_counter(config_file, database, monkeypatch) == before + during


@pytest.mark.parametrize("change", ["drop column", "rename column", "drop table"])
def test_a_schema_changed_under_the_log_keeps_the_records_until_it_is_repaired(
    change: str, database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = PredictionLog(database, tmp_path / "journal", load_in_background=False)
    log.append([LogRecord(request_id="r1", source="test", input={}, model_version="1")])
    assert log.flush(30)
    execute(database, {
        "drop column": "ALTER TABLE prediction_records DROP COLUMN latency_ms",
        "rename column": "ALTER TABLE prediction_records RENAME COLUMN latency_ms TO latency",
        "drop table": "DROP TABLE prediction_records",
    }[change])
    log.append([LogRecord(request_id="r2", source="test", input={}, model_version="1",
                          latency_ms=1.5)])
    if change != "drop table":  # a table is created again; a column is the owner's to restore
        assert not log.flush(30)
        assert "lacks the columns ['latency_ms']" in caplog.text
        assert log.pending().records == 1
        execute(database, "ALTER TABLE prediction_records DROP COLUMN IF EXISTS latency")
        execute(database, "ALTER TABLE prediction_records ADD COLUMN latency_ms FLOAT")
    assert log.flush(30)
    rows = log.read()
    log.close()
    expected = ["r2"] if change == "drop table" else ["r1", "r2"]
    assert [row["request_id"] for row in rows] == expected
    assert rows[-1]["latency_ms"] == 1.5
    assert "FileNotFoundError" not in caplog.text


def test_a_password_in_any_form_of_the_url_is_never_printed(
    trained_project: Path, tmp_path: Path, database: str
) -> None:
    """In the query string, where SQLAlchemy's own masking does not look, on a database that
    does not exist (so that every pass reports an error naming the URL)."""
    config_file = write_serving_config(trained_project, tmp_path)
    secret = "hunter2-s3cret"
    url = database.rsplit("/", 1)[0] + f"/no_such_database?password={secret}&sslmode=disable"
    output = tmp_path / "server.out"
    with launch_server(config_file, output, "fastapi", {URL_VARIABLE: url}) as (base_url, _):
        assert requests.post(f"{base_url}/predict", json=INSTANCE, timeout=10).ok
        time.sleep(2)  # the loader has tried, and said why it could not
    printed = output.read_text() + "".join(
        path.read_text() for path in (tmp_path / "output" / "logs").glob("*.log"))
    assert "no_such_database" in printed and "password=***" in printed
    assert "takes no records now" in printed
    assert secret not in printed
