"""The requests every serverless handler must answer as the local API does, and how to compare.

A case is (name, method, path, body, headers). `local_answers` sends each to a running local
API; `comparable` reduces an answer to what must be identical: status, content type, Allow
header and the JSON body without its request id (and, for /health, without the counters, which
depend on what each process has served and written).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import requests

from tests.serving import INSTANCE, instance

KEY = "serverless-key-41c9"
# Small limits, so the oversized cases stay small (the same in every app compared).
LIMITS = {"prediction": {"max_batch_size": 3, "max_body_bytes": 3000},
          "validation": {"unknown_fields": "reject"}}


class Case(NamedTuple):
    name: str
    method: str
    path: str
    body: bytes
    headers: dict[str, str]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _case(name: str, method: str, path: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> Case:
    keyed = {"X-API-Key": KEY, "Content-Type": "application/json"}
    return Case(name, method, path, body, keyed if headers is None else headers)


CASES = [
    _case("health", "GET", "/health"),
    _case("ready", "GET", "/ready"),
    _case("model", "GET", "/model"),
    _case("predict", "POST", "/predict", _json(INSTANCE)),
    _case("predict-null", "POST", "/predict", _json(instance(payment_method=None))),
    _case("batch", "POST", "/predict/batch", _json({"instances": [INSTANCE] * 3})),
    _case("invalid", "POST", "/predict", _json(instance(age="x", colour=1, drop=("region",)))),
    _case("batch-invalid", "POST", "/predict/batch",
          _json({"instances": [instance(age=-1), instance(region="mars")]})),
    _case("batch-too-large", "POST", "/predict/batch", _json({"instances": [INSTANCE] * 4})),
    _case("malformed-json", "POST", "/predict", b"{'age': 1}"),
    _case("empty-body", "POST", "/predict/batch"),
    _case("body-too-large", "POST", "/predict", b"{" + b" " * 3100 + b"}"),
    _case("no-key", "POST", "/predict", _json(INSTANCE), {"Content-Type": "application/json"}),
    _case("wrong-key", "GET", "/model", headers={"X-API-Key": "wrong"}),
    _case("unknown-path", "GET", "/no-such-route"),
    _case("trailing-slash", "POST", "/predict/", _json(INSTANCE)),
    _case("wrong-method", "GET", "/predict"),
    _case("head", "HEAD", "/health"),
    _case("delete", "DELETE", "/predict/batch"),
]
CASE_IDS = [case.name for case in CASES]

Comparable = tuple[int, str, str | None, Any]


def comparable(status: int, content_type: str, allow: str | None, body: bytes) -> Comparable:
    content = json.loads(body) if body else None
    if isinstance(content, dict):
        content.pop("request_id", None)
        if "counters" in content:
            content.pop("counters")
    return status, content_type.split(";")[0], allow, content


def http_answer(base_url: str, case: Case) -> Comparable:
    """A running server's answer to `case` (for HEAD, the body a GET would have had is not
    sent, so the body compared is empty)."""
    answer = requests.request(case.method, base_url + case.path, data=case.body or None,
                              headers=case.headers, timeout=30)
    return comparable(answer.status_code, answer.headers.get("Content-Type", ""),
                      answer.headers.get("Allow"), answer.content)


def local_answers(base_url: str) -> dict[str, Comparable]:
    return {case.name: http_answer(base_url, case) for case in CASES}
