"""What the prediction endpoints do, whatever the web framework: request bytes in, a reply out.

`fastapi_app.py` and `flask_app.py` are thin adapters over `PredictionEndpoints`: they read the
body (at most `prediction.max_body_bytes`) and the X-API-Key header, and send back the `Reply`;
every cloud entry point reaches one of those two apps. So both frameworks answer every request,
good or bad, with the same status and the same bytes; a body is read by `bodies.py` and an
instance checked by one thing only: the compiled `InstanceValidator` behind `PredictionService`.

Statuses a client can act on: 400 the body is not JSON (or nests deeper than bodies.MAX_NESTING, or
holds an integer past Python's int-to-str limit); 401 missing or wrong X-API-Key; 413 body too
large; 415 a body in a content coding (gzip, ...: `transport.py`); 422 JSON that breaks
the schema, a batch over `max_batch_size` included (`errors` names each field and its rule); 503
no model loaded yet. A 500 means a fault of the server, never bad input. The outcome of
every authenticated prediction request, a 422 rejection included, goes to the prediction log
(source "api", one record per instance); refusals at the door (400, 401, 413, 415, 503) are only
counted (`/health`), so they can neither fill the log nor dilute monitoring's window.
This module imports no web framework, mlflow, evidently or pandera.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pydantic import BaseModel

from ml_project.cli import escape_for_log
from ml_project.predict import Prediction, PredictionService
from ml_project.prediction_log.log import PredictionLog
from ml_project.prediction_log.records import log_record, new_request_id
from ml_project.schemas import InvalidInstance
from ml_project.serving.bodies import Rejection, parse_batch, parse_instance, parse_json
from ml_project.serving.shadow import ShadowStatus
from ml_project.serving.shadow import read_status as read_shadow_status

logger = logging.getLogger(__name__)

API_KEY_ENV = "ML_PROJECT_API_KEY"
API_KEY_HEADER = "X-API-Key"
LOG_SOURCE = "api"


class HealthResponse(BaseModel):
    """`counters`: requests refused at the door (`refused_<status>`) and what the prediction
    log did with its records (`log_<what>`: written, spilled, replayed, dropped_queue_full,
    lost, ...), since the process started; with a challenger in shadow, what its process did
    (`shadow_<what>`: scored, skipped, invalid, failed, unavailable)."""

    status: str
    counters: dict[str, int] | None = None


class ReadyResponse(BaseModel):
    status: str
    model_version: str


class InstancePrediction(BaseModel):
    """One prediction; `probabilities` (class -> probability) only for classification."""

    prediction: int | float | str
    probabilities: dict[str, float] | None = None
    model_version: str


class PredictionResponse(InstancePrediction):
    request_id: str


class BatchPredictionResponse(BaseModel):
    predictions: list[InstancePrediction]
    request_id: str


class ErrorResponse(BaseModel):
    """`errors` maps each bad field (`instances[i].field` in a batch) to the rule it broke."""

    detail: str
    errors: dict[str, str] | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Reply:
    """What to send back: a status and a JSON body, already serialised (and, for a 405, the
    methods the route allows)."""

    status: int
    body: bytes
    media_type: str = "application/json"
    allow: str | None = None


def reply(status: int, content: BaseModel | Mapping[str, Any]) -> Reply:
    data = content.model_dump(exclude_none=True) if isinstance(content, BaseModel) else content
    return Reply(status, json.dumps(data, separators=(",", ":"), default=str).encode())


def error_reply(status: int, detail: str, **extra: Any) -> Reply:
    return reply(status, ErrorResponse(detail=detail, **extra))


INTERNAL_ERROR = "Internal Server Error"
MARKDOWN = "text/markdown"  # both frameworks add "; charset=utf-8", as to any text type
NO_CARD = ("model version {version} has no model card (exported before cards existed, or its "
           "card does not match metadata.json): re-run the modelling use case to write one")


def wants_markdown(accept: str | None) -> bool:
    """Markdown when the Accept header names text/markdown and no JSON type: a browser's or
    a client's default (*/*) gets the JSON."""
    types = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    return "text/markdown" in types and not any(t.endswith("json") for t in types)


def internal_error_reply() -> Reply:
    """What both frameworks answer to a fault no route caught (same status, same bytes)."""
    return error_reply(500, INTERNAL_ERROR)


class PredictionEndpoints:
    """The behaviour of every route; one per app, shared by the server's worker threads.

    `service` is None until a model is loaded: the app is then alive (/health) but not ready
    (503 elsewhere), as a replica is while its model is still on the way.
    """

    def __init__(
        self, service: PredictionService | None, log: PredictionLog | None, api_key: str | None
    ) -> None:
        self.service = service
        self.log = log
        self._api_key = api_key.strip(" \t").encode() if api_key else None
        # One prediction at a time per process: Python threads cannot run the core's work in
        # parallel, and contending for the GIL cost a third of the throughput with 8 clients.
        # Reading bodies, logging and sending answers stay concurrent.
        self._predicting = threading.Lock()
        self._refused: Counter[str] = Counter()
        self._counting = threading.Lock()

    @classmethod
    def create(
        cls, service: PredictionService | None, log: PredictionLog | None = None
    ) -> PredictionEndpoints:
        """With the API key from ML_PROJECT_API_KEY and, by default, the log the config names."""
        if log is None and service is not None:
            log = PredictionLog.from_config(service.config)
        return cls(service, log, os.environ.get(API_KEY_ENV) or None)

    @property
    def requires_key(self) -> bool:
        return self._api_key is not None

    @property
    def max_body_bytes(self) -> int:
        """The body size the adapters read at most (0 while no model: the answer is 503)."""
        return self.service.config.prediction.max_body_bytes if self.service else 0

    # GET routes -------------------------------------------------------------------------------

    def health(self) -> Reply:
        """Alive: the process answers. Never needs the API key (load balancers probe it)."""
        with self._counting:
            counters = dict(self._refused)
        if self.log is not None:
            counters.update({f"log_{name}": count for name, count in self.log.counters().items()})
            if self.service is not None and self.service.config.prediction.shadow != "off":
                shadow = read_shadow_status(self.log.journal_dir) or ShadowStatus(error="gone")
                counters.update({f"shadow_{name}": n for name, n in shadow.counters().items()})
        return reply(200, HealthResponse(status="alive", counters=counters))

    def ready(self, api_key: str | None) -> Reply:
        try:
            service = self._admit(api_key)
        except Rejection as rejection:
            self._count_refusal(rejection.status)
            return error_reply(rejection.status, rejection.detail)
        return reply(200, ReadyResponse(status="ready", model_version=service.model_version))

    def model(self, api_key: str | None) -> Reply:
        try:
            service = self._admit(api_key)
        except Rejection as rejection:
            self._count_refusal(rejection.status)
            return error_reply(rejection.status, rejection.detail)
        return reply(200, service.describe())

    def model_card(self, api_key: str | None, accept: str | None = None) -> Reply:
        """The served model's card as JSON, or as Markdown when the client accepts
        text/markdown and not JSON; 404 for a model exported without one."""
        try:
            service = self._admit(api_key)
        except Rejection as rejection:
            self._count_refusal(rejection.status)
            return error_reply(rejection.status, rejection.detail)
        if service.card is None:
            return error_reply(404, NO_CARD.format(version=service.model_version))
        card, text = service.card
        if wants_markdown(accept):
            return Reply(200, text.encode(), media_type=MARKDOWN)
        return reply(200, card)

    # POST routes ------------------------------------------------------------------------------

    def refuse(self, rejection: Rejection) -> Reply:
        """A request an app refuses before its route runs (a body in a content coding, 415),
        answered, logged and counted as every refusal at the door."""
        return self._rejected(rejection, new_request_id(), time.perf_counter(), [{}])

    def predict(self, body: bytes | None, api_key: str | None) -> Reply:
        """One instance. `body` is None when it was larger than `max_body_bytes`."""
        request_id, started = new_request_id(), time.perf_counter()
        try:
            service = self._admit(api_key, body)
            record = parse_instance(parse_json(body or b""))
        except Rejection as rejection:
            return self._rejected(rejection, request_id, started, [{}])
        try:
            with self._predicting:
                prediction = service.predict_instance(record)
        except InvalidInstance as err:
            invalid = Rejection(422, f"invalid instance: {err}", err.errors)
            return self._rejected(invalid, request_id, started, [record])
        except Exception as err:  # a fault of the model or the server, not of the input
            return self._failed(err, request_id, started, [record])
        if not self._log(request_id, started, [record], [prediction]):
            return self._unlogged(request_id)
        return reply(200, PredictionResponse(**_fields(prediction), request_id=request_id))

    def predict_batch(self, body: bytes | None, api_key: str | None) -> Reply:
        """Several instances, all or none: one invalid instance rejects the batch (422)."""
        request_id, started = new_request_id(), time.perf_counter()
        try:
            service = self._admit(api_key, body)
            records = parse_batch(parse_json(body or b""), service.config.prediction.max_batch_size)
        except Rejection as rejection:
            return self._rejected(rejection, request_id, started, [{}])
        try:
            with self._predicting:
                predictions = service.predict_records(records)
        except InvalidInstance as err:
            invalid = Rejection(422, f"invalid instances: {err}", err.errors)
            reasons = [self._reason(service, record) for record in records]
            return self._rejected(invalid, request_id, started, records, reasons)
        except Exception as err:  # a fault of the model or the server, not of the input
            return self._failed(err, request_id, started, records)
        if not self._log(request_id, started, records, predictions):
            return self._unlogged(request_id)
        items = [InstancePrediction(**_fields(prediction)) for prediction in predictions]
        return reply(200, BatchPredictionResponse(predictions=items, request_id=request_id))

    # Helpers ----------------------------------------------------------------------------------

    def _admit(self, api_key: str | None, body: bytes | None = b"") -> PredictionService:
        """The checks before the body is parsed, in this order: key, model, size."""
        # Whitespace around a header value is not part of it (RFC 9110), whatever the server
        # strips; repeated headers arrive joined by a comma, as WSGI joins them, and never match.
        if self._api_key is not None and not (
            api_key is not None
            and hmac.compare_digest(api_key.strip(" \t").encode("utf-8", "surrogateescape"),
                                    self._api_key)
        ):
            raise Rejection(401, f"missing or wrong {API_KEY_HEADER} header")
        service = self.service
        if service is None:
            raise Rejection(503, "no model loaded yet; retry shortly")
        if body is None:
            raise Rejection(413, f"the body is larger than "
                                 f"{service.config.prediction.max_body_bytes} bytes")
        return service

    def _count_refusal(self, status: int) -> None:
        with self._counting:
            self._refused[f"refused_{status}"] += 1

    @staticmethod
    def _reason(service: PredictionService, record: Mapping[str, Any]) -> str:
        """Why one instance of a rejected batch was not predicted, for its log record."""
        try:
            service.validator.validate(record)
        except InvalidInstance as err:
            return f"422: invalid instance: {err}"
        return "422: not predicted: another instance in its batch is invalid"

    def _rejected(
        self,
        rejection: Rejection,
        request_id: str,
        started: float,
        records: Sequence[Mapping[str, Any]],
        reasons: Sequence[str] | None = None,
    ) -> Reply:
        logger.info("Request %s rejected (%d): %s", request_id, rejection.status,
                    escape_for_log(rejection.detail))
        if rejection.status == 422:  # the outcome of an authenticated request: monitoring's
            errors = reasons or [f"{rejection.status}: {rejection.detail}"] * len(records)
            if not self._log(request_id, started, records, errors=errors):
                return self._unlogged(request_id)
        else:  # refused at the door (401, 413, 400, 503): counted, never a prediction record
            self._count_refusal(rejection.status)
        return error_reply(rejection.status, rejection.detail, errors=rejection.errors,
                           request_id=request_id)

    def _unlogged(self, request_id: str) -> Reply:
        """The journal could not take the request's records (a full or read-only disk): its
        answer is withheld, as one that is not logged is not given."""
        self._count_refusal(503)
        return error_reply(503, "the prediction log cannot record this request now; retry "
                                "shortly", request_id=request_id)

    def _failed(
        self, err: Exception, request_id: str, started: float, records: Sequence[Mapping[str, Any]]
    ) -> Reply:
        logger.exception("Request %s failed", request_id)
        self._log(request_id, started, records,
                  errors=[f"500: {type(err).__name__}: {err}"] * len(records))
        return error_reply(500, f"the server failed on this request; its log has request_id "
                                f"{request_id}", request_id=request_id)

    def _log(
        self,
        request_id: str,
        started: float,
        records: Sequence[Mapping[str, Any]],
        predictions: Sequence[Prediction] | None = None,
        errors: Sequence[str] | None = None,
    ) -> bool:
        """One log record per instance, all under the request's id (never the API key); False
        if the log could not make them durable."""
        if self.log is None:
            return True
        latency_ms = (time.perf_counter() - started) * 1000
        return self.log.append([
            log_record(
                self.service, record, request_id=request_id, source=LOG_SOURCE,
                latency_ms=latency_ms, prediction=predictions[i] if predictions else None,
                error=errors[i] if errors else None, instance_index=i,
            )
            for i, record in enumerate(records)
        ])


def _fields(prediction: Prediction) -> dict[str, Any]:
    return {
        "prediction": prediction.prediction,
        "probabilities": prediction.probabilities,
        "model_version": prediction.model_version,
    }
