"""App Engine's default entry: `gunicorn -b :$PORT main:app` runs this `app` when app.yaml names
no entrypoint (app.yaml names the FastAPI launcher; this is the fallback, and any WSGI host's).

`app` is the Flask app over the one prediction core, so it answers exactly as the FastAPI app
does. App Engine imports this module once per worker process, so the model is loaded once there.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from ml_project.serving.bundle import app_of
from ml_project.serving.flask_app import create_flask_app

BUNDLE = Path(__file__).resolve().parent


def create_app() -> Flask:
    """The served app: the bundle's config and the champion it carries."""
    return app_of(BUNDLE, create_flask_app)


app = create_app()
