#!/usr/bin/env bash
# CI/CD checks: install the dev environment from Pipfile.lock, then isort, ruff, bandit, mypy and
# pytest.
# Exits non-zero on the first failure. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source executables/bootstrap_pipenv.sh

echo "== install (pipenv sync --dev)"
pipenv sync --dev

echo "== isort"
pipenv run isort --check-only --diff ml_project use_cases tests deployment executables

echo "== ruff"
pipenv run ruff check ml_project use_cases tests deployment executables

echo "== bandit (security lint of the package)"
pipenv run bandit -q -r ml_project

echo "== mypy"
pipenv run mypy ml_project use_cases tests

echo "== pytest"
pipenv run pytest -q
