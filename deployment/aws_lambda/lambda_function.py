"""AWS Lambda entry: `lambda_function.handler`, the image's CMD.

The bundle's FastAPI app behind Mangum (`ml_project/serving/aws_lambda.py`): API Gateway REST
(payload 1.0) and HTTP API (2.0) events, Function URL and load balancer events, and direct
invocations (`{"instance": {...}}`, `{"instances": [...]}`) get the local API's status and
bytes. Inside Lambda the model is loaded while the execution environment starts (its init
phase), once; anywhere else (tests, invoke_local.py) by the first event.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ml_project.serving.aws_lambda import LambdaHandler, lambda_handler
from ml_project.serving.bundle import app_of
from ml_project.serving.fastapi_app import create_app

BUNDLE = Path(__file__).resolve().parent
_handlers: list[LambdaHandler] = []


def handler(event: Any, context: Any) -> dict[str, Any]:
    if not _handlers:
        _handlers.append(lambda_handler(app_of(BUNDLE, create_app)))
    return _handlers[0](event, context)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # set by the Lambda runtime only
    _handlers.append(lambda_handler(app_of(BUNDLE, create_app)))
