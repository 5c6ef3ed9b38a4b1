"""Benchmark batch scoring: the local batch use case vs the Spark use case, rows per second.

    pipenv run python executables/benchmark_spark.py [--rows 1000000 5000000] [--rounds 1]
        [--master local[2]] [--root DIR]

Developer tooling (needs the `spark` Pipfile category). The rows are the production data of the
project in `--root` (default: this project; without an exported champion, one is trained
first, in the temporary folder), as received (with
its invalid rows), repeated with fresh ids up to each size, written as one CSV in a temporary
folder. Each round runs both use cases back to back, each as a user runs it (a fresh process),
on the same file, scoring into the temporary folder: nothing is written to the project. Reports
per size the median over rounds of the rows/s each use case reports for its scoring (file read
to files written) and of the wall time of its whole process (Python and, for Spark, the JVM
and session start included). Both outputs are checked to hold the same number of rows.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess  # runs the two use cases as a user does  # nosec B404
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from ml_project.config import PROJECT_ROOT, load_config

USE_CASES = {"local": "use_cases/predicting_historic_data_local.py",
             "spark": "use_cases/predicting_historic_data_spark.py"}
RATE = re.compile(r"\(([\d,]+) rows/s\)")


def work_config(root: Path, config_file: Path, work: Path) -> Path:
    """A copy of the project's config that reads the project's data and champion and writes to
    `work`; without an exported champion, the modelling use case first trains one in `work`."""
    config = load_config("prediction", "historic", "local", config_file=config_file, root=root)
    content = yaml.safe_load(config_file.read_text())
    champion = (config.model_artifacts_dir / "champion").is_dir()
    content["data"].update({key: config.resolve(value) for key, value in content["data"].items()
                            if key in ("historic", "production", "production_labels")})
    content.setdefault("paths", {}).update(
        model_artifacts=str(config.model_artifacts_dir if champion else work / "model_artifacts"),
        output=str(work / "output"))
    content.setdefault("tracking", {})["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    path = work / "project_config.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    if not champion:
        print(f"No champion in {config.model_artifacts_dir}: training one in {work}",
              file=sys.stderr)
        subprocess.run([sys.executable, "use_cases/modelling_historic_data_local.py",  # nosec
                        "--config", str(path), "--root", str(work)], cwd=PROJECT_ROOT,
                       capture_output=True, check=True)
    return path


def write_rows(root: Path, config_file: Path, rows: int, path: Path) -> None:
    """The production data as received, repeated with fresh ids up to `rows` rows, as CSV."""
    config = load_config("prediction", "production", "local", config_file=config_file, root=root)
    production = pd.read_csv(config.resolve(config.data.production), dtype=str)
    identifier = config.columns.id
    written = 0
    repeat = 0
    while written < rows:
        block = production.head(rows - written)
        block = block.assign(**{identifier: block[identifier] + f"-{repeat}"})
        block.to_csv(path, index=False, mode="a" if written else "w", header=not written)
        written += len(block)
        repeat += 1


def run(name: str, config_file: Path, work: Path, source: Path, extra: list[str]
        ) -> dict[str, float]:
    """One run of a use case in a fresh process: its reported rows/s and its wall time."""
    command = [sys.executable, USE_CASES[name], "--config", str(config_file), "--root", str(work),
               "--input", str(source), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,  # nosec
                            check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    found = RATE.search(result.stdout)
    if found is None:
        raise RuntimeError(f"{name} printed no rate:\n{result.stdout}")
    return {"rows_per_second": float(found.group(1).replace(",", "")), "wall_seconds": wall}


def output_rows(work: Path, name: str, stem: str) -> int:
    """Predictions plus quarantined rows the use case wrote."""
    total = 0
    for kind in ("predictions", "quarantine"):
        if name == "local":
            total += len(pd.read_csv(work / "output" / kind / f"{stem}_predictions.csv"))
        else:
            folder = work / "output" / kind / f"{stem}_predictions.parquet"
            total += sum(pq.ParquetFile(part).metadata.num_rows for part in folder.glob("*.parquet"))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT,
                        help="project with an exported champion (default: this project)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    config_file = root / "project_config.yaml"
    results: dict[int, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="benchmark_spark_") as folder:
        work = Path(folder)
        work_file = work_config(root, config_file, work)
        for rows in args.rows:
            source = work / f"rows_{rows}.csv"
            write_rows(root, config_file, rows, source)
            results[rows] = {name: [] for name in USE_CASES}
            for round_number in range(args.rounds):
                for name in USE_CASES:
                    extra = ["--master", args.master] if name == "spark" else []
                    measured = run(name, work_file, work, source, extra)
                    written = output_rows(work, name, source.stem)
                    if written != rows:
                        raise RuntimeError(f"{name} wrote {written} rows for {rows}")
                    results[rows][name].append(measured)
                    print(f"round {round_number + 1}, {rows:,} rows, {name}: "
                          f"{measured['rows_per_second']:,.0f} rows/s, "
                          f"{measured['wall_seconds']:.1f} s wall", file=sys.stderr)
            source.unlink()
    print(table(results, args.master))
    return 0


def table(results: dict[int, dict[str, list[dict[str, float]]]], master: str) -> str:
    """The medians, side by side, as a Markdown table."""
    def median(runs: list[dict[str, float]], key: str) -> Any:
        return statistics.median(run[key] for run in runs)

    lines = [f"| rows | local rows/s | Spark {master} rows/s | Spark / local | "
             "local wall (s) | Spark wall (s) |", "|---:|---:|---:|---:|---:|---:|"]
    for rows, runs in results.items():
        local, spark = (median(runs[n], "rows_per_second") for n in ("local", "spark"))
        lines.append(f"| {rows:,} | {local:,.0f} | {spark:,.0f} | {spark / local:.2f}x | "
                     f"{median(runs['local'], 'wall_seconds'):.1f} | "
                     f"{median(runs['spark'], 'wall_seconds'):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
