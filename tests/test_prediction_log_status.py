"""What a serving process reads of the loader without the database library: the status a real
loader wrote, and whether a loader is at work (its lock), in a process that never imports
SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ml_project.prediction_log import journal
from ml_project.prediction_log.loader import Loader
from ml_project.prediction_log.records import log_record
from ml_project.prediction_log.status import STATUS_FILE, read_status

READER = """
import sys
from pathlib import Path
from ml_project.prediction_log.status import loader_running, read_status
status = read_status(Path(sys.argv[1]))
print(status.loaded, status.error, loader_running(Path(sys.argv[1])), "sqlalchemy" in sys.modules)
"""


def test_a_process_without_the_database_library_reads_what_a_real_loader_wrote(
    tmp_path: Path
) -> None:
    directory = tmp_path / "journal"
    records = [log_record(None, {"x": i}, request_id=f"r{i}", source="test", latency_ms=1.0)
               for i in range(3)]
    writer = journal.Journal(directory)
    writer.append(b"".join(journal.encode_line(record.to_row()) for record in records))
    writer.close()
    loader = Loader(f"sqlite:///{tmp_path / 'log.db'}", directory)
    loader.load()
    loader.dispose()

    found = subprocess.run([sys.executable, "-c", READER, str(directory)], capture_output=True,
                           text=True, timeout=120, check=True).stdout.split()

    assert found == ["3", "None", "False", "False"]
    status = read_status(directory)
    assert status is not None and status.loaded == 3 and status.pid is not None


def test_no_loader_yet_or_an_unreadable_status_is_none(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_FILE).write_text("{not json")
    assert read_status(tmp_path) is None
