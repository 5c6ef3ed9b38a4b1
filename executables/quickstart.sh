#!/usr/bin/env bash
# From a fresh clone to a validated, tracked, registered model, its predictions and a drift report:
# installs the environment, trains on the shipped data, scores it in batch and as a stream,
# monitors the stream, and says where everything is.
# Needs only Python 3.11 with pip and venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source executables/bootstrap_pipenv.sh

echo "== 1/5 installing the environment (pipenv sync)"
pipenv sync

echo "== 2/5 modelling: validate, train, select, track, register, export"
pipenv run python use_cases/modelling_historic_data_local.py

echo "== 3/5 prediction: score the historic data with the champion"
pipenv run python use_cases/predicting_historic_data_local.py

# A project drafted from your own historic file may have no production sample yet.
production=$(pipenv run python -c 'from ml_project.config import load_config
config = load_config("prediction", "production", "local")
print(config.resolve(config.data.production))')
if [[ "$production" != *://* && ! -e "$production" ]]; then
  echo "== 4/5 and 5/5 skipped: no production sample at $production yet (data.production in"
  echo "   project_config.yaml). Put rows to score there (without the target), then run this again."
else
  echo "== 4/5 prediction: stream the production sample through the same core, into the log"
  pipenv run python use_cases/predicting_production_data_local.py

  echo "== 5/5 monitoring: drift and performance of the logged production data"
  # The shipped production sample drifts on purpose, so exit code 10 (drift) is the expected demo.
  status=0
  pipenv run python use_cases/monitoring_production_data_local.py || status=$?
  case $status in
    0) echo "No drift or performance drop detected." ;;
    10|11|12) echo "Monitoring raised an alert (exit $status), as the drifted demo sample should." ;;
    *) echo "Monitoring failed (exit $status)" >&2; exit "$status" ;;
  esac
fi

cat <<'DONE'

Done. Where things are:
  model artifact + metadata   data/model_artifacts/champion/
  leaderboard (csv, md, png)  output/leaderboard/
  quarantined rows + reasons  output/quarantine/
  predictions                 output/predictions/
  prediction log (SQLite)     output/prediction_log.db
  drift/performance reports   output/monitoring/
  logs                        output/logs/
  MLflow runs and registry    pipenv run mlflow ui --backend-store-uri sqlite:///mlflow.db
Next: serve the model             bash executables/start_prediction_service.sh
DONE
pipenv_path_hint
