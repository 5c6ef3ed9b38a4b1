# Sourced by the other scripts: puts a working `pipenv` on PATH and sets the project's Pipenv
# options. Needs only Python 3.11 with venv: a missing pipenv is installed into a small tool venv
# (.tools/), never into the system Python (which may be "externally managed").
set -euo pipefail
export PIPENV_VENV_IN_PROJECT=1 PIPENV_YES=1 PIPENV_NOSPIN=1 PIPENV_VERBOSITY=-1
export PIPENV_IGNORE_VIRTUALENVS=1
if ! command -v pipenv >/dev/null 2>&1; then
  if [ ! -x .tools/bin/pipenv ]; then
    python_bin=$(command -v python3.11 || command -v python3)
    echo "pipenv not found: installing it into .tools/ with $python_bin" >&2
    "$python_bin" -m venv .tools
    .tools/bin/pip install --quiet --disable-pip-version-check pipenv
  fi
  export PATH="$PWD/.tools/bin:$PATH"
fi
