"""The challenger in shadow: the instances the champion answered, scored again by the challenger,
off the request path.

With `prediction.shadow: challenger` the service forks a shadow process beside its workers, as it
forks the loader (`prediction_log/background.py`). The shadow reads the prediction log's journal,
where each worker's records are durable before their answer is sent, and scores the champion's
predicted instances with the challenger, a batch at a time. Its answers go to a journal file of
its own with source "shadow", the challenger's identity (name, version, sha256) and the request
id, index and time of the champion's record, so the loader stores them as it stores any record
and monitoring pairs the two (`monitoring_challenger.py`). Workers never wait for the shadow nor
know of it: one that is slow, fails or dies changes no answer; it costs CPU only, on one thread
at a lower priority.

Bounded work: a pass scores at most `prediction.shadow_max_backlog` instances, the newest; older
ones beyond are skipped and counted, so a shadow that falls behind (load beyond one core) catches
up with the present. The stream use case runs the same scorer once over the journal (`drain`)
before it ends. Counters (scored, skipped, invalid, failed) are in `shadow.json` beside the
journal, and on the service's /health as `shadow_<counter>`.

The shadow holds each journal file it reads open until it has read it to its end, so a file the
loader stores and deletes meanwhile is still read whole; only a file written, completed and
deleted between two of its scans (0.2 s) can be missed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ml_project.config import Config
from ml_project.predict import Prediction, PredictionService
from ml_project.prediction_log import journal
from ml_project.prediction_log.background import (
    NICENESS,
    ProcessBeside,
    fork_beside,
    lifeline_closed,
)
from ml_project.prediction_log.records import SHADOW_SOURCE, LogRecord, log_record
from ml_project.schemas import InvalidInstance

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
STATUS_FILE = "shadow.json"
ALIVE_FILE = "shadow.alive"
BATCH_ROWS = 256  # instances scored at once: one call of the model's core per batch
READ_BYTES = 32 * 1024 * 1024  # read from one file per pass at most (two journal segments)
INTERVAL_SECONDS = 0.2
DRAIN_SECONDS = 10.0  # at the service's stop: how long the shadow may take for what remains
# A line of the shadow's own answers (the key is written unescaped only at the top level).
SHADOW_MARK = f'"source":"{SHADOW_SOURCE}"'.encode()


class ShadowUnavailable(RuntimeError):
    """The challenger cannot run in shadow of this champion (none, the same, another contract)."""


def check_pair(champion: PredictionService, challenger: PredictionService) -> None:
    """Refuse a challenger that cannot be compared with the champion instance by instance."""
    if challenger.model_sha256 == champion.model_sha256:
        raise ShadowUnavailable(f"the challenger is the champion (version "
                                f"{champion.model_version}): nothing to compare")
    if challenger.classes != champion.classes or (
            challenger.has_probabilities != champion.has_probabilities):
        raise ShadowUnavailable(
            f"the challenger (version {challenger.model_version}) answers with the classes "
            f"{challenger.classes}, the champion with {champion.classes}")


@dataclass
class ShadowStatus:
    """What the shadow has done since it started: /health and monitoring show it."""

    challenger_version: str | None = None
    challenger_sha256: str | None = None
    scored: int = 0  # answers logged
    skipped: int = 0  # instances left unscored because the shadow was behind
    invalid: int = 0  # instances the challenger's validation refused (logged with the reason)
    failed: int = 0  # instances the challenger failed on, or whose answers could not be logged
    error: str | None = None  # why the shadow does not run, if it does not
    updated_at: str = ""
    pid: int = 0

    def counters(self) -> dict[str, int]:
        return {"scored": self.scored, "skipped": self.skipped, "invalid": self.invalid,
                "failed": self.failed, "unavailable": int(self.error is not None)}


@dataclass
class _Tail:
    fd: int
    offset: int = 0


@dataclass(frozen=True)
class _Answered:
    """A champion's answered instance, as its journal line has it."""

    request_id: str
    instance_index: int
    logged_at: str
    record: dict[str, Any]


class ShadowScorer:
    """Scores what the champion (`champion_sha256`) answered, as read from the journal in
    `directory`, with `challenger`, and journals the answers."""

    def __init__(self, challenger: PredictionService, champion_sha256: str, directory: Path, *,
                 max_backlog: int) -> None:
        self.challenger = challenger
        self.champion_sha256 = champion_sha256
        self.directory = directory
        self.max_backlog = max_backlog
        self.journal = journal.Journal(directory)
        self.status = ShadowStatus(challenger.model_version, challenger.model_sha256)
        self._tails: dict[str, _Tail] = {}
        self._finished: set[str] = set()  # files read to their end once complete

    def pass_once(self, *, bounded: bool = True) -> int:
        """Score what the journal holds that this scorer has not read yet; the number scored."""
        answered = self._read_new()
        if bounded and len(answered) > self.max_backlog:
            self.status.skipped += len(answered) - self.max_backlog
            logger.warning("Shadow: %d instances skipped (behind by more than %d)",
                           len(answered) - self.max_backlog, self.max_backlog)
            answered = answered[-self.max_backlog:]
        for start in range(0, len(answered), BATCH_ROWS):
            self._score(answered[start:start + BATCH_ROWS])
        self.write_status()
        return len(answered)

    def drain(self, timeout: float = DRAIN_SECONDS, *, bounded: bool = True) -> None:
        """Passes until nothing new is read (or `timeout`), then the files are closed."""
        deadline = time.monotonic() + timeout
        while self.pass_once(bounded=bounded) and time.monotonic() < deadline:
            pass
        self.close()

    def close(self) -> None:
        for tail in self._tails.values():
            os.close(tail.fd)
        self._tails.clear()
        self.journal.close()
        self.write_status()

    def write_status(self) -> None:
        write_status(self.directory, self.status)

    # Reading ----------------------------------------------------------------------------------

    def _read_new(self) -> list[_Answered]:
        files = journal.journal_files(self.directory)
        names = {path.name for path in files}
        self._finished &= names  # forget files the loader has deleted
        answered: list[_Answered] = []
        for path in files:
            if path.name in self._finished:
                continue
            tail = self._tails.get(path.name)
            if tail is None:
                try:
                    tail = self._tails[path.name] = _Tail(os.open(path, os.O_RDONLY))
                except FileNotFoundError:  # stored and deleted since the listing
                    continue
            answered += self._read(path.name, tail)
        for name in [name for name in self._tails if name not in names]:
            answered += self._read(name, self._tails[name])  # deleted since: still readable
        return answered

    def _read(self, name: str, tail: _Tail) -> list[_Answered]:
        # Locked first: once the writer has let go, what the file holds is all it will hold.
        complete = journal.try_lock(tail.fd)
        size = os.fstat(tail.fd).st_size
        data = os.pread(tail.fd, min(size - tail.offset, READ_BYTES), tail.offset)
        whole = data[:data.rfind(b"\n") + 1]
        read_to_end = tail.offset + len(data) >= size
        tail.offset += len(whole)
        if complete and read_to_end:  # done (a torn last line, if any, is the loader's)
            os.close(tail.fd)  # which lets the lock go
            del self._tails[name]
            self._finished.add(name)
        elif complete:
            fcntl.flock(tail.fd, fcntl.LOCK_UN)  # the loader may store it meanwhile
        return [answer for line in whole.splitlines() if (answer := self._answered(line))]

    def _answered(self, line: bytes) -> _Answered | None:
        if not line.strip() or SHADOW_MARK in line:
            return None
        try:
            row = json.loads(line)
            if (row.get("error") is not None or row.get("prediction") is None
                    or row.get("model_sha256") != self.champion_sha256):
                return None
            record = json.loads(row["input"])
            return _Answered(str(row["request_id"]), int(row["instance_index"]),
                             str(row["logged_at"]), record if isinstance(record, dict) else {})
        except (ValueError, KeyError, TypeError):  # a line the loader moves aside, not ours
            return None

    # Scoring ----------------------------------------------------------------------------------

    def _score(self, batch: Sequence[_Answered]) -> None:
        started = time.perf_counter()
        outcomes = self._predict([answer.record for answer in batch])
        latency_ms = (time.perf_counter() - started) * 1000 / len(batch)
        entries = [
            dataclasses.replace(
                log_record(self.challenger, answer.record, request_id=answer.request_id,
                           source=SHADOW_SOURCE, latency_ms=latency_ms,
                           prediction=outcome if isinstance(outcome, Prediction) else None,
                           error=None if isinstance(outcome, Prediction) else outcome,
                           instance_index=answer.instance_index),
                logged_at=answer.logged_at)  # the champion's time: both fall in one window
            for answer, outcome in zip(batch, outcomes)
        ]
        errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
        if not self._append(entries):
            self.status.failed += len(entries)
            return
        self.status.scored += len(outcomes) - len(errors)
        self.status.invalid += sum(error.startswith("422") for error in errors)
        self.status.failed += sum(not error.startswith("422") for error in errors)

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction | str]:
        """The challenger's prediction of each record, or the reason it has none."""
        try:
            return list(self.challenger.predict_records(records))
        except InvalidInstance:  # some are invalid to the challenger: one at a time
            pass
        except Exception as err:  # the challenger's fault: each is tried alone below
            logger.warning("Shadow: the challenger failed on a batch (%s)", type(err).__name__)
        outcomes: list[Prediction | str] = []
        for record in records:
            try:
                outcomes.append(self.challenger.predict_instance(record))
            except InvalidInstance as err:
                outcomes.append(f"422: invalid instance: {err}")
            except Exception as err:  # the challenger's failure: counted, never raised
                outcomes.append(f"500: {type(err).__name__}: {err}")
        return outcomes

    def _append(self, entries: Sequence[LogRecord]) -> bool:
        try:
            self.journal.append(b"".join(journal.encode_line(e.to_row()) for e in entries))
        except OSError as err:
            logger.error("Shadow: %d answers not journaled (%s)", len(entries), err)
            return False
        return True


def write_status(directory: Path, status: ShadowStatus) -> None:
    status.updated_at, status.pid = datetime.now(timezone.utc).isoformat(), os.getpid()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f"{journal.OPENING}{STATUS_FILE}.{os.getpid()}"
        temporary.write_text(json.dumps(asdict(status)))
        os.replace(temporary, directory / STATUS_FILE)
    except OSError as err:  # a status is a convenience: the answers are in the journal
        logger.warning("Shadow: status not written (%s)", err)


def read_status(directory: Path) -> ShadowStatus | None:
    """The running shadow's status (None when no shadow process is alive)."""
    if not journal.lock_held(directory / ALIVE_FILE):
        return None
    try:
        return ShadowStatus(**json.loads((directory / STATUS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return ShadowStatus()


def load_challenger(config: Config, champion: PredictionService) -> PredictionService:
    """The challenger, as the config's model source has it, checked against the champion.
    Raises ShadowUnavailable saying why it cannot run in shadow."""
    try:
        challenger = PredictionService.from_config(config, alias=CHALLENGER)
    except Exception as err:  # a missing or unreadable artifact, an unreachable registry
        raise ShadowUnavailable(f"no challenger to run in shadow ({err})") from err
    check_pair(champion, challenger)
    return challenger


def start_shadow_process(config: Config, champion: PredictionService,
                         directory: Path) -> ProcessBeside:
    """The shadow, forked beside the service before its workers start (the challenger is loaded
    in it, so the workers never hold it). A challenger that cannot run is an error in the log
    and in /health (`shadow_unavailable`); the champion serves on regardless."""

    def work(lifeline: int, keep_alive_file: Callable[[], None]) -> None:  # pragma: no cover
        from threadpoolctl import threadpool_limits

        os.nice(NICENESS)
        with threadpool_limits(limits=1):  # one core at most, whatever the model's libraries
            run_shadow(config, champion, directory, lifeline, keep_alive_file)

    return fork_beside(directory / ALIVE_FILE, work, "challenger's shadow process")


def run_shadow(config: Config, champion: PredictionService, directory: Path, lifeline: int,
               keep_alive_file: Callable[[], None]) -> None:  # pragma: no cover  (forked)
    write_status(directory, ShadowStatus())  # this process's, from its start: none is stale
    try:
        challenger = load_challenger(config, champion)
    except ShadowUnavailable as err:
        logger.error("Shadow: %s; the champion serves alone", err)
        write_status(directory, ShadowStatus(error=str(err)))
        while not lifeline_closed(lifeline, 1.0):
            keep_alive_file()
        return
    scorer = ShadowScorer(challenger, champion.model_sha256, directory,
                          max_backlog=config.prediction.shadow_max_backlog)
    scorer.write_status()
    logger.info("Shadow: challenger %s version %s scores what version %s answers (pid %d)",
                challenger.model_name, challenger.model_version, champion.model_version,
                os.getpid())
    while True:
        keep_alive_file()
        try:
            scorer.pass_once()
        except OSError as err:  # the journal's folder unreadable now: the next pass tries again
            logger.warning("Shadow: cannot read the journal (%s)", err)
        if lifeline_closed(lifeline, INTERVAL_SECONDS):
            break
    scorer.drain()
