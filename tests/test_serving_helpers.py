"""The helpers every server test stands on keep their word: a port from `free_port` goes to the
server it was taken for, and a server that did not get its port is never taken for ready
because another process answers there (once, another xdist worker's server answered a
Cloud Function test with its own model, trained a minute apart)."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deployment_helpers import running, stop_group
from tests.serving import free_port, listens, stub_server


def test_a_free_port_is_held_from_the_kernels_choice_and_left_to_a_reusing_server() -> None:
    ports = {free_port() for _ in range(200)}
    chosen = []
    for _ in range(2000):  # what other workers' free_port and servers on port 0 get
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", 0))
            chosen.append(probe.getsockname()[1])
    # Unheld, ~14 of the 2,000 would land on one of 200 ports among ~28,000 ephemeral ones.
    assert not ports & set(chosen)

    port = ports.pop()
    with socket.socket() as plain, pytest.raises(OSError) as taken:
        plain.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    with socket.socket() as server:  # as uvicorn, gunicorn, werkzeug and PostgreSQL bind
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()


def test_listens_finds_the_socket_of_a_descendant_and_only_on_its_port(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(  # a shell, and the server under it: as a Procfile runs
        ["sh", "-c", f"{sys.executable} -m http.server --bind 127.0.0.1 {port}; exit 0"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not listens(server.pid, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listens(server.pid, port)
        assert not listens(server.pid, free_port())
    finally:
        stop_group(server)
    assert not listens(server.pid, port)


def test_a_server_that_never_got_its_port_is_not_ready_when_another_answers_there(
    tmp_path: Path
) -> None:
    with stub_server([]) as (url, _):  # answers GET /ready with 200, as a served model does
        port = int(url.rpartition(":")[2])
        never_listens = [sys.executable, "-c", "import time; time.sleep(60)"]
        with pytest.raises(AssertionError, match="not the process started for it"):
            with running(never_listens, tmp_path, {}, port, tmp_path / "out"):
                pytest.fail("taken for ready")
