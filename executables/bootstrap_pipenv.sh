# Sourced by the other scripts: puts a working `pipenv` on PATH and sets the project's Pipenv
# options. Needs only Python 3.11 with venv: a missing pipenv is installed into a small tool venv
# (.tools/), never into the system Python (which may be "externally managed").
set -euo pipefail
export PIPENV_VENV_IN_PROJECT=1 PIPENV_YES=1 PIPENV_NOSPIN=1 PIPENV_VERBOSITY=-1
export PIPENV_IGNORE_VIRTUALENVS=1
PIPENV_FROM_TOOLS=0
if ! command -v pipenv >/dev/null 2>&1; then
  if [ ! -x .tools/bin/pipenv ]; then
    python_bin=$(command -v python3.11 || command -v python3)
    echo "pipenv not found: installing it into .tools/ with $python_bin" >&2
    "$python_bin" -m venv .tools
    .tools/bin/pip install --quiet --disable-pip-version-check pipenv
  fi
  export PATH="$PWD/.tools/bin:$PATH"
  PIPENV_FROM_TOOLS=1
fi

# The PATH set above ends with the script; the user's shell needs it too for the README's
# `pipenv run ...` commands. Prints the one line to run, only when pipenv came from .tools/.
pipenv_path_hint() {
  if [ "$PIPENV_FROM_TOOLS" = 1 ]; then
    echo
    echo "pipenv was installed into .tools/bin, which is not on your PATH. Run this line once in"
    echo "your shell (or add it to your shell profile) and the README's 'pipenv run ...' commands work:"
    echo
    echo "  export PATH=\"$PWD/.tools/bin:\$PATH\""
  fi
}
