#!/usr/bin/env bash
# Rename the package (ml_project, or whatever pyproject.toml's [project] name is now) to NEW_NAME:
# the folder (git mv), imports, pyproject.toml, the Pipfile entry and its lock, configs,
# deployment files, docs, scripts and tests; environment variables (ML_PROJECT_API_KEY...) too.
# Refuses a dirty git tree, so `git diff` shows exactly what it changed and `git checkout .`
# undoes it.
#
#   bash executables/rename_project.sh NEW_NAME
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -ne 1 ]; then
  echo "usage: bash executables/rename_project.sh NEW_NAME" >&2
  exit 2
fi
if [ -n "$(git status --porcelain)" ]; then
  echo "error: the git tree has uncommitted changes: commit or stash them first, so the rename" \
       "can be reviewed (git diff) and undone (git checkout .) on its own" >&2
  exit 1
fi
# The project's own interpreter sees the installed packages a new name must not shadow.
python_bin=$(command -v python3.11 || command -v python3)
if [ -x .venv/bin/python ]; then python_bin=.venv/bin/python; fi

exec "$python_bin" - "$1" <<'PY'
import hashlib
import importlib.util
import json
import keyword
import re
import subprocess
import sys
import tomllib
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def pipfile_hash(text: str) -> str:
    """Pipenv's hash of a Pipfile (plette's Pipfile.get_hash), kept in Pipfile.lock's _meta."""
    pipfile = tomllib.loads(text)
    data = {"_meta": {"sources": pipfile["source"], "requires": pipfile.get("requires", {})},
            "default": pipfile.get("packages", {}), "develop": pipfile.get("dev-packages", {})}
    content = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(content.encode("utf8")).hexdigest()


new = sys.argv[1]
old = tomllib.loads(Path("pyproject.toml").read_text())["project"]["name"]
sys.path = [entry for entry in sys.path if entry not in ("", ".")]  # installed modules only
if not re.fullmatch(r"[a-z][a-z0-9_]*", new):
    fail(f"{new!r} is not a lowercase Python identifier (a-z, 0-9 and _, starting with a letter)")
if keyword.iskeyword(new) or keyword.issoftkeyword(new):
    fail(f"{new!r} is a Python keyword")
if new == old:
    fail(f"the package is already called {old!r}")
if Path(new).exists():
    fail(f"{new!r} already exists in the project folder")
if new in sys.stdlib_module_names:
    fail(f"{new!r} is a standard library module: imports of it would be ambiguous")
if importlib.util.find_spec(new) is not None:
    fail(f"{new!r} is an installed module ({importlib.util.find_spec(new).origin}): pick another")

lock_in_sync = False
if Path("Pipfile").is_file() and Path("Pipfile.lock").is_file():
    lock_hash = json.loads(Path("Pipfile.lock").read_text())["_meta"]["hash"]["sha256"]
    old_hash = pipfile_hash(Path("Pipfile").read_text())
    lock_in_sync = lock_hash == old_hash

subprocess.run(["git", "mv", old, new], check=True)
replacements = [
    (re.compile(rf"\b{old}\b"), new),  # imports, paths, tool settings; not ml_project_template
    (re.compile(rf"(?<![\w-]){re.escape(old.replace('_', '-'))}(?![\w-])"),
     new.replace("_", "-")),  # the distribution name in Pipfile and Pipfile.lock
    (re.compile(rf"\b{old.upper()}_(?=[A-Z*])"), f"{new.upper()}_"),  # ML_PROJECT_API_KEY...
]
listed = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True).stdout
changed = []
for name in listed.decode().split("\0"):
    path = Path(name)
    if not name or not path.is_file() or path.is_symlink():
        continue
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # images and other binaries
        continue
    renamed = text
    for pattern, replacement in replacements:
        renamed = pattern.sub(replacement, renamed)
    if renamed != text:
        path.write_text(renamed, encoding="utf-8")
        changed.append(name)

if lock_in_sync:  # keep `pipenv install --deploy` happy; a stale lock stays stale
    lock = Path("Pipfile.lock")
    lock.write_text(lock.read_text().replace(old_hash, pipfile_hash(Path("Pipfile").read_text())))
print(f"Renamed {old} -> {new}: the folder and {len(changed)} files (see git status / git diff).")
print("Next: `pipenv sync --dev` installs the package under its new name; then "
      "`bash cicd_pipeline.sh`, and commit.")
PY
