"""AWS Lambda entry: `lambda_function.handler`, the image's CMD.

Takes API Gateway REST (payload 1.0) and HTTP API (2.0) proxy events, Function URL events and
direct invocations (`{"instance": {...}}`, `{"instances": [...]}`), and returns a proxy response
with the local API's status and bytes (`ml_project/serving/lambda_events.py`). Inside Lambda the model
is loaded while the execution environment starts (its init phase), once; anywhere else (tests,
invoke_local.py) by the first event.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ml_project.serving.lambda_events import handle_event
from ml_project.serving.serverless import app_for

BUNDLE = Path(__file__).resolve().parent


def handler(event: Any, context: Any) -> dict[str, Any]:
    return handle_event(app_for(BUNDLE), event)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # set by the Lambda runtime only
    app_for(BUNDLE)
