"""How many records a second the prediction log stores when several processes write it at once,
as replicas do: the figures of documentation/scaling.md.

    pipenv run python executables/prediction_log_throughput.py --url sqlite:////tmp/log.db
    pipenv run python executables/prediction_log_throughput.py --url postgresql://user@host/db

Each process, with a journal of its own (as a replica on its own machine has), opens the log
(the table created beforehand), waits for the others, appends `--records` records one request at
a time (as the services do) while its loader stores them, then closes the log, which returns
after the loader's last pass. Throughput = all records / the slowest process's time; the
journal's rate (the request path's cost) is the appends alone. Records still waiting in a
journal at the end (the database locked or down) are reported: a fair run has none.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord
from ml_project.prediction_log.table import redacted

INPUT: dict[str, Any] = {  # a request of the shipped example's size
    "customer_id": "C000001", "event_time": "2026-01-01T00:16:17", "tenure_months": 36,
    "monthly_charges": 79.9, "total_charges": 2760.56, "support_calls": 5, "data_usage_gb": 45.9,
    "age": 42, "contract": "month-to-month", "payment_method": "bank-transfer",
    "internet_service": "dsl", "region": "west",
}


def write(url: str, journals: str, name: str, records: int, start: Barrier,
          results: multiprocessing.Queue[tuple[float, float, int]]) -> None:
    log = PredictionLog(url, Path(journals) / name)
    log.count()  # the table exists before the clock starts
    start.wait()
    started = time.perf_counter()
    for i in range(records):
        log.append([LogRecord(request_id=f"{name}-{i}-{time.time_ns()}", source="benchmark",
                              input=INPUT, model_version="1", prediction=1,
                              probabilities={"0": 0.25, "1": 0.75}, latency_ms=0.4)])
    appended = time.perf_counter() - started
    log.close()
    results.put((time.perf_counter() - started, appended, log.pending().records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the log's SQLAlchemy URL")
    parser.add_argument("--processes", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--records", type=int, default=20_000,
                        help="per process (default: %(default)s)")
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(args.processes)
    results: multiprocessing.Queue[tuple[float, float, int]] = context.Queue()
    with tempfile.TemporaryDirectory() as journals:
        workers = [context.Process(target=write, args=(args.url, journals, f"p{n}", args.records,
                                                       start, results))
                   for n in range(args.processes)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=3600) for _ in workers]
        for worker in workers:
            worker.join()
    slowest = max(seconds for seconds, _, _ in outcomes)
    appending = max(appended for _, appended, _ in outcomes)
    total = args.records * args.processes
    print(f"{redacted(args.url)}: {args.processes} processes stored {total} records in "
          f"{slowest:.2f} s: {total / slowest:,.0f} records/s; the journals took them at "
          f"{total / appending:,.0f} records/s ({sum(left for _, _, left in outcomes)} left "
          "waiting)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
