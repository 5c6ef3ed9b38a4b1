"""A deployment bundle's app, for the cloud entry points that import one instead of running the
launcher (Lambda, Cloud Functions, App Engine's default entry).

A bundle (`output/deployment/PROVIDER/`: this package's serving part, the config, the champion
artifact) is loaded once per process, by the first request or at start, and shared by every
thread after: a warm function instance never loads the model twice. Where the bundle is
read-only (Lambda's /var/task), what the service writes (the prediction log and its spill
files) goes under the temporary folder: set ML_PROJECT_PREDICTION_LOG_URL to a database that
outlives the instance.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, TypeVar, cast

from ml_project.cli import LOG_FORMAT, OneLineFormatter
from ml_project.config import DEFAULT_CONFIG_FILE, load_config
from ml_project.export import ArtifactError
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog

logger = logging.getLogger(__name__)

WORK_DIR_NAME = "ml_project"  # under the temporary folder, when the bundle is read-only


def load_bundle(bundle: Path, work_dir: Path | None = None
                ) -> tuple[PredictionService, PredictionLog]:
    """The service of `bundle` (its project_config.yaml and champion artifact) and its log.
    Raises ArtifactError if the bundle has no model.

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
    return service, log


App = TypeVar("App")
_apps: dict[tuple[Path, Callable[..., object]], object] = {}
_loading = threading.Lock()


def app_of(bundle: Path, create: Callable[[PredictionService, PredictionLog], App]) -> App:
    """The app `create` (an app factory: `create_app`, `create_flask_app`) makes of `bundle`'s
    service and log, made by the first call in this process and shared after."""
    key = (bundle.resolve(), create)
    with _loading:
        if key not in _apps:
            configure_logging()
            try:
                service, log = load_bundle(key[0])
            except ArtifactError as err:  # the runtime reports the start failed: say why, once
                logger.error("Cannot start the prediction service: %s", err)
                raise ArtifactError(str(err)) from None
            _apps[key] = create(service, log)
        return cast(App, _apps[key])


def configure_logging() -> None:
    """Log to stderr (the provider collects it) unless the runtime set up the root logger."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
