"""The benchmark harness (executables/benchmark.py): its arithmetic, and a smoke run end to end.

No test asserts a time: the machine is shared. The smoke run leaves out `mlflow models serve`
(its cold start alone is ~5 s a round); every other measurement runs, on real servers, at the
smallest sizes.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sqlite3
import subprocess  # git, as the script runs it  # nosec B404
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from executables import benchmark, benchmark_log_cost, benchmark_revisions, benchmark_shadow
from executables.benchmark import (
    WORKER_COUNTS,
    evaluate_targets,
    paired_ratios,
    summarise,
    workers_ratios,
)
from ml_project.config import PROJECT_ROOT
from ml_project.prediction_log.table import PREDICTIONS
from tests.conftest import write_project


def _round(ours_p50: float, mlflow_p50: float) -> dict[str, dict[str, float]]:
    measures = {"p99_ms": 1.0, "throughput_rps": 100.0, "cold_start_s": 1.0, "memory_mb": 100.0,
                "rss_mb": 150.0, "requests": 10, "errors": 0, "wrong": 0}
    return {"fastapi": {"p50_ms": ours_p50, **measures},
            "mlflow": {"p50_ms": mlflow_p50, **measures, "wrong": 2}}


def test_paired_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians() -> None:
    # The machine slowed down in the last two rounds, for both servers alike.
    rounds = [_round(1.0, 4.0), _round(3.0, 12.0), _round(3.0, 12.0)]

    ratios = paired_ratios(rounds, "fastapi", "mlflow")

    assert ratios["p50"] == pytest.approx(0.25)
    assert ratios["throughput"] == pytest.approx(1.0)


def test_summarise_takes_medians_and_sums_counts() -> None:
    summary = summarise([_round(1.0, 4.0), _round(2.0, 5.0), _round(9.0, 6.0)])

    assert summary["fastapi"]["p50_ms"] == 2.0
    assert summary["mlflow"]["wrong"] == 6 and summary["fastapi"]["requests"] == 30


def test_evaluate_targets_reports_unmeasured_ratios_as_none() -> None:
    results = {
        "served": {"summary": summarise([_round(1.0, 4.0)])},  # mlflow left out: no ratios
        "in_process": {"single_row": {"wrong": 0, "core_vs_bare": 1.2},
                       "batch": {"path_vs_bare": 0.2, "validation_rows_per_s": 400_000}},
        "use_cases": {"peak_10x_vs_1x": 1.01},
    }

    met = {t["name"]: t["met"] for t in evaluate_targets(results)}

    assert met["FastAPI: served p50 latency vs mlflow models serve"] is None
    assert met["FastAPI: wrong answers"] is True
    assert met["single row through the prediction core vs bare model"] is True
    assert met["batch with validation vs bare predict_proba (throughput)"] is False  # < 0.25x
    assert met["validation with pandera, rows/s (production rows as received)"] is True
    assert met["flat memory: peak on 10x chunk file vs 1x chunk file"] is True


def test_workers_ratio_is_the_median_of_per_round_ratios_and_is_a_target() -> None:
    def workers_round(fastapi: tuple[float, float], flask: tuple[float, float]
                      ) -> dict[str, dict[str, float]]:
        return {f"{name}_{n}": {"throughput_rps": value, "memory_mb": 100.0, "requests": 10,
                                "errors": 0, "wrong": 0}
                for name, values in (("fastapi", fastapi), ("flask", flask))
                for n, value in zip(WORKER_COUNTS, values)}
    # The machine slowed down in the second round, for both worker counts alike.
    rounds = [workers_round((100, 180), (100, 140)), workers_round((50, 90), (50, 70)),
              workers_round((100, 170), (100, 150))]
    results: dict[str, Any] = {
        "served": {"summary": {}},
        "workers": {"summary": summarise(rounds), "ratios": workers_ratios(rounds)},
        "in_process": {"single_row": {"wrong": 0, "core_vs_bare": 1.2},
                       "batch": {"path_vs_bare": 0.2, "validation_rows_per_s": 400_000}},
        "use_cases": {"peak_10x_vs_1x": 1.01},
    }

    met = {t["name"]: t["met"] for t in evaluate_targets(results)}

    assert results["workers"]["ratios"] == pytest.approx({"fastapi": 1.8, "flask": 1.4})
    assert met["FastAPI: throughput, 8 clients, 2 workers vs 1"] is True
    assert met["Flask: throughput, 8 clients, 2 workers vs 1"] is False  # < 1.5x
    assert met["Flask on workers: wrong answers"] is True


def _tables(markdown: str) -> list[list[list[str]]]:
    """Markdown tables as lists of rows of cells."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip("|").split("|")])
        previous = line
    return tables


def test_in_process_smoke_run_on_a_trained_project_takes_seconds(
    trained_project: Path, tmp_path: Path
) -> None:
    """CI's check of the harness: the prediction core's measurements at the smallest sizes on
    the session's trained project (no modelling, no servers, no use-case runs)."""
    root = tmp_path / "root"
    shutil.copytree(trained_project, root)
    output = tmp_path / "benchmarks"

    code = benchmark.main(["--smoke", "--reuse-model", "--in-process-only", "--root", str(root),
                           "--config", str(root / "project_config.yaml"), "--output", str(output)])

    assert code == 0
    results = json.loads((output / "results.json").read_text())
    single, batch = results["in_process"]["single_row"], results["in_process"]["batch"]
    assert single["wrong"] == 0 and single["core_ms"] > 0 and single["bare_ms"] > 0
    assert batch["path_rows_per_s"] > 0 and batch["validation_rows_per_s"] > 0
    assert results["served"]["summary"] == {} and results["use_cases"]["modelling_s"] is None
    met = {t["name"]: t["met"] for t in results["targets"]}
    assert met["in-process predict_instance: wrong answers"] is True
    assert met["flat memory: peak on 10x chunk file vs 1x chunk file"] is None  # not measured
    assert "| in process |" in (output / "results.md").read_text()


@pytest.mark.slow
def test_the_shadow_benchmark_measures_both_processes_cpu_per_instance(
    challenged_project: Path, tmp_path: Path
) -> None:
    """executables/benchmark_shadow.py on a project with a champion and a challenger: every
    answered instance scored in shadow, and each process's CPU measured."""
    root = tmp_path / "root"
    shutil.copytree(challenged_project, root)

    figures = benchmark_shadow.measure(root / "project_config.yaml", root, 120, 2)

    assert figures["requests"] == 120 and figures["shadow_skipped"] == 0
    assert figures["worker_cpu_ms_per_request"] > 0 and figures["shadow_cpu_ms_per_instance"] > 0


def _git_head() -> str | None:
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                           text=True, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def test_a_revision_is_exported_as_its_tracked_tree(tmp_path: Path) -> None:
    head = _git_head()
    if head is None:
        pytest.skip("not a git checkout")

    commit = benchmark_revisions.export_revision("HEAD", tmp_path)

    assert commit == head
    tracked = subprocess.run(["git", "show", "HEAD:ml_project/serving/launcher.py"],
                             cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    assert (tmp_path / "ml_project" / "serving" / "launcher.py").read_bytes() == tracked
    assert not (tmp_path / ".git").exists()


def test_a_revision_that_is_no_commit_is_refused_in_one_line(tmp_path: Path) -> None:
    if _git_head() is None:
        pytest.skip("not a git checkout")

    with pytest.raises(SystemExit, match="no-such-revision"):
        benchmark_revisions.export_revision("no-such-revision", tmp_path)

    assert not any(tmp_path.iterdir())


def test_the_revisions_benchmark_puts_each_server_after_each_other_equally_often() -> None:
    """Across rows too: any two servers see the same predecessors (a third server as often,
    each other as often, themselves as often). A rotation put the first server after the last
    (mlflow) twice as often as the second, and a request after mlflow's is slower."""
    for count in (2, 3, 5):
        specs = [benchmark.ServerSpec(str(i), [], {}, 0, [], lambda row, body: True)
                 for i in range(count)]
        sequence = [spec.name for order in benchmark_revisions.server_orders(specs)
                    for spec in order]
        cycle = [*sequence, sequence[0]]  # the orders repeat: the last row meets the first
        follows = Counter(zip(cycle, cycle[1:]))
        names = [spec.name for spec in specs]
        for first, second in itertools.combinations(names, 2):
            assert follows[first, first] == follows[second, second]
            assert follows[first, second] == follows[second, first]
            for third in set(names) - {first, second}:
                assert follows[third, first] == follows[third, second]
        assert all(sorted(spec.name for spec in order) == names  # each row to every server
                   for order in benchmark_revisions.server_orders(specs))
    with pytest.raises(ValueError, match="prime"):
        benchmark_revisions.server_orders([specs[0]] * 4)


@pytest.mark.slow
@pytest.mark.parametrize("clients", [1, 3])
def test_the_revisions_benchmark_serves_both_trees_on_one_model_requests_interleaved(
    trained_project: Path, tmp_path: Path, clients: int
) -> None:
    """executables/benchmark_revisions.py against HEAD: this checkout's service and the
    exported tree's, each from its own folder, answer every request right, round by round;
    one request at a time, or (clients > 1) in slices under load."""
    if _git_head() is None:
        pytest.skip("not a git checkout")
    root = tmp_path / "root"
    shutil.copytree(trained_project, root)

    results = benchmark_revisions.measure(root / "project_config.yaml", root, "HEAD",
                                          requests=25, rounds=2, mlflow=False, clients=clients,
                                          slices=3, slice_seconds=0.3)

    assert results["against_commit"] == _git_head() and len(results["rounds"]) == 2
    for name in ("this", "against"):
        served = results["medians"][name]
        assert served["errors"] == 0 and served["wrong"] == 0
        assert 0 < served["p50_ms"] <= served["p99_ms"] <= served["max_ms"]
        if clients == 1:
            assert served["requests"] == 50 and "rps" not in served
        else:  # 3 slices a round, each of 3 clients for 0.3 s: throughput measured
            assert served["requests"] > 2 * 3 * 3 and served["rps"] > 0
        # Each service logged to a database of its own: neither waited on the other's. Both
        # hold every measured request, besides the warm-up and the cold start's probes.
        database = root / "output" / f"benchmark_{name}" / benchmark.LOG_DATABASE
        with closing(sqlite3.connect(database)) as connection:
            (stored,), = connection.execute(f"SELECT COUNT(*) FROM {PREDICTIONS.name}")
        assert stored >= served["requests"] + benchmark.WARMUP_REQUESTS
    assert set(results["ratios"]) == {"this/against"}
    assert ("rps" in results["ratios"]["this/against"]) == (clients > 1)
    text = benchmark_revisions.report(results)
    assert "this checkout" in text and "HEAD (" in text and "this / HEAD" in text
    assert (f"of {clients} clients to each server" in text) == (clients > 1)


@pytest.mark.slow
def test_the_log_cost_benchmark_pauses_the_loader_and_every_answer_is_stored_after(
    trained_project: Path, tmp_path: Path
) -> None:
    """executables/benchmark_log_cost.py: slices with the loader running and paused, and the
    database holds every answered request once the loader has resumed, run after run."""
    root = tmp_path / "root"
    shutil.copytree(trained_project, root)

    results = benchmark_log_cost.measure(root / "project_config.yaml", root, rounds=2,
                                         requests=40, seconds=0.5, clients=2)

    assert results["errors"] == 0 and results["wrong"] == 0
    assert results["stored"] == results["answered"] > 2 * 2 * 40
    for mode in ("running", "paused"):
        assert len(results["slices"][mode]) == 2
        assert all(value > 0 for value in results["medians"][mode].values())
    assert set(results["running_vs_paused"]) == set(results["medians"]["paused"])
    assert set(results["loader_cpu"]) == {"sequential", "clients"}
    assert all(figures["share"] >= 0 for figures in results["loader_cpu"].values())
    text = benchmark_log_cost.report(results)
    assert "stored" in text and "of a core" in text and "seq_p99.9_ms" in text
    # Again on the same root: the records of the run before are not counted as this run's.
    again = benchmark_log_cost.measure(root / "project_config.yaml", root, rounds=1,
                                       requests=20, seconds=0.3, clients=2)
    assert again["stored"] == again["answered"] < results["answered"]


@pytest.mark.benchmark_full
def test_smoke_run_writes_results_and_tables(tmp_path: Path) -> None:
    """Smoke mode without mlflow: modelling, our two servers (on 1 and 2 workers too),
    in-process and use-case memory.
    A minute or two: `pytest -m benchmark_full` runs it (CI runs the in-process smoke above)."""
    output = tmp_path / "benchmarks"
    config_file = write_project(tmp_path / "source")  # the tests' table, never the project's

    code = benchmark.main(["--smoke", "--skip-mlflow", "--config", str(config_file),
                           "--root", str(tmp_path / "root"), "--output", str(output)])

    assert code == 0
    results = json.loads((output / "results.json").read_text())
    assert results["smoke"] is True and results["settings"]["servers"] == ["fastapi", "flask"]
    assert results["settings"]["candidates"] == 1
    for name in ("fastapi", "flask"):
        served = results["served"]["summary"][name]
        assert served["requests"] > 0 and served["errors"] == 0 and served["wrong"] == 0
        assert all(served[key] > 0 for key in
                   ("p50_ms", "p99_ms", "throughput_rps", "cold_start_s", "memory_mb", "rss_mb"))
        assert served["rss_mb"] >= served["memory_mb"]  # PSS never exceeds RSS
    assert "ratios_vs_mlflow" not in results["served"]
    single, batch = results["in_process"]["single_row"], results["in_process"]["batch"]
    assert single["wrong"] == 0 and single["core_ms"] > 0 and single["bare_ms"] > 0
    assert batch["rows"] == benchmark.SMOKE.batch_rows and batch["path_rows_per_s"] > 0
    use_cases = results["use_cases"]
    assert use_cases["modelling_s"] > 0 and use_cases["rows_10x"] == 10 * use_cases["rows_1x"]
    assert math.isfinite(use_cases["peak_10x_vs_1x"])
    met = {t["name"]: t["met"] for t in results["targets"]}
    assert met["FastAPI: wrong answers"] and met["Flask: wrong answers"]
    assert met["FastAPI: served p50 latency vs mlflow models serve"] is None  # not measured
    for name in ("fastapi", "flask"):
        for workers in WORKER_COUNTS:
            served = results["workers"]["summary"][f"{name}_{workers}"]
            assert served["requests"] > 0 and served["errors"] == 0 and served["wrong"] == 0
            assert served["throughput_rps"] > 0 and served["memory_mb"] > 0
        assert results["workers"]["ratios"][name] > 0

    markdown = (output / "results.md").read_text()
    tables = _tables(markdown)
    assert [table[0][0] for table in tables] == [
        "served, single instance", "worker processes (1, 2), 2 clients", "in process",
        "use cases", "target"]
    for table in tables:
        assert {len(row) for row in table} == {len(table[0])}, table[0][0]
    assert tables[0][0][1:] == ["FastAPI", "Flask"]
    assert len(tables[4]) == 2 + len(results["targets"])
