"""Shared fixtures: real OpenSSH servers for the SSH transport tests (see tests/sshd.py)."""

from __future__ import annotations

import pathlib
from typing import Callable, Iterator

import pytest

from sshd import NetnsLab, SSHServer, netns_lab, start_sshd


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """One sshd on 127.0.0.1 for the whole session (skipped if sshd is missing, unless CI=true)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def sshd_factory(tmp_path: pathlib.Path) -> Iterator[Callable[..., SSHServer]]:
    """Start extra sshds for one test (e.g. one that the test kills); all stopped afterwards."""
    servers: list[SSHServer] = []

    def start(**kwargs: object) -> SSHServer:
        server = start_sshd(tmp_path / f"sshd{len(servers)}", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def netns_devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    """Two sshd "devices" in their own network namespaces, dev-b reachable only via dev-a.

    Skipped when not root or when ``ip netns`` is unavailable.
    """
    with netns_lab(tmp_path_factory.mktemp("netns")) as lab:
        yield lab


from pg import PGServer, start_postgres  # noqa: E402 - appended with the PostgreSQL store tests


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PGServer]:
    """One real PostgreSQL server (unix socket only) for the session; skipped without it, unless CI=true.

    ``pg_server.new_database()`` gives a test its own empty database URL (see tests/pg.py)."""
    server = start_postgres()
    yield server
    server.stop()
