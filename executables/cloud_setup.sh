#!/usr/bin/env bash
# Build the deployment bundle of one provider in output/deployment/PROVIDER/, or remove it.
#
#   bash executables/cloud_setup.sh PROVIDER [--clean] [--config FILE] [provider options]
#
# PROVIDER: heroku, google_app_engine, google_cloud_function, aws_lambda, aws_sagemaker, container.
# The logic lives in deployment/cloud_setup.py; documentation/deployment.md has the steps after it.
# Inside an active virtualenv (`pipenv shell`, `pipenv run`, CI) that Python runs it; otherwise
# the project's Pipenv environment does.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${VIRTUAL_ENV:-}" ]; then
  exec "$VIRTUAL_ENV/bin/python" -m deployment.cloud_setup "$@"
fi
source executables/bootstrap_pipenv.sh
exec pipenv run python -m deployment.cloud_setup "$@"
