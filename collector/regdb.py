"""The registry's database: one schema, one set of queries, on SQLite or PostgreSQL.

SQLite (a file in the data dir, WAL) is the embedded default for one machine; PostgreSQL
serves several collector nodes from one registry (``registry.url`` in the collector config,
docs/collector.md). Everything else in the registry is written once: queries use ``?``
placeholders and SQL both databases run (``ON CONFLICT``, partial indexes); this module
holds the few differences, explicitly:

============================  ===================================  =============================
                              SQLite                               PostgreSQL
============================  ===================================  =============================
binary column, float column   ``BLOB``, ``REAL``                   ``BYTEA``, ``DOUBLE PRECISION``
insertion order of tokens     the implicit ``rowid``               a ``seq BIGSERIAL`` column
placeholders                  ``?``                                ``%s`` (rewritten here)
one writer at a time          ``BEGIN IMMEDIATE``                  ``pg_advisory_xact_lock``
a consistent read             ``BEGIN`` (a WAL snapshot)           ``REPEATABLE READ READ ONLY``
============================  ===================================  =============================

Migrations are numbered and applied in order when a database is opened, inside one write
transaction (so two processes opening a new database do not both apply them); the versions
applied are rows of ``schema_migrations``. A database with a version newer than this code
knows is refused: the collector is older than the database.

Errors of either driver become `DatabaseError`, whose message names the database by its
path or by its URL without a password (`safe_url`), never with one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

SQLITE, POSTGRES = "sqlite", "postgres"
POSTGRES_SCHEMES = ("postgresql", "postgres")
# pg_advisory_xact_lock key of the registry's writers ("Siny" in ASCII).
_WRITE_LOCK = 0x53696E79

_TYPES = {
    SQLITE: {"blob": "BLOB", "real": "REAL", "seq_column": ""},
    POSTGRES: {
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        # UNIQUE: its index serves the incremental reload (seq > the last seen), as rowid does.
        "seq_column": "seq BIGSERIAL NOT NULL UNIQUE,",
    },
}

# (version, statements). Never edit an applied migration: add the next one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE IF NOT EXISTS stations (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    province          TEXT NOT NULL,
    regency           TEXT NOT NULL,
    lat               {real} NOT NULL,
    lon               {real} NOT NULL,
    tz                TEXT NOT NULL,
    expected_operator TEXT             -- NULL: none expected
);
CREATE TABLE IF NOT EXISTS tokens (
    {seq_column}
    id           TEXT PRIMARY KEY,     -- public token id, for list and revoke
    hash         {blob} NOT NULL UNIQUE, -- SHA-256 of the token (the token itself is not kept)
    scope_kind   TEXT NOT NULL CHECK (scope_kind IN ('station', 'region')),
    scope_value  TEXT NOT NULL,
    note         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    last_used_at TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('stations_gen', 0), ('tokens_gen', 0)
    ON CONFLICT (key) DO NOTHING;
CREATE INDEX IF NOT EXISTS tokens_revoked_at ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS enrolment_codes (
    hash        {blob} PRIMARY KEY,   -- SHA-256 of the normalised code (the code is not kept)
    station     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    token_id    TEXT,               -- the token the exchange issued
    revoked_at  TEXT
);
CREATE INDEX IF NOT EXISTS enrolment_codes_station ON enrolment_codes (station)
""",
    ),
    (
        # The tokens generation a revocation made: other processes find the revocations
        # since their last reload by it, whatever the clocks of the nodes say.
        2,
        """
ALTER TABLE tokens ADD COLUMN revoked_gen INTEGER;
CREATE INDEX IF NOT EXISTS tokens_revoked_gen ON tokens (revoked_gen)
    WHERE revoked_gen IS NOT NULL
""",
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class DatabaseError(Exception):
    """The registry's database failed or cannot be reached. The message names it by path or
    password-free URL and says what happened, on one line."""


class IntegrityError(DatabaseError):
    """A constraint (a unique key) refused a write."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


def is_postgres_url(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and urlsplit(target).scheme in POSTGRES_SCHEMES


def safe_url(url: str) -> str:
    """`url` without a password (and without query options, which may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "a postgresql:// URL that cannot be parsed"
    user = parts.username
    netloc = (f"{unquote(user)}@" if user else "") + (f"[{host}]" if ":" in host else host)
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _one_line(text: str, secret: str | None) -> str:
    line = " ".join(str(text).split())
    if secret:
        line = line.replace(secret, "***")
    return line


class Database:
    """One connection to the registry's database, used under the registry's lock. Use
    `write()` for a write transaction and `snapshot()` for a consistent read; `execute`
    outside both runs one statement on its own."""

    dialect: str
    where: str  # the path, or the URL without a password: safe to print and log
    seq: str  # the column giving the tokens' insertion order

    def __init__(self, target: str | os.PathLike[str], password: str | None = None) -> None:
        self._password = password
        self._sql: dict[str, str] = {}
        self._lock = threading.RLock()
        self._in_tx = False
        if is_postgres_url(target):
            assert isinstance(target, str)
            self.dialect, self.seq = POSTGRES, "seq"
            self._url = target
            self.where = safe_url(target)
            self._pg: Any = None
            self._connect_pg()
        else:
            self.dialect, self.seq = SQLITE, "rowid"
            self.path = Path(target)
            self.where = str(self.path)
            self._sqlite = self._connect_sqlite()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # --- connections ------------------------------------------------------------------------

    def _connect_sqlite(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _owner_only(self.path, create=True)
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writes).
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise DatabaseError(f"registry {self.where}: cannot open: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            db.close()
            raise DatabaseError(f"registry {self.where}: cannot open: {exc}") from None
        for suffix in ("-wal", "-shm"):
            _owner_only(self.path.with_name(self.path.name + suffix))
        return db

    def _connect_pg(self) -> None:
        import psycopg  # the 'collector' extra; imported only for a postgresql:// registry

        kwargs: dict[str, Any] = {
            "autocommit": True,  # transactions are explicit, as on SQLite
            "connect_timeout": 10,
            # A node that vanishes (a cable, a crash) is noticed within about a minute.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "application_name": "sinyal-collector",
        }
        given = parse_qs(urlsplit(self._url).query)
        kwargs = {k: v for k, v in kwargs.items() if k not in given}  # the URL's options win
        kwargs["autocommit"] = True
        if self._password is not None:
            kwargs["password"] = self._password
        try:
            self._pg = psycopg.connect(self._url, **kwargs)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"registry {self.where}: cannot connect: {_one_line(str(exc), self._password)}"
            ) from None

    def _ensure_connected(self) -> None:
        if self.dialect == POSTGRES and (self._pg is None or self._pg.closed):
            self._pg = None
            self._connect_pg()

    def close(self) -> None:
        with self._lock:
            if self.dialect == POSTGRES:
                if self._pg is not None:
                    with contextlib.suppress(Exception):
                        self._pg.close()
                    self._pg = None
            else:
                with contextlib.suppress(sqlite3.Error):
                    self._sqlite.close()

    # --- statements -------------------------------------------------------------------------

    def _text(self, sql: str) -> str:
        if self.dialect == SQLITE:
            return sql
        text = self._sql.get(sql)
        if text is None:
            assert "%" not in sql, "a literal % would be read as a placeholder by psycopg"
            text = self._sql[sql] = sql.replace("?", "%s")
        return text

    def _error(self, exc: Exception) -> DatabaseError:
        message = _one_line(str(exc), self._password)
        integrity: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
        if self.dialect == POSTGRES:
            import psycopg

            integrity += (psycopg.IntegrityError,)
            if self._pg is not None and self._pg.closed:
                self._pg = None  # reconnect on the next use
                message = f"lost the connection: {message}"
        cls = IntegrityError if isinstance(exc, integrity) else DatabaseError
        return cls(f"registry {self.where}: {message}")

    def _driver_errors(self) -> tuple[type[Exception], ...]:
        if self.dialect == SQLITE:
            return (sqlite3.Error,)
        import psycopg

        return (psycopg.Error,)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        with self._lock:
            try:
                if self.dialect == SQLITE:
                    return self._sqlite.execute(sql, params)
                if not self._in_tx:
                    self._ensure_connected()
                cur: Cursor = self._pg.execute(self._text(sql), params)
                return cur
            except self._driver_errors() as exc:
                raise self._error(exc) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._lock:
            try:
                if self.dialect == SQLITE:
                    self._sqlite.executemany(sql, rows)
                else:
                    with self._pg.cursor() as cur:
                        cur.executemany(self._text(sql), rows)
            except self._driver_errors() as exc:
                raise self._error(exc) from None

    def analyze(self, table: str) -> None:
        """Refresh PostgreSQL's statistics of `table` after a bulk write, so the incremental
        reload's `seq > ?` uses the index at once rather than after autovacuum's next look
        (SQLite's rowid needs no statistics)."""
        if self.dialect == POSTGRES:
            assert table.isidentifier()
            self.execute(f"ANALYZE {table}")

    def script(self, statements: str) -> None:
        for stmt in statements.split(";"):
            if stmt.strip():
                self.execute(stmt)

    # --- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, begin: str, lock: bool) -> Iterator[Database]:
        with self._lock:
            if self.dialect == POSTGRES:
                self._ensure_connected()
            self.execute(begin)
            self._in_tx = True
            try:
                if lock and self.dialect == POSTGRES:
                    self.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))
                yield self
            except BaseException:
                self._in_tx = False
                with contextlib.suppress(Exception):
                    self._rollback()
                raise
            self._in_tx = False
            self.execute("COMMIT")

    def _rollback(self) -> None:
        if self.dialect == SQLITE:
            if self._sqlite.in_transaction:
                self._sqlite.execute("ROLLBACK")
        elif self._pg is not None and not self._pg.closed:
            self._pg.execute("ROLLBACK")

    def write(self) -> contextlib.AbstractContextManager[Database]:
        """A write transaction; one writer at a time across every process."""
        return self._transaction("BEGIN IMMEDIATE" if self.dialect == SQLITE else "BEGIN", True)

    def snapshot(self) -> contextlib.AbstractContextManager[Database]:
        """A read-only transaction that sees one consistent state."""
        begin = (
            "BEGIN" if self.dialect == SQLITE else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        )
        return self._transaction(begin, False)

    # --- migrations -------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            current = int(row[0]) if row is not None and row[0] is not None else 0
            # A registry made before schema_migrations existed has no row here: migration 1
            # (every statement IF NOT EXISTS) runs again on it and adds only what it lacks.
            if current > SCHEMA_VERSION:
                raise DatabaseError(
                    f"registry {self.where}: schema version {current}, but this collector "
                    f"knows versions up to {SCHEMA_VERSION}: upgrade sinyal on this machine"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                db.script(statements.format(**_TYPES[self.dialect]))
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
                )
            if self.dialect == SQLITE:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def version(self) -> int:
        row = self.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0])


def _owner_only(path: Path, create: bool = False) -> None:
    """Make a registry file (token hashes, stations) readable by its owner only; SQLite
    gives its -wal and -shm files the database file's mode."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    if create and not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
