#!/usr/bin/env bash
# From a fresh clone to a validated, tracked, registered model and its first predictions:
# installs the environment, trains on the shipped data, scores it, and says where everything is.
# Needs only Python 3.11 with pip and venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source executables/bootstrap_pipenv.sh

echo "== 1/3 installing the environment (pipenv sync)"
pipenv sync

echo "== 2/3 modelling: validate, train, select, track, register, export"
pipenv run python use_cases/modelling_historic_data_local.py

echo "== 3/3 prediction: score the historic data with the champion"
pipenv run python use_cases/predicting_historic_data_local.py

cat <<'DONE'

Done. Where things are:
  model artifact + metadata   data/model_artifacts/champion/
  leaderboard (csv, md, png)  output/leaderboard/
  quarantined rows + reasons  output/quarantine/
  predictions                 output/predictions/
  logs                        output/logs/
  MLflow runs and registry    pipenv run mlflow ui --backend-store-uri sqlite:///mlflow.db
Next: stream production data     pipenv run python use_cases/predicting_production_data_local.py
      serve the model             bash executables/start_prediction_service.sh
DONE
