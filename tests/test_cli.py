"""What every entry point shares: the options, the config check before anything runs, and
logging on one line per message, to the console and the run's file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ml_project.cli import (
    LOG_FORMAT,
    OneLineFormatter,
    base_parser,
    configure_logging,
    escape_for_log,
    start_run,
)
from ml_project.config import Config, ConfigError
from tests.conftest import write_project


@pytest.mark.parametrize(("text", "logged"), [
    ("plain", "plain"),
    ("forged\n2026-01-01 INFO  admin logged in", "forged\\n2026-01-01 INFO  admin logged in"),
    ("tab\tand\rreturn", "tab\\tand\\rreturn"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
])
def test_client_text_cannot_start_a_line_of_its_own(text: str, logged: str) -> None:
    assert escape_for_log(text) == logged
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", (text,), None)
    assert "\n" not in OneLineFormatter(LOG_FORMAT).format(record)


def test_a_stages_own_check_of_the_config_stops_the_run_as_an_invalid_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_project(tmp_path, n_historic=50, n_production=10)
    parser = base_parser("test")
    args = parser.parse_args(["--config", str(config_file), "--root", str(tmp_path)])

    def refuse(config: Config) -> None:
        raise ConfigError("training.candidates.x: not an estimator class")

    with pytest.raises(SystemExit) as stopped:
        start_run(parser, args, "modelling", "historic", "local", "test", check=refuse)

    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {config_file}: invalid configuration:\n"
        "  training.candidates.x: not an estimator class\n")
    assert not (tmp_path / "output" / "logs").exists()  # nothing ran


def test_configure_logging_writes_each_run_to_its_own_file(tmp_path: Path) -> None:
    config_file = write_project(tmp_path, n_historic=50, n_production=10)
    parser = base_parser("test")
    args = parser.parse_args(["--config", str(config_file), "--root", str(tmp_path)])
    config, first = start_run(parser, args, "prediction", "production", "local", "first")
    logging.getLogger("test_cli").info("to the first run")
    second = configure_logging(config, "second")
    logging.getLogger("test_cli").info("to the second run")
    try:
        assert first != second
        assert "to the first run" in first.read_text()
        assert "to the second run" not in first.read_text()
        assert "to the second run" in second.read_text()
        ours = [h for h in logging.getLogger().handlers if getattr(h, "ml_project", False)]
        assert len(ours) == 2  # the console and the second file: the first's were removed
    finally:
        for handler in [h for h in logging.getLogger().handlers
                        if getattr(h, "ml_project", False)]:
            logging.getLogger().removeHandler(handler)
            handler.close()


# Loggers of our own under the libraries' names: one another test's library configured
# (alembic's fileConfig, run by MLflow, stops its logger's propagation) would not be ours to test.
@pytest.mark.parametrize("library", ["py4j.cli_test", "urllib3.cli_test"])
def test_a_librarys_info_chatter_stays_out_of_the_run_log_and_its_warnings_do_not(
    library: str, tmp_path: Path
) -> None:
    """py4j says "Closing down clientserver connection" at INFO after every Spark run, at
    interpreter exit too (when a console stream may be closed already): only its warnings
    reach the run's log."""
    config_file = write_project(tmp_path, n_historic=50, n_production=10)
    parser = base_parser("test")
    args = parser.parse_args(["--config", str(config_file), "--root", str(tmp_path)])
    _, log_file = start_run(parser, args, "prediction", "production", "local", "quiet")
    try:
        logging.getLogger(library).info("chatter")
        logging.getLogger(library).warning("worth reading")
        text = log_file.read_text()
        assert "chatter" not in text and "worth reading" in text
    finally:
        for handler in [h for h in logging.getLogger().handlers
                        if getattr(h, "ml_project", False)]:
            logging.getLogger().removeHandler(handler)
            handler.close()
