"""A real PostgreSQL server for the store tests: initdb into a temporary folder, pg_ctl on a unix socket.

One server per test session (per pytest-xdist worker), listening on no TCP port
at all: its socket lives in its own folder, so nothing clashes with another
worker or a server already running.  Authentication is ``trust`` for that socket
only, so no password exists anywhere.  As root (CI containers) the server runs
as the ``postgres`` user (``nobody`` where Debian's package has not made one):
PostgreSQL refuses to run as root.  Durability settings are off (fsync): the
tests kill clients, never the server.

Missing binaries or psycopg skip the PostgreSQL tests with the reason, except
under ``CI=true``, where they fail (``.ci/run`` installs the server).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "snpbench"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires the PostgreSQL store tests to run")
    pytest.skip(reason)


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin, else PATH."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (None: run it as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    _skip_or_fail("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")
    return None  # pragma: no cover - _skip_or_fail raised


@dataclass
class PGServer:
    """A running server; :meth:`new_database` gives each test its own empty database."""

    bindir: Path
    base: Path  # data/, the socket and the log
    user: pwd.struct_passwd | None
    _names: itertools.count = field(default_factory=itertools.count)

    @property
    def socket_dir(self) -> Path:
        return self.base

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user={SUPERUSER}"

    def new_database(self) -> str:
        """Create an empty database and return its URL (no password: trust on the private socket)."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A server program (initdb, pg_ctl) as the server's user."""
        ids = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=60,
                              check=check, cwd=self.base, **ids)

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def start_postgres() -> PGServer:
    """initdb + pg_ctl start into a fresh folder under /tmp (short: a unix socket path has ~100 characters)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip_or_fail("psycopg is not installed (pip install 'psycopg[binary]>=3.1', in the dev extra)")
    bindir = pg_bindir()
    if bindir is None:
        _skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="snp-pg-", dir="/tmp"))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    server = PGServer(bindir, base, user)
    data = base / "data"
    init = server.run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale",
                      "--no-sync", check=False)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr.strip()[-2000:]}")
    options = (f"-k {base} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
               f"-c full_page_writes=off -c max_connections=100")
    started = server.run("pg_ctl", "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "-t", "60", "start",
                         check=False)
    if started.returncode != 0:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        server.stop()
        pytest.fail(f"pg_ctl start failed: {started.stderr.strip()} {log[-2000:]}")
    return server
