"""What the challenger in shadow costs: CPU per instance of the shadow and of the worker.

    python executables/benchmark_shadow.py --config FILE [--root DIR] [--requests N]
                                           [--clients N]

Developer tooling. Starts the service (FastAPI, one worker) as the launcher does, with
`prediction.shadow: challenger` on whatever the config says otherwise (the project must hold a
champion and a challenger), sends `--requests` single-instance requests from `--clients`
keep-alive clients (production instances, cycled), waits until the shadow has scored every one,
and prints the CPU time each process took per request (user + system, from the kernel: unlike a
latency, it does not move with what else the machine runs), the throughput, and what the shadow
skipped. Writes nothing but the service's own outputs (its log, the prediction log) under the
root.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import socket
import subprocess  # starts the service it measures  # nosec B404
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
import yaml

from ml_project.config import PROJECT_ROOT, load_config
from ml_project.ingest import stream_production_instances
from ml_project.prediction_log import journal
from ml_project.serving.shadow import read_status

READY_SECONDS = 120


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def measure(config_file: Path, root: Path, requests_sent: int, clients: int) -> dict[str, float]:
    """Start the service with the shadow on, load it, and return the figures."""
    content = yaml.safe_load(config_file.read_text())
    content.setdefault("prediction", {})["shadow"] = "challenger"
    with tempfile.TemporaryDirectory() as scratch:
        shadowed = Path(scratch) / "project_config.yaml"
        shadowed.write_text(yaml.safe_dump(content, sort_keys=False))
        config = load_config("prediction", "production", "local", config_file=shadowed, root=root)
        records = list(stream_production_instances(
            Path(config.resolve(config.data.production)), config, limit=2000))
        port = _free_port()
        server = subprocess.Popen(  # fixed argv: this Python, the launcher  # nosec B603
            [sys.executable, "-m", "ml_project.serving.launcher", "fastapi", "--port", str(port),
             "--workers", "1", "--config", str(shadowed), "--root", str(root)],
            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            return _load(server, f"http://127.0.0.1:{port}", config.output_dir / journal.FOLDER,
                         records, requests_sent, clients)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)


def _load(server: subprocess.Popen[bytes], base: str, directory: Path,
          records: list[dict[str, object]], requests_sent: int, clients: int
          ) -> dict[str, float]:
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            if requests.get(f"{base}/ready", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the service did not start: see its log in output/logs/")
        time.sleep(0.2)
    status = read_status(directory)
    while status is None or status.challenger_version is None:
        if status is not None and status.error or time.monotonic() > deadline:
            raise SystemExit(f"no shadow: {status.error if status else 'not started'}")
        time.sleep(0.2)
        status = read_status(directory)
    shadow, worker = psutil.Process(status.pid), psutil.Process(server.pid)
    before = _cpu_seconds(worker), _cpu_seconds(shadow), status.scored
    cycle = itertools.cycle(records)
    lock = threading.Lock()
    answered = [0]  # 200s: the instances the shadow scores (refusals it leaves alone)

    def client(count: int) -> None:
        with requests.Session() as session:
            for _ in range(count):
                with lock:
                    record = next(cycle)
                reply = session.post(f"{base}/predict", data=json.dumps(record),
                                     headers={"content-type": "application/json"}, timeout=30)
                with lock:
                    answered[0] += reply.status_code == 200

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(requests_sent // clients,))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    sent = requests_sent // clients * clients
    while (now := read_status(directory)) is not None and (
            now.scored + now.skipped + now.invalid + now.failed - before[2] < answered[0]):
        time.sleep(0.1)
    final = read_status(directory)
    if final is None:
        raise SystemExit("the shadow process ended during the load")
    worker_cpu, shadow_cpu = _cpu_seconds(worker) - before[0], _cpu_seconds(shadow) - before[1]
    return {"requests": sent, "seconds": elapsed, "requests_per_second": sent / elapsed,
            "worker_cpu_ms_per_request": worker_cpu / sent * 1000,
            "shadow_cpu_ms_per_instance": shadow_cpu / max(answered[0], 1) * 1000,
            "shadow_share_of_worker_cpu": shadow_cpu / worker_cpu,
            "shadow_skipped": final.skipped, "shadow_failed": final.failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "project_config.yaml")
    parser.add_argument("--root", type=Path, default=None,
                        help="the project root (default: the config file's folder)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    config_file = args.config.resolve()
    figures = measure(config_file, (args.root or config_file.parent).resolve(),
                      args.requests, args.clients)
    print(f"{figures['requests']:.0f} requests in {figures['seconds']:.1f} s "
          f"({figures['requests_per_second']:.0f} req/s, {args.clients} clients): worker CPU "
          f"{figures['worker_cpu_ms_per_request']:.3f} ms per request, shadow CPU "
          f"{figures['shadow_cpu_ms_per_instance']:.3f} ms per instance "
          f"({figures['shadow_share_of_worker_cpu']:.1%} of the worker's); skipped "
          f"{figures['shadow_skipped']:.0f}, failed {figures['shadow_failed']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
