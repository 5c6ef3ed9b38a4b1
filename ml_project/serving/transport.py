"""What HTTP carries around a request's JSON, handled alike by both apps and every host.

- A body in a content coding (`Content-Encoding: gzip`, `br`, `deflate`, ...): no route decodes
  one, and none of the servers or adapters in front (uvicorn, a2wsgi, werkzeug, gunicorn,
  functions-framework, Mangum) does, so read as it is it would fail as "not JSON" in the words
  of a UTF-8 decoder. It is refused first, 415 naming the coding (`refused_coding`), on every
  POST route, the key not yet checked (as a content type SageMaker's route does not read).
- A client that leaves before its whole body arrived (`client_left`): nothing failed, so one
  INFO line, never an ERROR with a traceback; the app does not run on the part that came.
This module imports no web framework.
"""

from __future__ import annotations

import logging

from ml_project.cli import escape_for_log
from ml_project.serving.bodies import Rejection
from ml_project.serving.endpoints import Reply, error_reply

logger = logging.getLogger(__name__)

IDENTITY = "identity"  # no coding (RFC 9110): the only one read


def refused_coding(content_encoding: str | None) -> Rejection | None:
    """A 415 naming the codings of a `Content-Encoding` header (repeated headers joined by
    commas), or None for a body as it is (no header, empty, or `identity`)."""
    codings = [coding.strip().lower() for coding in (content_encoding or "").split(",")]
    unread = [coding for coding in codings if coding not in ("", IDENTITY)]
    if not unread:
        return None
    return Rejection(415, f"the body is {', '.join(unread)}-encoded (Content-Encoding); send it "
                          "unencoded: no route decodes a content coding")


def client_left(method: str, path: str) -> Reply:
    """Log a client gone before its whole body arrived, on one INFO line; the reply is what it
    would get could it still hear (a server that needs one to finish sends it to no one)."""
    logger.info("Client left before its body of %s %s arrived: not answered", method,
                escape_for_log(path))
    return error_reply(400, "the body was cut short: the client disconnected")
