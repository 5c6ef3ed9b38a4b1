#!/usr/bin/env bash
# Start a shared MLflow tracking server in the foreground (runs, model registry, and the model
# files themselves, proxied through it); Ctrl-C stops it. Every use case then works against it
# through MLFLOW_TRACKING_URI, the line this script prints.
#
#   bash executables/start_tracking_server.sh [further `mlflow server` options, e.g. --workers 2]
#
# From the environment, with their defaults:
#   MLFLOW_BACKEND_STORE_URI      runs and registry: sqlite:///<project>/mlflow.db (the local
#                                 store, so earlier runs stay visible); a team uses PostgreSQL:
#                                 postgresql://user:password@host:5432/mlflow (psycopg 3, mapped
#                                 to postgresql+psycopg://)
#   MLFLOW_ARTIFACTS_DESTINATION  where the server keeps model files and artifacts:
#                                 <project>/mlartifacts; s3://bucket/path or gs://... in production
#   HOST  127.0.0.1 (0.0.0.0 accepts other machines: add --allowed-hosts your.host.name)
#   PORT  5000
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$PWD/mlflow.db}
if [[ $backend == postgresql://* ]]; then  # SQLAlchemy's default driver (psycopg2) is not installed
  backend="postgresql+psycopg://${backend#postgresql://}"
fi
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$PWD/mlartifacts}
host=${HOST:-127.0.0.1}
port=${PORT:-5000}

if command -v mlflow >/dev/null 2>&1; then  # the project's environment is active (a container, pipenv shell)
  run=(mlflow)
else
  source executables/bootstrap_pipenv.sh
  run=(pipenv run mlflow)
fi
shown_host=$host
[ "$host" = "0.0.0.0" ] && shown_host=$(hostname)
echo "MLflow tracking server on http://$host:$port (backend store ${backend%%://*}://..., artifacts $artifacts)."
echo "In each shell that runs the use cases (or a service with model_source: registry):"
echo
echo "  export MLFLOW_TRACKING_URI=http://$shown_host:$port"
echo
# --artifacts-destination with artifact serving (the default): clients upload and download
# model files through the server, so they need no access to the artifact store of their own.
exec "${run[@]}" server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
  --serve-artifacts --host "$host" --port "$port" "$@"
