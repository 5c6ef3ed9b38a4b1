"""What a serving process needs to know of the loader, without the database library: its
status file (what it has done, for /health) and whether one is at work (its lock).

The loader (`loader.py`) writes and takes them; a service's workers only read them, so they
never import SQLAlchemy: only the loader's process does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ml_project.prediction_log import journal

LOCK_FILE = "loader.lock"
STATUS_FILE = "loader.json"


@dataclass
class Status:
    """What the loader has done, written to STATUS_FILE for /health and monitoring."""

    loaded: int = 0  # journal lines stored (one whose record was stored already counts too)
    rejected: int = 0
    pending_bytes: int = 0
    error: str | None = None
    # When it last changed (an idle loader writes nothing).
    updated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    pid: int | None = None  # the loader's process (a service's is a process of its own)


def read_status(directory: Path) -> Status | None:
    """The loader's last status (None if no loader ever ran here)."""
    try:
        return Status(**json.loads((directory / STATUS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def loader_running(directory: Path) -> bool:
    """Whether a loader holds the lock now (a service's loader, or a pass in progress)."""
    return journal.lock_held(directory / LOCK_FILE)
