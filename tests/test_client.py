"""The client of the prediction service: the API key on every request, and urllib3's retry
policy: 5xx and connection errors retried with backoff, never a
4xx. Against a real stub server on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import pytest

from ml_project.serving.client import PredictionClient, format_latencies, latency_percentiles
from tests.serving import INSTANCE, free_port, stub_server


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's backoff delays, recorded instead of slept. Only this thread's: threads other
    tests left running (py4j's finalizer after a Spark session, log writers) sleep for real."""
    delays: list[float] = []
    real_sleep, test_thread = time.sleep, threading.get_ident()

    def sleep(seconds: float) -> None:
        if threading.get_ident() == test_thread:
            delays.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return delays


def test_client_retries_5xx_with_exponential_backoff_then_succeeds(sleeps: list[float]) -> None:
    with stub_server([503, 503]) as (url, received):
        client = PredictionClient(url, api_key="k", max_retries=3, backoff_seconds=0.25)
        answer = client.predict(INSTANCE)

    assert answer.ok and answer.attempts == 3
    assert answer.body == {"prediction": 1, "model_version": "7"}
    assert sleeps == [0.5]  # urllib3's backoff: the first retry at once, then 2 x 0.25 s
    assert received == ["k", "k", "k"]


def test_client_never_retries_a_4xx(sleeps: list[float]) -> None:
    with stub_server([422]) as (url, received):
        answer = PredictionClient(url, max_retries=3).predict(INSTANCE)

    assert answer.rejected and answer.status == 422 and answer.attempts == 1
    assert len(received) == 1
    assert sleeps == []


def test_client_retries_connection_errors_then_reports_the_failure(sleeps: list[float]) -> None:
    answer = PredictionClient(f"http://127.0.0.1:{free_port()}", max_retries=2,
                              backoff_seconds=0.1).predict(INSTANCE)

    assert answer.failed and answer.status is None and answer.attempts == 3
    assert answer.error is not None and "ConnectionError" in answer.error
    assert sleeps == [0.2]


def test_a_wait_for_readiness_gives_up_when_told_and_does_not_retry_each_poll(
    sleeps: list[float]
) -> None:
    client = PredictionClient(f"http://127.0.0.1:{free_port()}", max_retries=5)
    started = time.monotonic()
    answer = client.wait_until_ready(30, give_up=lambda: True)
    client.close()
    assert answer.failed and answer.attempts == 1 and time.monotonic() - started < 5


@pytest.mark.parametrize(("latencies", "expected"), [
    ([], {}), ([5.0], {"p50": 5.0, "p90": 5.0, "p99": 5.0}),
    (list(map(float, range(1, 101))), {"p50": 50.5, "p90": 90.1, "p99": 99.01}),
])
def test_latency_percentiles(latencies: list[float], expected: dict[str, float]) -> None:
    assert latency_percentiles(latencies) == pytest.approx(expected)
    assert format_latencies(latencies) == (
        "no successful requests" if not latencies else
        ", ".join(f"{name} {value:.1f} ms" for name, value in latency_percentiles(latencies).items()))
