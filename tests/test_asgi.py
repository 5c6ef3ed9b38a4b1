"""The Flask app as ASGI for uvicorn: the body is read before the app runs (a chunked one too,
at most the limit plus one byte; a declared oversize never; one its client left, not handed
on), and the lifespan's shutdown closes the log. Driven here by hand, message by message, as
uvicorn drives it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.asgi import close_log_at_shutdown, read_body_first


def _receiver(messages: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """A `receive` handing out `messages`, then a disconnect; and the messages handed out."""
    handed: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        message = messages.pop(0) if messages else {"type": "http.disconnect"}
        handed.append(message)
        return message

    return receive, handed


def _read(headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int
          ) -> tuple[dict[str, Any], dict[str, Any], int]:
    receive, handed = _receiver([{"type": "http.request", "body": chunk,
                                  "more_body": i < len(chunks) - 1}
                                 for i, chunk in enumerate(chunks)])

    async def run() -> tuple[dict[str, Any], dict[str, Any], int]:
        request = await read_body_first({"type": "http", "headers": headers}, receive, limit)
        assert request is not None
        scope, replay = request
        reads = len(handed)  # before the app asks for anything
        return dict(scope), dict(await replay()), reads

    return asyncio.run(run())


def test_a_chunked_body_is_read_whole_and_handed_on_sized() -> None:
    scope, message, reads = _read([(b"transfer-encoding", b"chunked")], [b"ab", b"cd", b"e"],
                                  limit=10)
    assert message == {"type": "http.request", "body": b"abcde", "more_body": False}
    assert (b"content-length", b"5") in scope["headers"]
    assert not any(name == b"transfer-encoding" for name, _ in scope["headers"])
    assert reads == 3


def test_reading_stops_one_byte_past_the_limit() -> None:
    _, message, reads = _read([], [b"x" * 6, b"x" * 6, b"x" * 6], limit=10)
    assert len(message["body"]) == 12 and reads == 2  # the app then answers 413


def test_a_body_declared_over_the_limit_is_never_read() -> None:
    scope, message, reads = _read([(b"content-length", b"999")], [b"x" * 999], limit=10)
    assert reads == 0  # the app refuses it from its headers (413), and no 100 Continue is sent
    assert (b"content-length", b"999") in scope["headers"]


def test_a_client_that_leaves_mid_body_is_not_handed_on() -> None:
    """The app would answer the part that came (a 400, or a prediction of a prefix that is
    JSON); the FastAPI app never runs on it either."""
    receive, handed = _receiver([{"type": "http.request", "body": b'{"a": 1}', "more_body": True}])

    async def run() -> Any:
        return await read_body_first({"type": "http", "headers": []}, receive, 100)

    assert asyncio.run(run()) is None
    assert handed[-1] == {"type": "http.disconnect"}


def test_the_lifespan_shutdown_stores_what_the_log_holds(tmp_path: Path) -> None:
    from ml_project.prediction_log.records import LogRecord, new_request_id

    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "journal")
    log.append([LogRecord(new_request_id(), "api", {"age": 1}, "3", instance_id="C1")])
    receive, _ = _receiver([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(close_log_at_shutdown(receive, send, log))

    assert sent == [{"type": "lifespan.startup.complete"},
                    {"type": "lifespan.shutdown.complete"}]
    reopened = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "journal")
    assert [row["instance_id"] for row in reopened.read()] == ["C1"]
    reopened.close()
