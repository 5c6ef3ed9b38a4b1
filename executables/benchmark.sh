#!/usr/bin/env bash
# Measure the template against `mlflow models serve` and against the bare model, and our
# services on 1 vs 2 worker processes, on one model trained here from the shipped data; prints
# the tables and writes output/benchmarks/results.json and results.md (how long it takes:
# documentation/performance.md#durations); --quick runs small sizes, --smoke only checks that
# every measurement runs.
#
#   bash executables/benchmark.sh [--quick | --smoke] [--skip-mlflow] [--skip-workers]
#                                 [--rounds N] [--root DIR] [-v] [--reuse-model] [--in-process-only]
#
# See executables/benchmark.py for what is measured and how; documentation/performance.md for
# the latest results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source executables/bootstrap_pipenv.sh

# psutil (resident memory of each server) is a dev package.
pipenv run python -c "import psutil" 2>/dev/null || pipenv sync --dev
exec pipenv run python executables/benchmark.py "$@"
