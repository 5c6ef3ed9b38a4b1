"""What HTTP carries around the JSON, alike in both apps: a body in a content coding is a 415
naming the coding, and a client that leaves mid-body is one INFO line, never an ERROR with a
traceback (the apps on real servers: test_flask_app.py, tests/serverless_cases.py)."""

from __future__ import annotations

import json
import logging

import pytest

from ml_project.serving.transport import client_left, refused_coding


@pytest.mark.parametrize(("header", "named"), [
    ("gzip", "gzip"), ("GZip", "gzip"), ("deflate", "deflate"), ("br", "br"), ("zstd", "zstd"),
    ("x-anything", "x-anything"), ("gzip, identity", "gzip"), ("identity,gzip", "gzip"),
    ("gzip, br", "gzip, br"),
])
def test_a_body_in_any_content_coding_is_a_415_naming_it(header: str, named: str) -> None:
    refusal = refused_coding(header)
    assert refusal is not None and refusal.status == 415
    assert refusal.detail.startswith(f"the body is {named}-encoded (Content-Encoding)")


@pytest.mark.parametrize("header", [None, "", "identity", " Identity ", "identity, identity"])
def test_a_body_as_it_is_is_read(header: str | None) -> None:
    assert refused_coding(header) is None


def test_a_client_that_left_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = client_left("POST", "/predict\nFORGED")
    [record] = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "\n" not in record.getMessage()
    assert (answer.status, json.loads(answer.body)["detail"]) == (
        400, "the body was cut short: the client disconnected")
