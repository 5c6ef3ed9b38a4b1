"""Served latency of this checkout against another git revision of it, requests interleaved.

    python executables/benchmark_revisions.py --against REV --root DIR [--config FILE]
        [--framework fastapi|flask] [--requests N] [--rounds N] [--skip-mlflow]
        [--clients N [--slices N] [--slice-seconds S]]

Developer tooling: did a change move the served latency, its tail above all? Two benchmark
runs, before and after, are minutes apart on a shared machine, and its noise moves a p99 more
than most changes do. This starts, on one trained project (`--root`, holding a registered
champion, e.g. a benchmark's `--root`), the service of this checkout, the service of REV (its
tree exported with `git archive` to a temporary folder and run with this environment's Python,
so REV must run on today's packages) and `mlflow models serve`, each on one worker; then one
client sends each held-out row to every server in turn, the order changed each row so that
each server follows each other one equally often (`server_orders`), and a moment of machine
noise falls on all of them alike. Per round: p50, p90, p99, p99.9 and max of
each server and the ratios within the round; it prints the medians over rounds, and the
answers that differ from the in-process batch prediction (wrong). Writes nothing but the
services' own outputs and logs under the root.

With `--clients N` (N > 1) a round is under load instead: N connections send back to back to
one server at a time for a slice (`--slice-seconds`), each server in turn in the same balanced
orders, `--slices` times; the figures then include the throughput (answers per second). The
tail under load is where a service's own background work (a log writer's batches) shows.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import subprocess  # git, and the servers it measures  # nosec B404
import sys
import tarfile
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from executables.benchmark import (  # noqa: E402
    WARMUP_REQUESTS,
    Connection,
    Load,
    ServerSpec,
    concurrent_load,
    held_out_rows,
    judge,
    launcher_spec,
    server_specs,
    serving,
    timed_post,
)
from ml_project.config import PROJECT_ROOT, load_config  # noqa: E402
from ml_project.predict import PredictionService  # noqa: E402

logger = logging.getLogger(__name__)

THIS, AGAINST, MLFLOW = "this", "against", "mlflow"
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p99.9_ms": 99.9, "max_ms": 100.0}


def _git(*args: str) -> str:
    found = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           check=False)  # fixed argv  # nosec B603 B607
    if found.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {found.stderr.strip() or 'failed'}")
    return found.stdout.strip()


def export_revision(revision: str, destination: Path) -> str:
    """REV's tracked files in `destination`; returns its commit. Only the tree, never the
    repository: the export cannot change this checkout."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=PROJECT_ROOT,
                             capture_output=True, check=True)  # fixed argv  # nosec B603 B607
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tree:
        tree.extractall(destination, filter="data")  # no link or path out of the folder
    return commit


def server_orders(specs: Sequence[ServerSpec]) -> list[tuple[ServerSpec, ...]]:
    """The orders the rows take, one after another, so that each server follows each other
    one exactly once per cycle, across rows too, and never itself: row r (1 .. n-1) takes the
    servers at positions 0, r, 2r, ... modulo n, which holds for a prime number of servers
    (this tool runs two or three). A request just after mlflow's is slower (its threads still
    hold the cores): the rotation this replaced (A B M, B M A, M A B) put A after mlflow twice
    as often as B, and A looked 9% slower than B at p50."""
    count = len(specs)
    if count > 1 and any(count % divisor == 0 for divisor in range(2, count)):
        raise ValueError(f"{count} servers: the orders are balanced for a prime number only")
    return [tuple(specs[(step * turn) % count] for turn in range(count))
            for step in range(1, max(count, 2))]


def interleaved_under_load(specs: Sequence[ServerSpec], clients: int, seconds: float,
                           slices: int, offset: int) -> dict[str, Load]:
    """`clients` connections at once to one server at a time for `seconds`, the servers in
    the orders of `server_orders`, `slices` times over."""
    loads = {spec.name: Load() for spec in specs}
    orders = server_orders(specs)
    for index in range(slices):
        for spec in orders[index % len(orders)]:
            load = concurrent_load(spec, clients, seconds, offset + index * clients)
            loads[spec.name].merge(load)
            loads[spec.name].seconds += load.seconds
    return loads


async def interleaved(specs: Sequence[ServerSpec], rows: Sequence[int]) -> dict[str, Load]:
    """One client, one keep-alive connection per server: each row to every server in turn,
    in the orders of `server_orders`, taken in turn row by row."""
    connections = {spec.name: Connection(spec.port) for spec in specs}
    loads = {spec.name: Load() for spec in specs}
    orders = server_orders(specs)
    for position, row in enumerate(rows):
        for spec in orders[position % len(orders)]:
            await timed_post(spec, connections[spec.name], row, loads[spec.name])
    for connection in connections.values():
        await connection.close()
    return loads


def _round_figures(spec: ServerSpec, load: Load) -> dict[str, float]:
    """Latency percentiles in ms; requests sent, errors (no answer or not a 200) and wrong
    answers."""
    values = np.percentile(np.array(load.latencies) * 1000, list(PERCENTILES.values()))
    errors, wrong = judge(spec, load)
    throughput = {"rps": len(load.answers) / load.seconds} if load.seconds else {}
    return {**dict(zip(PERCENTILES, (float(v) for v in values))), **throughput,
            "requests": float(len(load.answers) + load.errors), "errors": float(errors),
            "wrong": float(wrong)}


def measure(config_file: Path, root: Path, against: str, *, framework: str = "fastapi",
            requests: int = 2000, rounds: int = 5, mlflow: bool = True, clients: int = 1,
            slices: int = 10, slice_seconds: float = 1.0) -> dict[str, Any]:
    """Start the servers, run the rounds (sequential, or under `clients` connections at once:
    see the module's docstring), stop the servers; returns every round's figures and the
    medians of the figures and of the per-round ratios."""
    config = load_config("prediction", "historic", "local", config_file=config_file, root=root)
    service = PredictionService.from_config(config)
    held_out = held_out_rows(service, config)
    probe_row = next(i for i, r in enumerate(held_out.records) if None not in r.values())
    log_dir = root / "benchmark_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="revision-") as scratch, ExitStack() as running:
        tree = Path(scratch)
        commit = export_revision(against, tree)
        if _git("diff", "--name-only", commit, "--", "Pipfile.lock"):
            logger.warning("%s's Pipfile.lock differs from this checkout's: it runs on this "
                           "environment's packages", against)
        specs = [launcher_spec(THIS, PROJECT_ROOT, framework, config, config_file, held_out),
                 launcher_spec(AGAINST, tree, framework, config, config_file, held_out)]
        if mlflow:
            specs += [server_specs([MLFLOW], config, config_file, held_out)[MLFLOW]]
        for spec in specs:
            logger.info("Starting %s", spec.name)
            process, _ = running.enter_context(
                serving(spec, probe_row, log_dir / f"revisions_{spec.name}.log"))
            if Path(psutil.Process(process.pid).cwd()) != spec.cwd:
                raise RuntimeError(f"{spec.name} does not run in {spec.cwd}")
        count = len(held_out.records)
        asyncio.run(interleaved(specs, range(WARMUP_REQUESTS)))
        measured = []
        for number in range(rounds):
            if clients > 1:
                logger.info("Round %d of %d: %d slices of %.1f s of %d clients to each server",
                            number + 1, rounds, slices, slice_seconds, clients)
                loads = interleaved_under_load(specs, clients, slice_seconds, slices,
                                               number * slices * clients)
            else:
                logger.info("Round %d of %d: %d requests to each server", number + 1, rounds,
                            requests)
                rows = [(number * requests + i) % count for i in range(requests)]
                loads = asyncio.run(interleaved(specs, rows))
            measured.append({spec.name: _round_figures(spec, loads[spec.name]) for spec in specs})
    load = ({"clients": clients, "slices": slices, "slice_seconds": slice_seconds}
            if clients > 1 else {"requests_per_round": requests})
    return {"against": against, "against_commit": commit, "this_commit": _this_commit(),
            "framework": framework, **load, "rounds": measured,
            "medians": _medians(measured), "ratios": _ratios(measured)}


def _this_commit() -> str:
    commit = _git("rev-parse", "HEAD")
    return commit + ("+changes" if _git("status", "--porcelain", "--untracked-files=no") else "")


def _medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {name: {key: (float(sum(r[name][key] for r in rounds))
                         if key in ("requests", "errors", "wrong")
                         else float(np.median([r[name][key] for r in rounds])))
                   for key in rounds[0][name]}
            for name in rounds[0]}


def _ratios(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Medians of the per-round ratios: a slower round slows every server in it alike."""
    pairs = [(THIS, AGAINST)] + [(name, MLFLOW) for name in (THIS, AGAINST)
                                 if MLFLOW in rounds[0]]
    keys = [*PERCENTILES, *(["rps"] if "rps" in rounds[0][THIS] else [])]
    return {f"{ours}/{theirs}": {key: float(np.median([r[ours][key] / r[theirs][key]
                                                       for r in rounds]))
                                 for key in keys}
            for ours, theirs in pairs}


def report(results: dict[str, Any]) -> str:
    commit, _, changes = results["this_commit"].partition("+")
    names = {THIS: f"this checkout ({commit[:12]}{'+' + changes if changes else ''})",
             AGAINST: f"{results['against']} ({results['against_commit'][:12]})",
             MLFLOW: "mlflow models serve"}
    rounds = len(results["rounds"])
    if "clients" in results:
        load = (f"{results['slices']} slices of {results['slice_seconds']:g} s of "
                f"{results['clients']} clients to each server")
    else:
        load = f"{results['requests_per_round']} requests to each server"
    under_load = "clients" in results
    rps = f"{'rps':>9}" if under_load else ""
    lines = [f"{results['framework']}, one worker; {rounds} rounds of {load}, interleaved "
             "(medians over rounds, ms)", "",
             f"{'server':<40}" + "".join(f"{key[:-3]:>9}" for key in PERCENTILES) + rps
             + f"{'errors':>8}{'wrong':>7}"]
    for name, row in results["medians"].items():
        lines.append(f"{names[name]:<40}" + "".join(f"{row[key]:>9.2f}" for key in PERCENTILES)
                     + (f"{row['rps']:>9.0f}" if under_load else "")
                     + f"{row['errors']:>8.0f}{row['wrong']:>7.0f}")
    lines += ["", "ratios (medians of the per-round ratios)"]
    for pair, row in results["ratios"].items():
        ours, theirs = pair.split("/")
        label = f"{ours} / {theirs}".replace(THIS, "this").replace(AGAINST, results["against"])
        lines.append(f"{label:<40}" + "".join(f"{row[key]:>8.2f}x" for key in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True,
                        help="a git revision of this repository: commit, tag or branch")
    parser.add_argument("--root", type=Path, required=True,
                        help="a trained project: the model both services load")
    parser.add_argument("--config", type=Path, default=None,
                        help="default: the root's project_config.yaml")
    parser.add_argument("--framework", choices=("fastapi", "flask"), default="fastapi")
    parser.add_argument("--requests", type=int, default=2000, help="to each server, a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--clients", type=int, default=1,
                        help="connections at once; above 1, rounds are slices under load")
    parser.add_argument("--slices", type=int, default=10, help="under load: slices a round")
    parser.add_argument("--slice-seconds", type=float, default=1.0,
                        help="under load: seconds of each slice, each server")
    parser.add_argument("--json", type=Path, default=None, help="also write every round here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    root = args.root.resolve()
    results = measure((args.config or root / "project_config.yaml").resolve(), root,
                      args.against, framework=args.framework, requests=args.requests,
                      rounds=args.rounds, mlflow=not args.skip_mlflow, clients=args.clients,
                      slices=args.slices, slice_seconds=args.slice_seconds)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
