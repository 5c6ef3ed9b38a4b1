"""One record of the prediction log: a request's instance, its outcome and the model's identity
(name, version, artifact sha256), with every text made storable where it enters.

Whatever a client sends (lone surrogates, keys with newlines, deep nesting, NaN) becomes a
JSON-safe value here, so neither the journal, the loader nor the database can choke on it.
Every entry point (the stream, both APIs, the cloud handlers) builds its records with
`log_record`; `log.py` makes them durable.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from ml_project.prediction_log import journal

if TYPE_CHECKING:  # the service's loader imports this module, and no library of the model's
    from ml_project.predict import Prediction, PredictionService

MAX_DEPTH = 32  # deeper input is logged as a placeholder: the log is not a place to recurse
# Longer integers are logged as a placeholder: Python writes none past 4,300 digits as text.
MAX_INT_BITS = 13_000
# The source of the challenger's answers in shadow (`serving/shadow.py`): each is the record of
# an instance the champion answered, under the same request id and index, with the key suffix
# that keeps both records in the log.
SHADOW_SOURCE = "shadow"
SHADOW_KEY_SUFFIX = ":shadow"


def new_request_id() -> str:
    """A UUID of version 7 (RFC 9562), as 32 hex digits: 48 bits of Unix time in milliseconds,
    then 74 random bits. Ids made later sort later, so the log's indexes on them (`record_key`,
    `request_id`) grow at their end: storing 400 records in a log of 300,000 takes ~4 ms of
    the loader's CPU, against ~20 ms for version 4's random ids, which put each record on a
    page of its own in each index (and grows with the log). Python 3.14's `uuid.uuid7` lays out
    the same bits."""
    milliseconds = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # 80 bits, of which 74 are used
    value = ((milliseconds & (1 << 48) - 1) << 80 | 0x7 << 76 | (random >> 62 & 0xFFF) << 64
             | 0b10 << 62 | random & (1 << 62) - 1)
    return f"{value:032x}"


def _clean(value: Any, depth: int = 0) -> Any:
    """A JSON value any store can hold: NaN as null (as a client would send it), text with lone
    surrogates escaped (in keys too), nesting cut at MAX_DEPTH, anything else as its text."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return f"<an integer of {value.bit_length()} bits>"
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, str):
        return journal.storable(value)
    if isinstance(value, (Mapping, list, tuple)):
        if depth >= MAX_DEPTH:
            return f"<nested deeper than {MAX_DEPTH} levels>"
        if isinstance(value, Mapping):
            return {journal.storable(str(k)): _clean(v, depth + 1) for k, v in value.items()}
        return [_clean(v, depth + 1) for v in value]
    if hasattr(value, "item"):  # a numpy scalar
        return _clean(value.item(), depth)
    return journal.storable(str(value))


def _text(value: Any) -> str | None:
    return None if value is None else journal.storable(str(value))


# The common case: a scalar, or a mapping of text to scalars (an instance, probabilities).
_SCALARS = frozenset({str, int, float, bool, type(None)})
_PLAIN_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_text(value: Any) -> str | None:
    """`value` cleaned (`_clean`) as compact ASCII JSON. A flat value of exact JSON types is
    written as it is when that gives the same text (ASCII but DEL, no NUL, no NaN or infinity,
    no integer past MAX_INT_BITS): a third of the cost of cleaning it first."""
    if value is None:
        return None
    if _plain(value):
        try:
            text = _PLAIN_ENCODER.encode(value)
        except ValueError:  # NaN or infinity: cleaned below
            pass
        else:
            # ensure_ascii also escapes DEL (0x7f), the one ASCII character it does not keep
            if text.isascii() and "\x7f" not in text and "\\u0000" not in text:
                return text
    return journal.encode_line(_clean(value))[:-1].decode("ascii")


def _plain(value: Any) -> bool:
    """A scalar, or a dict of text keys to scalars; every type exact (no subclass, which may
    write itself otherwise), every integer within MAX_INT_BITS."""
    if type(value) is dict:
        return all(type(key) is str and _plain_scalar(item) for key, item in value.items())
    return _plain_scalar(value)


def _plain_scalar(value: Any) -> bool:
    kind = type(value)
    return kind in _SCALARS and (kind is not int or value.bit_length() <= MAX_INT_BITS)


@dataclass(frozen=True)
class LogRecord:
    """One instance of a request and its outcome (prediction, or the error that rejected it)."""

    request_id: str
    source: str
    input: Mapping[str, Any]
    model_version: str | None
    prediction: Any = None
    probabilities: Mapping[str, float] | None = None
    latency_ms: float | None = None
    error: str | None = None
    instance_id: str | None = None
    instance_index: int = 0
    model_name: str | None = None
    model_sha256: str | None = None
    logged_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_row(self) -> dict[str, Any]:
        """The table row, every text storable (whatever the client sent)."""
        request_id = _text(self.request_id) or ""
        suffix = SHADOW_KEY_SUFFIX if self.source == SHADOW_SOURCE else ""
        return {
            "record_key": f"{request_id}:{self.instance_index}{suffix}",
            "request_id": request_id,
            "instance_index": self.instance_index,
            "logged_at": self.logged_at,
            "source": _text(self.source),
            "instance_id": _text(self.instance_id),
            "model_name": _text(self.model_name),
            "model_version": _text(self.model_version),
            "model_sha256": _text(self.model_sha256),
            "input": _json_text(self.input),
            "prediction": _json_text(self.prediction),
            "probabilities": _json_text(self.probabilities),
            "latency_ms": self.latency_ms,
            "error": _text(self.error),
        }


def log_record(
    service: PredictionService | None,
    record: Mapping[str, Any],
    *,
    request_id: str,
    source: str,
    latency_ms: float,
    prediction: Prediction | None = None,
    error: str | None = None,
    instance_index: int = 0,
) -> LogRecord:
    """The log entry of one instance and its outcome: every entry point builds it here."""
    instance_id = record.get(service.config.columns.id) if service else None
    metadata = service.metadata if service else {}
    return LogRecord(
        request_id=request_id,
        source=source,
        input=record,
        model_version=service.model_version if service else None,
        model_name=_text(metadata.get("model_name")),
        model_sha256=_text(metadata.get("sha256")),
        prediction=prediction.prediction if prediction else None,
        probabilities=prediction.probabilities if prediction else None,
        latency_ms=latency_ms,
        error=error,
        instance_id=None if instance_id is None else _text(_clean(instance_id)),
        instance_index=instance_index,
    )
