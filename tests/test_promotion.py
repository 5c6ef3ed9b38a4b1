"""A version promoted by hand, in a real sqlite MLflow store in tmp: a version that lost on the
holdout served, every refusal leaving everything as it was, a promotion killed between the
local export and the alias completed by the repair, one process at a time.

The store holds three versions of one contract: version 1 registered as before versions
carried their local artifact's files (tests/tracked.py's way), version 2 a logistic regression
that beat it (the champion), version 3 the class prior, which lost to version 2 (the
challenger). Tests that change anything work on a copy of that project."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import joblib
import pytest
from mlflow.tracking import MlflowClient

from executables import promote_model
from ml_project.config import PROJECT_ROOT, Config, load_config
from ml_project.export import METADATA_FILE, load_pipeline, read_metadata, sha256_of
from ml_project.predict import PredictionService
from ml_project.promotion import (
    ARTIFACT_FOLDER,
    METADATA_SHA256_TAG,
    PROMOTION,
    PromotionRefused,
    promote_version,
    promotion_lock,
    reconcile_champion,
)
from ml_project.registry import ARTIFACT_SHA256_TAG, CHALLENGER, CHAMPION
from tests.conftest import prediction_config, write_project
from tests.tracked import STRONG, WEAK, modelled
from use_cases.modelling_historic_data_local import model

# The tests on the registered project share one module fixture (three modelling runs): one worker.
pytestmark = pytest.mark.xdist_group("promotion")

NAME = "churn_model"


def modelling_config(root: Path, **overrides: Any) -> Config:
    return load_config("modelling", "historic", "local", config_file=root / "project_config.yaml",
                       root=root, overrides=overrides)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project whose store holds versions 1 (no local artifact's files), 2 (the champion)
    and 3 (the challenger, which lost on the holdout). Read-only: copy it to change it."""
    root = tmp_path_factory.mktemp("registered")
    write_project(root, n_historic=600, n_production=50)
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the autouse clean-up
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        modelled(root, WEAK).track()
        for candidate in (STRONG, WEAK):
            model(modelling_config(root, training={"candidates": [candidate]}))
    assert aliases(root) == {CHAMPION: "2", CHALLENGER: "3"}
    return root


@pytest.fixture
def project(registered: Path, tmp_path: Path) -> Path:
    """A copy of the registered project, free to change (its store's artifacts stay the
    original's: the experiment's artifact location is absolute, and promotions only read it)."""
    root = tmp_path / "project"
    shutil.copytree(registered, root)
    return root


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def aliases(root: Path) -> dict[str, str]:
    return {alias: str(version)
            for alias, version in client(root).get_registered_model(NAME).aliases.items()}


def tags(root: Path, version: str) -> dict[str, str]:
    return dict(client(root).get_model_version(NAME, version).tags)


def state(root: Path) -> tuple[dict[str, str], dict[str, bytes], list[dict[str, str]]]:
    """Everything a promotion may change: the aliases, the local copies, the versions' tags."""
    folder = root / "data" / "model_artifacts"
    files = {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")
             if path.is_file()}
    return aliases(root), files, [tags(root, version) for version in ("1", "2", "3")]


def promote(root: Path, *arguments: str) -> tuple[int, str, str]:
    """executables/promote_model.py in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = promote_model.main(["--config", str(root / "project_config.yaml"),
                                   "--root", str(root), *arguments])
    return code, out.getvalue(), err.getvalue()


def logged_files(root: Path, version: str) -> Path:
    """The folder of the local artifact's files logged with a version's run (a local store)."""
    run_id = str(client(root).get_model_version(NAME, version).run_id)
    artifact_uri = client(root).get_run(run_id).info.artifact_uri
    return Path(unquote(urlsplit(artifact_uri).path)) / ARTIFACT_FOLDER


@pytest.mark.slow
def test_modelling_logs_the_local_artifact_with_the_version(registered: Path) -> None:
    """What a promotion by hand rebuilds from: the files of the local copy as exported, the
    metadata's sha256 recorded on the version."""
    local = registered / "data" / "model_artifacts" / CHALLENGER
    metadata = read_metadata(local)
    logged = logged_files(registered, "3")

    assert sorted(path.name for path in logged.iterdir()) == sorted(
        [METADATA_FILE, metadata["artifact_file"], metadata["reference_file"],
         *metadata["model_card_files"]])
    for path in logged.iterdir():
        assert path.read_bytes() == (local / path.name).read_bytes()
    assert tags(registered, "3")[METADATA_SHA256_TAG] == sha256_of(local / METADATA_FILE)
    assert tags(registered, "3")[ARTIFACT_SHA256_TAG] == metadata["sha256"]
    assert METADATA_SHA256_TAG not in tags(registered, "1")


@pytest.mark.slow
def test_a_version_that_lost_on_the_holdout_is_promoted_by_hand_and_served(
    project: Path,
) -> None:
    code, out, _ = promote(project, "--version", "3", "--reason", "wins on last week's labels",
                           "--by", "alice")

    assert code == 0
    assert "churn_model@champion: version 2 -> version 3" in out
    assert "version 2 keeps no alias" in out and "restart the service" in out
    assert aliases(project) == {CHAMPION: "3"}  # one role per version: no challenger now
    assert not (project / "data" / "model_artifacts" / CHALLENGER).exists()
    recorded = tags(project, "3")
    assert json.loads(recorded[PROMOTION]) == {
        "alias": CHAMPION, "by": "alice", "reason": "wins on last week's labels",
        "at": json.loads(recorded[PROMOTION])["at"], "replaces": "2"}
    service = PredictionService.from_config(prediction_config(project))
    assert service.model_version == "3"
    assert service.model_sha256 == recorded[ARTIFACT_SHA256_TAG]
    local = read_metadata(project / "data" / "model_artifacts" / CHAMPION)
    assert local["alias"] == CHAMPION and local[PROMOTION] == json.loads(recorded[PROMOTION])

    # back to version 2, a version older than the champion
    promoted = promote_version(modelling_config(project), "2", reason="rolled back")

    assert (promoted.previous, promoted.version, promoted.dropped_challenger) == ("3", "2", False)
    assert aliases(project) == {CHAMPION: "2"}
    assert PredictionService.from_config(prediction_config(project)).model_sha256 == \
        tags(project, "2")[ARTIFACT_SHA256_TAG] == promoted.sha256


@pytest.mark.slow
def test_a_version_is_promoted_to_challenger_by_hand(project: Path) -> None:
    promote_version(modelling_config(project), "3", reason="to compare", by="bob")
    promoted = promote_version(modelling_config(project), "2", alias=CHALLENGER,
                               reason="the old champion, to compare", by="bob")

    assert (promoted.previous, promoted.alias) == (None, CHALLENGER)
    assert aliases(project) == {CHAMPION: "3", CHALLENGER: "2"}
    challenger = project / "data" / "model_artifacts" / CHALLENGER
    assert load_pipeline(challenger)[1]["sha256"] == tags(project, "2")[ARTIFACT_SHA256_TAG]


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("arguments", "refusal"), [
    (["--version", "9"], "churn_model has no version 9"),
    (["--version", "1"], "version 1 was registered without its local artifact's files"),
    (["--version", "02"], "version 2 is churn_model@champion already"),
    (["--version", "2", "--alias", CHALLENGER], "version 2 is the champion"),
    (["--version", "3", "--config-metric", "accuracy"], "version 3 answers for another task"),
    (["--version", "3", "--unreachable"], "is unreachable"),
], ids=["unknown", "older", "already", "champion-as-challenger", "contract", "unreachable"])
def test_a_refused_promotion_exits_2_with_one_message_and_changes_nothing(
    project: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch, arguments: list[str],
    refusal: str,
) -> None:
    before = state(project)
    if "--config-metric" in arguments:  # the user's config now scores another metric
        arguments = arguments[:2]
        write_project(project, {"training": {"metric": "accuracy"}}, n_historic=600,
                      n_production=50)
    if "--unreachable" in arguments:
        arguments = arguments[:2]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port}")

    code, out, err = promote(project, *arguments, "--reason", "a test")

    refused = [line for line in err.splitlines() if line.startswith("refused: ")]
    assert (code, out) == (2, "")
    assert len(refused) == 1 and refusal in refused[0] and "Nothing was changed." in refused[0]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert state(project) == before


class Unpickled:
    """Unpickling this touches a file: proof that a file was, or was not, unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_logged_model_file_that_does_not_match_its_checksum_is_refused_unread(
    project: Path, registered: Path, tmp_path: Path
) -> None:
    """The file in the artifact store replaced by one that runs code when unpickled: refused
    on its sha256, never unpickled, nothing changed."""
    metadata = read_metadata(logged_files(registered, "3"))
    model_file = logged_files(registered, "3") / metadata["artifact_file"]
    original = model_file.read_bytes()
    marker = tmp_path / "unpickled"
    before = state(project)
    try:
        joblib.dump(Unpickled(marker), model_file)
        with pytest.raises(PromotionRefused, match="does not match its checksum"):
            promote_version(modelling_config(project), "3", reason="a test")
    finally:
        model_file.write_bytes(original)
    assert not marker.exists()
    assert state(project) == before


# Promotes a version with the local export done and the process SIGKILLed before the alias moves.
KILLED_AFTER_EXPORT = """
import os, signal, sys
from pathlib import Path
from ml_project import promotion
from ml_project.config import load_config

copy = promotion.copy_artifact
def copy_then_die(*args, **kwargs):
    copy(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
promotion.copy_artifact = copy_then_die
root = Path(sys.argv[1])
config = load_config("modelling", "historic", "local", config_file=root / "project_config.yaml",
                     root=root)
promotion.promote_version(config, sys.argv[2], reason="killed on purpose", by="carol")
"""


@pytest.mark.slow
def test_a_promotion_killed_between_export_and_alias_is_completed_by_the_repair(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 2 promoted back over version 3: an older version than the champion, which a
    repair by version numbers alone would take for a local champion left behind."""
    config = modelling_config(project)
    promote_version(config, "3", reason="first", by="carol")

    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EXPORT, str(project), "2"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    local = read_metadata(project / "data" / "model_artifacts" / CHAMPION)
    assert (local["model_version"], aliases(project)) == ("2", {CHAMPION: "3"})

    reconcile_champion(config)

    assert aliases(project) == {CHAMPION: "2"}
    recorded = tags(project, "2")
    assert json.loads(recorded[PROMOTION]) == local[PROMOTION]
    assert local[PROMOTION]["reason"] == "killed on purpose"
    assert recorded[ARTIFACT_SHA256_TAG] == local["sha256"]
    assert "behind" not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("completed", [False, True], ids=["killed", "completed"])
def test_a_repair_leaves_an_alias_moved_by_someone_else_since(
    project: Path, caplog: pytest.LogCaptureFixture, completed: bool
) -> None:
    """A promotion's local copy gets the alias only away from the version it replaced, and only
    while the promotion is not recorded on its version: an alias someone moved since (in the
    registry's UI), even back to the version the promotion replaced, is reported and left."""
    config = modelling_config(project)
    if completed:
        promote_version(config, "3", reason="completed")
        moved_to = "2"  # back to the version the promotion replaced
    else:
        killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EXPORT, str(project), "3"],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        moved_to = "1"
    client(project).set_registered_model_alias(NAME, CHAMPION, moved_to)

    reconcile_champion(config)

    assert aliases(project)[CHAMPION] == moved_to
    assert "which moved since" in caplog.text


PROMOTE = """
import sys
from pathlib import Path
from ml_project.config import load_config
from ml_project.promotion import promote_version

root = Path(sys.argv[1])
config = load_config("modelling", "historic", "local", config_file=root / "project_config.yaml",
                     root=root)
print(promote_version(config, sys.argv[2], reason="waits its turn").version)
"""


@pytest.mark.slow
def test_a_promotion_waits_for_the_process_holding_the_lock(project: Path) -> None:
    config = modelling_config(project)
    with promotion_lock(config):
        waiting = subprocess.Popen([sys.executable, "-c", PROMOTE, str(project), "3"],
                                   cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # long enough to import, connect and reach the lock
        assert waiting.poll() is None
        assert aliases(project) == {CHAMPION: "2", CHALLENGER: "3"}
    out, err = waiting.communicate(timeout=300)

    assert waiting.returncode == 0, err[-2000:]
    assert out.strip() == "3" and aliases(project) == {CHAMPION: "3"}


@pytest.mark.slow
def test_list_shows_each_version_its_aliases_score_contract_and_whether_it_can_be_promoted(
    registered: Path,
) -> None:
    code, out, _ = promote(registered, "--list")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["version", "aliases", "holdout", "score", "contract",
                                "promotable", "promoted", "by", "hand"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["3"][:2] == ["3", CHALLENGER] and rows["3"][4:6] == ["same", "yes"]
    assert rows["2"][:2] == ["2", CHAMPION] and rows["2"][2] == "roc_auc"
    assert float(rows["2"][3]) > float(rows["3"][3]) == pytest.approx(0.5)
    assert rows["1"][1] == "-" and rows["1"][4:7] == ["same", "no", "(retrain)"]


@pytest.mark.parametrize(("version", "alias", "reason", "refusal"), [
    ("3", "staging", "why", "alias 'staging': promote to champion or challenger"),
    ("v3", CHAMPION, "why", "version 'v3': a registered version is a number"),
    ("3", CHAMPION, "  ", "say why (a reason)"),
], ids=["alias", "version", "reason"])
def test_a_promotion_asked_wrongly_is_refused_before_the_store_is_touched(
    tmp_path: Path, version: str, alias: str, reason: str, refusal: str
) -> None:
    write_project(tmp_path, n_historic=100, n_production=20)
    config = modelling_config(tmp_path)
    with pytest.raises(PromotionRefused, match=re.escape(f"{refusal}")):
        promote_version(config, version, alias=alias, reason=reason)

    assert not (config.root / "mlflow.db").exists() and not config.model_artifacts_dir.exists()
