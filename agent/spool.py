"""The durable local spool: every record lands here before anything else uses it.

SQLite in WAL mode with synchronous=FULL: a record whose `put` returned is on
disk and survives kill -9 and power loss; an interrupted write leaves the
database as it was before that transaction (SQLite's journal guarantees it).

An uploader takes a batch with `batch()` (a consistent snapshot, oldest or
newest first) and, once the collector acknowledged, deletes exactly those ids
with `ack()`. Nothing is deleted that was not acknowledged.

At the size cap the oldest records are evicted first, heartbeats (`agent`
kind) before measurements; every eviction is counted in `dropped_total`.
The spool also keeps the latest result per series for `sinyal-agent status`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.record import Record, format_time, parse_time

SPOOL_FILE = "spool.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    priority    INTEGER NOT NULL,   -- eviction order: lower goes first
    body        TEXT NOT NULL,      -- the record's JSON
    size        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_evict ON records (priority, seq);
CREATE TABLE IF NOT EXISTS latest (
    series      TEXT PRIMARY KEY,   -- kind|uplink|target
    kind        TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped_total', 0), ('bytes', 0);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    body        TEXT NOT NULL,
    reason      TEXT NOT NULL,      -- the collector's reason code
    detail      TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Heartbeats are evicted before measurements.
_PRIORITY = {"agent": 0}
_MEASUREMENT_PRIORITY = 1
_SERIES_TAGS = ("uplink", "target", "resolver", "qname")


@dataclass(frozen=True)
class SpoolStats:
    records: int
    bytes: int
    oldest_measured_at: str | None
    dropped_total: int
    by_kind: dict[str, int]


class SpoolFullError(OSError):
    """The disk under the spool is full: the record could not be written."""


class Spool:
    """A SQLite-backed FIFO of records, safe for several threads and processes."""

    def __init__(self, path: Path | str, max_bytes: int = 256 * 2**20) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._tx():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)

    @classmethod
    def in_dir(cls, data_dir: Path | str, max_bytes: int = 256 * 2**20) -> Spool:
        return cls(Path(data_dir) / SPOOL_FILE, max_bytes)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    class _Tx:
        def __init__(self, spool: Spool) -> None:
            self.spool = spool

        def __enter__(self) -> sqlite3.Connection:
            self.spool._lock.acquire()
            try:
                self.spool._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.spool._lock.release()
                raise
            return self.spool._db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            db = self.spool._db
            try:
                if exc_type is None:
                    try:
                        db.execute("COMMIT")
                    except sqlite3.Error as commit_exc:
                        # A failed COMMIT (disk full, I/O error) can leave the transaction
                        # open; close it so the next put() does not start inside it.
                        self._rollback(db)
                        self.spool._raise_if_full(commit_exc)
                        raise
                else:
                    self._rollback(db)
                    if isinstance(exc, sqlite3.Error):
                        self.spool._raise_if_full(exc)
            finally:
                self.spool._lock.release()

        @staticmethod
        def _rollback(db: sqlite3.Connection) -> None:
            # SQLite has already rolled back by itself after some errors (SQLITE_FULL while
            # spilling a large transaction mid-statement); a second ROLLBACK would then
            # fail and hide the error that matters.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")

    def _tx(self) -> Spool._Tx:
        return Spool._Tx(self)

    def _raise_if_full(self, exc: sqlite3.Error) -> None:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise SpoolFullError(28, f"disk full, spool not changed: {self.path}") from exc

    def put(self, records: Sequence[Record]) -> int:
        """Store records durably (one transaction); returns how many were evicted to fit.

        A record whose id is already in the spool is not stored twice.
        """
        if not records:
            return 0
        rows = []
        latest = []
        for r in records:
            body = r.to_json()
            rows.append(
                (
                    r.id,
                    r.kind,
                    format_time(r.measured_at),
                    _PRIORITY.get(r.kind, _MEASUREMENT_PRIORITY),
                    body,
                    len(body.encode()),
                )
            )
            series = "|".join([r.kind, *(r.tags.get(t, "") for t in _SERIES_TAGS)])
            latest.append((series, r.kind, format_time(r.measured_at), body))
        with self._tx() as db:
            added = 0
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO records (id, kind, measured_at, priority, body,"
                    " size) VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                added += row[5] if cur.rowcount == 1 else 0
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'bytes'", (added,))
            db.executemany(
                "INSERT INTO latest (series, kind, measured_at, body) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(series) DO UPDATE SET measured_at = excluded.measured_at,"
                " body = excluded.body WHERE excluded.measured_at >= latest.measured_at",
                latest,
            )
            return self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> int:
        (size,) = db.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()
        evicted = 0
        while size > self.max_bytes:
            victims = db.execute(
                "SELECT seq, size FROM records ORDER BY priority, seq LIMIT 256"
            ).fetchall()
            if not victims:
                break
            freed = 0
            cut: list[int] = []
            for seq, sz in victims:
                cut.append(seq)
                freed += sz
                if size - freed <= self.max_bytes:
                    break
            db.executemany("DELETE FROM records WHERE seq = ?", [(s,) for s in cut])
            size -= freed
            evicted += len(cut)
        if evicted:
            db.execute("UPDATE meta SET value = ? WHERE key = 'bytes'", (size,))
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'", (evicted,))
        return evicted

    def batch(self, limit: int = 500, newest_first: bool = False) -> list[Record]:
        """Up to `limit` spooled records, oldest (or newest) first; nothing is removed."""
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT body FROM records ORDER BY seq {order} LIMIT ?", (limit,)
            ).fetchall()
        return [Record.from_json(body) for (body,) in rows]

    def batch_raw(self, limit: int = 500, newest_first: bool = False) -> list[tuple[str, str]]:
        """Up to `limit` spooled (id, JSON body) pairs, oldest (or newest) first, undecoded:
        the uploader sends them as they are, so one record this agent version cannot decode
        never blocks the others."""
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, body FROM records ORDER BY seq {order} LIMIT ?", (limit,)
            ).fetchall()
        return [(str(i), str(b)) for i, b in rows]

    def dead_letter(self, rejected: Iterable[tuple[str, str, str]]) -> int:
        """Move rejected records (id, reason, detail) out of the queue into dead_letters.

        They are never retried and never silently dropped: `status` lists them.
        """
        items = list(rejected)
        if not items:
            return 0
        now = format_time(datetime.now(UTC))
        moved = 0
        with self._tx() as db:
            for rid, reason, detail in items:
                row = db.execute(
                    "SELECT kind, measured_at, body, size FROM records WHERE id = ?", (rid,)
                ).fetchone()
                if row is None:
                    continue
                kind, measured_at, body, size = row
                db.execute(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rid, kind, measured_at, body, reason, detail[:500], now),
                )
                db.execute("DELETE FROM records WHERE id = ?", (rid,))
                db.execute("UPDATE meta SET value = value - ? WHERE key = 'bytes'", (size,))
                moved += 1
        return moved

    def dead_letters(self, limit: int = 20) -> list[dict[str, str]]:
        """The most recently rejected records: id, kind, measured_at, reason, detail."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, measured_at, reason, detail, rejected_at FROM dead_letters"
                " ORDER BY rejected_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("id", "kind", "measured_at", "reason", "detail", "rejected_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def dead_letter_count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        return int(n)

    def set_state(self, **values: str) -> None:
        """Small facts that must survive a restart (last upload time and outcome)."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def state(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM state").fetchall())

    def ack(self, ids: Iterable[str]) -> int:
        """Delete exactly these ids (acknowledged by the collector); returns how many."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._tx() as db:
            removed = 0
            freed = 0
            for i in range(0, len(id_list), 500):
                chunk = id_list[i : i + 500]
                marks = ",".join("?" * len(chunk))
                (sz,) = db.execute(
                    f"SELECT COALESCE(SUM(size), 0) FROM records WHERE id IN ({marks})", chunk
                ).fetchone()
                cur = db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
                removed += cur.rowcount
                freed += int(sz)
            db.execute("UPDATE meta SET value = value - ? WHERE key = 'bytes'", (freed,))
            return removed

    def stats(self) -> SpoolStats:
        with self._lock:
            db = self._db
            (count, oldest) = db.execute(
                "SELECT COUNT(*), MIN(measured_at) FROM records"
            ).fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            by_kind = dict(
                db.execute(
                    "SELECT kind, COUNT(*) FROM records GROUP BY kind ORDER BY kind"
                ).fetchall()
            )
        return SpoolStats(
            int(count),
            int(meta.get("bytes", 0)),
            oldest,
            int(meta.get("dropped_total", 0)),
            by_kind,
        )

    def latest(self) -> list[Record]:
        """The most recent record of every series (kind, uplink, target) ever spooled."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM latest ORDER BY series").fetchall()
        return [Record.from_json(body) for (body,) in rows]

    def ids(self) -> set[str]:
        with self._lock:
            return {i for (i,) in self._db.execute("SELECT id FROM records")}

    def integrity_ok(self) -> bool:
        with self._lock:
            (result,) = self._db.execute("PRAGMA integrity_check").fetchone()
        return bool(result == "ok")


def oldest_age_s(stats: SpoolStats, now: float | None = None) -> float | None:
    """Age in seconds of the oldest spooled record."""
    if stats.oldest_measured_at is None:
        return None
    t = parse_time(stats.oldest_measured_at).timestamp()
    return max(0.0, (time.time() if now is None else now) - t)
