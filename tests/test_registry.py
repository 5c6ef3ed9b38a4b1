"""The registry in a real sqlite MLflow store in tmp_path: the promotion rule, the champion
compared on the same holdout, loading a registered version safely, and an unreachable store
failing fast so nothing is exported or promoted."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml_project.config import load_config
from ml_project.export import ArtifactError
from ml_project.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_FILE_SHA256_TAG,
    TrackingError,
    alias_for,
    connect,
    load_registered_pipeline,
)
from ml_project.train import (
    build_reference_sample,
    evaluate_holdout,
    features_and_target,
    select_best,
)
from tests.conftest import write_project
from tests.tracked import STRONG, WEAK, History, modelled, tracked_history
from use_cases import modelling_historic_data_local


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return tracked_history(tmp_path_factory.mktemp("tracked"))


@pytest.mark.parametrize(("score", "champion", "alias"), [
    (0.8, None, CHAMPION), (0.8, 0.7, CHAMPION), (0.7, 0.7, CHALLENGER), (0.6, 0.7, CHALLENGER)])
def test_alias_for_makes_champion_only_a_model_that_beats_the_champion(
    score: float, champion: float | None, alias: str
) -> None:
    assert alias_for(score, champion) == alias


def test_promotion_moves_champion_only_to_a_model_that_beats_it_a_model_that_beats_the_champion(
    history: History,
) -> None:
    first, second, third = history.outcomes

    assert (first.alias, first.previous_champion_score) == (CHAMPION, None)
    assert second.alias == CHAMPION
    assert second.previous_champion_score == pytest.approx(0.5)  # the class prior's ROC AUC
    assert third.alias == CHALLENGER
    assert third.previous_champion_score is not None and third.previous_champion_score > 0.7
    client = MlflowClient(history.weak.config.tracking_uri)
    model = client.get_registered_model(history.weak.config.tracking.registered_model_name)
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    assert aliases == {CHAMPION: second.model_version, CHALLENGER: third.model_version}


def test_the_champion_is_compared_on_the_new_holdout_and_one_of_another_contract_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores recorded by the champion's own run were measured on its holdout: another split
    (new data, a retraining) would compare unlike with like, so the champion is scored again on
    the new run's holdout. A champion trained for another contract (the demo's, before a new
    table) cannot be compared at all, and is replaced."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_project(tmp_path, n_historic=600)
    strong = modelled(tmp_path, STRONG)
    first = strong.track()
    champion = select_best(strong.results).pipeline

    reshuffled = modelled(tmp_path, WEAK, random_seed=11)
    second = reshuffled.track()

    metric = strong.config.training.metric
    on_new_holdout = evaluate_holdout(champion, reshuffled.holdout, strong.config)[metric]
    on_own_holdout = evaluate_holdout(champion, strong.holdout, strong.config)[metric]
    assert on_new_holdout != pytest.approx(on_own_holdout)
    assert (first.alias, second.alias) == (CHAMPION, CHALLENGER)
    assert second.previous_champion_score == pytest.approx(on_new_holdout)

    other_contract = modelled(tmp_path, WEAK, metric="accuracy")
    third = other_contract.track()

    assert (third.alias, third.previous_champion_score) == (CHAMPION, None)


def test_load_registered_pipeline_returns_the_champion(history: History) -> None:
    strong = history.strong

    pipeline, metadata, reference = load_registered_pipeline(strong.config)

    assert metadata["model_version"] == history.outcomes[1].model_version
    assert metadata["alias"] == CHAMPION
    features, _ = features_and_target(strong.holdout, strong.config)
    best = select_best(strong.results).pipeline
    expected = best.predict_proba(features)
    pd.testing.assert_frame_equal(
        pd.DataFrame(pipeline.predict_proba(features)), pd.DataFrame(expected)
    )
    assert reference is not None
    pd.testing.assert_frame_equal(reference, build_reference_sample(best, strong.holdout,
                                                                     strong.config))


def test_load_registered_pipeline_refuses_a_model_file_that_does_not_match_its_checksum(
    history: History
) -> None:
    """The file is compared with the checksum recorded at registration before anything of it
    is deserialised (here the record is changed, which is the same mismatch as a file replaced
    in the artifact store)."""
    config = history.strong.config
    client = MlflowClient(config.tracking_uri)
    name = config.tracking.registered_model_name
    version = client.get_model_version_by_alias(name, CHAMPION)
    original = version.tags[MODEL_FILE_SHA256_TAG]
    client.set_model_version_tag(name, version.version, MODEL_FILE_SHA256_TAG, "0" * 64)
    try:
        with pytest.raises(ArtifactError, match="does not match the checksum recorded"):
            load_registered_pipeline(config)
    finally:
        client.set_model_version_tag(name, version.version, MODEL_FILE_SHA256_TAG, original)


def test_connect_leaves_later_configs_pointing_at_their_own_store(tmp_path: Path) -> None:
    """MLflow exports the URI it is given to the environment, where Config would read it back."""
    first, second = tmp_path / "first", tmp_path / "second"
    configs = []
    for root in (first, second):
        write_project(root, n_historic=100, n_production=20)
        configs.append(load_config(
            "modelling", "historic", "local", config_file=root / "project_config.yaml", root=root
        ))

    connect(configs[0])

    assert configs[1].tracking_uri == f"sqlite:///{second / 'mlflow.db'}"
    connect(configs[1])
    assert (second / "mlflow.db").is_file()


# Connects to the store of the config file given once the file `go` appears, so that every
# process makes its first call to a new store at the same moment; prints the experiment id.
CONNECT_AT_ONCE = """
import sys, time
from pathlib import Path
from ml_project.config import load_config
from ml_project.registry import connect

config_file, go = Path(sys.argv[1]), Path(sys.argv[2])
config = load_config("modelling", "historic", "local", config_file=config_file,
                     root=config_file.parent)
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.001)
print(connect(config))
"""


@pytest.mark.slow
def test_processes_using_a_new_store_at_once_all_connect_to_one_experiment(
    tmp_path: Path,
) -> None:
    """MLflow makes a new SQLite store's tables on first use; processes doing so at the same
    moment used to collide ("duplicate column name"), and the losers stopped as if the store
    were unreachable. Now one makes them, the others wait: every process gets the experiment."""
    config_file = write_project(tmp_path, n_historic=100, n_production=20)
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", CONNECT_AT_ONCE, str(config_file),
                                   str(go), str(tmp_path / f"ready{number}")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for number in range(4)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready*"))) < len(processes) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    answers = [process.communicate(timeout=60) for process in processes]

    assert [process.returncode for process in processes] == [0] * 4, [
        error[-500:] for _, error in answers]
    assert len({output.strip() for output, _ in answers}) == 1


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that is bound but not listening: every connection is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _unreachable_uri(kind: str, tmp_path: Path, port: int) -> str:
    if kind == "http-closed-port":
        return f"http://127.0.0.1:{port}"
    if kind == "sqlite-under-a-file":
        (tmp_path / "not_a_folder").write_text("a file where a folder should be")
        return f"sqlite:///{tmp_path / 'not_a_folder' / 'mlflow.db'}"
    (tmp_path / "mlflow.db").write_text("not a database")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize("kind", ["http-closed-port", "sqlite-under-a-file", "sqlite-not-a-db"])
def test_connect_raises_tracking_error_for_an_unreachable_store(
    project: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    uri = _unreachable_uri(kind, project, closed_port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = load_config(
        "modelling", "historic", "local", config_file=project / "project_config.yaml", root=project
    )

    with pytest.raises(TrackingError, match=f"MLflow tracking store {uri} is unreachable"):
        connect(config)


def test_modelling_use_case_with_unreachable_store_exits_non_zero_and_exports_nothing(
    tmp_path: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_file = write_project(tmp_path, n_historic=600)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port}")

    code = modelling_historic_data_local.main(
        ["--config", str(config_file), "--root", str(tmp_path)]
    )

    assert code != 0
    assert not (tmp_path / "data" / "model_artifacts").exists()
    assert "unreachable" in caplog.text and "exported or promoted" in caplog.text
