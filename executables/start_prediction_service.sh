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

framework=${1:-fastapi}
port=${2:-8000}
# The project environment's Python, run directly: `pipenv run` alone costs ~0.3 s of the start.
# The environment is .venv/ (bootstrap_pipenv.sh sets PIPENV_VENV_IN_PROJECT); else Pipenv
# says where it is.
if [ -x .venv/bin/python ]; then
  python=.venv/bin/python
else
  source executables/bootstrap_pipenv.sh
  python=$(pipenv --py)
fi
exec "$python" -m ml_project.serving.launcher "$framework" --port "$port" "${@:3}"
