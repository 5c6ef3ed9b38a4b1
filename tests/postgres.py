"""A real PostgreSQL server for the tests: initdb in a fresh folder, started on a free 127.0.0.1
port, stopped and removed at the end (the `postgres_server` fixture in conftest.py).

The binaries come from `pg_config --bindir` or /usr/lib/postgresql/<version>/bin. initdb
refuses to run as root, as CI does: then the server runs as the `postgres` user (runuser), in a
folder of its own under the system's temp folder (pytest's tmp_path is private to root, so
that user could not enter it). Without binaries the tests skip, saying why, except under CI
(CI=true), where they fail: a CI that silently skips the PostgreSQL tests proves nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NoReturn

import psycopg
import pytest

from tests.serving import free_port

SERVER_USER = "postgres"  # who runs the server when the tests run as root


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, newest version first; None if there is none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda path: int(path.parent.name) if
                         path.parent.name.isdigit() else 0, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def missing(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: cicd_pipeline.sh installs PostgreSQL; these tests must "
                    "run in CI)", pytrace=False)
    pytest.skip(f"{reason}: install PostgreSQL (apt-get install postgresql) to run them")


@dataclass
class PostgresServer:
    """A running server; `url(database)` to reach it, `stop`/`start` to cause an outage."""

    bindir: Path
    folder: Path
    port: int
    as_user: str | None
    running: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr}\n"
                               f"{log.read_text() if log.exists() else ''}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                 "-o", options, "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: open connections are closed, as in a database restart."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def url(self, database: str = "postgres") -> str:
        """A plain `postgresql://` URL (the log maps it to psycopg 3)."""
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SERVER_USER} "
                             "dbname=postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # a test's own name, never input
        return self.url(name)


def running_server() -> Iterator[PostgresServer]:
    """Start a server in a new temp folder; stop it and remove the folder afterwards."""
    bindir = find_binaries()
    if bindir is None:
        missing("No PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)")
    as_user = SERVER_USER if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="ml_project_postgres-"))
    try:
        if as_user:
            try:
                account = pwd.getpwnam(as_user)
            except KeyError:
                missing(f"Running as root, and there is no {as_user!r} user to run PostgreSQL")
            os.chown(folder, account.pw_uid, account.pw_gid)
        server = PostgresServer(bindir, folder, free_port(), as_user)
        server.run("initdb", "-D", str(server.data), "-U", SERVER_USER, "--auth=trust",
                   "--encoding=UTF8", "--locale=C")
        for attempt in range(3):  # another process may take the free port before the server
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        try:
            yield server
        finally:
            if server.running:
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
