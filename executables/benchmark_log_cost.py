"""What the prediction log's database side costs a served request: loader running vs paused.

    python executables/benchmark_log_cost.py --root DIR [--config FILE] [--framework NAME]
        [--rounds N] [--requests N] [--seconds S] [--clients N]

Developer tooling. Starts this checkout's service (one worker) on the trained project under
`--root` (a benchmark's `--root`, say), then per round, in an order alternated each round,
measures it twice: with its prediction log's loader process running, and with it paused
(SIGSTOP: the journal still takes every record, the database none until the loader resumes;
it resumes after the slice and is given time to catch up before the next one). Each slice:
one keep-alive client's sequential latency (p50, p90, p99, p99.9), then `--clients` clients'
throughput and latency. Prints the medians, and the medians of the per-round ratios running /
paused (1.00x: storing the records costs requests nothing measurable), and the loader's CPU
while it runs. The journal's append stays on the request path in both (durable before
answered). At the end it counts the records the database holds against the requests
answered: every one, after the pauses.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from executables.benchmark import (  # noqa: E402
    LOG_DATABASE,
    WARMUP_REQUESTS,
    Load,
    concurrent_load,
    held_out_rows,
    judge,
    launcher_spec,
    sequential_load,
    serving,
)
from ml_project.config import PROJECT_ROOT, load_config  # noqa: E402
from ml_project.predict import PredictionService  # noqa: E402
from ml_project.prediction_log.status import read_status  # noqa: E402
from ml_project.prediction_log.table import PREDICTIONS  # noqa: E402

RUNNING, PAUSED = "running", "paused"
CATCH_UP_SECONDS = 120.0  # at most, for the loader to store what waited after a pause


# Sequential latency at four points: an effect confined to the requests that overlap a loader
# pass (a second's ~1%) moves p99 and p99.9 and leaves p90 where it was.
SEQUENTIAL_PERCENTILES = (50, 90, 99, 99.9)


def _percentiles(load: Load, percentiles: tuple[float, ...]) -> dict[str, float]:
    values = np.percentile(np.array(load.latencies) * 1000, percentiles)
    return {f"p{point:g}_ms": float(value) for point, value in zip(percentiles, values)}


def _answered(load: Load) -> int:
    return sum(status == 200 for _, status, _ in load.answers)


def _stored(database: Path) -> int:
    if not database.is_file():
        return 0
    with closing(sqlite3.connect(database)) as connection:
        try:
            (count,), = connection.execute(f"SELECT COUNT(*) FROM {PREDICTIONS.name}")  # nosec B608
        except sqlite3.OperationalError:  # no table yet
            return 0
    return int(count)


def _caught_up(database: Path, before: int, answered: int) -> int:
    """Wait until the database holds `answered` records more than `before` (or
    CATCH_UP_SECONDS); returns how many more it holds."""
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while (stored := _stored(database) - before) < answered and time.monotonic() < deadline:
        time.sleep(0.2)
    return stored


def measure(config_file: Path, root: Path, *, framework: str = "fastapi", rounds: int = 6,
            requests: int = 1500, seconds: float = 3.0, clients: int = 8) -> dict[str, Any]:
    """Start the service, run the slices, stop it; returns every slice's figures, the medians,
    the paired ratios and the stored vs answered counts."""
    config = load_config("prediction", "historic", "local", config_file=config_file, root=root)
    held_out = held_out_rows(PredictionService.from_config(config), config)
    probe_row = next(i for i, r in enumerate(held_out.records) if None not in r.values())
    spec = launcher_spec("log_cost", PROJECT_ROOT, framework, config, config_file, held_out)
    database = spec.journal.parent / LOG_DATABASE if spec.journal else Path()
    log_dir = root / "benchmark_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    slices: dict[str, list[dict[str, float]]] = {RUNNING: [], PAUSED: []}
    # The loader's CPU time in each running slice: its share of the slice's time (of one
    # core), and per request answered (each stores one record).
    loader_cpu: dict[str, list[dict[str, float]]] = {"sequential": [], "clients": []}
    answered, errors, wrong = 1, 0, 0  # the cold start's probe
    before = _stored(database)  # an earlier run's records, in a root used before
    with ExitStack() as running:
        running.enter_context(serving(spec, probe_row, log_dir / "log_cost_server.log"))
        status = read_status(spec.journal) if spec.journal else None
        if status is None or not status.pid:
            raise RuntimeError("the service runs no loader process: nothing to pause")
        loader = psutil.Process(status.pid)
        warm = concurrent_load(spec, clients, 1.0, 0)
        answered += _answered(warm)
        for number in range(rounds):
            for mode in (RUNNING, PAUSED) if number % 2 == 0 else (PAUSED, RUNNING):
                _caught_up(database, before, answered)
                if mode == PAUSED:
                    os.kill(status.pid, signal.SIGSTOP)
                try:
                    marks = [_cpu_and_clock(loader)]
                    sequential = sequential_load(spec, requests, number * requests)
                    marks.append(_cpu_and_clock(loader))
                    concurrent = concurrent_load(spec, clients, seconds, number * requests)
                    marks.append(_cpu_and_clock(loader))
                finally:
                    if mode == PAUSED:
                        os.kill(status.pid, signal.SIGCONT)
                if mode == RUNNING:
                    for kind, load, (cpu, clock), (cpu_end, clock_end) in (
                            ("sequential", sequential, marks[0], marks[1]),
                            ("clients", concurrent, marks[1], marks[2])):
                        loader_cpu[kind].append({
                            "share": (cpu_end - cpu) / (clock_end - clock),
                            "us_per_record": (cpu_end - cpu) * 1e6 / max(_answered(load), 1)})
                for load in (sequential, concurrent):
                    answered += _answered(load)
                    failed, differing = judge(spec, load)
                    errors, wrong = errors + failed, wrong + differing
                answered += WARMUP_REQUESTS  # sequential_load's warm-up
                slices[mode].append({
                    **{f"seq_{k}": v for k, v in
                       _percentiles(sequential, SEQUENTIAL_PERCENTILES).items()},
                    **{f"clients_{k}": v for k, v in _percentiles(concurrent, (50, 99)).items()},
                    "clients_rps": _answered(concurrent) / concurrent.seconds,
                })
        stored = _caught_up(database, before, answered)
    keys = list(slices[RUNNING][0])
    return {
        "framework": framework, "clients": clients, "slices": slices,
        "medians": {mode: {k: float(np.median([s[k] for s in rows])) for k in keys}
                    for mode, rows in slices.items()},
        "running_vs_paused": {k: float(np.median([r[k] / p[k] for r, p in
                                                  zip(slices[RUNNING], slices[PAUSED])]))
                              for k in keys},
        "loader_cpu": {kind: {k: float(np.median([m[k] for m in rows])) for k in rows[0]}
                       for kind, rows in loader_cpu.items()},
        "answered": answered, "stored": stored, "errors": errors, "wrong": wrong,
    }


def _cpu_and_clock(process: psutil.Process) -> tuple[float, float]:
    """The process's CPU seconds so far (user and system), and the clock now."""
    times = process.cpu_times()
    return times.user + times.system, time.perf_counter()


def report(results: dict[str, Any]) -> str:
    keys = list(results["running_vs_paused"])
    rounds = len(results["slices"][RUNNING])
    lines = [f"{results['framework']}, one worker, {rounds} rounds; sequential latency, then "
             f"{results['clients']} clients (ms; throughput in requests/s)", "",
             f"{'loader':<18}" + "".join(f"{k:>15}" for k in keys)]
    for mode, row in results["medians"].items():
        lines.append(f"{mode:<18}" + "".join(f"{row[k]:>15.2f}" for k in keys))
    lines.append(f"{'running / paused':<18}"
                 + "".join(f"{results['running_vs_paused'][k]:>14.2f}x" for k in keys))
    lines.append("")
    for kind, figures in results["loader_cpu"].items():
        lines.append(f"the loader running, {kind} slices: {figures['share']:.1%} of a core, "
                     f"{figures['us_per_record']:.0f} us of CPU a record (medians)")
    lines += ["", f"stored {results['stored']} of {results['answered']} answered requests; "
                  f"errors {results['errors']}, wrong answers {results['wrong']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True,
                        help="a trained project: the model the service loads")
    parser.add_argument("--config", type=Path, default=None,
                        help="default: the root's project_config.yaml")
    parser.add_argument("--framework", choices=("fastapi", "flask"), default="fastapi")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=1500, help="sequential, a slice")
    parser.add_argument("--seconds", type=float, default=3.0, help="of concurrent load, a slice")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    results = measure((args.config or root / "project_config.yaml").resolve(), root,
                      framework=args.framework, rounds=args.rounds, requests=args.requests,
                      seconds=args.seconds, clients=args.clients)
    print(report(results))
    return 0 if results["stored"] == results["answered"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
