#!/usr/bin/env bash
# Refresh the screenshots in documentation/images/ from a real run, so they never go stale:
# trains on the shipped data, streams the production sample, runs the monitoring use case, all in
# a temporary folder (the project's data/, output/ and mlflow.db are left alone); then serves
# that run's MLflow store with `mlflow ui` on 127.0.0.1 and the app's Swagger UI, and photographs
# them and the Evidently drift report with headless Chromium.
#
#   bash executables/screenshots.sh            # needs Chromium: apt-get install chromium
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source executables/bootstrap_pipenv.sh
export PYTHONPATH="$PWD"  # this project's code, whatever else is installed

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "error: needs Chromium (e.g. apt-get install chromium)" >&2
  exit 2
fi
images=documentation/images
work=$(mktemp -d)
profile=$(mktemp -d)
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  rm -rf "$work" "$profile"
}
trap cleanup EXIT

python_bin=$(pipenv --venv)/bin/python
free_port() { "$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # URL: until it answers, at most 5 min (a busy machine starts mlflow slowly)
  for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.5; done
  echo "error: $1 did not answer" >&2; exit 1
}
shoot() {  # PNG URL [WIDTH,HEIGHT]: the page after its scripts ran (virtual time), offline
  "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --hide-scrollbars --force-device-scale-factor=1 --window-size="${3:-1400,900}" \
    --virtual-time-budget=20000 --screenshot="$1" "$2" 2>>"$work/chromium.log"
  echo "wrote $1"
}

echo "== a real run in $work: modelling, a production stream, monitoring"
mkdir -p "$work/data"
cp data/historic_data.csv data/production_data.csv data/production_labels.csv "$work/data/"
run() { "$python_bin" "use_cases/$1" --root "$work" "${@:2}"; }
run modelling_historic_data_local.py
run predicting_production_data_local.py
run monitoring_production_data_local.py || true  # the shipped sample drifts on purpose (exit 10)

echo "== MLflow UI and the prediction service on 127.0.0.1"
ui_port=$(free_port)
setsid "$python_bin" -m mlflow ui --backend-store-uri "sqlite:///$work/mlflow.db" \
  --host 127.0.0.1 --port "$ui_port" >"$work/mlflow_ui.log" 2>&1 &
servers+=($!)
api_port=$(free_port)
setsid "$python_bin" -m ml_project.serving.launcher fastapi --port "$api_port" --root "$work" \
  >"$work/api.log" 2>&1 &
servers+=($!)
wait_for "http://127.0.0.1:$ui_port/health"
wait_for "http://127.0.0.1:$api_port/health"
experiment_name=$("$python_bin" -c "from ml_project.config import load_config
print(load_config('modelling', 'historic', 'local', root='$work').tracking.experiment_name)")
model_name=$("$python_bin" -c "from ml_project.config import load_config
print(load_config('modelling', 'historic', 'local', root='$work').tracking.registered_model_name)")
experiment_id=$(curl -sf "http://127.0.0.1:$ui_port/api/2.0/mlflow/experiments/get-by-name?experiment_name=$experiment_name" \
  | "$python_bin" -c 'import json, sys; print(json.load(sys.stdin)["experiment"]["experiment_id"])')
run_id=$(curl -sf -X POST "http://127.0.0.1:$ui_port/api/2.0/mlflow/runs/search" \
  -H 'content-type: application/json' -d "{\"experiment_ids\": [\"$experiment_id\"]}" \
  | "$python_bin" -c 'import json, sys
runs = json.load(sys.stdin)["runs"]  # newest first: the modelling run, not a candidate or monitoring
print(next(r["info"]["run_id"] for r in runs if r["info"]["run_name"].startswith("modelling")))')

echo "== screenshots"
shoot "$images/mlflow_runs.png" "http://127.0.0.1:$ui_port/#/experiments/$experiment_id/runs" 1900,700
shoot "$images/mlflow_run.png" \
  "http://127.0.0.1:$ui_port/#/experiments/$experiment_id/runs/$run_id" 1900,1100
shoot "$images/mlflow_model.png" "http://127.0.0.1:$ui_port/#/models/$model_name" 1900,700
shoot "$images/drift_report.png" "file://$work/output/monitoring/drift_report.html" 1400,1600
shoot "$images/swagger_ui.png" "http://127.0.0.1:$api_port/docs" 1400,1100
