"""Prediction run on production data through the FastAPI service, locally: the real HTTP path.

    pipenv run python use_cases/predicting_production_data_local_fastapi.py [--limit N] [--rate R]

Uses the service answering at prediction.server_url if there is one, else starts it (the
launcher, in a subprocess on 127.0.0.1 and a free port) and waits for /ready. Then streams the
production sample to POST /predict, checks every answer against the in-process prediction core,
reports latency percentiles and stops the server it started. Invalid instances are expected:
the service rejects them (4xx) and they are counted, not failures. Exit code 1 if any request
failed or any answer differs from the in-process one.
"""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from ml_project.cli import add_stream_options, base_parser, start_run
from ml_project.config import Config
from ml_project.export import ArtifactError
from ml_project.ingest import stream_production_instances
from ml_project.predict import PredictionService
from ml_project.schemas import InvalidInstance
from ml_project.serving.client import Answer, PredictionClient, format_latencies

logger = logging.getLogger("predicting_production_fastapi")

LOCALHOST = "127.0.0.1"
LOCAL_HOSTS = (LOCALHOST, "localhost", "::1")


class ServiceError(RuntimeError):
    """The local service could not be started or did not become ready."""


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    add_stream_options(parser)
    parser.add_argument("--startup-timeout", type=float, default=60.0,
                        help="seconds to wait for the service's /ready (default: %(default)s)")
    args = parser.parse_args(argv)
    config, _ = start_run(
        parser, args, "prediction", "production", "local", "predicting_production_fastapi"
    )
    source = args.input.resolve() if args.input else Path(config.resolve(config.data.production))
    try:
        reference = PredictionService.from_config(config)  # what every answer must equal
    except ArtifactError as err:
        logger.error("%s", err)
        return 2

    latencies: list[float] = []
    rejected = failed = mismatched = 0
    try:
        with local_service(config, args) as server, closing(
            PredictionClient.from_config(config, base_url=server)
        ) as client:
            for record in stream_production_instances(source, config, limit=args.limit,
                                                      rate_per_second=args.rate):
                answer = client.predict(record)
                if answer.ok:
                    latencies.append(answer.latency_ms)
                elif answer.rejected:
                    rejected += 1
                else:
                    failed += 1
                    logger.error("Instance %s failed: %s", record.get(config.columns.id),
                                 answer.error)
                    continue
                difference = compare_with_core(answer, reference, record)
                if difference:
                    mismatched += 1
                    logger.error("Instance %s: %s", record.get(config.columns.id), difference)
    except ServiceError as err:
        logger.error("%s", err)
        return 2
    except (FileNotFoundError, ValueError) as err:
        logger.error("Cannot stream %s: %s", source, err)
        return 2

    sent = len(latencies) + rejected + failed
    print(f"\nStreamed {sent} instances over HTTP to {server} (model version "
          f"{reference.model_version}): {len(latencies)} predicted, {rejected} rejected as "
          f"invalid (expected), {failed} failed, {mismatched} differing from the core")
    print(f"  latency (HTTP round trip): {format_latencies(latencies)}")
    return 1 if failed or mismatched else 0


def compare_with_core(
    answer: Answer, reference: PredictionService, record: Mapping[str, Any]
) -> str | None:
    """How the server's answer differs from the in-process prediction core's, if it does."""
    try:
        expected = reference.predict_instance(record)
    except InvalidInstance as err:
        return None if answer.rejected else f"the core rejects it ({err}), the server did not"
    if answer.rejected or not isinstance(answer.body, dict):
        return f"the server answered {answer.status} {answer.body}, the core predicts it"
    body = {key: value for key, value in answer.body.items() if key != "request_id"}
    wanted: dict[str, Any] = {
        "prediction": expected.prediction,
        "model_version": expected.model_version,
    }
    if expected.probabilities is not None:
        wanted["probabilities"] = expected.probabilities
    return None if body == wanted else f"the server answered {body}, the core {wanted}"


@contextmanager
def local_service(config: Config, args: argparse.Namespace) -> Iterator[str]:
    """The URL of the service at prediction.server_url if one answers there on this machine,
    else of one started here and stopped when the block ends."""
    configured = config.prediction.server_url
    if urlsplit(configured).hostname in LOCAL_HOSTS:
        with closing(PredictionClient(configured, max_retries=0, timeout_seconds=2)) as probe:
            running = probe.get("/health").ok
        if running:
            logger.info("Using the service already running at %s", configured)
            yield configured
            return
    with start_service(config, args) as base_url:
        yield base_url


@contextmanager
def start_service(config: Config, args: argparse.Namespace) -> Iterator[str]:
    """Run the launcher on 127.0.0.1 and a free port until the block ends; yield its URL.

    The server's output goes to output/logs/prediction_service.out (its log file is there too).
    """
    port = free_port()
    command = [sys.executable, "-m", "ml_project.serving.launcher", "fastapi", "--host", LOCALHOST,
               "--port", str(port)]
    for option, value in (("--config", args.config), ("--root", args.root)):
        if value is not None:
            command += [option, str(value)]
    output_file = config.output_dir / "logs" / "prediction_service.out"
    output_file.parent.mkdir(parents=True, exist_ok=True)
    base_url = f"http://{LOCALHOST}:{port}"
    logger.info("Starting the FastAPI service at %s", base_url)
    with output_file.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        with closing(PredictionClient.from_config(config, base_url=base_url)) as probe:
            ready = probe.wait_until_ready(args.startup_timeout,
                                           give_up=lambda: process.poll() is not None)
        if not ready.ok:
            reason = (f"exited with code {process.returncode}" if process.poll() is not None
                      else f"is not ready after {args.startup_timeout:.0f} s ({ready.body})")
            raise ServiceError(f"the service at {base_url} {reason}; see {output_file}")
        yield base_url
    finally:
        process.terminate()  # uvicorn finishes the requests in flight, then exits
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logger.info("Stopped the service at %s", base_url)


def free_port() -> int:
    """A port free on 127.0.0.1 now (another process could take it before the server does)."""
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        port: int = probe.getsockname()[1]
    return port


if __name__ == "__main__":
    raise SystemExit(main())
