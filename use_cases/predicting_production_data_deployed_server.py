"""Prediction run on production data against the deployed server: the client side of serving.

    ML_PROJECT_SERVER_URL=https://... ML_PROJECT_API_KEY=... \\
        pipenv run python use_cases/predicting_production_data_deployed_server.py [--limit N]

Streams the production sample to POST /predict at prediction.server_url (ML_PROJECT_SERVER_URL
overrides it) with the X-API-Key header, a timeout per request, and retries with exponential
backoff on 5xx and connection errors, never on 4xx: an invalid instance is rejected, counted
and skipped. Exits 1 if the server never became ready or any request failed after its retries.
"""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

from ml_project.cli import add_stream_options, base_parser, start_run
from ml_project.ingest import stream_production_instances
from ml_project.serving.client import PredictionClient, format_latencies

logger = logging.getLogger("predicting_production_deployed")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    add_stream_options(parser)
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="seconds before the first retry, doubled for each next one "
                             "(default: %(default)s)")
    parser.add_argument("--ready-timeout", type=float, default=60.0,
                        help="seconds to wait for the server's /ready (default: %(default)s)")
    args = parser.parse_args(argv)
    config, _ = start_run(
        parser, args, "prediction", "production", "deployed", "predicting_production_deployed"
    )
    source = args.input.resolve() if args.input else Path(config.resolve(config.data.production))

    with closing(PredictionClient.from_config(config, backoff_seconds=args.backoff)) as client:
        ready = client.wait_until_ready(args.ready_timeout)
        if not ready.ok:
            logger.error("The server at %s is not ready: %s", client.base_url,
                         ready.body if ready.status else ready.error)
            return 1
        served = client.get("/model").body
        latencies: list[float] = []
        rejected = failed = retried = 0
        try:
            for record in stream_production_instances(source, config, limit=args.limit,
                                                      rate_per_second=args.rate):
                answer = client.predict(record)
                if answer.attempts > 1:
                    retried += 1
                if answer.ok:
                    latencies.append(answer.latency_ms)
                elif answer.rejected:
                    rejected += 1
                    logger.info("Instance %s rejected (%d): %s", record.get(config.columns.id),
                                answer.status, answer.body)
                else:
                    failed += 1
                    logger.error("Instance %s failed after %d attempts: %s",
                                 record.get(config.columns.id), answer.attempts, answer.error)
        except (FileNotFoundError, ValueError) as err:
            logger.error("Cannot stream %s: %s", source, err)
            return 2

    sent = len(latencies) + rejected + failed
    model = served if isinstance(served, dict) else {}
    print(f"\nStreamed {sent} instances to {client.base_url} (model {model.get('model_name')} "
          f"version {model.get('model_version')})")
    print(f"  ok {len(latencies)}, rejected {rejected} (invalid, not retried), failed {failed} "
          f"(after up to {client.max_retries} retries), {retried} needed a retry")
    print(f"  latency (round trip, retries included): {format_latencies(latencies)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
