"""App Engine's default entry: `gunicorn -b :$PORT main:app` runs this `app` when app.yaml names
no entrypoint (app.yaml names the FastAPI launcher; this is the fallback, and any WSGI host's).

`app` is the Flask app over the one prediction core, so it answers exactly as the FastAPI app
does. App Engine imports this module once per worker process, so the model is loaded once there.
"""

from __future__ import annotations

from flask import Flask

from ml_project.cli import configure_logging
from ml_project.config import load_config
from ml_project.serving.flask_app import create_flask_app
from ml_project.predict import PredictionService
from ml_project.prediction_log.log import PredictionLog


def create_app() -> Flask:
    """The served app: config from the bundle's project_config.yaml, the champion it carries."""
    config = load_config("prediction", "production", "deployed")
    configure_logging(config, "serving_app_engine")
    service = PredictionService.from_config(config)
    return create_flask_app(service, PredictionLog.from_config(config))


app = create_app()
