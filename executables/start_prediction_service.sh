#!/usr/bin/env bash
# Start the prediction service in the foreground; Ctrl-C stops it.
#
#   bash executables/start_prediction_service.sh [fastapi|flask] [PORT] [launcher options]
#
# Defaults: fastapi on port 8000, bound to 127.0.0.1 (set HOST=0.0.0.0 to accept connections
# from other machines), one worker process per CPU (--workers N or WEB_CONCURRENCY=N to choose).
# Set ML_PROJECT_API_KEY to require a matching X-API-Key header. Further options go to the
# launcher, e.g. --workers N --config FILE --root DIR -v (see ml_project/serving/launcher.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source executables/bootstrap_pipenv.sh

framework=${1:-fastapi}
port=${2:-8000}
exec pipenv run python -m ml_project.serving.launcher "$framework" --port "$port" "${@:3}"
