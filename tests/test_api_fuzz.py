"""Fuzzing the FastAPI service from its own OpenAPI document, with schemathesis.

A real uvicorn server on 127.0.0.1 serves the session's model behind an API key. schemathesis
reads its /openapi.json and, for every operation, sends the documented examples, the coverage
cases (each boundary, each way to break each field, each unsupported method) and a bounded
number of random valid and invalid requests, from a fixed seed, so a run is repeatable. Every
check it has must hold on every answer: no 5xx; status, content type and body as declared
(`ErrorResponse` for each 4xx and 503); invalid data refused with one of the documented 4xx and
valid data accepted; no answer without the right API key.

The run goes through schemathesis' engine (what its CLI runs) rather than its pytest plugin:
the plugin's `from_fixture` loader, needed for a server started by a fixture, does not work
with pytest 9 (it sets `Function._nodeid`, which pytest 9 removed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import requests
import schemathesis
from schemathesis.engine import Status, events

from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.endpoints import API_KEY_ENV, API_KEY_HEADER
from ml_project.serving.fastapi_app import create_app
from tests.serving import (
    launch_server,
    load_serving_config,
    serve_in_thread,
    write_serving_config,
)

API_KEY = "fuzzing-api-key-0123456789"
SEED = 20260101
# Random requests per operation, on top of the examples and the coverage cases.
MAX_EXAMPLES = int(os.environ.get("ML_PROJECT_FUZZ_EXAMPLES", "50"))
# Small limits, so that generated batches reach them (422) and large bodies get 413.
LIMITS = {"prediction": {"max_batch_size": 5, "max_body_bytes": 20_000}}


@pytest.fixture(scope="module")
def served(trained_project: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, PredictionLog]]:
    """The base URL of a service that requires API_KEY, and its prediction log."""
    config = load_serving_config(
        write_serving_config(trained_project, tmp_path_factory.mktemp("fuzz"), LIMITS)
    )
    log = PredictionLog.from_config(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_KEY_ENV, API_KEY)
        app = create_app(PredictionService.from_config(config), log)
    with serve_in_thread(app) as base_url:
        yield base_url, log
    log.close()


def run_schemathesis(base_url: str) -> list[events.EngineEvent]:
    """Every phase but the stateful one (no operation links to another), bounded and seeded."""
    schema = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json",
        config=schemathesis.Config.from_dict({
            "seed": SEED,
            "base-url": base_url,
            "headers": {API_KEY_HEADER: API_KEY},
            "request-timeout": 30,
            "cache": {"enabled": False},
            "phases": {"stateful": {"enabled": False}},
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {
                # An invalid request must get a documented 4xx, nothing else (405: a method
                # the route does not have; 413: a body over max_body_bytes).
                "negative_data_rejection": {"expected-statuses": [400, 401, 405, 413, 422]},
                # A valid request, sent with the key, must be predicted.
                "positive_data_acceptance": {"expected-statuses": [200]},
            },
        }),
    )
    return list(schemathesis.engine.from_schema(schema).execute())


def describe_failures(scenario: events.ScenarioFinished) -> list[str]:
    """Each failed check with the request that caused it and the answer, to reproduce it."""
    lines = []
    for case_id, checks in scenario.recorder.checks.items():
        for check in checks:
            if check.status == Status.SUCCESS or check.failure_info is None:
                continue
            interaction = scenario.recorder.interactions.get(case_id)
            answer = interaction.response if interaction else None
            lines.append(
                f"{scenario.recorder.label} [{scenario.phase.value}] {check.name}: "
                f"{check.failure_info.failure.title}\n  {check.failure_info.code_sample}\n  -> "
                + (f"{answer.status_code} {answer.content[:300]!r}" if answer else "no answer")
            )
    return lines


def test_every_operation_answers_as_its_openapi_schema_declares(
    served: tuple[str, PredictionLog]
) -> None:
    base_url, log = served
    logged_before = log.count()

    run = run_schemathesis(base_url)

    finished = run[-1]
    assert isinstance(finished, events.EngineFinished), finished
    errors = [e for e in run if isinstance(e, (events.NonFatalError, events.FatalError))]
    assert not errors, errors
    scenarios = [event for event in run if isinstance(event, events.ScenarioFinished)]
    failures = [line for scenario in scenarios for line in describe_failures(scenario)]
    assert not failures, "\n".join(failures)
    assert not finished.failures
    statuses: Counter[tuple[str, int]] = Counter()
    for scenario in scenarios:
        for interaction in scenario.recorder.interactions.values():
            if interaction.response is not None:
                statuses[scenario.recorder.label, interaction.response.status_code] += 1
    print(f"\nschemathesis: {sum(statuses.values())} requests, by operation and status: "
          f"{dict(sorted(statuses.items()))}")
    # The run reached the model and every documented refusal, not only the front door.
    reached = {status for (label, status) in statuses if label.startswith("POST /predict")}
    assert reached >= {200, 400, 422}, reached
    assert {status for (label, status) in statuses if label == "GET /model"} >= {200, 401}
    # Every prediction request that got past the key check was logged.
    predictions_logged = log.count() - logged_before
    assert predictions_logged >= statuses["POST /predict", 200] + statuses["POST /predict", 422]


# An independent run: the schemathesis command line, every check, against the launched service --


@pytest.mark.slow
@pytest.mark.parametrize("api_key", [None, API_KEY], ids=["default", "keyed"])
def test_schemathesis_command_line_with_every_check_finds_nothing(
    api_key: str | None, trained_project: Path, tmp_path: Path
) -> None:
    """The document describes the running configuration: without a key, none is declared
    (else `ignored_auth` and the conformance checks fail); with one, it is declared and sent."""
    config_file = write_serving_config(trained_project, tmp_path, LIMITS)
    environment = {API_KEY_ENV: api_key} if api_key else {}
    with launch_server(config_file, tmp_path / "server.out", "fastapi", environment) as (url, _):
        schema = requests.get(f"{url}/openapi.json", timeout=10).json()
        headers = ["-H", f"{API_KEY_HEADER}: {api_key}"] if api_key else []
        result = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
             "--checks", "all", "--max-examples", "5", "--seed", str(SEED),
             "--phases", "examples,coverage,fuzzing", "--generation-database", "none",
             "--request-timeout", "10", "--max-time", "30", "--no-color", *headers],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, API_KEY_ENV: ""},
        )
    assert ("securitySchemes" in json.dumps(schema)) == bool(api_key)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
