"""A client of the prediction service: the API key header, a timeout, retries with backoff.

The use cases that stream production data over HTTP, to a local or a deployed server, share it.
It retries only what a second try may fix: connection errors, timeouts and 5xx (a 503 while a
replica loads its model, a 502 from a proxy), after urllib3's exponential backoff or the
server's Retry-After. A 4xx is the request's own fault and comes back at once. Retrying a
prediction is safe: it changes nothing but adds a record to the server's log. The retry policy
is urllib3's own `Retry`, mounted on the requests session.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ml_project.config import Config
from ml_project.serving.endpoints import API_KEY_ENV, API_KEY_HEADER

logger = logging.getLogger(__name__)

SERVER_URL_ENV = "ML_PROJECT_SERVER_URL"
RETRIED_STATUSES = frozenset(range(500, 600))


@dataclass(frozen=True)
class Answer:
    """The outcome of one request after its retries; `status` is None if no server answered."""

    status: int | None
    body: Any
    latency_ms: float
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def rejected(self) -> bool:
        """The server refused the request itself (4xx): retrying would not help."""
        return self.status is not None and 400 <= self.status < 500

    @property
    def failed(self) -> bool:
        return not (self.ok or self.rejected)


class PredictionClient:
    """Calls one prediction server; create once, call many times (keeps connections open)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_seconds: float = 10.0,
        max_retries: int = 3,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._sessions: dict[int, requests.Session] = {}

    @classmethod
    def from_config(
        cls, config: Config, *, base_url: str | None = None, backoff_seconds: float = 0.5
    ) -> PredictionClient:
        """The server at `base_url`, else $ML_PROJECT_SERVER_URL, else prediction.server_url;
        the API key from $ML_PROJECT_API_KEY; timeout and retries from the config."""
        return cls(
            base_url or os.environ.get(SERVER_URL_ENV) or config.prediction.server_url,
            api_key=os.environ.get(API_KEY_ENV) or None,
            timeout_seconds=config.prediction.request_timeout_seconds,
            max_retries=config.prediction.max_retries,
            backoff_seconds=backoff_seconds,
        )

    def predict(self, instance: Mapping[str, Any]) -> Answer:
        return self.request("POST", "/predict", instance)

    def predict_batch(self, instances: Sequence[Mapping[str, Any]]) -> Answer:
        return self.request("POST", "/predict/batch", {"instances": list(instances)})

    def get(self, path: str, *, retries: int | None = None) -> Answer:
        return self.request("GET", path, retries=retries)

    def request(
        self, method: str, path: str, payload: Any = None, *, retries: int | None = None
    ) -> Answer:
        """Send, retrying connection errors, timeouts and 5xx with exponential backoff."""
        retries = self.max_retries if retries is None else retries
        started = time.perf_counter()
        try:
            response = self._session(retries).request(
                method, self.base_url + path, json=payload, timeout=self.timeout_seconds)
        except (requests.ConnectionError, requests.Timeout) as err:
            return Answer(None, None, _since(started), retries + 1, f"{type(err).__name__}: {err}")
        history = response.raw.retries.history if response.raw.retries else ()
        body = _json_or_text(response)
        error = f"HTTP {response.status_code}: {body}" if response.status_code >= 500 else None
        return Answer(response.status_code, body, _since(started), len(history) + 1, error)

    def _session(self, retries: int) -> requests.Session:
        """The session that retries `retries` times (one per count, sharing the headers):
        urllib3's policy retries any method after a connection error, a timeout or a 5xx,
        waiting 0, 2, 4... x backoff (or the server's Retry-After), and returns the last
        answer as it is."""
        if retries not in self._sessions:
            session = requests.Session()
            session.headers.update(self.headers)
            retry = Retry(total=retries, status_forcelist=RETRIED_STATUSES, allowed_methods=None,
                          backoff_factor=self.backoff_seconds, raise_on_status=False)
            for scheme in ("http://", "https://"):
                session.mount(scheme, HTTPAdapter(max_retries=retry))
            self._sessions[retries] = session
        return self._sessions[retries]

    def wait_until_ready(
        self, timeout_seconds: float, *, give_up: Callable[[], bool] | None = None
    ) -> Answer:
        """Poll GET /ready until it answers 200, a 4xx (e.g. a wrong API key), `give_up()` is
        true (e.g. the server process died) or the time is up; returns the last answer."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            answer = self.get("/ready", retries=0)
            if not answer.failed or time.monotonic() > deadline or (give_up and give_up()):
                return answer
            time.sleep(0.1)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def latency_percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90 and p99 in milliseconds; empty when there is nothing to measure."""
    if len(latencies_ms) < 2:
        return {name: latencies_ms[0] for name in ("p50", "p90", "p99")} if latencies_ms else {}
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98]}


def format_latencies(latencies_ms: Sequence[float]) -> str:
    percentiles = latency_percentiles(latencies_ms)
    if not percentiles:
        return "no successful requests"
    return ", ".join(f"{name} {value:.1f} ms" for name, value in percentiles.items())
