"""The Flask app (WSGI) served by uvicorn as ASGI, and the lifespan both apps share there.

a2wsgi runs the WSGI app in a pool of threads. On its own it would start the app on a thread
as soon as the headers arrive and let it wait there for the body: a client that sends headers
and stalls would hold a thread for as long as it likes (uvicorn has no body timeout), and a few
such clients would take every thread. So the body is read first, on uvicorn's event loop (at
most the body limit, plus one byte to tell it is over): a stalled client costs a socket and
nothing else, as in the FastAPI app, and the app's own limit check then answers 413. A client
that leaves before its body is whole is one INFO line (`transport.client_left`), as in the
FastAPI app, and the app never runs on the part that came.

At lifespan shutdown (uvicorn stopping on SIGTERM or Ctrl-C, after the requests in flight) the
app's prediction log stores what it still holds: a gunicorn worker is killed by the signal
uvicorn raises again afterwards, so this is the last moment its process runs Python.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, MutableMapping, cast

from a2wsgi import WSGIMiddleware

from ml_project.prediction_log.log import PredictionLog
from ml_project.serving.endpoints import PredictionEndpoints
from ml_project.serving.transport import client_left

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[..., Any]

# Threads running the WSGI app. Predictions run one at a time per worker anyway (the endpoints'
# lock); the others answer /health and send answers meanwhile, and no thread ever waits for a
# client, so a few spare cost a stack each and nothing else.
THREADS = 32


def wsgi_as_asgi(app: WSGIApp, endpoints: PredictionEndpoints) -> ASGIApp:
    """`app` (served by `endpoints`) as an ASGI app for uvicorn."""
    # a2wsgi types the ASGI messages as TypedDicts; they are the same messages as these.
    wsgi = cast(ASGIApp, WSGIMiddleware(app, workers=THREADS))

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await close_log_at_shutdown(receive, send, endpoints.log)
        elif scope["type"] == "http":
            request = await read_body_first(scope, receive, endpoints.max_body_bytes)
            if request is None:  # the client left: no one to answer
                client_left(scope["method"], scope["path"])
            else:
                await wsgi(*request, send)
        else:  # a websocket: a2wsgi closes it
            await wsgi(scope, receive, send)

    return application


async def read_body_first(scope: Scope, receive: Receive, limit: int
                          ) -> tuple[Scope, Receive] | None:
    """The request with its body already read: at most `limit` + 1 bytes, handed on in one
    message under a Content-Length (a chunked body too, which a WSGI app cannot read unsized);
    None if the client left before the body was whole.

    A body declared larger than `limit` is not read at all: the app refuses it from its headers,
    and no `100 Continue` is sent (uvicorn sends it at the first read).
    """
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return scope, receive
    body, more = bytearray(), True
    while more and len(body) <= limit:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
    headers = [(name, value) for name, value in scope["headers"]
               if name not in (b"content-length", b"transfer-encoding")]
    sized = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return sized, replay


async def close_log_at_shutdown(receive: Receive, send: Send, log: PredictionLog | None) -> None:
    """The ASGI lifespan protocol: nothing to start; at shutdown, close the log."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if log is not None:
                await asyncio.to_thread(log.close)
            await send({"type": "lifespan.shutdown.complete"})
            return
