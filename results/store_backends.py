"""The two back ends of the results store: an embedded SQLite file, or a PostgreSQL database a lab shares.

:class:`results.store.Store` writes its SQL once, with ``?`` placeholders and
the SQLite dialect of its migrations; a back end is the small part that
differs: how a connection is opened, how a write transaction takes the
store's one write lock, how an inserted row's id comes back, and how the
migrations' column types read in PostgreSQL.

Why one write lock in PostgreSQL too: SQLite serialises writers
(``BEGIN IMMEDIATE``), and the store's check-then-write steps (is there an
ok record for this job already? the next baseline number) rely on it.  A
PostgreSQL write transaction takes the same guarantee with a transaction-level
advisory lock (``pg_advisory_xact_lock``): writers queue for it, readers never
wait (MVCC), and in READ COMMITTED every statement after the lock sees what
the previous writers committed.  The database's own constraints (PRIMARY KEY
on run_id, UNIQUE (run_id, job_key)) stay the last word.  Records arrive one
every few seconds per device, so one writer at a time costs nothing.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl, urlsplit

URL_SCHEMES = ("postgresql", "postgres")
#: The key of the store's write lock (``pg_advisory_xact_lock``): a constant that other applications are unlikely
#: to pick ("snp-bench" in ASCII, as a signed 64-bit integer).
WRITE_LOCK_KEY = 0x736E702D62656E63
_CREDENTIALS_HELP = ("keep the password out of the URL: use ~/.pgpass (or PGPASSFILE), a service file "
                     "(PGSERVICEFILE, postgresql://?service=NAME) or the PGPASSWORD environment variable")


class BackendError(ValueError):
    """A store location that cannot be used; one line for the user (results.store re-raises it as StoreError)."""


def is_url(location: object) -> bool:
    """Whether `location` names a PostgreSQL database (``postgresql://`` or ``postgres://``), not a file."""
    return isinstance(location, str) and location.split("://", 1)[0].lower() in URL_SCHEMES and "://" in location


def redact(url: str) -> str:
    """`url` fit for messages and logs: a password in it, as ``user:***@`` or ``password=***``, never shows."""
    masked = re.sub(r"^([A-Za-z][\w+.-]*://[^:/@?#]*):[^?#]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", masked)


def check_url(url: str, source: str = "") -> None:
    """Refuse a URL that carries a password: config files and logs must hold no credentials."""
    parts = urlsplit(url)
    if parts.password is not None or any(k == "password" for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        where = f" (from {source})" if source else ""
        raise BackendError(f"store URL {redact(url)}{where} contains a password; {_CREDENTIALS_HELP}")


class SQLiteBackend:
    """One SQLite file in WAL mode; writers serialised by ``BEGIN IMMEDIATE`` (see results/store.py)."""

    name = "sqlite"
    error: type[Exception] = sqlite3.Error
    integrity_error: type[Exception] = sqlite3.IntegrityError

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.display = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)

    def connect(self) -> sqlite3.Connection:
        """A new connection with the store's pragmas (isolation_level=None: the store issues BEGIN/COMMIT)."""
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise BackendError(f"{self.path}: SQLite refused WAL journal mode (got {mode!r}); use a local disk")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction, write lock taken up front (BEGIN IMMEDIATE), committed on success."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def sql(self, text: str) -> str:
        return text

    def usable(self, conn: sqlite3.Connection) -> bool:
        """A file's connection never goes away under us."""
        return True

    def insert(self, conn: sqlite3.Connection, table: str, row: Mapping[str, Any]) -> int:
        """Insert `row` into `table` (column names written by the store, never user text); its new id."""
        columns = list(row)
        cursor = conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                              [row[c] for c in columns])
        return int(cursor.lastrowid)

    def migration(self, statement: str, override: str | None) -> str:
        """The migrations are written in SQLite's dialect."""
        return statement

    def schema_version_ddl(self) -> str:
        return "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)"


def postgresql_ddl(statement: str) -> str:
    """A migration statement of SQLite's dialect in PostgreSQL's, for the types that differ.

    ``id INTEGER PRIMARY KEY`` (SQLite's rowid) is an identity column; INTEGER is
    BIGINT (MACs of a large model pass 2**31); REAL is DOUBLE PRECISION (SQLite's
    REAL is 8 bytes, PostgreSQL's only 4: a median must round-trip exactly); TEXT
    compares byte by byte (``COLLATE "C"``), as SQLite's does, so run ids and
    timestamps sort the same whatever the database's locale.
    """
    out = re.sub(r"\bid\s+INTEGER PRIMARY KEY\b", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement)
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', out)


class PostgreSQLBackend:
    """A PostgreSQL database through psycopg 3; writers serialised by a transaction-level advisory lock."""

    name = "postgresql"

    def __init__(self, url: str, busy_timeout_s: float) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise BackendError(f"the store {redact(url)} is a PostgreSQL database, which needs psycopg 3: "
                               f"pip install 'snp-bench[pg]' (or 'psycopg[binary]>=3.1')") from None
        check_url(url)
        self._psycopg, self._dict_row = psycopg, dict_row
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.display = redact(url)
        self.error: type[Exception] = psycopg.Error
        self.integrity_error: type[Exception] = psycopg.IntegrityError

    def connect(self) -> Any:
        """A new autocommit connection (the store opens its write transactions itself); reads see every commit.

        ``lock_timeout`` is SQLite's busy timeout: how long a writer waits for
        the write lock before failing.  Passwords come from libpq itself
        (~/.pgpass, PGPASSFILE, a service file, PGPASSWORD), never from here.
        """
        try:
            conn = self._psycopg.connect(self.url, autocommit=True, row_factory=self._dict_row,
                                         connect_timeout=max(1, int(self.busy_timeout_s)),
                                         application_name="snp-bench")
        except self._psycopg.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendError(f"cannot connect to the PostgreSQL store {self.display}: {reason}") from None
        conn.execute(f"SET lock_timeout = {int(self.busy_timeout_s * 1000)}")
        return conn

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        """One write transaction holding the store's write lock until it commits or rolls back."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            yield

    def usable(self, conn: Any) -> bool:
        """False once the server closed the connection (a restart, an idle timeout, pg_terminate_backend)."""
        return not (conn.closed or conn.broken)

    def sql(self, text: str) -> str:
        """``?`` placeholders as psycopg's ``%s`` (the store's SQL holds neither character in a literal)."""
        return text.replace("?", "%s")

    def insert(self, conn: Any, table: str, row: Mapping[str, Any]) -> int:
        """Insert `row` into `table` (column names written by the store, never user text); its new id."""
        columns = list(row)
        cursor = conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
                              f"VALUES ({', '.join('%s' for _ in columns)}) RETURNING id", [row[c] for c in columns])
        return int(cursor.fetchone()["id"])

    def migration(self, statement: str, override: str | None) -> str:
        """`override` where SQLite's statement has no translation (its JSON functions), else the types translated."""
        return override if override is not None else postgresql_ddl(statement)

    def schema_version_ddl(self) -> str:
        return 'CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied TEXT COLLATE "C" NOT NULL)'


def open_backend(location: str | Path, busy_timeout_s: float) -> SQLiteBackend | PostgreSQLBackend:
    """The back end a location names: a ``postgresql://`` URL (a str), or a SQLite file (any other path)."""
    if is_url(location):
        return PostgreSQLBackend(str(location), busy_timeout_s)
    text = str(location)
    if re.match(r"^(postgresql|postgres):/[^/]", text, re.IGNORECASE):
        raise BackendError(f"store {text!r} looks like a PostgreSQL URL whose '//' was collapsed by a path; "
                           f"pass the URL as text, not as a pathlib.Path")
    if "://" in text:
        raise BackendError(f"store {redact(text)!r}: unknown URL scheme; accepted: "
                           f"a SQLite file path or a postgresql:// URL")
    return SQLiteBackend(Path(location), busy_timeout_s)
