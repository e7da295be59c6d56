"""The collector's registry: stations and agent tokens, in SQLite (WAL) in the data dir on
one machine, or in a PostgreSQL database shared by several nodes (collector.regdb holds the
dialect layer and the migrations; the queries here run on both).

Every collector process opens the registry its config names (``Registry.for_config``); the
CLI writes it (``sinyal-collector stations import``, ``agents add/revoke``) while the
servers read it.

Stations CSV
------------
UTF-8 (a spreadsheet's byte-order mark is accepted), comma-separated (a file whose header
has semicolons and no commas, as spreadsheets in Indonesian locales save it, is read with
``;``). The first line is a header naming exactly these columns, in any order::

    id,name,province,regency,lat,lon,tz,expected_operator

============================  ===============================================================
``id``                        the station id: the 13-digit TPS code (10-digit village code +
                              3-digit TPS number, e.g. ``3171011001001``), or another stable
                              id of 1..64 letters, digits, ``.``, ``_``, ``-`` (a lab laptop)
``name``                      display name, e.g. ``TPS 001 Gambir``
``province``                  a province of the Kemendagri table by name or code, e.g.
                              ``DKI Jakarta`` or ``31``; stored as the table's name (a tag)
``regency``                   a regency or city of that province by name or code, e.g.
                              ``Kota Jakarta Pusat`` or ``3171`` (a tag); a TPS code must
                              start with it (collector/regions.py has every check)
``lat``, ``lon``              WGS84 degrees with a ``.`` decimal point; -90..90, -180..180
``tz``                        IANA time zone: ``Asia/Jakarta`` (WIB), ``Asia/Makassar``
                              (WITA), ``Asia/Jayapura`` (WIT)
``expected_operator``         the operator that should serve the station (``telkomsel``,
                              ``indosat``, ``xlsmart``, ``smartfren`` or a configured
                              extra label, any case), or empty when none is expected
============================  ===============================================================

Values are trimmed; blank lines are skipped. Every problem is reported at once as
``FILE:LINE: column NAME: got VALUE, expected WHAT`` (LINE as an editor shows it, the
header is line 1), and a file with any problem imports nothing. Importing again updates
the stations whose values changed (an upsert); stations missing from the file are kept.
``config/stations.example.csv`` is an example.

Tokens
------
``add_token`` returns the plaintext token once; only its SHA-256 is stored. A token is
scoped to one station, or to a region prefix of the TPS code (2 digits province,
4 regency, 6 district, 10 village) for technicians' survey laptops.

Caches and other processes
--------------------------
Stations and active tokens are held in memory, so ``get_station`` and ``authenticate``
cost a dict lookup. A change made through this object reloads them at once. A change made
by another process (the CLI, another node) bumps a counter in the ``meta`` table; each
instance reads the counters at most every ``refresh_s`` seconds (default
``DEFAULT_REFRESH_S``) and reloads what changed: new tokens by their insertion order
(writers take turns, so a new row is above the last one seen), revocations by the tokens
generation each one made (no clock involved). So a revocation or a new token or station
takes effect in every running server within ``refresh_s`` seconds plus the re-read. When
the database cannot be read the caches stay as they are and the next interval tries again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import logging
import math
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.contract.configkit import STATION_ID_RE, show, timezone
from agent.contract.record import FORMULA_LEAD
from collector.regdb import SQLITE, Database, DatabaseError
from collector.regions import Operators, tps_shape_problem, wilayah
from collector.station import Station

if TYPE_CHECKING:
    from collector.config import CollectorConfig

log = logging.getLogger("sinyal.collector.registry")

COLUMNS = ("id", "name", "province", "regency", "lat", "lon", "tz", "expected_operator")
TOKEN_PREFIX = "sny_"
DEFAULT_REFRESH_S = 2.0  # so a revocation reaches every process within 5 s
STATION, REGION = "station", "region"

_REGION_RE = re.compile(r"[0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{10}")
_SCIENTIFIC_RE = re.compile(r"\d(\.\d+)?[eE]\+?\d+")  # 3171011001001 after a spreadsheet
_MAX_TEXT = 200
_MAX_TOKEN_LEN = 256  # longer input is not one of our tokens; do not hash megabytes
_EXPECTED = {
    "name": "a station name, 1..200 printable characters",
    "province": "a province name such as DKI Jakarta",
    "regency": "a regency or city name such as Kota Jakarta Pusat",
    "tz": "an IANA time zone such as Asia/Jakarta, Asia/Makassar or Asia/Jayapura",
}


class RegistryError(Exception):
    """Invalid input for the registry; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token grants. It never holds the token or its hash, so it is safe to log."""

    id: str
    scope_kind: str  # STATION or REGION
    scope_value: str  # a station id, or a region prefix of 2/4/6/10 digits
    note: str
    created_at: str
    revoked_at: str | None = None
    last_used_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def scope(self) -> str:
        return f"{self.scope_kind} {self.scope_value}"

    def allows(self, station_id: str) -> bool:
        """May the holder of this token write for `station_id`?"""
        if self.revoked_at is not None:
            return False
        if self.scope_kind == STATION:
            return station_id == self.scope_value
        return station_id.startswith(self.scope_value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash(token: str) -> bytes:
    # SHA-256, not a slow KDF: a token is 32 random bytes from `secrets`, so guessing one
    # from a stolen hash means searching 2**256 values however fast the hash is. A slow KDF
    # (scrypt, argon2) only helps low-entropy secrets such as passwords, and would cost
    # tens of milliseconds on every ingest request.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _got(value: str) -> str:
    return show(value) if value else "nothing"


def _text(value: str) -> str | None:
    # isprintable() refuses control, bidi and zero-width characters (categories Cc, Cf); a
    # leading = + - @ would be a formula in the spreadsheet the value may be exported to.
    if not value or len(value) > _MAX_TEXT or not value.isprintable():
        return None
    return None if value[0] in FORMULA_LEAD else value


def _degrees(value: str, lo: float, hi: float) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) and lo <= v <= hi else None


class _CsvReader:
    """Parses and validates a stations CSV, collecting every error."""

    def __init__(self, path: Path, operators: Operators | None = None) -> None:
        self.path = path
        self.name = str(path)
        self.errors: list[str] = []
        self.operators = operators or Operators()
        self.wilayah = wilayah()
        self.wilayah.forget_suggestions()

    def error(self, line: int, column: str, got: str, expected: str) -> None:
        self.errors.append(f"{self.name}:{line}: {column}: got {got}, expected {expected}")

    def read(self) -> list[Station]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")  # -sig: drop a spreadsheet's BOM
        except FileNotFoundError:
            raise RegistryError([f"{self.name}: file not found"]) from None
        except UnicodeDecodeError as exc:
            raise RegistryError(
                [f"{self.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
            ) from None
        except OSError as exc:
            raise RegistryError([f"{self.name}: cannot read: {exc.strerror or exc}"]) from None
        first = text.split("\n", 1)[0]
        delimiter = ";" if ";" in first and "," not in first else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows: list[tuple[int, list[str]]] = []
        last = 0
        try:
            for row in reader:
                # line_num counts physical lines read so far; a quoted value may span several.
                start, last = last + 1, reader.line_num
                if any(cell.strip() for cell in row):
                    rows.append((start, [cell.strip() for cell in row]))
        except csv.Error as exc:
            self.errors.append(f"{self.name}:{last + 1}: not valid CSV: {exc}")
            raise RegistryError(self.errors) from None
        return self._rows(rows)

    def _rows(self, rows: list[tuple[int, list[str]]]) -> list[Station]:
        if not rows:
            self.error(1, "header", "nothing", f"the header line {','.join(COLUMNS)}")
            raise RegistryError(self.errors)
        header_line, header = rows[0]
        index = self._header(header_line, header)
        if self.errors:
            raise RegistryError(self.errors)
        if len(rows) == 1:
            self.error(header_line + 1, "row", "nothing", "at least one station after the header")
            raise RegistryError(self.errors)

        stations: list[Station] = []
        seen: dict[str, int] = {}
        for line, cells in rows[1:]:
            if len(cells) != len(header):
                self.error(
                    line,
                    "row",
                    f"{len(cells)} fields",
                    f"{len(header)}, one per header column (quote values that hold a comma)",
                )
                continue
            values = {c: cells[i] for c, i in index.items()}
            sid = values["id"]
            if sid and sid in seen:
                self.error(
                    line, "column id", _got(sid), f"an id not already used on line {seen[sid]}"
                )
            else:
                seen.setdefault(sid, line)
            station = self._station(line, values)
            if station is not None:
                stations.append(station)
        if self.errors:
            raise RegistryError(self.errors)
        return stations

    def _header(self, line: int, header: list[str]) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, raw in enumerate(header):
            col = raw.lower()
            if col not in COLUMNS:
                got = "an unknown column" if raw else "a column without a name"
                name = raw or str(i + 1)
                self.error(line, f"column {name}", got, f"one of {', '.join(COLUMNS)}")
            elif col in index:
                self.error(line, f"column {col}", "a second column of that name", "each once")
            else:
                index[col] = i
        for col in COLUMNS:
            if col not in index:
                self.error(line, f"column {col}", "nothing", f"a header column named {col}")
        return index

    def _station(self, line: int, v: dict[str, str]) -> Station | None:
        n = len(self.errors)
        sid = v["id"]
        if not STATION_ID_RE.fullmatch(sid):
            expected = "a station id: the 13-digit TPS code or 1..64 letters, digits, '.', '_', '-'"
            if _SCIENTIFIC_RE.fullmatch(sid):
                expected += " (a spreadsheet turned the code into a number: format it as text)"
            self.error(line, "column id", _got(sid), expected)
        elif (shape := tps_shape_problem(sid)) is not None:
            self.error(line, "column id", _got(sid), shape)
        for col in ("name", "province", "regency"):
            if _text(v[col]) is None:
                formula = v[col][:1] in tuple(FORMULA_LEAD)
                why = ", not starting with =, +, - or @ (a spreadsheet formula)" if formula else ""
                self.error(line, f"column {col}", _got(v[col]), _EXPECTED[col] + why)
        place = self.wilayah.check_place(
            sid,
            v["province"] if _text(v["province"]) else "",
            v["regency"] if _text(v["regency"]) else "",
        )
        for problem in place.problems:
            column = problem.column
            self.error(line, f"column {column}", _got(v[column]), problem.expected)
        coords: list[float] = []
        for col, limit, what in (("lat", 90.0, "latitude"), ("lon", 180.0, "longitude")):
            value = _degrees(v[col], -limit, limit)
            if value is None:
                hint = " (with a '.' decimal point)" if "," in v[col] else ""
                self.error(
                    line,
                    f"column {col}",
                    _got(v[col]),
                    f"a {what} in degrees, {-limit:g}..{limit:g}{hint}",
                )
            else:
                coords.append(value)
        if timezone(v["tz"]) is None:
            self.error(line, "column tz", _got(v["tz"]), _EXPECTED["tz"])
        operator = None
        if v["expected_operator"]:
            operator = self.operators.resolve(v["expected_operator"])
            if operator is None:
                self.error(
                    line,
                    "column expected_operator",
                    _got(v["expected_operator"]),
                    self.operators.expected(v["expected_operator"]),
                )
        if len(self.errors) > n:
            return None
        assert place.province is not None and place.regency is not None
        intern = sys.intern  # provinces, regencies, zones repeat across many stations
        return Station(
            sid,
            v["name"],
            intern(place.province),
            intern(place.regency),
            coords[0],
            coords[1],
            intern(v["tz"]),
            intern(operator) if operator else None,
        )


def read_stations_csv(path: str | Path, operators: Operators | None = None) -> list[Station]:
    """Parse and validate a stations CSV; raises RegistryError listing every problem.
    `operators`: the labels accepted in expected_operator (default: the built-in ones)."""
    return _CsvReader(Path(path), operators).read()


class Registry:
    """Stations and agent tokens. Safe to share between threads; several processes may
    open the same file (see the module docstring for how their caches stay current)."""

    def __init__(
        self,
        path: str | Path,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
        password: str | None = None,
    ) -> None:
        """`path`: a SQLite file, or a postgresql:// URL (its password, if any, in
        `password` rather than in the URL)."""
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.RLock()
        self._db = Database(path, password)
        self.where = self._db.where  # the path, or the URL without its password
        self.dialect = self._db.dialect
        self.path = Path(path) if self.dialect == SQLITE else None
        self._gens: tuple[int, int] = (-1, -1)  # (stations_gen, tokens_gen) of the caches
        self._stations: dict[str, Station] = {}
        self._tokens: dict[bytes, tuple[bytes, TokenInfo]] = {}  # SHA-256 -> active token
        self._used: dict[str, float] = {}  # token id -> last authenticate(), not yet stored
        self._active_ids: set[str] = set()
        self._max_seq = 0  # insertion order (rowid or seq) of the newest token read
        self._checked_at = -math.inf
        self._background: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            self._reload()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def for_config(cls, cfg: CollectorConfig, **kwargs: Any) -> Registry:
        """The registry a collector config names: its PostgreSQL URL or its SQLite file."""
        return cls(cfg.registry_target, password=cfg.registry.password, **kwargs)

    # --- plumbing -----------------------------------------------------------------------

    def close(self) -> None:
        self.stop_background()
        with contextlib.suppress(DatabaseError):
            self.flush_usage()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> contextlib.AbstractContextManager[Database]:
        """A write transaction on the registry's database, for modules that keep their own
        tables in it (collector.enrolment). Queries use ? placeholders (collector.regdb)."""
        return self._write()

    def _write(self) -> contextlib.AbstractContextManager[Database]:
        return self._db.write()

    def _reload(self, force: bool = False) -> None:
        """Reload the caches whose generation counter changed (all of them when forced)."""
        with self._lock:
            with self._db.snapshot() as db:  # one snapshot: counters and rows agree
                gens = dict(db.execute("SELECT key, value FROM meta").fetchall())
                new = (int(gens["stations_gen"]), int(gens["tokens_gen"]))
                if force or new[0] != self._gens[0]:
                    self._stations = {s.id: s for s in self._select_stations(db)}
                if force or self._gens[1] < 0:
                    self._load_tokens(db)
                elif new[1] != self._gens[1]:
                    self._update_tokens(db, self._gens[1])
            self._gens = new
            self._checked_at = self._clock()

    _TOKEN_COLUMNS = (
        "{seq}, hash, id, scope_kind, scope_value, note, created_at, revoked_at, last_used_at"
    )

    def _load_tokens(self, db: Database) -> None:
        tokens: dict[bytes, tuple[bytes, TokenInfo]] = {}
        top = 0
        columns = self._TOKEN_COLUMNS.format(seq=db.seq)
        for row in db.execute(f"SELECT {columns} FROM tokens"):
            top = max(top, row[0])
            if row[7] is None:
                tokens[bytes(row[1])] = (bytes(row[1]), TokenInfo(*row[2:]))
        self._tokens = tokens
        self._active_ids = {info.id for _, info in tokens.values()}
        self._max_seq = top

    def _update_tokens(self, db: Database, seen_gen: int) -> None:
        """Apply what changed since the last token reload: rows added since (tokens are
        never deleted and writers take turns, so new rows are above the last rowid or seq
        seen) and the revocations since (each records the tokens generation it made, so no
        node's clock is involved). Reading 300,000 tokens again took 1.6 s, which stalled
        every request when it ran on the event loop (issue 15, finding 11)."""
        columns = self._TOKEN_COLUMNS.format(seq=db.seq)
        added = db.execute(
            f"SELECT {columns} FROM tokens WHERE {db.seq} > ?", (self._max_seq,)
        ).fetchall()
        revoked = db.execute(
            "SELECT hash, id FROM tokens WHERE revoked_gen > ?", (seen_gen,)
        ).fetchall()
        for row in added:
            self._max_seq = max(self._max_seq, row[0])
            if row[7] is None:
                info = TokenInfo(*row[2:])
                self._tokens[bytes(row[1])] = (bytes(row[1]), info)
                self._active_ids.add(info.id)
        for digest, token_id in revoked:
            self._tokens.pop(bytes(digest), None)
            self._active_ids.discard(token_id)

    def is_active(self, token_id: str) -> bool:
        """Is the token with this public id active (known and not revoked)?"""
        self._maybe_refresh()
        return token_id in self._active_ids

    def start_background(self, usage_flush_s: float = 10.0) -> None:
        """Re-read changes and store token use in a thread of their own, so a server's
        event loop never waits on SQLite (`agents add` / `revoke` in another process, or
        the CLI holding the write lock). The request path then only reads the caches."""
        if self._background is not None:
            return
        self._stop.clear()

        def loop() -> None:
            last_flush = time.monotonic()
            while not self._stop.wait(max(self.refresh_s, 0.05)):
                try:
                    self._reload()
                    if time.monotonic() - last_flush >= usage_flush_s:
                        last_flush = time.monotonic()
                        self.flush_usage()
                except DatabaseError as exc:
                    log.warning("cannot re-read, using cached data: %s", exc)

        self._background = threading.Thread(target=loop, name="registry-refresh", daemon=True)
        self._background.start()

    def stop_background(self) -> None:
        thread, self._background = self._background, None
        if thread is not None:
            self._stop.set()
            thread.join(30)

    def _maybe_refresh(self) -> None:
        if self._background is not None:
            return  # the background thread keeps the caches current
        if self._clock() - self._checked_at < self.refresh_s:
            return
        with self._lock:
            if self._clock() - self._checked_at < self.refresh_s:
                return  # another thread has just re-read it
            try:
                self._reload()
            except DatabaseError as exc:
                # Keep serving from the cache; try again after another interval.
                self._checked_at = self._clock()
                log.warning("cannot re-read, using cached data: %s", exc)

    @staticmethod
    def _select_stations(db: Database) -> list[Station]:
        intern = sys.intern
        return [
            Station(
                r[0],
                r[1],
                intern(r[2]),
                intern(r[3]),
                r[4],
                r[5],
                intern(r[6]),
                intern(r[7]) if r[7] else None,
            )
            for r in db.execute(
                "SELECT id, name, province, regency, lat, lon, tz, expected_operator"
                " FROM stations ORDER BY id"
            )
        ]

    # --- stations -----------------------------------------------------------------------

    def import_stations_csv(
        self, path: str | Path, operators: Operators | None = None
    ) -> ImportResult:
        """Validate the whole file, then upsert every station in one transaction.
        Raises RegistryError (nothing imported) listing every problem."""
        stations = read_stations_csv(path, operators)
        added = updated = 0
        with self._write() as db:
            existing = {s.id: s for s in self._select_stations(db)}
            changed = []
            for s in stations:
                old = existing.get(s.id)
                if old is None:
                    added += 1
                elif old != s:
                    updated += 1
                else:
                    continue
                changed.append(
                    (s.id, s.name, s.province, s.regency, s.lat, s.lon, s.tz, s.expected_operator)
                )
            db.executemany(
                "INSERT INTO stations (id, name, province, regency, lat, lon, tz,"
                " expected_operator) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET name = excluded.name,"
                " province = excluded.province, regency = excluded.regency,"
                " lat = excluded.lat, lon = excluded.lon, tz = excluded.tz,"
                " expected_operator = excluded.expected_operator",
                changed,
            )
            if changed:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'stations_gen'")
        self._reload()
        log.info(
            "registry: imported %d stations from %s (%d added, %d updated)",
            len(stations),
            path,
            added,
            updated,
        )
        return ImportResult(added, updated, len(stations) - added - updated)

    def get_station(self, station_id: str) -> Station | None:
        self._maybe_refresh()
        return self._stations.get(station_id)

    def stations(self) -> list[Station]:
        self._maybe_refresh()
        return sorted(self._stations.values(), key=lambda s: s.id)

    # --- tokens -------------------------------------------------------------------------

    def add_token(
        self, station: str | None = None, region: str | None = None, note: str = ""
    ) -> tuple[TokenInfo, str]:
        """Issue a token scoped to one station or a region prefix. Returns its info and the
        plaintext token, which is not stored and cannot be shown again."""
        return self.add_tokens([(station, region)], note)[0]

    def add_tokens(
        self, scopes: Sequence[tuple[str | None, str | None]], note: str = ""
    ) -> list[tuple[TokenInfo, str]]:
        """Issue one token per (station, region) scope (exactly one of the two set), all in
        one transaction: either every token is added or none (RegistryError lists every bad
        scope). Bulk provisioning of a fleet uses this; it is as fast per token as it gets."""
        errors: list[str] = []
        if note and (len(note) > _MAX_TEXT or not note.isprintable()):
            errors.append(f"note: got {show(note)}, expected one line of at most 200 characters")
        many = len(scopes) > 1
        for n, (station, region) in enumerate(scopes, 1):
            where = f"scope {n}: " if many else ""
            why = self._scope_error(station, region)
            if why is not None:
                errors.append(where + why)
        if errors:
            raise RegistryError(errors)
        created = _utc_now()
        issued: list[tuple[TokenInfo, str]] = []
        with self._write() as db:
            used = {row[0] for row in db.execute("SELECT id FROM tokens")}
            rows = []
            for station, region in scopes:
                kind, value = (STATION, station) if station is not None else (REGION, region)
                assert value is not None
                token = TOKEN_PREFIX + secrets.token_urlsafe(32)
                # A short public id is easy to read out and type; it may collide when
                # hundreds of thousands exist, so draw again until it is unused.
                token_id = secrets.token_hex(4)
                while token_id in used:
                    token_id = secrets.token_hex(4)
                used.add(token_id)
                rows.append((token_id, _hash(token), kind, value, note, created))
                issued.append((TokenInfo(token_id, kind, value, note, created), token))
            db.executemany(
                "INSERT INTO tokens (id, hash, scope_kind, scope_value, note, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'tokens_gen'")
        if len(rows) >= 1000:
            self._db.analyze("tokens")
        self._reload()
        if len(issued) == 1:
            log.info("registry: added token %s for %s", issued[0][0].id, issued[0][0].scope)
        else:
            log.info("registry: added %d tokens", len(issued))
        return issued

    def _scope_error(self, station: str | None, region: str | None) -> str | None:
        if (station is None) == (region is None):
            return "scope: expected exactly one of a station id or a region prefix"
        if station is not None:
            if not STATION_ID_RE.fullmatch(station):
                return (
                    f"station: got {_got(station)}, expected a station id: the 13-digit TPS"
                    " code or 1..64 letters, digits, '.', '_', '-'"
                )
            if station not in self._stations:
                self._reload()  # it may have been imported by another process just now
                if station not in self._stations:
                    return (
                        f"station: got {_got(station)}, expected a station in the registry"
                        " (import it first: sinyal-collector stations import FILE.csv)"
                    )
        elif region is not None and not _REGION_RE.fullmatch(region):
            return (
                f"region: got {_got(region)}, expected a region code prefix of 2 (province),"
                " 4 (regency), 6 (district) or 10 (village) digits"
            )
        return None

    def authenticate(self, token: str) -> TokenInfo | None:
        """The active token's info, or None (unknown, revoked, malformed)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN_LEN:
            return None
        digest = _hash(token)
        self._maybe_refresh()
        entry = self._tokens.get(digest)
        # The lookup compares SHA-256 digests, whose bytes an attacker cannot steer without
        # a preimage, so its timing reveals nothing useful; the final equality is still
        # decided in constant time.
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        info = entry[1]
        self._used[info.id] = time.time()
        return info

    def flush_usage(self) -> int:
        """Store when each token was last used (kept in memory by authenticate, to keep
        writes off the ingest path). The server calls this now and then; close() too.
        Returns how many tokens were updated."""
        used, self._used = self._used, {}
        if not used:
            return 0
        rows = []
        for tid, t in used.items():
            at = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append((at, tid, at))
        with self._write() as db:
            db.executemany(
                "UPDATE tokens SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                rows,
            )
        return len(rows)

    def list_tokens(self) -> list[TokenInfo]:
        with self._lock:
            return [
                TokenInfo(*row)
                for row in self._db.execute(
                    "SELECT id, scope_kind, scope_value, note, created_at, revoked_at,"
                    " last_used_at FROM tokens ORDER BY created_at, id"
                )
            ]

    def get_token(self, token_id: str) -> TokenInfo | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, scope_kind, scope_value, note, created_at, revoked_at,"
                " last_used_at FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
        return None if row is None else TokenInfo(*row)

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by its public id. False when no such token exists; revoking an
        already revoked token is a no-op that returns True."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = ?, revoked_gen = ("
                "SELECT value + 1 FROM meta WHERE key = 'tokens_gen')"
                " WHERE id = ? AND revoked_at IS NULL",
                (_utc_now(), token_id),
            )
            changed = cur.rowcount == 1
            if changed:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'tokens_gen'")
            known = changed or (
                db.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone() is not None
            )
        if changed:
            self._reload()
            log.info("registry: revoked token %s", token_id)
        return known
