"""The one router of every serverless handler: a request's four parts in, the local API's Reply out.

Cloud Functions (a Flask request), Lambda (an event) and SageMaker (a WSGI request) each hand a
request over in their own shape; their adapters turn it into a `Request` (method, path, headers,
body) and send back the `Reply` this router returns, unchanged. The routes, 404 and 405, the
API key and the body limit are decided here, once, and the work by `PredictionEndpoints`; so
every provider answers with the same status and the same bytes as the FastAPI and Flask apps.

A bundle (`output/deployment/PROVIDER/`: this package, the config, the champion artifact) is
loaded once per process, on the first request (`app_for`) or at start (`ServerlessApp.load`).
Where the bundle is read-only (Lambda's /var/task), what the service writes (the prediction log
and its spill files) goes under the temporary folder: set ML_PROJECT_PREDICTION_LOG_URL to a
database that outlives the instance. Imports no web framework, mlflow, evidently or pandera.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ml_project.cli import LOG_FORMAT, OneLineFormatter, escape_for_log
from ml_project.config import DEFAULT_CONFIG_FILE, load_config
from ml_project.serving.endpoints import (
    API_KEY_HEADER,
    PredictionEndpoints,
    Reply,
    error_reply,
    internal_error_reply,
)
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog

logger = logging.getLogger(__name__)

WORK_DIR_NAME = "ml_project"  # under the temporary folder, when the bundle is read-only


@dataclass(frozen=True)
class Request:
    """What every provider's request comes down to. `headers`: lower-case names, repeated
    headers joined by a comma (as WSGI joins them); `body` None: larger than the limit."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None

    @property
    def api_key(self) -> str | None:
        return self.headers.get(API_KEY_HEADER.lower())

    @property
    def content_type(self) -> str:
        """The media type alone, lower case (`text/csv` of `text/csv; charset=utf-8`)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def header_map(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as `Request` holds them: names lower case, repeated values joined by a comma."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


Route = Callable[[PredictionEndpoints, Request], Reply]

# path -> (method, what answers it): the routes of the local API (api.py, flask_api.py).
ROUTES: dict[str, tuple[str, Route]] = {
    "/health": ("GET", lambda endpoints, request: endpoints.health()),
    "/ready": ("GET", lambda endpoints, request: endpoints.ready(request.api_key)),
    "/model": ("GET", lambda endpoints, request: endpoints.model(request.api_key)),
    "/predict": ("POST", lambda endpoints, request: endpoints.predict(request.body,
                                                                      request.api_key)),
    "/predict/batch": ("POST", lambda endpoints, request: endpoints.predict_batch(
        request.body, request.api_key)),
}


class ServerlessApp:
    """The endpoints of one loaded service behind a route table; share it between threads."""

    def __init__(self, endpoints: PredictionEndpoints,
                 routes: Mapping[str, tuple[str, Route]] = ROUTES) -> None:
        self.endpoints = endpoints
        self.routes = dict(routes)

    @classmethod
    def load(cls, bundle: Path, work_dir: Path | None = None,
             routes: Mapping[str, tuple[str, Route]] = ROUTES) -> ServerlessApp:
        """The service of `bundle` (its project_config.yaml and champion artifact), with the API
        key from ML_PROJECT_API_KEY. Raises ArtifactError if the bundle has no model.

        Args:
            work_dir: where the service writes (relative paths in the config other than the
                model's resolve here); default the bundle, or the temporary folder if the
                bundle is read-only.
        """
        bundle = bundle.resolve()
        config_file = bundle / DEFAULT_CONFIG_FILE
        bundled = load_config("prediction", "production", "deployed",
                              config_file=config_file, root=bundle)
        work_dir = work_dir or (bundle if os.access(bundle, os.W_OK)
                                else Path(tempfile.gettempdir()) / WORK_DIR_NAME)
        config = load_config(
            "prediction", "production", "deployed", config_file=config_file, root=work_dir,
            overrides={"paths": {"model_artifacts": str(bundled.model_artifacts_dir)}},
        )
        service = PredictionService.from_config(config)
        log = PredictionLog.from_config(config)
        logger.info("Serving %s version %s from %s; prediction log: %s", service.model_name,
                    service.model_version, bundle, log.url)
        return cls(PredictionEndpoints.create(service, log), routes)

    @property
    def max_body_bytes(self) -> int:
        """The body size a provider's adapter needs to read at most."""
        return self.endpoints.max_body_bytes

    def handle(self, request: Request) -> Reply:
        """The local API's answer to `request`: 404 for an unknown path (a trailing slash
        included), 405 with `Allow` for another method, 413 past the body limit."""
        route = self.routes.get(request.path)
        if route is None:
            return error_reply(404, "Not Found")
        method, answer = route
        if request.method.upper() != method:
            return replace(error_reply(405, "Method Not Allowed"), allow=method)
        try:
            if request.body is not None and len(request.body) > self.max_body_bytes:
                request = replace(request, body=None)
            return answer(self.endpoints, request)
        except Exception:  # a fault of the server: the same JSON 500 as the local API
            logger.exception("Unexpected error on %s %s", request.method,
                             escape_for_log(request.path))
            return internal_error_reply()


_apps: dict[Path, ServerlessApp] = {}
_loading = threading.Lock()


def app_for(bundle: Path) -> ServerlessApp:
    """The app of `bundle`, loaded by the first request of this process and shared after: a
    warm function instance never loads the model twice, however many threads it serves."""
    key = bundle.resolve()
    with _loading:
        if key not in _apps:
            configure_logging()
            _apps[key] = ServerlessApp.load(key)
        return _apps[key]


def configure_logging() -> None:
    """Log to stderr (the provider collects it) unless the runtime set up the root logger."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
