"""Benchmark the template against `mlflow models serve` and against the bare model.

    bash executables/benchmark.sh [--quick | --smoke] [--skip-mlflow] [--skip-workers]
                                  [--rounds N] [--root DIR]

Developer tooling, kept out of the package users adapt and ship (`python executables/benchmark.py`).

One run, one fitted model, one set of held-out rows (the valid rows of the production data).
In a work root holding a copy of the shipped data and config, the modelling use case trains and
registers the champion (measurement 5, its wall time); then, on that champion:
1. served single-instance latency (sequential, keep-alive) and throughput (8 concurrent clients)
   of our FastAPI and Flask services and of `mlflow models serve`, counting errors and wrong
   answers against the in-process batch prediction;
2. cold start (process launch to first correct answer) and resident memory of each server,
   child processes included;
3. in process: one row through `PredictionService.predict_instance` vs the bare model on the
   already-preprocessed row (the limit), and the historic prediction path (validation +
   `predict_frame`, chunk by chunk) vs bare `predict_proba` at 100k rows;
4. peak memory of the historic prediction use case on files of 1x and 10x its chunk size;
5. throughput (8 concurrent clients) and memory of our FastAPI and Flask services on 1 and on 2
   worker processes (measurement 1 runs them on 1), each server alone on the machine.
The machine is shared and noisy: each ratio is taken within one round, from measurements run
back to back, and the median over rounds is reported, never a ratio of separate runs.
Writes `output/benchmarks/results.json` and `results.md` and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess  # starts the servers it measures, and lscpu  # nosec B404
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import psutil
import yaml
from threadpoolctl import ThreadpoolController

from ml_project.config import (
    OUTPUT_DIR_ENV,
    PREDICTION_LOG_ENV,
    PROJECT_ROOT,
    Config,
    load_config,
)
from ml_project.ingest import read_table, stream_production_instances
from ml_project.predict import PredictionService
from ml_project.prediction_log import journal
from ml_project.prediction_log.status import read_status
from ml_project.serving.shadow import read_status as read_shadow_status
from ml_project.validate import validate_production_data

logger = logging.getLogger(__name__)

SERVERS = ("fastapi", "flask", "mlflow")
OURS = ("fastapi", "flask")
LABELS = {"fastapi": "FastAPI", "flask": "Flask", "mlflow": "mlflow models serve"}
TOLERANCE = 1e-9  # on probabilities, vs the in-process batch prediction
STARTUP_TIMEOUT_SECONDS = 180.0
REQUEST_TIMEOUT_SECONDS = 30.0
WARMUP_REQUESTS = 20
MB = 1024 * 1024
LOG_DATABASE = "prediction_log.db"  # a launched service's own log, in its output folder

# Worker processes compared in measurement 5: the first is the baseline of the ratio.
WORKER_COUNTS = (1, 2)
WORKERS_TARGET = 1.5  # 2 workers vs 1, 8-client throughput

# The promises of the issue: (key, description, comparison, bound).
TARGETS = (
    ("p50", "served p50 latency vs mlflow models serve", "<=", 0.35),
    ("p99", "served p99 latency vs mlflow models serve", "<=", 0.35),
    ("throughput", "throughput, 8 clients, vs mlflow models serve", ">=", 4.0),
    ("cold_start", "cold start vs mlflow models serve", "<=", 0.35),
    ("memory", "resident memory (PSS) vs mlflow models serve", "<=", 0.5),
)


@dataclass(frozen=True)
class Settings:
    """How much to measure; `QUICK` exercises every measurement at small sizes, `SMOKE` at the
    smallest that still run every code path (CI's test of the harness, not a measurement)."""

    rounds: int = 5
    sequential_requests: int = 500
    throughput_seconds: float = 4.0
    clients: int = 8
    single_row_calls: int = 300
    batch_rows: int = 100_000
    batch_rounds: int = 15  # a round takes ~0.5 s, and one ~150 ms run is easily disturbed
    historic_rows: int | None = None  # None: the whole shipped historic file
    chunk_size: int | None = None  # None: the config's prediction.chunk_size
    use_case_rounds: int = 2
    candidates: int | None = None  # None: every candidate of the config; else the first N
    training_jobs: int | None = None  # None: the config's; 1 spares starting worker processes


QUICK = Settings(rounds=1, sequential_requests=100, throughput_seconds=1.0, single_row_calls=100,
                 batch_rows=10_000, batch_rounds=2, historic_rows=3000, chunk_size=1000,
                 use_case_rounds=1)
SMOKE = Settings(rounds=1, sequential_requests=10, throughput_seconds=0.2, clients=2,
                 single_row_calls=10, batch_rows=500, batch_rounds=1, historic_rows=400,
                 chunk_size=100, use_case_rounds=1, candidates=1, training_jobs=1)


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


# Work root --------------------------------------------------------------------------------------


def prepare_root(root: Path, config_file: Path, settings: Settings) -> Path:
    """Copy the data files and the config into `root`; returns the copied config file.

    Quick mode keeps the first `historic_rows` rows and a CV of two folds over the first value
    of each searched parameter: the same code paths, a fraction of the training time. The
    historic file is read as the pipeline reads it (`read_table`: CSV or Parquet, the known
    columns) and written back in its own format.
    """
    source = load_config("modelling", "historic", "local", config_file=config_file)
    content = yaml.safe_load(config_file.read_text())
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name in ("historic", "production", "production_labels"):
        path = Path(source.resolve(getattr(source.data, name)))
        if not path.is_file():
            raise FileNotFoundError(f"the benchmark copies data files; data.{name} is {path}")
        shutil.copyfile(path, root / "data" / path.name)
        content["data"][name] = f"data/{path.name}"
    if settings.historic_rows:
        historic = root / content["data"]["historic"]
        head = read_table(str(historic), source).head(settings.historic_rows)
        if historic.suffix == ".parquet":
            head.to_parquet(historic, index=False)
        else:
            head.to_csv(historic, index=False)
        training = content.setdefault("training", {})
        training["cv_folds"] = 2
        if settings.training_jobs:
            training["n_jobs"] = settings.training_jobs
        if settings.candidates:
            training["candidates"] = training.get("candidates", [])[:settings.candidates]
        for candidate in training.get("candidates", []):
            candidate["search"] = {k: v[:1] for k, v in candidate.get("search", {}).items()}
    copied = root / "project_config.yaml"
    copied.write_text(yaml.safe_dump(content, sort_keys=False))
    return copied


def child_environment(config: Config) -> dict[str, str]:
    """The benchmark's environment for child processes: this venv's bin first on PATH (mlflow
    starts `uvicorn` from PATH), the work root's tracking store, and no API key."""
    env = {k: v for k, v in os.environ.items() if k != "ML_PROJECT_API_KEY"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = config.resolve(config.tracking.tracking_uri)
    return env


def _tail(log_file: Path, lines: int = 15) -> str:
    text = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    return "\n".join(text[-lines:])


def run_use_case(script: str, args: list[str], env: dict[str, str], log_file: Path
                 ) -> tuple[float, int]:
    """Run `use_cases/<script>` in a fresh interpreter; returns (wall seconds, peak RSS bytes).

    The peak comes from the kernel's own accounting of that child (`wait4`), so no short
    spike between two samples is missed.
    """
    command = [sys.executable, str(PROJECT_ROOT / "use_cases" / script), *args]
    with log_file.open("ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # our own launcher command, no shell  # nosec B603
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{script} exited with {process.returncode}; its log "
                           f"{log_file} ends:\n{_tail(log_file)}")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


# Reference answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """Held-out instances as a JSON client sends them, with the in-process batch answers."""

    records: list[dict[str, Any]]
    labels: list[Any]
    probabilities: np.ndarray | None  # rows x classes; None for regression
    class_keys: list[str]
    features: list[str]

    def answer_is_right(self, row: int, prediction: Any, probabilities: Any) -> bool:
        """Our services: the same label and every probability within TOLERANCE."""
        if self.probabilities is None:
            return _close(prediction, self.labels[row])
        if prediction != self.labels[row] or not isinstance(probabilities, dict):
            return False
        return all(_close(probabilities.get(key), expected)
                   for key, expected in zip(self.class_keys, self.probabilities[row]))

    def label_is_right(self, row: int, prediction: Any) -> bool:
        """`mlflow models serve` of the registered pyfunc answers with the label only."""
        if self.probabilities is None:
            return _close(prediction, self.labels[row])
        return bool(prediction == self.labels[row])


def _close(value: Any, expected: float) -> bool:
    return isinstance(value, (int, float)) and abs(float(value) - float(expected)) <= TOLERANCE


def held_out_rows(service: PredictionService, config: Config) -> HeldOut:
    """The valid rows of the production data, never seen in training, with reference answers
    from the historic batch path (validation + `predict_frame`)."""
    path = Path(config.resolve(config.data.production))
    validation = validate_production_data(read_table(str(path), config), config,
                                          with_target=False)
    reference = service.predict_frame(validation.valid)
    id_column = config.columns.id
    position = {str(key): i for i, key in enumerate(reference[id_column])}
    if len(position) != len(reference):
        raise ValueError(f"the benchmark matches answers by {id_column}, which is not unique")
    records = [r for r in stream_production_instances(path, config)
               if str(r[id_column]) in position]
    order = [position[str(r[id_column])] for r in records]
    class_keys = [str(c) for c in service.classes]
    probability_columns = [f"probability_{key}" for key in class_keys]
    return HeldOut(
        records=records,
        labels=reference["prediction"].to_numpy()[order].tolist(),
        probabilities=(reference[probability_columns].to_numpy()[order]
                       if service.is_classification else None),
        class_keys=class_keys,
        features=list(service.features),
    )


# A minimal HTTP/1.1 client ----------------------------------------------------------------------


class Connection:
    """One keep-alive connection speaking just enough HTTP/1.1 for a JSON POST.

    asyncio streams cost tens of microseconds a request, so on a 2-core machine the client
    takes little of the CPU the servers need; 8 of them share one event loop.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        """Send a complete request; returns (status, body)."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers = head.lower()
        start = headers.find(b"\r\ncontent-length:")
        if start < 0:
            raise ConnectionError("response without Content-Length")
        length = int(headers[start + 17: headers.index(b"\r\n", start + 2)])
        body = await self.reader.readexactly(length)
        if b"\r\nconnection: close" in headers:
            await self.close()
        return int(head[9:12]), body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


# Servers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server and what to send it."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    requests: list[bytes]  # one complete HTTP request per held-out row
    right: Callable[[int, bytes], bool]  # is this body the right answer for that row
    # Our services' prediction journal: its loader, a process apart from the server's tree,
    # counts in the server's memory.
    journal: Path | None = None
    cwd: Path = PROJECT_ROOT  # where its command runs: another revision's tree runs its own code


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def http_request(path: str, port: int, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def server_specs(names: Sequence[str], config: Config, config_file: Path, held_out: HeldOut,
                 workers: int = 1) -> dict[str, ServerSpec]:
    """Our services, FastAPI and Flask on `workers` processes, started by the documented start
    command; `mlflow models serve` on the registered champion.

    Ours get the whole record, as a client sends it; mlflow gets the features only, as its
    signature lists them (extra fields would cost it a warning per request).
    """
    env = child_environment(config)
    specs = {}
    for name in names:
        port = free_port()
        if name == "mlflow":
            model = f"models:/{config.tracking.registered_model_name}@champion"
            command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model,
                       "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
            bodies = [json.dumps({"dataframe_records": [{f: r.get(f) for f in held_out.features}]})
                      for r in held_out.records]
            requests = [http_request("/invocations", port, b.encode()) for b in bodies]

            def label_right(row: int, body: bytes) -> bool:
                return held_out.label_is_right(row, json.loads(body)["predictions"][0])
            # MLflow 3.17+ refuses to deserialise any model, skops included, unless told to:
            # this one was trained and registered by this very run.
            specs[name] = ServerSpec(name, command, {**env, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION":
                                                     "true"}, port, requests, label_right)
            continue
        # The documented start command, as a user runs it (it runs the project environment's
        # Python directly): its cost is part of what is measured.
        command = ["bash", str(PROJECT_ROOT / "executables" / "start_prediction_service.sh"),
                   name, str(port), "--host", "127.0.0.1", "--workers", str(workers),
                   "--config", str(config_file), "--root", str(config.root)]
        # An output folder each, so each service's loader is found by its own status.
        output = config.root / "output" / f"benchmark_service_{name}_{workers}"
        ours, right = _ours(port, held_out)
        specs[name] = ServerSpec(name, command, {**env, OUTPUT_DIR_ENV: str(output)}, port,
                                 ours, right, output / journal.FOLDER)
    return specs


def _ours(port: int, held_out: HeldOut) -> tuple[list[bytes], Callable[[int, bytes], bool]]:
    """What our services are sent, one held-out record a request as a client sends it, and
    whether an answer is right."""
    requests = [http_request("/predict", port, json.dumps(r).encode()) for r in held_out.records]

    def right(row: int, body: bytes) -> bool:
        answer = json.loads(body)
        return held_out.answer_is_right(row, answer.get("prediction"), answer.get("probabilities"))

    return requests, right


def launcher_spec(name: str, tree: Path, framework: str, config: Config, config_file: Path,
                  held_out: HeldOut) -> ServerSpec:
    """Our service from the launcher of `tree`'s code (this checkout's, or another revision's)
    on one worker, with an output folder (its log, its journal) and a prediction log
    (`LOG_DATABASE` in that folder) of its own: two services writing one SQLite file would wait
    on each other."""
    port = free_port()
    output = config.root / "output" / f"benchmark_{name}"
    command = [sys.executable, "-m", "ml_project.serving.launcher", framework,
               "--port", str(port), "--host", "127.0.0.1", "--workers", "1",
               "--config", str(config_file), "--root", str(config.root)]
    # `-m` puts the working folder first on sys.path; PYTHONPATH does the same for any process
    # the launcher starts, ahead of this environment's editable install of this checkout.
    env = {**child_environment(config), OUTPUT_DIR_ENV: str(output), "PYTHONPATH": str(tree),
           PREDICTION_LOG_ENV: f"sqlite:///{output / LOG_DATABASE}"}
    requests, right = _ours(port, held_out)
    return ServerSpec(name, command, env, port, requests, right, output / journal.FOLDER, tree)


def process_tree_memory(pid: int, spec: ServerSpec | None = None) -> tuple[int, int]:
    """Resident bytes of a process and all its descendants (mlflow serves from a child, gunicorn
    from a forked worker): (PSS, RSS). PSS counts a page
    shared by n processes as 1/n in each, so a forked worker sharing the master's model is not
    counted twice, as summed RSS does; where PSS is unknown (not Linux), RSS stands in. The
    processes forked beside the service (the loader, the challenger's shadow) count too."""
    process = psutil.Process(pid)
    members = [process, *process.children(recursive=True)]
    beside = ([read_status(spec.journal), read_shadow_status(spec.journal)]
              if spec is not None and spec.journal else [])
    for status in beside:  # the loader, and the challenger's shadow when one runs
        if status is not None and status.pid and psutil.pid_exists(status.pid):
            members.append(psutil.Process(status.pid))
    pss = rss = 0
    for member in members:
        try:
            memory = member.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        pss += getattr(memory, "pss", memory.rss)
        rss += memory.rss
    return pss, rss


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole process group, SIGKILL if it has not ended within 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def serving(spec: ServerSpec, probe_row: int, log_file: Path
            ) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Start a server in its own process group; yields it with its cold start in seconds
    (launch to the first right answer), and always stops it."""
    with log_file.open("ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # a server command built here, no shell  # nosec B603
            spec.command, cwd=spec.cwd, env=spec.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        asyncio.run(_first_right_answer(spec, probe_row, process, log_file))
        yield process, time.perf_counter() - started
    finally:
        stop(process)


async def _first_right_answer(spec: ServerSpec, row: int, process: subprocess.Popen[bytes],
                              log_file: Path) -> None:
    deadline = time.perf_counter() + STARTUP_TIMEOUT_SECONDS
    connection = Connection(spec.port)
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {process.returncode}; its log "
                               f"{log_file} ends:\n{_tail(log_file)}")
        try:
            status, body = await connection.post(spec.requests[row])
            if status == 200 and spec.right(row, body):
                await connection.close()
                return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await connection.close()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{spec.name} gave no right answer within {STARTUP_TIMEOUT_SECONDS} s; "
                       f"its log {log_file} ends:\n{_tail(log_file)}")


# Load -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one client session saw."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    answers: list[tuple[int, int, bytes]] = field(default_factory=list)  # row, status, body
    errors: int = 0  # no answer: connection failed or timed out
    seconds: float = 0.0

    def merge(self, other: Load) -> None:
        self.latencies += other.latencies
        self.answers += other.answers
        self.errors += other.errors


async def _client(spec: ServerSpec, rows: Iterator[int], deadline: float | None,
                  limit: int | None) -> Load:
    """Send requests one after another on one connection, until `deadline` or `limit`."""
    load, connection = Load(), Connection(spec.port)
    for row in rows:
        if (deadline is not None and time.perf_counter() >= deadline) or (
            limit is not None and len(load.answers) + load.errors >= limit
        ):
            break
        await timed_post(spec, connection, row, load)
    await connection.close()
    return load


async def timed_post(spec: ServerSpec, connection: Connection, row: int, load: Load) -> None:
    """Send `row`'s request on `connection`; its latency and answer go into `load`, or, with no
    answer, an error (and the connection is closed, to be opened again)."""
    started = time.perf_counter()
    try:
        status, body = await asyncio.wait_for(connection.post(spec.requests[row]),
                                              REQUEST_TIMEOUT_SECONDS)
    except (OSError, asyncio.IncompleteReadError, TimeoutError,
            asyncio.LimitOverrunError, ValueError):
        load.errors += 1
        await connection.close()
        return
    load.latencies.append(time.perf_counter() - started)
    load.answers.append((row, status, body))


def _rows(start: int, step: int, count: int) -> Iterator[int]:
    """Held-out rows in turn, so every row is asked and each client asks different ones."""
    index = start
    while True:
        yield index % count
        index += step


def sequential_load(spec: ServerSpec, requests: int, offset: int) -> Load:
    """One client, one keep-alive connection, one request at a time (after a warm-up)."""
    count = len(spec.requests)
    asyncio.run(_client(spec, _rows(offset, 1, count), None, WARMUP_REQUESTS))
    started = time.perf_counter()
    load = asyncio.run(_client(spec, _rows(offset, 1, count), None, requests))
    load.seconds = time.perf_counter() - started
    return load


def concurrent_load(spec: ServerSpec, clients: int, seconds: float, offset: int) -> Load:
    """`clients` connections sending back to back for `seconds`; throughput = answers / time."""
    count = len(spec.requests)

    async def run() -> Load:
        deadline = time.perf_counter() + seconds
        loads = await asyncio.gather(*(
            _client(spec, _rows(offset + i, clients, count), deadline, None)
            for i in range(clients)
        ))
        total = Load()
        for load in loads:
            total.merge(load)
        return total

    started = time.perf_counter()
    total = asyncio.run(run())
    total.seconds = time.perf_counter() - started
    return total


def judge(spec: ServerSpec, load: Load) -> tuple[int, int]:
    """(errors, wrong answers): no answer or a non-200 status is an error; a 200 whose
    prediction differs from the in-process batch prediction is a wrong answer."""
    errors, wrong = load.errors, 0
    for row, status, body in load.answers:
        if status != 200:
            errors += 1
        else:
            try:
                wrong += not spec.right(row, body)
            except (ValueError, KeyError, IndexError, TypeError):
                wrong += 1
    return errors, wrong


def served_round(specs: dict[str, ServerSpec], settings: Settings, round_number: int,
                 probe_row: int, log_dir: Path) -> dict[str, dict[str, float]]:
    """One round over every server, in an order rotated each round: start each in turn (cold
    start), then sequential latency of each, then throughput of each, then memory."""
    names = list(specs)
    names = names[round_number % len(names):] + names[: round_number % len(names)]
    offset = round_number * settings.sequential_requests
    results: dict[str, dict[str, float]] = {name: {} for name in names}
    with ExitStack() as running:
        processes = {}
        for name in names:
            process, cold_start = running.enter_context(
                serving(specs[name], probe_row, log_dir / f"server_{name}.log"))
            processes[name] = process
            results[name]["cold_start_s"] = cold_start
        for name in names:
            load = sequential_load(specs[name], settings.sequential_requests, offset)
            errors, wrong = judge(specs[name], load)
            p50, p99 = (np.percentile(load.latencies, [50, 99]) * 1000 if load.latencies
                        else [np.nan, np.nan])
            results[name].update(p50_ms=float(p50), p99_ms=float(p99), errors=errors,
                                 wrong=wrong, requests=len(load.answers) + load.errors)
        for name in names:
            load = concurrent_load(specs[name], settings.clients, settings.throughput_seconds,
                                   offset)
            errors, wrong = judge(specs[name], load)
            answered = sum(status == 200 for _, status, _ in load.answers)
            results[name].update(
                throughput_rps=answered / load.seconds,
                requests=results[name]["requests"] + len(load.answers) + load.errors,
                errors=results[name]["errors"] + errors,
                wrong=results[name]["wrong"] + wrong,
            )
        for name in names:
            pss, rss = process_tree_memory(processes[name].pid, specs[name])
            results[name].update(memory_mb=pss / MB, rss_mb=rss / MB)
    logger.debug("Served round %d: %s", round_number + 1, results)
    return results


def worker_specs(config: Config, config_file: Path, held_out: HeldOut
                 ) -> dict[tuple[str, int], ServerSpec]:
    """Our two services on each of WORKER_COUNTS, by (framework, workers)."""
    specs = {}
    for workers in WORKER_COUNTS:
        for name, spec in server_specs(OURS, config, config_file, held_out, workers).items():
            specs[name, workers] = replace(spec, name=f"{name}_{workers}_workers")
    return specs


def workers_round(specs: dict[tuple[str, int], ServerSpec], settings: Settings,
                  round_number: int, probe_row: int, log_dir: Path
                  ) -> dict[str, dict[str, float]]:
    """Each server alone, in an order rotated each round: started, warmed up by the clients for
    a moment (every worker gets requests), then its throughput and memory (PSS, master and
    workers). Keyed by `<framework>_<workers>`."""
    keys = list(specs)
    keys = keys[round_number % len(keys):] + keys[: round_number % len(keys)]
    offset = round_number * settings.sequential_requests
    results: dict[str, dict[str, float]] = {}
    for key in keys:
        spec = specs[key]
        with serving(spec, probe_row, log_dir / f"server_{spec.name}.log") as (process, _):
            concurrent_load(spec, settings.clients, min(1.0, settings.throughput_seconds), offset)
            load = concurrent_load(spec, settings.clients, settings.throughput_seconds, offset)
            errors, wrong = judge(spec, load)
            pss, _ = process_tree_memory(process.pid, spec)
        results[f"{key[0]}_{key[1]}"] = {
            "throughput_rps": sum(status == 200 for _, status, _ in load.answers) / load.seconds,
            "memory_mb": pss / MB, "errors": errors, "wrong": wrong,
            "requests": len(load.answers) + load.errors,
        }
    logger.debug("Workers round %d: %s", round_number + 1, results)
    return results


def workers_ratios(rounds: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Per framework, the median over rounds of the throughput on the most workers / on one,
    each ratio taken within one round."""
    most, one = WORKER_COUNTS[-1], WORKER_COUNTS[0]
    return {name: _median([r[f"{name}_{most}"]["throughput_rps"]
                           / r[f"{name}_{one}"]["throughput_rps"] for r in rounds])
            for name in OURS}


# In process -------------------------------------------------------------------------------------


def _one_row_frame(service: PredictionService, record: dict[str, Any]) -> pd.DataFrame:
    """A validated instance as a 1-row DataFrame with the Pipeline's dtypes."""
    values = service.validator.validate(record)
    return pd.DataFrame({
        rule.name: pd.Series([value], dtype=float if rule.kind == "numerical" else object)
        for rule, value in zip(service.validator.rules, values)
    })


def single_row_round(service: PredictionService, held_out: HeldOut, calls: int, offset: int
                     ) -> dict[str, float]:
    """Per-call medians, timed back to back on the same row: `predict_instance` (validation,
    features, preprocessing, model, result) vs the bare model on the preprocessed row, each
    as it runs best for one row, i.e. on one OpenMP thread (the core limits itself so). For
    context: the bare model with OpenMP's default threads (what `mlflow models serve` runs)
    and the plain Pipeline on a 1-row DataFrame."""
    pipeline, method = service.pipeline, "predict_proba" if service.is_classification else "predict"
    bare, plain = getattr(pipeline[-1], method), getattr(pipeline, method)
    rows = [(offset + i) % len(held_out.records) for i in range(calls)]
    frames = {row: _one_row_frame(service, held_out.records[row]) for row in set(rows)}
    preprocessed = {row: pipeline[:-1].transform(frame) for row, frame in frames.items()}
    calls_of: dict[str, Callable[[int], Any]] = {
        "core": lambda row: service.predict_instance(held_out.records[row]),
        "bare": lambda row: bare(preprocessed[row]),
        "pipeline": lambda row: plain(frames[row]),
        "bare_threads": lambda row: bare(preprocessed[row]),
    }
    threads = ThreadpoolController()
    times: dict[str, list[float]] = {which: [] for which in calls_of}
    wrong = 0
    for i, row in enumerate(rows):
        for which in list(calls_of)[:: 1 if i % 2 else -1]:
            with threads.limit(limits=None if which == "bare_threads" else 1, user_api="openmp"):
                started = time.perf_counter()
                answer = calls_of[which](row)
                times[which].append(time.perf_counter() - started)
            if which == "core":
                wrong += not held_out.answer_is_right(row, answer.prediction, answer.probabilities)
    result = {f"{key}_ms": _median(values) * 1000 for key, values in times.items()}
    return result | {"calls": calls, "wrong": wrong}


def batch_frames(config: Config, rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` production rows as received (invalid ones included), sampled from the shipped
    production data with fresh unique ids."""
    production = read_table(config.resolve(config.data.production), config)
    sample = production.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    return sample.assign(**{config.columns.id: [f"B{i:07d}" for i in range(rows)]})


def batch_round(service: PredictionService, config: Config, production: pd.DataFrame,
                preprocessed: np.ndarray, round_number: int) -> dict[str, float]:
    """Rows per second: the historic prediction path (validation + `predict_frame`, in chunks
    of `prediction.chunk_size`, as the use case runs it) vs bare `predict_proba` on all the
    valid rows already preprocessed, in one call (the target) and, for context, in the same
    chunks (the model's own cost of chunking). The bare model gets the very array the path's
    model is given. Reading and writing files is left out."""
    model = service.pipeline[-1]
    score = model.predict_proba if service.is_classification else model.predict
    size = config.prediction.chunk_size
    validating = [0.0]  # seconds of the path spent in validation

    def path() -> None:
        for start in range(0, len(production), size):
            started = time.perf_counter()
            valid = validate_production_data(production.iloc[start:start + size], config,
                                             with_target=False).valid
            validating[0] += time.perf_counter() - started
            service.predict_frame(valid)

    def bare_in_chunks() -> None:
        for start in range(0, len(preprocessed), size):
            score(preprocessed[start:start + size])

    runs: dict[str, Callable[[], Any]] = {
        "path": path, "bare": partial(score, preprocessed), "bare_chunks": bare_in_chunks}
    seconds = {}
    for which in list(runs)[:: 1 if round_number % 2 else -1]:
        started = time.perf_counter()
        runs[which]()
        seconds[which] = time.perf_counter() - started
    return {
        "path_rows_per_s": len(production) / seconds["path"],
        "bare_rows_per_s": len(preprocessed) / seconds["bare"],
        "bare_chunks_rows_per_s": len(preprocessed) / seconds["bare_chunks"],
        "validation_share": validating[0] / seconds["path"],
        "validation_rows_per_s": len(production) / validating[0],
    }


def use_case_memory_round(files: dict[str, Path], chunk_size: int, config_file: Path,
                          config: Config, log_dir: Path, round_number: int) -> dict[str, float]:
    """Peak RSS of the historic prediction use case on each file, in alternating order."""
    env = child_environment(config)
    peaks = {}
    order = list(files) if round_number % 2 == 0 else list(files)[::-1]
    for name in order:
        _, peak = run_use_case(
            "predicting_historic_data_local.py",
            ["--input", str(files[name]), "--chunk-size", str(chunk_size), "--config",
             str(config_file), "--root", str(config.root)],
            env, log_dir / "predicting_historic.log")
        peaks[f"peak_{name}_mb"] = peak / MB
    return peaks


# Summary ----------------------------------------------------------------------------------------


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per server: the median of each measure over rounds; counts are summed."""
    summary: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        values = {key: [r[name][key] for r in rounds] for key in rounds[0][name]}
        summary[name] = {
            key: float(sum(v)) if key in ("requests", "errors", "wrong") else _median(v)
            for key, v in values.items()
        }
    return summary


def paired_ratios(rounds: list[dict[str, dict[str, float]]], ours: str, theirs: str
                  ) -> dict[str, float]:
    """Median over rounds of ours / theirs, each ratio taken within one round."""
    keys = {"p50": "p50_ms", "p99": "p99_ms", "throughput": "throughput_rps",
            "cold_start": "cold_start_s", "memory": "memory_mb", "rss": "rss_mb"}
    return {short: _median([r[ours][key] / r[theirs][key] for r in rounds])
            for short, key in keys.items()}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each promise with its measured value and met (True/False), or None if not measured."""
    targets = []
    ratios = results["served"].get("ratios_vs_mlflow", {})
    for name in OURS:
        for key, description, comparison, bound in TARGETS:
            measured = ratios.get(name, {}).get(key)
            targets.append(_target(f"{LABELS[name]}: {description}", measured, comparison, bound))
        wrong = results["served"]["summary"].get(name, {}).get("wrong")
        targets.append(_target(f"{LABELS[name]}: wrong answers", wrong, "<=", 0))
        workers = results.get("workers", {})
        targets.append(_target(
            f"{LABELS[name]}: throughput, 8 clients, {WORKER_COUNTS[-1]} workers vs "
            f"{WORKER_COUNTS[0]}", workers.get("ratios", {}).get(name), ">=", WORKERS_TARGET))
        wrong = sum(workers["summary"][f"{name}_{n}"]["wrong"] for n in WORKER_COUNTS) \
            if workers else None
        targets.append(_target(f"{LABELS[name]} on workers: wrong answers", wrong, "<=", 0))
    in_process = results["in_process"]
    targets.append(_target("in-process predict_instance: wrong answers",
                           in_process["single_row"]["wrong"], "<=", 0))
    targets.append(_target("single row through the prediction core vs bare model",
                           in_process["single_row"]["core_vs_bare"], "<=", 2.0))
    targets.append(_target("batch with validation vs bare predict_proba (throughput)",
                           in_process["batch"]["path_vs_bare"], ">=", 0.25))
    targets.append(_target("validation with pandera, rows/s (production rows as received)",
                           in_process["batch"]["validation_rows_per_s"], ">=", 300_000))
    targets.append(_target("flat memory: peak on 10x chunk file vs 1x chunk file",
                           results["use_cases"]["peak_10x_vs_1x"], "<=", 1.1))
    return targets


def _target(name: str, measured: float | None, comparison: str, bound: float) -> dict[str, Any]:
    met: bool | None = None
    if measured is not None and not np.isnan(measured):  # NaN: not measured in this run
        met = measured <= bound if comparison == "<=" else measured >= bound
    return {"name": name, "target": f"{comparison} {bound:g}", "measured": measured, "met": met}


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    """Two decimals, or two significant digits for ratios below 0.1 (not a bare 0.00x)."""
    if value is None or np.isnan(value):
        return "-"
    return f"{value:.2g}x" if abs(value) < 0.1 else f"{value:.2f}x"


def markdown(results: dict[str, Any]) -> str:
    """The tables of results.md (and of the console)."""
    served, in_process, use_cases = (results["served"], results["in_process"],
                                     results["use_cases"])
    names = list(served["summary"])
    lines = [
        f"Benchmark of {results['model']} on {results['machine']['cpu']} "
        f"({results['machine']['cores']} cores), {results['created']}"
        + (" - QUICK MODE, smoke-test sizes, not for comparison"
           if results["quick"] or results.get("smoke") else ""),
        f"Command: `{results['command']}`. Medians of {results['settings']['rounds']} "
        f"interleaved rounds ({results['settings']['batch_rounds']} for batches); ratios are "
        "medians of per-round ratios.",
        "",
    ]
    if names:
        ratio_names = [n for n in OURS if n in served.get("ratios_vs_mlflow", {})]
        header = [LABELS[n] for n in names] + [f"{LABELS[n]} / mlflow" for n in ratio_names]
        lines += ["| served, single instance | " + " | ".join(header) + " |",
                  "|---" * (len(header) + 1) + "|"]
        rows = (("p50 latency (ms)", "p50_ms", "p50", 2), ("p99 latency (ms)", "p99_ms", "p99", 2),
                (f"throughput, {results['settings']['clients']} clients (req/s)",
                 "throughput_rps", "throughput", 0),
                ("cold start (s)", "cold_start_s", "cold_start", 2),
                ("resident memory, PSS (MB)", "memory_mb", "memory", 0),
                ("resident memory, RSS summed over processes (MB, context)", "rss_mb", "rss", 0))
        for label, key, short, digits in rows:
            cells = [_fmt(served["summary"][n][key], digits) for n in names]
            cells += [_ratio(served["ratios_vs_mlflow"][n][short]) for n in ratio_names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for label, key in (("errors / requests", "errors"), ("wrong answers / requests", "wrong")):
            cells = [f"{served['summary'][n][key]:.0f} / {served['summary'][n]['requests']:.0f}"
                     for n in names]
            lines.append(f"| {label} | " + " | ".join(cells + [""] * len(ratio_names)) + " |")
        if "mlflow" in names:
            lines += ["", "mlflow models serve returns the label only (the registered pyfunc "
                          "predicts), so its answers are compared by label: a wrong probability "
                          "that keeps the label is not counted, its count is a lower bound. "
                          f"Ours are compared by label and every probability within "
                          f"{TOLERANCE:g}."]
        lines.append("")
    workers = results.get("workers")
    if workers:
        counts = ", ".join(str(n) for n in WORKER_COUNTS)
        header = [f"{n} worker{'s' if n > 1 else ''}" for n in WORKER_COUNTS]
        lines += [f"| worker processes ({counts}), {results['settings']['clients']} clients | "
                  + " | ".join(header) + f" | {WORKER_COUNTS[-1]} / {WORKER_COUNTS[0]} |",
                  "|---" * (len(header) + 2) + "|"]
        for name in OURS:
            cells = [_fmt(workers["summary"][f"{name}_{n}"]["throughput_rps"], 0)
                     for n in WORKER_COUNTS]
            lines.append(f"| {LABELS[name]}, throughput (req/s) | " + " | ".join(cells)
                         + f" | {_ratio(workers['ratios'][name])} |")
            cells = [_fmt(workers["summary"][f"{name}_{n}"]["memory_mb"], 0)
                     for n in WORKER_COUNTS]
            lines.append(f"| {LABELS[name]}, resident memory, PSS (MB) | " + " | ".join(cells)
                         + " | |")
        lines += ["", f"Each server alone; {results['machine']['cores']} cores. The master loads "
                      "the model and forks the workers: they share its pages (PSS counts a "
                      "shared page once).", ""]
    single, batch = in_process["single_row"], in_process["batch"]
    lines += [
        "| in process | prediction core | bare model | core / bare |",
        "|---|---|---|---|",
        f"| one row, p50 (ms): `predict_instance` vs `predict_proba` on the preprocessed row | "
        f"{_fmt(single['core_ms'], 3)} | {_fmt(single['bare_ms'], 3)} | "
        f"{_ratio(single['core_vs_bare'])} |",
        f"| one row, p50 (ms): plain Pipeline on a 1-row DataFrame (context) | "
        f"{_fmt(single['pipeline_ms'], 3)} | {_fmt(single['bare_ms'], 3)} | "
        f"{_ratio(single['pipeline_vs_bare'])} |",
        f"| one row, p50 (ms): bare model on OpenMP's default threads (context) | "
        f"| {_fmt(single['bare_threads_ms'], 3)} | |",
        f"| {batch['rows']:,} rows (rows/s): validation + `predict_frame` in chunks of "
        f"{batch['chunk_size']:,} vs `predict_proba` in one call, on the array the path "
        f"gives the model | "
        f"{_fmt(batch['path_rows_per_s'], 0)} | {_fmt(batch['bare_rows_per_s'], 0)} | "
        f"{_ratio(batch['path_vs_bare'])} |",
        f"| of which validation (share of the path's time; rows/s of validation alone) | "
        f"{batch['validation_share']:.0%}; {_fmt(batch['validation_rows_per_s'], 0)} | | |",
        f"| same, vs `predict_proba` in the same chunks (context) | "
        f"{_fmt(batch['path_rows_per_s'], 0)} | {_fmt(batch['bare_chunks_rows_per_s'], 0)} | "
        f"{_ratio(batch['path_vs_bare_chunks'])} |",
        f"| prediction core used (the fast path only if it proved itself at load) | "
        f"{batch['model_evaluation']} | | |",
        "",
        "| use cases | value |",
        "|---|---|",
        f"| modelling on the shipped data, wall time (s) | {_fmt(use_cases['modelling_s'], 1)} |",
        f"| historic prediction, peak memory, file of 1x chunk ({use_cases['rows_1x']:,} rows) "
        f"(MB) | {_fmt(use_cases['peak_1x_mb'], 0)} |",
        f"| historic prediction, peak memory, file of 10x chunk ({use_cases['rows_10x']:,} rows) "
        f"(MB) | {_fmt(use_cases['peak_10x_mb'], 0)} |",
        f"| peak memory 10x / 1x | {_ratio(use_cases['peak_10x_vs_1x'])} |",
        "",
        "| target | bound | measured | met |",
        "|---|---|---|---|",
    ]
    for target in results["targets"]:
        met = {True: "met", False: "NOT MET", None: "not measured"}[target["met"]]
        measured = (_fmt(target["measured"], 0) if "wrong" in target["name"]
                    else _ratio(target["measured"]).rstrip("x"))
        lines.append(f"| {target['name']} | {target['target']} | {measured} | {met} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(  # fixed argv, for the report header  # nosec B603 B607
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                    if line.startswith("Model name:")), cpu)
    except (OSError, subprocess.CalledProcessError):
        pass
    libraries = {name: version(name) for name in
                 ("scikit-learn", "pandas", "numpy", "pandera", "mlflow", "fastapi", "uvicorn",
                  "flask")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "libraries": libraries}


# Entry point ------------------------------------------------------------------------------------


def run(root: Path, config_file: Path, settings: Settings, servers: Sequence[str], *,
        reuse_model: bool = False, use_case_runs: bool = True, worker_runs: bool = True
        ) -> dict[str, Any]:
    """Every measurement, in the order of the module docstring; returns the results.

    Args:
        worker_runs: measure our services on WORKER_COUNTS workers (only with servers).
        reuse_model: `root` already holds a trained project (`config_file` in it): no copy of
            the data, no modelling run (its time is then not measured).
        use_case_runs: run the historic prediction use case for its peak memory.
    """
    log_dir = root / "benchmark_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if not reuse_model:
        config_file = prepare_root(root, config_file, settings)
    overrides = {"prediction": {"chunk_size": settings.chunk_size}} if settings.chunk_size else {}
    config = load_config("prediction", "historic", "local", config_file=config_file, root=root,
                         overrides=overrides)
    modelling_s: float | None = None
    if not reuse_model:
        logger.info("Work root %s: modelling on the shipped data", root)
        modelling_s, _ = run_use_case(
            "modelling_historic_data_local.py", ["--config", str(config_file), "--root", str(root)],
            child_environment(config), log_dir / "modelling.log")
    service = PredictionService.from_config(config)
    held_out = held_out_rows(service, config)
    probe_row = next(i for i, r in enumerate(held_out.records) if None not in r.values())

    served_rounds = []
    if servers:
        specs = server_specs(servers, config, config_file, held_out)
        for number in range(settings.rounds):
            logger.info("Served round %d of %d: %s", number + 1, settings.rounds, servers)
            served_rounds.append(served_round(specs, settings, number, probe_row, log_dir))
    served: dict[str, Any] = {"summary": summarise(served_rounds) if served_rounds else {},
                              "rounds": served_rounds}
    if "mlflow" in servers and served_rounds:
        served["ratios_vs_mlflow"] = {name: paired_ratios(served_rounds, name, "mlflow")
                                      for name in OURS if name in servers}
    workers: dict[str, Any] = {}
    if worker_runs and servers:
        specs_by_workers = worker_specs(config, config_file, held_out)
        worker_rounds = []
        for number in range(settings.rounds):
            logger.info("Workers round %d of %d: %s on %s workers", number + 1, settings.rounds,
                        list(OURS), list(WORKER_COUNTS))
            worker_rounds.append(workers_round(specs_by_workers, settings, number, probe_row,
                                               log_dir))
        workers = {"summary": summarise(worker_rounds), "ratios": workers_ratios(worker_rounds),
                   "rounds": worker_rounds}

    logger.info("In process: single rows and batches of %d rows", settings.batch_rows)
    single_rounds = [single_row_round(service, held_out, settings.single_row_calls,
                                      number * settings.single_row_calls)
                     for number in range(settings.rounds)]
    production = batch_frames(config, settings.batch_rows)
    valid = validate_production_data(production, config, with_target=False).valid
    preprocessed = service.model_input(valid)  # what the path's model is given, as it is laid out
    batch_rounds = [batch_round(service, config, production, preprocessed, number)
                    for number in range(settings.batch_rounds)]
    in_process = {
        "single_row": {
            **{key: _median([r[key] for r in single_rounds])
               for key in ("core_ms", "bare_ms", "bare_threads_ms", "pipeline_ms")},
            "core_vs_bare": _median([r["core_ms"] / r["bare_ms"] for r in single_rounds]),
            "pipeline_vs_bare": _median([r["pipeline_ms"] / r["bare_ms"] for r in single_rounds]),
            "wrong": sum(r["wrong"] for r in single_rounds),
            "calls": sum(r["calls"] for r in single_rounds),
            "rounds": single_rounds,
        },
        "batch": {
            **{key: _median([r[key] for r in batch_rounds])
               for key in ("path_rows_per_s", "bare_rows_per_s", "bare_chunks_rows_per_s",
                           "validation_share",
                           "validation_rows_per_s")},
            "path_vs_bare": _median([r["path_rows_per_s"] / r["bare_rows_per_s"]
                                     for r in batch_rounds]),
            "path_vs_bare_chunks": _median([r["path_rows_per_s"] / r["bare_chunks_rows_per_s"]
                                            for r in batch_rounds]),
            "model_evaluation": service.core,
            "rows": settings.batch_rows,
            "chunk_size": config.prediction.chunk_size,
            "rounds": batch_rounds,
        },
    }

    chunk = config.prediction.chunk_size
    memory_rounds = []
    if use_case_runs:
        logger.info("Peak memory of the historic prediction use case")
        files = {}
        for name, rows in (("1x", chunk), ("10x", 10 * chunk)):
            files[name] = root / "data" / f"benchmark_{name}.csv"
            batch_frames(config, rows, seed=1).to_csv(files[name], index=False)
        memory_rounds = [use_case_memory_round(files, chunk, config_file, config, log_dir, number)
                         for number in range(settings.use_case_rounds)]
    use_cases = {
        "modelling_s": modelling_s,
        "rows_1x": chunk,
        "rows_10x": 10 * chunk,
        "peak_1x_mb": _median([r["peak_1x_mb"] for r in memory_rounds]),
        "peak_10x_mb": _median([r["peak_10x_mb"] for r in memory_rounds]),
        "peak_10x_vs_1x": _median([r["peak_10x_mb"] / r["peak_1x_mb"] for r in memory_rounds]),
        "rounds": memory_rounds,
    }
    metadata = service.metadata
    return {
        "model": f"{metadata.get('model_name')} version {service.model_version} "
                 f"({metadata.get('candidate')})",
        "held_out_rows": len(held_out.records),
        "served": served,
        "workers": workers,
        "in_process": in_process,
        "use_cases": use_cases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: 1 round, small data (numbers not comparable)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes and one candidate: checks the harness runs")
    parser.add_argument("--skip-mlflow", action="store_true",
                        help="leave out `mlflow models serve` (no served ratios)")
    parser.add_argument("--skip-workers", action="store_true",
                        help=f"leave out our services on {' and '.join(map(str, WORKER_COUNTS))} "
                             "workers")
    parser.add_argument("--reuse-model", action="store_true",
                        help="--root already holds a trained project (--config in it): no data "
                             "copy, no modelling run")
    parser.add_argument("--in-process-only", action="store_true",
                        help="no servers and no use-case runs: the prediction core alone")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per chunk of batch scoring (default: prediction.chunk_size)")
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "project_config.yaml",
                        help="config whose data and settings are copied (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=None,
                        help="work folder, kept afterwards (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for results.json and results.md "
                             "(default: the config's output/benchmarks)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the rounds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("ml_project.predict", "ml_project.validate", "ml_project.ingest"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # one line per chunk otherwise
    settings = SMOKE if args.smoke else QUICK if args.quick else Settings()
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    if args.chunk_size:
        settings = replace(settings, chunk_size=args.chunk_size)
    servers = [] if args.in_process_only else [
        name for name in SERVERS if not (args.skip_mlflow and name == "mlflow")]
    if args.reuse_model and not args.root:
        parser.error("--reuse-model needs --root, the trained project")
    config_file = args.config.resolve()
    output = args.output or load_config(
        "prediction", "historic", "local", config_file=config_file).output_dir / "benchmarks"

    with ExitStack() as stack:
        if args.root:
            root = args.root.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmark-")))
        measured = run(root, config_file, settings, servers, reuse_model=args.reuse_model,
                       use_case_runs=not args.in_process_only,
                       worker_runs=not args.skip_workers)
    results = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "executables/benchmark.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "smoke": args.smoke,
        "machine": machine(),
        "settings": asdict(settings) | {"servers": servers},
        **measured,
    }
    results["targets"] = evaluate_targets(results)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    table = markdown(results)
    (output / "results.md").write_text("# Benchmark results\n\n" + table)
    print("\n" + table)
    print(f"Written: {output / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
