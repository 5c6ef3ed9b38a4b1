#!/usr/bin/env bash
# Rename the package (ml_project, or whatever pyproject.toml's [project] name is now) to NEW_NAME,
# atomically, refusing a name that would shadow a module of the project's environment. The logic
# and its guarantees: executables/rename_project.py (any Python 3.11+ gives the same verdict).
#
#   bash executables/rename_project.sh NEW_NAME
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python_bin=$(command -v python3.11 || command -v python3)
if [ -x .venv/bin/python ]; then python_bin=.venv/bin/python; fi
exec "$python_bin" executables/rename_project.py "$@"
