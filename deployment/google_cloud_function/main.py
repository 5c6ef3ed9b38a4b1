"""Google Cloud Functions (2nd gen) entry: `prediction_service`, an HTTP function.

Deployed with `--entry-point prediction_service` (main.tf does), it answers every route of the
local API under the function's URL, with the same status and bytes: functions-framework hands
the request to the bundle's Flask app (`ml_project/serving/flask_app.py`) as it is, and sends
back what the app answers. functions-framework answers two paths itself (`/robots.txt` and
`/favicon.ico`: an HTML 404); its documented `errorhandler` hands those to the app too, so they
get the app's JSON 404 as everywhere else. The model is loaded by the first request an instance
serves and kept for the next ones. Run it locally as Cloud Functions does:

    functions-framework --target prediction_service --source main.py --port 8080
"""

from __future__ import annotations

from pathlib import Path

import flask
import functions_framework
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from ml_project.serving.bundle import app_of
from ml_project.serving.flask_app import create_flask_app

BUNDLE = Path(__file__).resolve().parent


@functions_framework.http
def prediction_service(request: flask.Request) -> Response:
    return Response.from_app(app_of(BUNDLE, create_flask_app), request.environ)


@functions_framework.errorhandler(NotFound)  # type: ignore[untyped-decorator]  # no type hints
def not_found_by_the_framework(error: NotFound) -> Response:
    return Response.from_app(app_of(BUNDLE, create_flask_app), flask.request.environ)
