"""The challenger in shadow: what the champion answered, scored again by the challenger from the
journal, logged under the same request with the challenger's identity; never on the request
path (the service's answers and their log do not change), bounded, and it survives the loader
deleting a file it is reading. Real journals, a real loader and database, real servers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import requests

from ml_project.config import PREDICTION_COLUMN, Config
from ml_project.ingest import stream_production_instances
from ml_project.predict import PredictionService
from ml_project.prediction_log import journal
from ml_project.prediction_log.loader import Loader
from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.shadow import (
    STATUS_FILE,
    ShadowScorer,
    ShadowStatus,
    ShadowUnavailable,
    check_pair,
    load_challenger,
    read_status,
)
from tests.conftest import PROBABILITY_TOLERANCE
from tests.serving import instance, launch_server, load_serving_config, write_serving_config
from use_cases.predicting_historic_data_local import main as batch_main
from use_cases.predicting_production_data_local import main as stream_main
from use_cases.predicting_production_data_local import predict_and_log

SHADOW = {"prediction": {"shadow": "challenger"}}


def _config(project: Path, root: Path, **prediction: Any) -> Config:
    root.mkdir(parents=True, exist_ok=True)
    return load_serving_config(write_serving_config(
        project, root, {"prediction": {"shadow": "challenger", **prediction}}))


def _stream(config: Config, champion: PredictionService, log: PredictionLog, limit: int
            ) -> list[str]:
    """`limit` production instances through the stream's core, one in 7 made invalid; the
    request ids answered."""
    answered = []
    source = Path(config.resolve(config.data.production))
    for i, record in enumerate(stream_production_instances(source, config, limit=limit)):
        if i % 7 == 3:
            record = {**record, next(iter(config.columns.numerical)): "not a number"}
        prediction, entry = predict_and_log(champion, log, record, source="stream")
        if prediction is not None:
            answered.append(entry.request_id)
    return answered


def _split(rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, int], dict[str, Any]],
                                               dict[tuple[str, int], dict[str, Any]]]:
    champion = {(r["request_id"], r["instance_index"]): r for r in rows if r["source"] != "shadow"}
    shadow = {(r["request_id"], r["instance_index"]): r for r in rows if r["source"] == "shadow"}
    assert len(champion) + len(shadow) == len(rows)  # one record of each per instance
    return champion, shadow


def _assert_challenger_answers(shadow: dict[tuple[str, int], dict[str, Any]],
                               champion: dict[tuple[str, int], dict[str, Any]],
                               challenger: PredictionService) -> None:
    for key, row in shadow.items():
        assert row["model_version"] == challenger.model_version
        assert row["model_sha256"] == challenger.model_sha256
        assert row["record_key"] == f"{key[0]}:{key[1]}:shadow"
        assert row["logged_at"] == champion[key]["logged_at"]  # one window holds both
        expected = challenger.predict_instance(row["input"])
        assert row["prediction"] == expected.prediction
        assert expected.probabilities is not None
        for label, value in expected.probabilities.items():
            assert row["probabilities"][label] == pytest.approx(value, abs=PROBABILITY_TOLERANCE)


def test_the_challenger_scores_each_answered_instance_once_under_its_request(
    challenged_project: Path, tmp_path: Path
) -> None:
    config = _config(challenged_project, tmp_path)
    champion = PredictionService.from_config(config)
    challenger = load_challenger(config, champion)
    log = PredictionLog.from_config(config, load_in_background=False)
    try:
        answered = _stream(config, champion, log, limit=60)
        scorer = ShadowScorer(challenger, champion.model_sha256, log.journal_dir,
                              max_backlog=1000)
        assert scorer.pass_once() == len(answered)
        assert scorer.pass_once() == 0  # nothing is read twice
        # A shadow restarted over the same journal scores again: stored once all the same.
        ShadowScorer(challenger, champion.model_sha256, log.journal_dir,
                     max_backlog=1000).drain(bounded=False)
        scorer.close()
        assert log.flush()
        rows = log.read()
        shadow_only = log.read(shadow=True)
        answers_only = log.read(shadow=False)
    finally:
        log.close()

    champion_rows, shadow = _split(rows)
    assert len(champion_rows) == 60 and 0 < len(answered) <= 60 - 60 // 7
    assert sorted(request for request, _ in shadow) == sorted(answered)
    assert sorted(r["record_key"] for r in shadow_only) == sorted(r["record_key"]
                                                                  for r in shadow.values())
    assert {r["source"] for r in answers_only} == {"stream"}
    _assert_challenger_answers(shadow, champion_rows, challenger)
    assert (scorer.status.scored, scorer.status.skipped, scorer.status.failed) == (
        len(answered), 0, 0)
    status = json.loads((log.journal_dir / STATUS_FILE).read_text())
    assert status["challenger_version"] == challenger.model_version


def test_a_shadow_behind_scores_the_newest_and_counts_what_it_skipped(
    challenged_project: Path, tmp_path: Path
) -> None:
    config = _config(challenged_project, tmp_path)
    champion = PredictionService.from_config(config)
    log = PredictionLog.from_config(config, load_in_background=False)
    try:
        answered = _stream(config, champion, log, limit=40)
        scorer = ShadowScorer(load_challenger(config, champion), champion.model_sha256,
                              log.journal_dir, max_backlog=5)
        assert scorer.pass_once() == 5
        scorer.close()
        assert log.flush()
        shadow = log.read(shadow=True)
    finally:
        log.close()
    assert scorer.status.skipped == len(answered) - 5
    assert sorted(r["request_id"] for r in shadow) == sorted(answered[-5:])


def test_a_journal_file_stored_and_deleted_while_the_shadow_reads_it_is_read_whole(
    challenged_project: Path, tmp_path: Path
) -> None:
    config = _config(challenged_project, tmp_path)
    champion = PredictionService.from_config(config)
    scorer = ShadowScorer(load_challenger(config, champion), champion.model_sha256,
                          config.output_dir / journal.FOLDER, max_backlog=1000)
    log = PredictionLog.from_config(config, load_in_background=False)
    first = _stream(config, champion, log, limit=20)
    assert scorer.pass_once() == len(first)
    second = _stream(config, champion, log, limit=20)
    log.close()  # the file is complete: the loader stores it and deletes it
    Loader(config.prediction_log_url, log.journal_dir).load()
    left = journal.journal_files(log.journal_dir)  # the shadow's own file, still open
    assert all(b'"source":"stream"' not in path.read_bytes() for path in left), left
    assert scorer.pass_once() == len(second)
    assert scorer.pass_once() == 0
    scorer.close()


def test_a_challenger_that_cannot_shadow_the_champion_is_refused_with_the_reason(
    challenged_project: Path, trained_project: Path, tmp_path: Path
) -> None:
    champion = PredictionService.from_config(_config(challenged_project, tmp_path / "a"))
    with pytest.raises(ShadowUnavailable, match="the challenger is the champion"):
        check_pair(champion, champion)
    alone = _config(trained_project, tmp_path / "b")
    with pytest.raises(ShadowUnavailable, match="no challenger to run in shadow"):
        load_challenger(alone, PredictionService.from_config(alone))


@pytest.mark.slow
def test_the_stream_use_case_scores_its_answers_in_shadow(
    challenged_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(challenged_project, tmp_path)
    arguments = ["--config", str(tmp_path / "project_config.yaml"), "--root", str(tmp_path)]
    assert stream_main([*arguments, "--limit", "50"]) == 0
    log = PredictionLog.from_config(config)
    rows = log.read()
    log.close()
    champion, shadow = _split(rows)
    answered = {key for key, row in champion.items() if row["error"] is None}
    assert set(shadow) == answered
    assert f"scored {len(answered)} instances" in capsys.readouterr().out


def _wait_for_status(directory: Path, done: Callable[[ShadowStatus | None], bool]
                     ) -> ShadowStatus | None:
    """The shadow's status once `done` holds for it (30 s at most)."""
    deadline = time.monotonic() + 30
    while not done(status := read_status(directory)):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def _health(base_url: str) -> dict[str, int]:
    counters: dict[str, int] = requests.get(f"{base_url}/health", timeout=30).json()["counters"]
    return counters


@pytest.mark.slow
@pytest.mark.parametrize(("framework", "workers"), [("fastapi", 1), ("flask", 2)])
def test_the_service_answers_as_the_champion_while_the_challenger_scores_in_shadow(
    framework: str, workers: int, challenged_project: Path, tmp_path: Path
) -> None:
    config = _config(challenged_project, tmp_path)
    champion = PredictionService.from_config(config)
    challenger = load_challenger(config, champion)
    items = [instance(customer_id=f"S{i:03d}", age=20 + i % 50, tenure_months=i % 60)
             for i in range(80)]
    answers: list[tuple[dict[str, Any], requests.Response]] = []

    def client(part: list[dict[str, Any]]) -> None:
        with requests.Session() as session:
            for item in part:
                answers.append((item, session.post(f"{base_url}/predict", json=item, timeout=30)))

    with launch_server(tmp_path / "project_config.yaml", tmp_path / "server.out", framework,
                       workers=workers) as (base_url, _):
        threads = [threading.Thread(target=client, args=(items[n::4],)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        deadline = time.monotonic() + 60
        while _health(base_url).get("shadow_scored", 0) < len(items):
            assert time.monotonic() < deadline, _health(base_url)
            time.sleep(0.2)
        health = _health(base_url)
    log = PredictionLog.from_config(config)
    rows = log.read()
    log.close()

    assert len(answers) == len(items)
    for item, answer in answers:  # the champion's answers, as without a shadow
        expected = champion.predict_instance(item)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == champion.model_version
        assert answer.json()["prediction"] == expected.prediction
    assert (health["shadow_skipped"], health["shadow_failed"], health["shadow_unavailable"]) == (
        0, 0, 0)
    champion_rows, shadow = _split(rows)
    assert set(shadow) == set(champion_rows) and len(shadow) == len(items)
    _assert_challenger_answers(shadow, champion_rows, challenger)
    assert "Traceback" not in (tmp_path / "server.out").read_text()


@pytest.mark.slow
def test_a_killed_shadow_changes_no_answer_and_health_says_it_is_gone(
    challenged_project: Path, tmp_path: Path
) -> None:
    config = _config(challenged_project, tmp_path)
    with launch_server(tmp_path / "project_config.yaml", tmp_path / "server.out") as (base_url, _):
        assert requests.post(f"{base_url}/predict", json=instance(), timeout=30).ok
        directory = config.output_dir / journal.FOLDER
        status = _wait_for_status(directory, lambda found: found is not None and found.scored > 0)
        assert status is not None
        os.kill(status.pid, signal.SIGKILL)
        _wait_for_status(directory, lambda found: found is None)
        after = [requests.post(f"{base_url}/predict", json=instance(customer_id=f"K{i}"),
                               timeout=30) for i in range(10)]
        health = _health(base_url)
    log = PredictionLog.from_config(config)
    answered = log.read(shadow=False)
    log.close()
    assert [answer.status_code for answer in after] == [200] * 10
    assert health["shadow_unavailable"] == 1
    assert len(answered) == 11  # every answer logged, as ever


@pytest.mark.slow
def test_a_service_without_a_challenger_serves_the_champion_and_says_why_no_shadow(
    trained_project: Path, tmp_path: Path
) -> None:
    config = _config(trained_project, tmp_path)
    with launch_server(tmp_path / "project_config.yaml", tmp_path / "server.out") as (base_url, _):
        answer = requests.post(f"{base_url}/predict", json=instance(), timeout=30)
        status = _wait_for_status(config.output_dir / journal.FOLDER,
                                  lambda found: found is not None and found.error is not None)
        assert status is not None and status.error is not None
        health = _health(base_url)
    assert answer.status_code == 200
    assert health["shadow_unavailable"] == 1
    assert "no challenger to run in shadow" in status.error
    assert "no challenger to run in shadow" in (tmp_path / "server.out").read_text()


@pytest.mark.slow
def test_the_batch_use_case_scores_the_same_rows_with_the_challenger(
    challenged_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(challenged_project, tmp_path)
    champion = PredictionService.from_config(config)
    challenger = load_challenger(config, champion)
    source = Path(config.resolve(config.data.historic))
    arguments = ["--config", str(tmp_path / "project_config.yaml"), "--root", str(tmp_path),
                 "--chunk-size", "400"]
    assert batch_main(arguments) == 0
    output = config.output_dir / "predictions"
    answers = pd.read_csv(output / f"{source.stem}_predictions.csv")
    shadowed = pd.read_csv(output / f"{source.stem}_predictions_challenger.csv")
    rows = pd.read_csv(source, dtype={config.columns.id: object})
    rows = rows[rows[config.columns.id].isin(shadowed[config.columns.id].astype(str))]
    expected = challenger.predict_frame(rows.reset_index(drop=True))
    assert list(shadowed[config.columns.id].astype(str)) == list(answers[config.columns.id]
                                                                 .astype(str))
    assert (shadowed["model_version"].astype(str) == challenger.model_version).all()
    assert list(shadowed[PREDICTION_COLUMN]) == list(expected[PREDICTION_COLUMN])
    agreed = int((shadowed[PREDICTION_COLUMN] == answers[PREDICTION_COLUMN]).sum())
    assert f"same label on {agreed} of {len(answers)} rows" in capsys.readouterr().out
