"""FastAPI's /docs and /redoc work offline: every asset they load is served by the app itself.

A real uvicorn server on 127.0.0.1; the pages are read as a browser would, and every URL they
reference is fetched from that server. No URL may point anywhere else (a CDN is out of reach
offline and behind a firewall).
"""

from __future__ import annotations

import re
from typing import Iterator
from urllib.parse import urljoin

import pytest
import requests

from ml_project.serving.fastapi_app import create_app
from tests.serving import serve_in_thread

# src/href attributes, `url: '...'` in Swagger UI's set-up and ReDoc's spec-url.
REFERENCE = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_in_thread(create_app(None)) as url:  # the docs need no model
        yield url


def _references(html: str) -> list[str]:
    return [first or second for first, second in REFERENCE.findall(html)]


@pytest.mark.parametrize(("page", "expected"), [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "openapi.json"}),
    ("/redoc", {"redoc.standalone.js", "openapi.json"}),
])
def test_docs_pages_load_every_asset_from_the_app_itself(base_url: str, page: str,
                                                         expected: set[str]) -> None:
    html = requests.get(base_url + page, timeout=10)
    references = _references(html.text)
    assets = {reference: requests.get(urljoin(base_url + page, reference), timeout=30)
              for reference in references}

    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", html.text), "an external URL in the page"
    assert expected <= {reference.rsplit("/", 1)[-1] for reference in references}
    for reference, answer in assets.items():
        assert answer.status_code == 200, reference
        assert len(answer.content) > 0, reference
    scripts = [answer for reference, answer in assets.items() if reference.endswith(".js")]
    assert scripts and all(len(answer.content) > 100_000 for answer in scripts)  # the real bundle
