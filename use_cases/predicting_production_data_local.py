"""Prediction run on production data, locally: a simulated stream of single instances.

    pipenv run python use_cases/predicting_production_data_local.py [--limit N] [--rate PER_SECOND]

Each instance of the production sample goes through the same prediction core as an API
request would; an invalid one is logged with its reason and the stream goes on. Every request
and its outcome is appended to the prediction log, which monitoring reads later.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Mapping

from ml_project.cli import add_stream_options, base_parser, start_run
from ml_project.config import Config, ConfigError
from ml_project.export import ArtifactError
from ml_project.ingest import stream_production_instances
from ml_project.predict import Prediction, PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import LogRecord, log_record, new_request_id
from ml_project.schemas import InvalidInstance
from ml_project.serving.shadow import ShadowScorer, ShadowUnavailable, load_challenger

logger = logging.getLogger("predicting_production")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    add_stream_options(parser)
    args = parser.parse_args(argv)
    config, _ = start_run(
        parser, args, "prediction", "production", "local", "predicting_production"
    )
    source = args.input.resolve() if args.input else Path(config.resolve(config.data.production))
    try:
        service = PredictionService.from_config(config)
        log = PredictionLog.from_config(config)
    except (ArtifactError, ConfigError) as err:
        logger.error("%s", err)
        return 2

    latencies: list[float] = []
    rejected = 0
    try:
        for record in stream_production_instances(source, config, limit=args.limit,
                                                  rate_per_second=args.rate):
            prediction, entry = predict_and_log(service, log, record, source="stream")
            if prediction is None:
                rejected += 1
                logger.warning("Instance %s rejected: %s", entry.instance_id, entry.error)
            elif entry.latency_ms is not None:
                latencies.append(entry.latency_ms)
    except (OSError, ValueError) as err:
        log.close()
        logger.error("Cannot stream %s: %s", source, err)
        return 2
    try:
        shadow = score_in_shadow(config, service, log) if config.prediction.shadow != "off" else None
    finally:
        log.close()
    waiting = log.pending()

    sent = len(latencies) + rejected
    print(f"\nStreamed {sent} instances to {service.metadata.get('model_name')} version "
          f"{service.model_version}: {len(latencies)} predicted, {rejected} rejected")
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100)
        print(f"  latency in the core: p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms")
    if shadow is not None:
        print(f"  challenger in shadow: {shadow}")
    print(f"  prediction log: {log.url}")
    if waiting.records:
        print(f"  {waiting.records} records wait in {log.journal_dir} for the database (see the "
              "error above); the next run, service or monitoring loads them")
    return 0


def score_in_shadow(config: Config, service: PredictionService, log: PredictionLog) -> str:
    """The challenger scores what the champion answered (the service's shadow, run once here:
    `serving/shadow.py`, never skipping); what it did, for the summary."""
    try:
        challenger = load_challenger(config, service)
    except ShadowUnavailable as err:
        logger.error("Shadow: %s", err)
        return f"not run: {err}"
    scorer = ShadowScorer(challenger, service.model_sha256, log.journal_dir,
                          max_backlog=config.prediction.shadow_max_backlog)
    scorer.drain(timeout=float("inf"), bounded=False)
    done = scorer.status
    return (f"version {challenger.model_version} scored {done.scored} instances "
            f"({done.invalid} invalid to it, {done.failed} failed)")


def predict_and_log(
    service: PredictionService, log: PredictionLog, record: Mapping[str, Any], *, source: str
) -> tuple[Prediction | None, LogRecord]:
    """Predict one instance and log the request with its outcome, valid or not, as an API
    request is logged. Returns the prediction (None if the instance was rejected: the reason is
    in `LogRecord.error`) and the record logged."""
    started = time.perf_counter()
    prediction: Prediction | None = None
    error = None
    try:
        prediction = service.predict_instance(record)
    except InvalidInstance as err:
        error = str(err)
    entry = log_record(
        service, record, request_id=new_request_id(), source=source,
        latency_ms=(time.perf_counter() - started) * 1000, prediction=prediction, error=error,
    )
    if not log.append([entry]):
        raise OSError(f"the prediction journal in {log.journal_dir} cannot be written (see "
                      "the error above): instances are not predicted unlogged")
    return prediction, entry


if __name__ == "__main__":
    raise SystemExit(main())
