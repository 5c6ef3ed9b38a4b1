#!/usr/bin/env bash
# Remove what runs leave behind, before adapting the template to your own table: outputs (logs,
# predictions, quarantine, the prediction log, reports), the local MLflow store and its
# artifacts, and the exported models. Your config, data and code are untouched.
#
#   bash executables/clear_outputs.sh [--yes]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

targets=(output/* mlflow.db mlflow.db.lock mlruns mlartifacts data/model_artifacts
         data/model_artifacts.lock)
present=()
for target in "${targets[@]}"; do
  [ "$target" = "output/.gitkeep" ] && continue
  [ -e "$target" ] && present+=("$target")
done
if [ ${#present[@]} -eq 0 ]; then
  echo "Nothing to clear."
  exit 0
fi
echo "Will remove: ${present[*]}"
if [ "${1:-}" != "--yes" ]; then
  read -r -p "Proceed? [y/N] " answer
  [[ "$answer" =~ ^[Yy]$ ]] || { echo "Nothing removed."; exit 1; }
fi
# A service still running may write into a folder as it is removed ("Directory not empty"):
# once more, a moment later.
rm -rf -- "${present[@]}" 2>/dev/null || { sleep 1; rm -rf -- "${present[@]}"; }
echo "Cleared. Your MLflow store and prediction log start empty at the next run."
