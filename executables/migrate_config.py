"""Rewrite a project_config.yaml of an older format in the current one, comments and layout
kept (the steps: ml_project/config_migrations.py). `copier update` runs it when it brings a
project past a format change; run it yourself after pulling one. The loader reads an older file
anyway, and says so, until it is rewritten.

    python executables/migrate_config.py [CONFIG_FILE]   # default: project_config.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, by copier too
from ml_project.config_migrations import CONFIG_VERSION, MigrationError, migrate_file  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("config_file", type=Path, nargs="?", default=Path("project_config.yaml"))
    args = parser.parse_args(argv)
    try:
        changed = migrate_file(args.config_file)
    except (OSError, MigrationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not changed:
        print(f"{args.config_file} is in format {CONFIG_VERSION} already: nothing to do")
    else:
        print(f"{args.config_file} rewritten in format {CONFIG_VERSION}: {'; '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
