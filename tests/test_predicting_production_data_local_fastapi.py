"""End to end: the production stream over real HTTP to a local FastAPI service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.fastapi_app import create_app
from tests.serving import (
    free_port,
    load_serving_config,
    sample_size_and_rejections,
    serve_in_thread,
    write_serving_config,
)
from use_cases import predicting_production_data_local_fastapi


def test_main_starts_the_service_streams_matches_the_core_and_stops_it(
    trained_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing answers at the configured URL, so the use case starts its own server.
    config_file = write_serving_config(trained_project, tmp_path, {
        "prediction": {"server_url": f"http://127.0.0.1:{free_port()}"}
    })

    code = predicting_production_data_local_fastapi.main(
        ["--config", str(config_file), "--root", str(tmp_path)]
    )

    output = capsys.readouterr().out
    assert code == 0, output
    sent, rejected = sample_size_and_rejections(load_serving_config(config_file))
    assert rejected > 0, "the sample holds invalid instances on purpose"
    assert f"Streamed {sent} instances" in output
    assert (f"{sent - rejected} predicted, {rejected} rejected as invalid (expected), "
            "0 failed, 0 differing from the core") in output
    assert re.search(r"p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms", output)
    server = re.search(r"over HTTP to (http://127\.0\.0\.1:\d+)", output)
    assert server, output
    with pytest.raises(requests.ConnectionError):  # the server it started is gone
        requests.get(f"{server[1]}/health", timeout=5)
    log = PredictionLog.from_config(load_serving_config(config_file))
    records = log.read()
    log.close()
    assert len(records) == sent
    assert {record["source"] for record in records} == {"api"}
    assert sum(record["error"] is not None for record in records) == rejected


def test_main_uses_the_service_already_answering_at_the_configured_url(
    trained_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_serving_config(trained_project, tmp_path)
    config = load_serving_config(config_file)
    log = PredictionLog.from_config(config)
    with serve_in_thread(create_app(PredictionService.from_config(config), log)) as url:
        config_file = write_serving_config(trained_project, tmp_path,
                                           {"prediction": {"server_url": url}})
        code = predicting_production_data_local_fastapi.main(
            ["--config", str(config_file), "--root", str(tmp_path), "--limit", "20"]
        )
        still_up = requests.get(f"{url}/health", timeout=5).status_code

    output = capsys.readouterr().out
    assert code == 0, output
    assert f"Streamed 20 instances over HTTP to {url} " in output
    assert still_up == 200  # a server it did not start is left running
    assert log.count() == 20
    log.close()


def test_main_without_a_model_exits_2_before_starting_anything(
    trained_project: Path, tmp_path: Path
) -> None:
    config_file = write_serving_config(
        trained_project, tmp_path, {"paths": {"model_artifacts": str(tmp_path / "none")}}
    )

    code = predicting_production_data_local_fastapi.main(
        ["--config", str(config_file), "--root", str(tmp_path)]
    )

    assert code == 2
