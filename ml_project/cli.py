"""What every entry script shares: the common command-line options and logging set-up.

Logging is configured here, once per process, by the entry point that calls
`configure_logging`; library modules only create their loggers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ml_project.config import (
    DEFAULT_CONFIG_FILE,
    PROJECT_ROOT,
    Config,
    ConfigError,
    DataMode,
    Location,
    RunMode,
    load_config,
)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def escape_for_log(text: str) -> str:
    """Text a client sent, safe to write into a log line: a newline (or any other control
    character) cannot start a forged line, a lone surrogate cannot break the handler."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                   for char in text)


class OneLineFormatter(logging.Formatter):
    """Every message on one line, whoever logged what: values a client sent (a field name with
    a newline) cannot forge a line. Tracebacks, appended after the message, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_for_log(record.message)
        return super().formatMessage(record)


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every use case accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default: project_config.yaml)"
    )
    parser.add_argument(
        "--root", type=Path, default=None,
        help="folder that relative paths in the config resolve against (default: project root)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def start_run(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    run_mode: RunMode,
    data_mode: DataMode,
    location: Location,
    run_name: str,
    overrides: Mapping[str, Any] | None = None,
    check: Callable[[Config], None] | None = None,
) -> tuple[Config, Path]:
    """The Config for this run (exit 2 naming the bad key if it is invalid) and its log file.

    `check` is a stage's own check of the config (a modelling run's `check_training_config`),
    reported as an invalid configuration too.
    """
    try:
        config = load_config(run_mode, data_mode, location, config_file=args.config,
                             root=args.root, overrides=overrides)
        if check is not None:
            try:
                check(config)
            except ConfigError as err:
                file = args.config or PROJECT_ROOT / DEFAULT_CONFIG_FILE
                raise ConfigError(f"{file}: invalid configuration:\n  {err}") from err
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    return config, configure_logging(config, run_name, verbose=args.verbose)


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """--input, --limit and --rate: the options of every use case that streams production data."""
    parser.add_argument("--input", type=Path, default=None,
                        help="production instances to stream (default: data.production)")
    parser.add_argument("--limit", type=int, default=None, help="stop after N instances")
    parser.add_argument("--rate", type=float, default=None,
                        help="instances per second (default: as fast as possible)")


def configure_logging(config: Config, run_name: str, *, verbose: bool = False) -> Path:
    """Log to the console and to output/logs/<run_name>-<time>.log; returns the log file."""
    directory = config.output_dir / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "ml_project", False)]:
        root.removeHandler(handler)  # a second run in the same process gets its own file
        handler.close()
    formatter = OneLineFormatter(LOG_FORMAT)
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")):
        handler.setFormatter(formatter)
        setattr(handler, "ml_project", True)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("alembic", "urllib3", "matplotlib", "mlflow.store", "httpx", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_file
