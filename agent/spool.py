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
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.contract.record import Record, format_time, parse_time

SPOOL_FILE = "spool.sqlite3"
log = logging.getLogger("sinyal.spool")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A dead letter's reason is a short code and its detail a sentence; both come from the
# collector's answer, so what is stored is cut (an answer must not fill the disk).
REASON_CHARS = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    priority    INTEGER NOT NULL,   -- eviction order: lower goes first
    body        TEXT NOT NULL,      -- the record's JSON
    size        INTEGER NOT NULL,
    untimed     INTEGER NOT NULL DEFAULT 0,  -- 1: clock.source unknown (time not established)
    boot_id     TEXT                -- clock.boot_id, to correct untimed records of a boot
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

    def __init__(
        self, path: Path | str, max_bytes: int = 256 * 2**20, reserve_bytes: int = 2 * 2**20
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self._reserve = self.path.with_name(self.path.name + ".reserve")
        self.disk_full = False  # the last put found the disk full
        self.lost_total = 0  # records that could not be stored at all (counted by callers)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        # A short write-ahead log: moving it into the database (a checkpoint) needs as much
        # free disk as it holds, and the reserve below must cover that on a full disk.
        self._db.execute("PRAGMA wal_autocheckpoint=128")
        self._db.execute(f"PRAGMA journal_size_limit={2**20}")
        with self._tx():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            # Spools made before clock trust existed lack two columns.
            have = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
            if "untimed" not in have:
                self._db.execute(
                    "ALTER TABLE records ADD COLUMN untimed INTEGER NOT NULL DEFAULT 0"
                )
            if "boot_id" not in have:
                self._db.execute("ALTER TABLE records ADD COLUMN boot_id TEXT")
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS records_untimed ON records (untimed, boot_id)"
            )
        self._ensure_reserve()

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

        A record whose id is already in the spool is not stored twice. When the disk is
        full, the oldest records (heartbeats first) are evicted to make room inside the
        spool's file, as at the size cap, and counted; SpoolFullError only when even
        that fails (the spool is unchanged then).
        """
        try:
            evicted = self._put(records, 0)
        except SpoolFullError:
            self.disk_full = True
            need = sum(len(r.to_json()) for r in records)
            if not self.stats().records:
                raise
            # Give back the reserve so SQLite has room to log the eviction, then evict the
            # oldest records (as at the size cap) so the new ones fit in the freed pages.
            had_reserve = self._reserve.exists()
            self._reserve.unlink(missing_ok=True)
            log.warning(
                "disk full under %s: evicting the oldest records to make room%s",
                self.path.parent,
                " (reserve released)" if had_reserve else "",
            )
            with self._lock, contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return self._put(records, 4 * need + 64 * 1024)
        if self.disk_full and self._ensure_reserve():
            self.disk_full = False
            log.info("disk space is back under %s", self.path.parent)
        return evicted

    def _ensure_reserve(self) -> bool:
        """Keep `reserve_bytes` of disk in a file next to the spool, released when the disk
        is full so the spool can still evict and store; True when it is in place."""
        if self.reserve_bytes <= 0 or self._reserve.exists():
            return True
        try:
            st = os.statvfs(self._reserve.parent)
            if st.f_bavail * st.f_frsize < 2 * self.reserve_bytes:
                return False
            with open(self._reserve, "wb") as f:
                f.write(b"\0" * self.reserve_bytes)  # real blocks (a sparse file frees none)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            self._reserve.unlink(missing_ok=True)
            return False

    def _put(self, records: Sequence[Record], make_room: int) -> int:
        if not records:
            return 0
        rows = []
        latest = []
        for r in records:
            body = r.to_json()
            clock = r.clock
            rows.append(
                (
                    r.id,
                    r.kind,
                    format_time(r.measured_at),
                    _PRIORITY.get(r.kind, _MEASUREMENT_PRIORITY),
                    body,
                    len(body.encode()),
                    int(clock is not None and clock.source == "unknown"),
                    None if clock is None else clock.boot_id,
                )
            )
            series = "|".join([r.kind, *(r.tags.get(t, "") for t in _SERIES_TAGS)])
            latest.append((series, r.kind, format_time(r.measured_at), body))
        with self._tx() as db:
            evicted = self._evict(db, make_room) if make_room else 0
            added = 0
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO records (id, kind, measured_at, priority, body,"
                    " size, untimed, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            return evicted + self._evict(db)

    def _evict(self, db: sqlite3.Connection, room: int = 0) -> int:
        """Evict the oldest records (heartbeats first) until the spool is within its cap
        or, with `room`, until that many bytes are freed; counts them in dropped_total."""
        (size,) = db.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()
        limit = max(0, size - room) if room else self.max_bytes
        evicted = 0
        while size > limit:
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
                if size - freed <= limit:
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

    def batch_raw(
        self, limit: int = 500, newest_first: bool = False, hold_boot: str | None = None
    ) -> list[tuple[str, str]]:
        """Up to `limit` spooled (id, JSON body) pairs, oldest (or newest) first, undecoded:
        the uploader sends them as they are, so one record this agent version cannot decode
        never blocks the others. Each body carries its spool sequence number (`seq`).

        hold_boot: leave out the untimed records of this boot (their time can still be
        established once the collector's clock is known)."""
        order = "DESC" if newest_first else "ASC"
        held = "" if hold_boot is None else "WHERE NOT (untimed = 1 AND boot_id = ?)"
        args = (limit,) if hold_boot is None else (hold_boot, limit)
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, seq, body FROM records {held} ORDER BY seq {order} LIMIT ?", args
            ).fetchall()
        return [(str(i), _with_seq(str(b), int(q))) for i, q, b in rows]

    def untimed(self, boot_id: str | None) -> int:
        """How many spooled records of this boot wait for their time to be established."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM records WHERE untimed = 1 AND boot_id IS ?", (boot_id,)
            ).fetchone()
        return int(n)

    def retime(self, boot_id: str, base_ns: int) -> int:
        """Establish the time of this boot's untimed records: measured_at = base_ns + their
        monotonic_ns (base_ns: the wall-clock time, in ns since the epoch, at which this
        boot's CLOCK_MONOTONIC read 0), clock.source = collector. Returns how many."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT seq, body, size FROM records WHERE untimed = 1 AND boot_id = ?",
                (boot_id,),
            ).fetchall()
            grown = 0
            for seq, body, size in rows:
                d = json.loads(body)
                clock = d.get("clock") or {}
                mono = clock.get("monotonic_ns")
                if not isinstance(mono, int):
                    continue  # cannot be corrected: it stays untimed
                at = from_unix_ns(base_ns + mono)
                d["measured_at"] = format_time(at)
                clock["source"] = "collector"
                new = Record.from_dict(d).to_json()
                db.execute(
                    "UPDATE records SET body = ?, measured_at = ?, size = ?, untimed = 0"
                    " WHERE seq = ?",
                    (new, format_time(at), len(new.encode()), seq),
                )
                grown += len(new.encode()) - int(size)
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'bytes'", (grown,))
            return len(rows)

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
                    (rid, kind, measured_at, body, reason[:REASON_CHARS], detail[:500], now),
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


def _with_seq(body: str, seq: int) -> str:
    """The record's JSON with its spool sequence number added (see Record.seq)."""
    return f'{{"seq":{seq},' + body[1:] if body.startswith("{") and body != "{}" else body


def from_unix_ns(ns: int) -> datetime:
    """An aware UTC datetime from ns since the epoch (to the microsecond, exactly)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def read_state(path: Path) -> dict[str, str] | None:
    """The spool's state table read-only (no file, table or journal is created, so another
    user, such as root running `doctor`, leaves nothing behind); None when unreadable."""
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return dict(db.execute("SELECT key, value FROM state").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return None


def oldest_age_s(stats: SpoolStats, now: float | None = None) -> float | None:
    """Age in seconds of the oldest spooled record."""
    if stats.oldest_measured_at is None:
        return None
    t = parse_time(stats.oldest_measured_at).timestamp()
    return max(0.0, (time.time() if now is None else now) - t)
