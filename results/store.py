"""The results store: runs and records in ONE SQLite file (default ``runs/bench.sqlite``) or a shared PostgreSQL.

Why SQLite: one file to copy or archive, transactions (a record is either
fully there or not), and safe concurrent writers without a server.  It stays
the embedded default; nothing about PostgreSQL is needed to use it.

Why PostgreSQL too: a lab's machines write their sweeps into one database and
every ``bench table|figures|compare|nightly|results`` reads them, ``--resume``
works from any machine, and :func:`push` copies a laptop's runs in.  The store
location decides (:func:`location`: ``--store`` > ``$SNP_BENCH_STORE`` > the
config): a ``postgresql://`` URL (as text) opens PostgreSQL through psycopg 3
(the ``pg`` extra), anything else is a SQLite file.  Both have the same schema,
the same migrations (same version numbers) and the same behaviour;
``results.store_backends`` holds what differs (connections, the write lock,
types).  A URL never carries a password (it is refused): libpq's ~/.pgpass,
PGPASSFILE, a service file or PGPASSWORD supply it, so neither config files nor
messages hold credentials.

The notes below are SQLite's; PostgreSQL keeps the same guarantees with a
connection per thread, autocommit reads (MVCC: readers never wait), and write
transactions that take one advisory lock first (``pg_advisory_xact_lock``, the
counterpart of ``BEGIN IMMEDIATE``); each commit is durable when it returns.

Concurrency and durability choices
----------------------------------
* **One connection per thread** (``threading.local``), not one shared
  connection behind a Python lock.  SQLite's own file locking then serialises
  writers the same way whether they are threads of one sweep (devices run in
  parallel threads) or separate processes (two sweeps, a report while a sweep
  runs); a Python lock would protect threads only, and a shared connection
  would make one thread's transaction swallow another's statements.
* **WAL journal mode**: readers never block the writer nor the other way round,
  so a report can read while a sweep writes.  The database lives on a local
  disk (WAL needs shared memory; it does not work on network file systems).
* **busy_timeout** (30 s by default): a writer that finds the file locked waits
  and retries instead of failing with "database is locked".
* Every write is an explicit ``BEGIN IMMEDIATE`` transaction: the write lock is
  taken *before* reading (e.g. "is there already an ok record?"), so the
  check-then-write of :meth:`Store.add_record` cannot race, and SQLite never has
  to upgrade a read lock (an upgrade that fails with SQLITE_BUSY at once,
  without waiting, in WAL mode).
* ``add_record`` commits immediately, with ``synchronous=FULL``: once it
  returns, the record survives a SIGKILL of the process and a power cut.  One
  fsync per record is nothing next to a benchmark that takes seconds.
* Fork safety: a process forked from one that has the store open must not use
  (or close) the parent's connections; the store notices the new pid and opens
  fresh connections, abandoning the inherited ones untouched.

Schema
------
``schema_version`` (version, applied) has one row per applied migration; the
store applies the missing ones (``MIGRATIONS``) when it opens, inside one write
transaction, so concurrent openers do not race.  A file whose version is newer
than this code refuses to open (:class:`SchemaTooNewError`).

``runs``: run_id (``YYYYmmdd-HHMMSS-xxxxxxxxxx``, UTC, sorts by time; older ids have 4 hex digits), created, finished,
git_rev, config (JSON), status (running / done / interrupted), note,
is_baseline, baseline_seq (order of marking, so "the last baseline" is exact),
kind (version 3, `RUN_KINDS`: ``sweep`` for ``bench sweep`` / ``bench nightly``,
``latency-profile`` and ``latency-verify`` for the runs ``bench compress
--target-latency`` times; reading commands pick sweeps, see
:mod:`results.runs`).

``records``: the columns of ``results.records.RECORD_FIELDS`` (flat columns for
everything tables and plots filter on; JSON text for runtime_options,
input_shape, samples_ns, providers, env, warnings, sample_rounds, extra), plus ``id`` and
``inserted``; UNIQUE(run_id, job_key).

Version 3 added the record columns entry, base_entry, label, device_label and
top1 (until then hidden in ``extra.job``) and ``runs.kind``; it fills them for
the rows already there: the record columns from ``extra.job`` (the keys are
then removed from it; ``base_entry`` stays NULL, as old jobs did not say their
base, and speedups fall back to the original of the same timm model), the run
kind from ``config.command`` ("... (latency profile)" -> ``latency-profile``,
"... (verification)" -> ``latency-verify``, any other command -> ``other``,
none -> ``sweep``).

Version 4 added the record columns of agent protocol 2 (interleaved rounds,
cold start, memory): group_key, rounds, sample_rounds (JSON list, as long as
samples_ns), load_s, build_s, first_inference_ms, peak_rss_mb, gpu_peak_mb and
throughput_ips.  Rows already there keep NULL in all of them: statistics read
such a record as one round holding every sample (``results.intervals``).

``tuned_settings`` (version 5, ``bench tune``): the runtime settings measured
fastest for one model entry on one device (`TUNED_KEY_FIELDS`: device, runtime,
format, entry, batch_size and the runtime options bench.toml fixed then,
``config_options``; also kept as one canonical text, ``tune_key``), with the
host the agent reported, the artifact's sha256, ``settings`` (the winner's
options, {} when the defaults won), the medians of the default and the winner
and their ratio, ``candidates`` (every candidate's settings and median per
stage of the search), ``rule`` (the winner rule's parameters), run_id (the tune
run), created and git_rev.  Rows are never overwritten: :meth:`Store.tuned`
returns the newest.

``latency_profiles`` (version 2): measured latency against MACs of one model
along one ratio pattern on one device, runtime, format and runtime options
(``bench compress --target-latency`` builds its latency model from them). The
identity (`PROFILE_KEY_FIELDS`: device, runtime, format, runtime_options, model,
model_kwargs, input_shape, pattern = {ratios, fixed, round_to}) is also kept as
one canonical JSON text, ``profile_key``, so a later call finds a profile by
exact match; ``points`` is a JSON list of {macs, median_ms, record_id, ...} (the
records that measured them stay in ``records``), plus name, run_id (the
profiling run), measure settings, created, updated and git_rev.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field as dataclass_field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from results.records import JSON_FIELDS, RECORD_FIELDS, SAMPLE_FIELDS, STATUSES
from results.store_backends import (BackendError, PostgreSQLBackend, SQLiteBackend, check_url, is_url, open_backend,
                                    redact)

Backend = SQLiteBackend | PostgreSQLBackend
#: Overrides the store's location everywhere (``--store`` still beats it): a lab points every command at its
#: shared database once, in the environment, instead of in each bench.toml.
STORE_ENV = "SNP_BENCH_STORE"

DEFAULT_PATH = Path("runs") / "bench.sqlite"
DEFAULT_BUSY_TIMEOUT_S = 30.0
RUN_STATUSES = ("running", "done", "interrupted")
#: What made a run: a sweep, or the profiling / verification steps of ``bench compress --target-latency``;
#: ``other`` only for old runs of a command version 3 did not recognise.
RUN_KINDS = ("sweep", "latency-profile", "latency-verify", "tune", "other")

_REQUIRED_RECORD_FIELDS = ("run_id", "job_key", "model", "variant", "artifact_sha256", "format", "device",
                           "runtime", "batch_size", "status")
_BOOL_FIELDS = frozenset({"provider_fallback"})
# JSON columns that are never NULL: a missing value is stored as this empty container.
_JSON_DEFAULTS: dict[str, Any] = {"runtime_options": {}, "samples_ns": [], "warnings": [], "extra": {}}
_READ_ONLY_FIELDS = frozenset({"id", "inserted"})  # present in records() output, ignored by add_record

#: What identifies a latency profile: a later call with equal values reuses it.
PROFILE_KEY_FIELDS = ("device", "runtime", "format", "runtime_options", "model", "model_kwargs", "input_shape",
                      "pattern")
_PROFILE_JSON_FIELDS = ("runtime_options", "model_kwargs", "input_shape", "pattern", "points", "measure")

#: What a tuned setting is for: the sweep uses the newest row whose values equal its job's. `config_options` are
#: the runtime options bench.toml fixed when it was tuned: a winner found under other fixed options does not apply.
TUNED_KEY_FIELDS = ("device", "runtime", "format", "entry", "batch_size", "config_options")
_TUNED_JSON_FIELDS = ("config_options", "settings", "candidates", "rule")

# Each migration is a list of statements; migration i (1-based) brings the schema to version i.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE runs (
            run_id        TEXT PRIMARY KEY,
            created       TEXT NOT NULL,
            finished      TEXT,
            git_rev       TEXT,
            config        TEXT NOT NULL DEFAULT '{}',
            status        TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'interrupted')),
            note          TEXT NOT NULL DEFAULT '',
            is_baseline   INTEGER NOT NULL DEFAULT 0 CHECK (is_baseline IN (0, 1)),
            baseline_seq  INTEGER
        )""",
        """CREATE TABLE records (
            id                INTEGER PRIMARY KEY,
            run_id            TEXT NOT NULL REFERENCES runs(run_id),
            job_key           TEXT NOT NULL,
            model             TEXT NOT NULL,
            variant           TEXT NOT NULL,
            artifact_sha256   TEXT NOT NULL,
            format            TEXT NOT NULL,
            artifact_path     TEXT,
            device            TEXT NOT NULL,
            runtime           TEXT NOT NULL,
            runtime_options   TEXT NOT NULL DEFAULT '{}',
            batch_size        INTEGER NOT NULL,
            input_shape       TEXT,
            macs              INTEGER,
            params            INTEGER,
            status            TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            error_stage       TEXT,
            error_type        TEXT,
            error_message     TEXT,
            stderr_tail       TEXT,
            n                 INTEGER NOT NULL DEFAULT 0,
            min_ms            REAL,
            median_ms         REAL,
            mean_ms           REAL,
            max_ms            REAL,
            p90_ms            REAL,
            p99_ms            REAL,
            std_ms            REAL,
            cv                REAL,
            samples_ns        TEXT NOT NULL DEFAULT '[]',
            providers         TEXT,
            provider_fallback INTEGER,
            env               TEXT,
            warnings          TEXT NOT NULL DEFAULT '[]',
            started           TEXT,
            finished          TEXT,
            git_rev           TEXT,
            agent_version     TEXT,
            extra             TEXT NOT NULL DEFAULT '{}',
            inserted          TEXT NOT NULL,
            UNIQUE (run_id, job_key),
            CHECK (status = 'error' OR (n > 0 AND median_ms IS NOT NULL)),
            CHECK (status = 'ok' OR (error_stage IS NOT NULL AND error_message IS NOT NULL))
        )""",
        "CREATE INDEX records_model ON records (model, variant)",
        "CREATE INDEX records_device ON records (device, runtime)",
        "CREATE INDEX records_status ON records (run_id, status)",
    ),
    (
        """CREATE TABLE latency_profiles (
            id               INTEGER PRIMARY KEY,
            profile_key      TEXT NOT NULL,
            device           TEXT NOT NULL,
            runtime          TEXT NOT NULL,
            format           TEXT NOT NULL,
            runtime_options  TEXT NOT NULL DEFAULT '{}',
            model            TEXT NOT NULL,
            model_kwargs     TEXT NOT NULL DEFAULT '{}',
            input_shape      TEXT NOT NULL,
            pattern          TEXT NOT NULL,
            name             TEXT NOT NULL DEFAULT '',
            points           TEXT NOT NULL DEFAULT '[]',
            run_id           TEXT REFERENCES runs(run_id),
            measure          TEXT NOT NULL DEFAULT '{}',
            created          TEXT NOT NULL,
            updated          TEXT,
            git_rev          TEXT
        )""",
        "CREATE INDEX latency_profiles_key ON latency_profiles (profile_key, id)",
    ),
    (
        "ALTER TABLE records ADD COLUMN entry TEXT",
        "ALTER TABLE records ADD COLUMN base_entry TEXT",
        "ALTER TABLE records ADD COLUMN label TEXT",
        "ALTER TABLE records ADD COLUMN device_label TEXT",
        "ALTER TABLE records ADD COLUMN top1 REAL",
        # the job fields reports read, out of extra.job ('' was "no label": NULL now, as make_record writes)
        """UPDATE records SET
            entry = NULLIF(CAST(json_extract(extra, '$.job.entry') AS TEXT), ''),
            base_entry = NULLIF(CAST(json_extract(extra, '$.job.base') AS TEXT), ''),
            label = NULLIF(CAST(json_extract(extra, '$.job.label') AS TEXT), ''),
            device_label = NULLIF(CAST(json_extract(extra, '$.job.device_label') AS TEXT), ''),
            top1 = CAST(json_extract(extra, '$.job.top1') AS REAL)
           WHERE json_type(extra, '$.job') = 'object'""",
        """UPDATE records SET extra = json_remove(extra, '$.job.entry', '$.job.base', '$.job.label',
                                                 '$.job.device_label', '$.job.top1')
           WHERE json_type(extra, '$.job') = 'object'""",
        """UPDATE records SET extra = json_remove(extra, '$.job')
           WHERE json_type(extra, '$.job') = 'object' AND json(json_extract(extra, '$.job')) = '{}'""",
        "CREATE INDEX records_entry ON records (entry)",
        "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'sweep'",
        """UPDATE runs SET kind = CASE
               WHEN json_extract(config, '$.command') IS NULL THEN 'sweep'
               WHEN json_extract(config, '$.command') LIKE '%latency profile%' THEN 'latency-profile'
               WHEN json_extract(config, '$.command') LIKE '%verification%' THEN 'latency-verify'
               ELSE 'other' END""",
        "CREATE INDEX runs_kind ON runs (kind, created)",
    ),
    (
        # interleaved rounds (agent protocol 2), cold start and memory; old rows keep NULL
        "ALTER TABLE records ADD COLUMN group_key TEXT",
        "ALTER TABLE records ADD COLUMN rounds INTEGER",
        "ALTER TABLE records ADD COLUMN sample_rounds TEXT",
        "ALTER TABLE records ADD COLUMN load_s REAL",
        "ALTER TABLE records ADD COLUMN build_s REAL",
        "ALTER TABLE records ADD COLUMN first_inference_ms REAL",
        "ALTER TABLE records ADD COLUMN peak_rss_mb REAL",
        "ALTER TABLE records ADD COLUMN gpu_peak_mb REAL",
        "ALTER TABLE records ADD COLUMN throughput_ips REAL",
    ),
    (
        # bench tune: the runtime settings found fastest for one model on one device (docs/tuning.md)
        """CREATE TABLE tuned_settings (
            id               INTEGER PRIMARY KEY,
            tune_key         TEXT NOT NULL,
            device           TEXT NOT NULL,
            host             TEXT,
            runtime          TEXT NOT NULL,
            format           TEXT NOT NULL,
            entry            TEXT NOT NULL,
            batch_size       INTEGER NOT NULL,
            config_options   TEXT NOT NULL DEFAULT '{}',
            artifact_sha256  TEXT,
            settings         TEXT NOT NULL DEFAULT '{}',
            default_ms       REAL,
            best_ms          REAL,
            ratio            REAL,
            candidates       TEXT NOT NULL DEFAULT '[]',
            rule             TEXT NOT NULL DEFAULT '{}',
            run_id           TEXT REFERENCES runs(run_id),
            created          TEXT NOT NULL,
            git_rev          TEXT
        )""",
        "CREATE INDEX tuned_settings_key ON tuned_settings (tune_key, id)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

# PostgreSQL's text of the migration statements (version, index in it) that use SQLite's JSON functions; every
# other statement is translated by results.store_backends.postgresql_ddl (types only).  JSON columns are text on
# both back ends, cast to jsonb here.
POSTGRESQL_STATEMENTS: dict[tuple[int, int], str] = {
    (3, 5): """UPDATE records SET
            entry = NULLIF(extra::jsonb -> 'job' ->> 'entry', ''),
            base_entry = NULLIF(extra::jsonb -> 'job' ->> 'base', ''),
            label = NULLIF(extra::jsonb -> 'job' ->> 'label', ''),
            device_label = NULLIF(extra::jsonb -> 'job' ->> 'device_label', ''),
            top1 = (extra::jsonb -> 'job' ->> 'top1')::double precision
           WHERE jsonb_typeof(extra::jsonb -> 'job') = 'object'""",
    (3, 6): """UPDATE records SET extra = jsonb_set(extra::jsonb, '{job}', (extra::jsonb -> 'job')
                                    - 'entry' - 'base' - 'label' - 'device_label' - 'top1')::text
           WHERE jsonb_typeof(extra::jsonb -> 'job') = 'object'""",
    (3, 7): """UPDATE records SET extra = (extra::jsonb - 'job')::text
           WHERE jsonb_typeof(extra::jsonb -> 'job') = 'object' AND extra::jsonb -> 'job' = '{}'::jsonb""",
    (3, 10): """UPDATE runs SET kind = CASE
               WHEN config::jsonb ->> 'command' IS NULL THEN 'sweep'
               WHEN config::jsonb ->> 'command' LIKE '%latency profile%' THEN 'latency-profile'
               WHEN config::jsonb ->> 'command' LIKE '%verification%' THEN 'latency-verify'
               ELSE 'other' END""",
}


class StoreError(ValueError):
    """Base class of the store's own errors; the message is one line for the user (the CLI prints it)."""


class DuplicateRecordError(StoreError):
    """An ok record with this (run_id, job_key) exists; ok measurements are never overwritten."""


class UnknownRunError(StoreError, LookupError):
    """No run with this run_id in the store."""


class SchemaTooNewError(StoreError):
    """The file was written by a newer version of this code; refusing to touch it."""


def utc_now() -> str:
    """ISO 8601 UTC with microseconds: sorts as text in time order."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_run_id(now: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxxxxxxxx`` in UTC: sorts by start time, readable, unique across machines.

    The 40 random bits matter once laptops push their runs into a shared store
    (:func:`push`): two runs started in the same second on two machines collide
    with odds of one in a trillion; within one store the PRIMARY KEY and a retry
    settle even that.  Ids of older versions (4 hex digits) stay valid."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(5)}"


def _dumps(value: Any) -> str:
    """Compact JSON; str() for what JSON lacks (paths, datetimes in a config) rather than failing a sweep."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _where(**filters: Any) -> tuple[str, tuple[Any, ...]]:
    """`` WHERE a = ? AND b = ?`` and its parameters for the filters that are not None (``""`` when none are).

    The keys are column names written by this module, never user text."""
    given = {column: value for column, value in filters.items() if value is not None}
    return (" WHERE " + " AND ".join(f"{c} = ?" for c in given) if given else ""), tuple(given.values())


def _encode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record dict as column values: checks required fields, JSON-encodes the nested ones."""
    unknown = set(record) - set(RECORD_FIELDS) - _READ_ONLY_FIELDS
    if unknown:
        raise ValueError(f"record has fields the store does not know: {', '.join(sorted(unknown))}")
    failed_export = record.get("status") == "error" and record.get("error_stage") == "export"
    missing = [f for f in _REQUIRED_RECORD_FIELDS if record.get(f) in (None, "")
               and not (f == "artifact_sha256" and failed_export and record.get(f) == "")]
    if missing:
        raise ValueError(f"record lacks required fields: {', '.join(missing)}")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status must be one of {', '.join(STATUSES)}, got {record['status']!r}")
    row: dict[str, Any] = {}
    for field in RECORD_FIELDS:
        value = record.get(field)
        if field in JSON_FIELDS:
            if value is None:
                value = _JSON_DEFAULTS.get(field)
            value = None if value is None else _dumps(value)
        elif field in _BOOL_FIELDS and value is not None:
            value = int(bool(value))
        row[field] = value
    return row


def _decode_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A records row as the dict make_record built (plus ``id`` and ``inserted``)."""
    out: dict[str, Any] = {}
    for key in row.keys():
        value = row[key]
        if key in JSON_FIELDS and value is not None:
            value = json.loads(value)
        elif key in _BOOL_FIELDS and value is not None:
            value = bool(value)
        out[key] = value
    return out


def _decode_run(row: Mapping[str, Any]) -> dict[str, Any]:
    run = dict(row)
    run["config"] = json.loads(run["config"])
    run["is_baseline"] = bool(run["is_baseline"])
    return run


def _execute(backend: Backend, conn: Any, sql: str, params: Sequence[Any]) -> Any:
    """Run one statement of the store's SQL; without parameters none are passed (so psycopg reads no placeholder)."""
    return conn.execute(backend.sql(sql), tuple(params)) if params else conn.execute(sql)


class _Writer:
    """The statements of one write transaction, in the store's SQL (``?`` placeholders) whatever the back end."""

    def __init__(self, backend: Backend, conn: Any) -> None:
        self._backend, self._conn = backend, conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return _execute(self._backend, self._conn, sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def insert(self, table: str, row: Mapping[str, Any]) -> int:
        return self._backend.insert(self._conn, table, row)


class Store:
    """Runs and records in one SQLite file or one PostgreSQL database; usable from many threads and processes.

    `path` is where the store lives: a SQLite file (a path), or a
    ``postgresql://`` URL given as text (see :func:`location`).  ``.path`` is
    then that file, or the URL as messages show it.

    Open it once per process (or per sweep) and share the object between
    threads: each thread gets its own connection on first use.  ``close()``
    closes them all and must only be called once no thread uses the store.
    """

    def __init__(self, path: Path | str = DEFAULT_PATH, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.busy_timeout_s = float(busy_timeout_s)
        try:
            self._backend: Backend = open_backend(path, self.busy_timeout_s)
        except BackendError as exc:
            raise StoreError(str(exc)) from None
        self.backend = self._backend.name
        self.path: Path | str = self._backend.path if isinstance(self._backend, SQLiteBackend) else self._backend.display
        #: The driver's constraint-violation error (a CHECK or UNIQUE the database enforces).
        self.integrity_error: type[Exception] = self._backend.integrity_error
        self._local = threading.local()
        self._registry_lock = threading.Lock()  # guards _connections only, never held during SQL
        self._connections: list[Any] = []
        self._pid = os.getpid()
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ----- connections and transactions ------------------------------------

    def _connection(self) -> Any:
        """This thread's connection, opened on first use (fresh ones after a fork)."""
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        if os.getpid() != self._pid:
            # Forked child: the inherited connections belong to the parent; never use or close them.
            self._pid = os.getpid()
            self._local = threading.local()
            self._connections = []
            self._registry_lock = threading.Lock()
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._backend.usable(conn):
            self._forget(conn)  # the server dropped it: this thread opens a new one
            conn = None
        if conn is None:
            try:
                conn = self._backend.connect()
            except BackendError as exc:
                raise StoreError(str(exc)) from None
            self._local.conn = conn
            with self._registry_lock:
                self._connections.append(conn)
        return conn

    def _forget(self, conn: Any) -> None:
        """Drop this thread's broken connection (PostgreSQL only: a file's connection never breaks)."""
        with self._registry_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with contextlib.suppress(self._backend.error):
            conn.close()
        self._local.conn = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Writer]:
        """One write transaction holding the store's write lock from its start; committed on success.

        A connection the server dropped while idle fails as the transaction
        begins, before any statement of it ran: that is retried once on a new
        connection (a sweep outlives a database restart).  A failure later in
        the transaction is raised: whether it committed is then unknown.
        """
        with contextlib.ExitStack() as stack:
            for attempt in range(2):
                conn = self._connection()
                try:
                    stack.enter_context(self._backend.transaction(conn))
                    break
                except self._backend.error:
                    if attempt or self._backend.usable(conn):
                        raise
            yield _Writer(self._backend, conn)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows (read by column name) of one read statement; it sees every committed write.

        A read on a connection the server dropped is retried once on a new one."""
        for attempt in range(2):
            conn = self._connection()
            try:
                return _execute(self._backend, conn, sql, params).fetchall()
            except self._backend.error:
                if attempt or self._backend.usable(conn):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every thread's connection (call when no other thread uses the store any more)."""
        with self._registry_lock:
            connections, self._connections = self._connections, []
        if os.getpid() == self._pid:
            for conn in connections:
                with contextlib.suppress(self._backend.error):
                    conn.close()
        self._local = threading.local()
        self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- schema -------------------------------------------------------------

    def _migrate(self) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION in one transaction (the same versions on both back ends)."""
        with self._write() as tx:
            tx.execute(self._backend.schema_version_ddl())
            current = tx.one("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")["v"]
            if current > len(MIGRATIONS):
                raise SchemaTooNewError(f"{self.path}: schema version {current} is newer than this code's "
                                        f"{len(MIGRATIONS)}; upgrade the project")
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for index, statement in enumerate(MIGRATIONS[version - 1]):
                    tx.execute(self._backend.migration(statement, POSTGRESQL_STATEMENTS.get((version, index))))
                tx.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, utc_now()))

    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) AS v FROM schema_version")[0]["v"])

    # ----- runs -----------------------------------------------------------------

    def new_run(self, config: Mapping[str, Any], git_rev: str, note: str = "", kind: str = "sweep") -> str:
        """Register a run (status ``running``) of `kind` (one of `RUN_KINDS`) and return its id."""
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
        for _ in range(20):
            run_id = new_run_id()
            try:
                with self._write() as tx:
                    tx.execute("INSERT INTO runs (run_id, created, git_rev, config, note, kind) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               (run_id, utc_now(), git_rev, _dumps(dict(config)), note, kind))
                return run_id
            except self.integrity_error:
                continue  # same second and same random suffix: draw again (the PRIMARY KEY is the last word)
        raise StoreError("could not find a free run id")  # pragma: no cover - 20 collisions of 40 random bits

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return _decode_run(rows[0]) if rows else None

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every run (of `kind` when given), oldest first."""
        where, params = _where(kind=kind)
        return [_decode_run(r) for r in self._query(f"SELECT * FROM runs{where} ORDER BY created, run_id", params)]

    def latest_run(self, kind: str | None = None) -> dict[str, Any] | None:
        """The newest run (of `kind` when given), or None."""
        where, params = _where(kind=kind)
        rows = self._query(f"SELECT * FROM runs{where} ORDER BY created DESC, run_id DESC LIMIT 1", params)
        return _decode_run(rows[0]) if rows else None

    def _update_run(self, run_id: str, sql: str, params: Sequence[Any]) -> None:
        with self._write() as tx:
            if tx.execute(sql, (*params, run_id)).rowcount == 0:
                raise UnknownRunError(f"no run {run_id!r} in {self.path}")

    def set_run_status(self, run_id: str, status: str) -> None:
        """Set a run's status; ``running`` again when a sweep resumes it (clears ``finished``)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        finished = None if status == "running" else utc_now()
        self._update_run(run_id, "UPDATE runs SET status = ?, finished = ? WHERE run_id = ?", (status, finished))

    def finish_run(self, run_id: str, status: str = "done") -> None:
        """Mark a run ``done`` or ``interrupted`` (Ctrl-C, a fatal error) and stamp its end time."""
        if status not in ("done", "interrupted"):
            raise ValueError(f"a run finishes as 'done' or 'interrupted', not {status!r}")
        self.set_run_status(run_id, status)

    def set_baseline(self, run_id: str) -> None:
        """Mark a run as a baseline; the most recently marked one is :meth:`baseline`."""
        self._update_run(run_id, "UPDATE runs SET is_baseline = 1, "
                                 "baseline_seq = (SELECT COALESCE(MAX(baseline_seq), 0) + 1 FROM runs) "
                                 "WHERE run_id = ?", ())

    def clear_baseline(self, run_id: str) -> None:
        self._update_run(run_id, "UPDATE runs SET is_baseline = 0, baseline_seq = NULL WHERE run_id = ?", ())

    def baseline(self) -> dict[str, Any] | None:
        """The run most recently marked as baseline (regression reports compare against it), or None."""
        rows = self._query("SELECT * FROM runs WHERE is_baseline = 1 ORDER BY baseline_seq DESC LIMIT 1")
        return _decode_run(rows[0]) if rows else None

    # ----- records --------------------------------------------------------------

    def add_record(self, record: Mapping[str, Any]) -> int:
        """Insert one record and commit at once; return its row id.

        A second record for the same (run_id, job_key) replaces an *error*
        record (a retried job) but never an *ok* one: that raises
        :class:`DuplicateRecordError`, since a measurement must not be lost
        silently.  An unknown run raises :class:`UnknownRunError`.
        """
        row = _encode_record(record)
        row["inserted"] = utc_now()
        with self._write() as tx:
            if tx.one("SELECT 1 AS one FROM runs WHERE run_id = ?", (row["run_id"],)) is None:
                raise UnknownRunError(f"no run {row['run_id']!r} in {self.path}; create it with new_run()")
            old = tx.one("SELECT id, status FROM records WHERE run_id = ? AND job_key = ?",
                         (row["run_id"], row["job_key"]))
            if old is not None and old["status"] == "ok":
                raise DuplicateRecordError(f"run {row['run_id']} already has an ok record for {row['job_key']}")
            if old is not None:
                tx.execute("DELETE FROM records WHERE id = ?", (old["id"],))
            return tx.insert("records", row)

    def _import_run(self, run: Mapping[str, Any], records: Sequence[Mapping[str, Any]], report: PushReport) -> None:
        """Add a run of another store and those of its records this one lacks, in one transaction (see push)."""
        with self._write() as tx:
            there = tx.one("SELECT status FROM runs WHERE run_id = ?", (run["run_id"],))
            if there is None:
                tx.execute("INSERT INTO runs (run_id, created, finished, git_rev, config, status, note, kind) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (run["run_id"], run["created"], run["finished"], run["git_rev"], _dumps(run["config"]),
                            run["status"], run["note"], run["kind"]))
                report.runs_copied.append(run["run_id"])
            elif run["status"] == "done" and there["status"] != "done":
                tx.execute("UPDATE runs SET status = 'done', finished = ? WHERE run_id = ?",
                           (run["finished"], run["run_id"]))
                report.runs_updated.append(run["run_id"])
            for record in records:
                old = tx.one("SELECT id, status FROM records WHERE run_id = ? AND job_key = ?",
                             (record["run_id"], record["job_key"]))
                if old is not None and (old["status"] == "ok" or record["status"] == "error"):
                    report.records_skipped += 1
                    continue
                if old is not None:
                    tx.execute("DELETE FROM records WHERE id = ?", (old["id"],))
                tx.insert("records", {**_encode_record(record), "inserted": record["inserted"]})
                report.records_copied += 1

    def _import_profile(self, profile: Mapping[str, Any]) -> int:
        """Add a latency profile of another store unless one with its key and creation time is here: 1 or 0."""
        row = {f: _dumps(profile[f]) if f in _PROFILE_JSON_FIELDS else profile[f]
               for f in ("profile_key", *PROFILE_KEY_FIELDS, "name", "points", "run_id", "measure", "created",
                         "updated", "git_rev")}
        with self._write() as tx:
            if tx.one("SELECT id FROM latency_profiles WHERE profile_key = ? AND created = ?",
                      (row["profile_key"], row["created"])) is not None:
                return 0
            tx.insert("latency_profiles", row)
            return 1

    def _import_tuned(self, tuned: Mapping[str, Any]) -> int:
        """Add a tuned row of another store unless one with its key and creation time is here: 1 or 0."""
        row = {k: _dumps(v) if k in _TUNED_JSON_FIELDS else v for k, v in tuned.items() if k != "id"}
        with self._write() as tx:
            if tx.one("SELECT id FROM tuned_settings WHERE tune_key = ? AND created = ?",
                      (row["tune_key"], row["created"])) is not None:
                return 0
            tx.insert("tuned_settings", row)
            return 1

    def done_keys(self, run_id: str) -> set[str]:
        """Job keys of the run with an ok record: what ``--resume`` skips (error records are retried)."""
        rows = self._query("SELECT job_key FROM records WHERE run_id = ? AND status = 'ok'", (run_id,))
        return {r["job_key"] for r in rows}

    def records(self, run_id: str | None = None, status: str | None = None, device: str | None = None,
                *, with_samples: bool = True) -> list[dict[str, Any]]:
        """Records matching every given filter, in insertion order, JSON columns decoded.

        ``with_samples=False`` leaves ``samples_ns`` and ``sample_rounds`` out
        (the bulk of a row) for reports that need only the statistics.
        """
        columns = ["id", *(f for f in RECORD_FIELDS if with_samples or f not in SAMPLE_FIELDS), "inserted"]
        where, params = _where(run_id=run_id, status=status, device=device)
        return [_decode_record(r) for r in
                self._query(f"SELECT {', '.join(columns)} FROM records{where} ORDER BY id", params)]

    def count(self, run_id: str | None = None) -> int:
        if run_id is None:
            return int(self._query("SELECT COUNT(*) AS n FROM records")[0]["n"])
        return int(self._query("SELECT COUNT(*) AS n FROM records WHERE run_id = ?", (run_id,))[0]["n"])

    # ----- tuned runtime settings -------------------------------------------------

    def add_tuned(self, row: Mapping[str, Any]) -> int:
        """Store one tuned result (every `TUNED_KEY_FIELDS` field, settings, medians, candidates, run_id, ...)."""
        missing = [f for f in TUNED_KEY_FIELDS if row.get(f) is None]
        if missing:
            raise ValueError(f"tuned settings lack identity fields: {', '.join(missing)}")
        if not isinstance(row.get("settings"), Mapping):
            raise ValueError(f"tuned settings must be an object, got {row.get('settings')!r}")
        values = {f: row.get(f) for f in ("device", "host", "runtime", "format", "entry", "artifact_sha256",
                                          "default_ms", "best_ms", "ratio", "run_id", "git_rev")}
        values.update(batch_size=int(row["batch_size"]), tune_key=tune_key(row), created=utc_now(),
                      **{f: _dumps(row.get(f) or ([] if f == "candidates" else {})) for f in _TUNED_JSON_FIELDS})
        with self._write() as tx:
            return tx.insert("tuned_settings", values)

    def tuned(self, device: str, runtime: str, fmt: str, entry: str, batch_size: int = 1,
              config_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The newest tuned row for this device, runtime, format, model entry, batch size and fixed options."""
        key = tune_key({"device": device, "runtime": runtime, "format": fmt, "entry": entry,
                        "batch_size": batch_size, "config_options": dict(config_options or {})})
        rows = self._query("SELECT * FROM tuned_settings WHERE tune_key = ? ORDER BY id DESC LIMIT 1", (key,))
        return _decode_tuned(rows[0]) if rows else None

    def tuned_settings(self, device: str | None = None) -> list[dict[str, Any]]:
        """Every tuned row (of one device when given), oldest first."""
        where, params = _where(device=device)
        return [_decode_tuned(r) for r in self._query(f"SELECT * FROM tuned_settings{where} ORDER BY id", params)]

    # ----- latency profiles -----------------------------------------------------

    def add_latency_profile(self, profile: Mapping[str, Any]) -> int:
        """Store a latency profile (every `PROFILE_KEY_FIELDS` field, name, points, run_id, measure, git_rev).

        Profiles are never overwritten: a re-measured one is a new row, and
        :meth:`latency_profile` returns the newest, so older ones stay as history.
        """
        missing = [f for f in PROFILE_KEY_FIELDS if profile.get(f) is None]
        if missing:
            raise ValueError(f"latency profile lacks identity fields: {', '.join(missing)}")
        points = list(profile.get("points") or [])
        _check_points(points)
        row = {f: profile[f] for f in PROFILE_KEY_FIELDS}
        row.update(name=profile.get("name") or "", points=points, run_id=profile.get("run_id"),
                   measure=dict(profile.get("measure") or {}), git_rev=profile.get("git_rev"))
        row.update({f: _dumps(row[f]) for f in _PROFILE_JSON_FIELDS})
        row.update(profile_key=profile_key(profile), created=utc_now())
        with self._write() as tx:
            return tx.insert("latency_profiles", row)

    def latency_profile(self, identity: Mapping[str, Any]) -> dict[str, Any] | None:
        """The newest profile whose `PROFILE_KEY_FIELDS` equal those of `identity`, or None."""
        rows = self._query("SELECT * FROM latency_profiles WHERE profile_key = ? ORDER BY id DESC LIMIT 1",
                           (profile_key(identity),))
        return _decode_profile(rows[0]) if rows else None

    def latency_profiles(self, device: str | None = None) -> list[dict[str, Any]]:
        """Every stored profile (of one device when given), oldest first."""
        where, params = _where(device=device)
        return [_decode_profile(r) for r in self._query(f"SELECT * FROM latency_profiles{where} ORDER BY id", params)]

    def add_latency_point(self, profile_id: int, point: Mapping[str, Any]) -> None:
        """Append one measured point (e.g. a verified pruned model) to a stored profile."""
        _check_points([point])
        with self._write() as tx:
            row = tx.one("SELECT points FROM latency_profiles WHERE id = ?", (profile_id,))
            if row is None:
                raise StoreError(f"no latency profile {profile_id} in {self.path}")
            tx.execute("UPDATE latency_profiles SET points = ?, updated = ? WHERE id = ?",
                         (_dumps([*json.loads(row["points"]), dict(point)]), utc_now(), profile_id))


def tune_key(identity: Mapping[str, Any]) -> str:
    """The canonical text of a tuned row's identity (`TUNED_KEY_FIELDS`), whatever the key order."""
    key = {f: identity.get(f) for f in TUNED_KEY_FIELDS}
    key.update(batch_size=int(identity["batch_size"]), config_options=dict(identity.get("config_options") or {}))
    return _dumps(key)


def _decode_tuned(row: Mapping[str, Any]) -> dict[str, Any]:
    tuned = dict(row)
    for f in _TUNED_JSON_FIELDS:
        tuned[f] = json.loads(tuned[f])
    return tuned


def profile_key(identity: Mapping[str, Any]) -> str:
    """The canonical text of a profile's identity: equal identities, equal keys, whatever the key order."""
    return _dumps({f: identity.get(f) for f in PROFILE_KEY_FIELDS})


def _check_points(points: object) -> None:
    """Every point needs a MACs count and a positive median: what the latency model is fitted on."""
    if not isinstance(points, list):
        raise ValueError(f"latency profile points must be a list, got {type(points).__name__}")
    for point in points:
        if not isinstance(point, Mapping) or not isinstance(point.get("macs"), (int, float)) \
                or not isinstance(point.get("median_ms"), (int, float)) or not point["median_ms"] > 0:
            raise ValueError(f"latency profile point needs numeric macs and a positive median_ms, got {point!r}")


def _decode_profile(row: Mapping[str, Any]) -> dict[str, Any]:
    profile = dict(row)
    for f in _PROFILE_JSON_FIELDS:
        profile[f] = json.loads(profile[f])
    return profile


# ----- where the store lives ------------------------------------------------------

def location(explicit: str | Path | None, configured: str | Path | None) -> str | Path:
    """The store to open: `explicit` (``--store``), else ``$SNP_BENCH_STORE``, else `configured` (bench.toml).

    `configured` None (no config read) falls back to `DEFAULT_PATH`.  A ``postgresql://`` (or ``postgres://``) URL comes back as text, anything
    else as a Path (a SQLite file).  A URL holding a password is refused with a
    one-line :class:`StoreError`: credentials belong in libpq's password or
    service file, or in PGPASSWORD, never in a config file, a shell history or
    a log.
    """
    env = os.environ.get(STORE_ENV, "").strip()
    for value, source in ((explicit, "--store"), (env or None, STORE_ENV), (configured, "the config")):
        if value is None or str(value) == "":
            continue
        if is_url(value):
            try:
                check_url(str(value), source)
            except BackendError as exc:
                raise StoreError(str(exc)) from None
            return str(value)
        if isinstance(value, str) and "://" in value:
            raise StoreError(f"store {redact(value)!r} (from {source}): unknown URL scheme; accepted: a SQLite "
                             f"file path or a postgresql:// URL")
        return Path(value)
    return DEFAULT_PATH


def describe(where: str | Path) -> str:
    """A store location as messages and logs may show it (a URL's password, if any, masked)."""
    return redact(where) if is_url(where) else str(where)


# ----- copying runs between stores -------------------------------------------------

@dataclass
class PushReport:
    """What :func:`push` did; a second push of the same runs copies nothing."""

    runs_copied: list[str] = dataclass_field(default_factory=list)
    runs_updated: list[str] = dataclass_field(default_factory=list)  # already there; their status brought to 'done'
    records_copied: int = 0
    records_skipped: int = 0  # already in the target (an ok one, or the same error)
    profiles_copied: int = 0
    tuned_copied: int = 0  # tuned settings of the pushed `bench tune` runs

    def summary(self) -> str:
        return (f"{len(self.runs_copied)} new run(s), {len(self.runs_updated)} updated, "
                f"{self.records_copied} record(s) copied, {self.records_skipped} already there, "
                f"{self.profiles_copied} latency profile(s) copied, {self.tuned_copied} tuned setting(s) copied")


def push(source: Store, target: Store, run_ids: Sequence[str] | None = None) -> PushReport:
    """Copy runs (all, or `run_ids`) with their records, latency profiles and tuned settings from `source` into
    `target`.

    Idempotent: runs are matched by run_id, records by (run_id, job_key), and
    what the target has is kept, except that an ok record replaces an error one
    (as a retried job does).  Each run is copied in one transaction, so an
    interrupted push leaves whole runs and is simply run again.  A run id the
    target holds for a *different* run (another creation time) stops the push
    before anything is copied.  Baseline marks stay in the store that made them:
    the shared store's baseline is chosen there.
    """
    if run_ids is None:
        runs = source.runs()
    else:
        runs = []
        for run_id in run_ids:
            run = source.get_run(run_id)
            if run is None:
                raise UnknownRunError(f"no run {run_id!r} in {source.path}")
            runs.append(run)
    for run in runs:
        there = target.get_run(run["run_id"])
        if there is not None and there["created"] != run["created"]:
            raise StoreError(f"run {run['run_id']} in {target.path} is another run (created {there['created']}, "
                             f"not {run['created']}); nothing pushed")
    report = PushReport()
    for run in runs:
        target._import_run(run, source.records(run["run_id"]), report)
    pushed = {run["run_id"] for run in runs}
    profiles = [p for p in source.latency_profiles()
                if (p["run_id"] in pushed) or (run_ids is None and p["run_id"] is None)]
    if profiles:
        ids = {r["id"]: (r["run_id"], r["job_key"]) for r in source.records(with_samples=False)}
        there = {(r["run_id"], r["job_key"]): r["id"] for r in target.records(with_samples=False)}
        for profile in profiles:
            points = [{**p, "record_id": there.get(ids.get(p["record_id"]))} if "record_id" in p else p
                      for p in profile["points"]]
            report.profiles_copied += target._import_profile({**profile, "points": points})
    for tuned in source.tuned_settings():
        if tuned["run_id"] in pushed:
            report.tuned_copied += target._import_tuned(tuned)
    return report
