"""Enrolment codes: a field technician types a short code instead of copying a token.

The control room issues one code per station (`sinyal-collector agents enroll`); the
device exchanges it once (`sinyal-agent enroll --collector URL CODE`, which calls
POST /api/v1/enroll) for a new token scoped to that station and the station block of its
config (id, name, lat, lon, tz from the registry).

- A code is 10 characters of Crockford's base32 (no I, L, O, U: nothing to misread),
  shown as two groups of five (``7KQ2M-9XD4T``): 50 random bits. Typing is forgiving:
  case, spaces and dashes do not matter, O reads as 0 and I or L as 1.
- Only its SHA-256 is stored, beside the registry's tables in its database. A
  short code is guessable offline from a stolen hash in a way a 256-bit token is not,
  which is why a code is single-use and expires (default 14 days): a stolen registry
  yields at most codes not yet used, and the control room can revoke those.
- Single use: the exchange claims the code in one UPDATE (used_at IS NULL) before the
  token is issued, so two devices racing with the same code get one token between them.
- Guessing online is rate limited per source address: after `ATTEMPTS` failed exchanges
  in `WINDOW_S` seconds that address gets 429 until the window has passed. With 2**50
  codes and at most 10 failures per 10 minutes per address, guessing a live code is out
  of reach (the station count, about 2**19, leaves 2**31 guesses per hit).
- Revoking a station (`sinyal-collector agents revoke --station ID`) revokes its tokens and
  its unused codes; exchanging one of those says the station was revoked.

Nothing here logs or returns a code or a token except the exchange's answer to its caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.regdb import Database
from collector.registry import Registry, TokenInfo
from collector.station import Station

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
CODE_LENGTH = 10
DEFAULT_EXPIRY = timedelta(days=14)
ATTEMPTS = 10  # failed exchanges per source address per window
WINDOW_S = 600.0


class EnrolmentError(Exception):
    """An exchange that did not succeed: `status` is the HTTP status, the message says why
    in words and what to do (it never holds the code)."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class IssuedCode:
    station: Station
    code: str  # shown once: on the sheet and on stdout
    expires_at: str  # UTC ISO


@dataclass(frozen=True)
class Enrolled:
    station: Station
    token: str
    token_id: str

    def answer(self) -> dict[str, Any]:
        s = self.station
        return {
            "station": {"id": s.id, "name": s.name, "lat": s.lat, "lon": s.lon, "tz": s.tz},
            "token": self.token,
            "token_id": self.token_id,
        }


_LOOKALIKE = str.maketrans("OIL", "011")


def normalise(code: str) -> str | None:
    """The canonical form of a typed code, or None when it cannot be one."""
    text = code.strip().upper().replace("-", "").replace(" ", "")
    text = text.translate(_LOOKALIKE)
    if len(text) != CODE_LENGTH or any(ch not in ALPHABET for ch in text):
        return None
    return text


def display(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


def _hash(code: str) -> bytes:
    return hashlib.sha256(code.encode("ascii")).digest()


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> timedelta | None:
    """'14d', '36h', '90m' -> timedelta; None when not such a duration (1 minute..365 days)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    if len(t) < 2 or t[-1] not in units or not t[:-1].isdigit():
        return None
    seconds = int(t[:-1]) * units[t[-1]]
    if not 60 <= seconds <= 365 * 86400:
        return None
    return timedelta(seconds=seconds)


MAX_SOURCES = 100_000  # addresses tracked at once; beyond, the stalest are forgotten


def source_key(address: str) -> str:
    """The unit the limit applies to: an IPv4 address, or an IPv6 /64 (one subscriber's
    prefix: rotating addresses inside it does not earn more attempts)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RateLimiter:
    """Failed attempts per source (source_key) in a sliding window, in memory, per process.
    Memory is bounded: at most MAX_SOURCES sources are tracked."""

    def __init__(self, attempts: int = ATTEMPTS, window_s: float = WINDOW_S) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        source = source_key(address)
        if source not in self._failures and len(self._failures) >= MAX_SOURCES:
            self._forget(now)
        q = self._failures.setdefault(source, deque(maxlen=self.attempts))
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def _forget(self, now: float) -> None:
        """Drop sources whose failures are all out of the window; if that frees too little,
        the half with the oldest last failure (a flood of fresh sources cannot grow memory)."""
        stale = [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window_s]
        for k in stale:
            del self._failures[k]
        if len(self._failures) >= MAX_SOURCES:
            by_age = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for k in by_age[: len(by_age) // 2]:
                del self._failures[k]

    def retry_after(self, source: str) -> float | None:
        """Seconds until `source` may try again, or None when it may try now."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(source, now)
            if len(q) < self.attempts:
                if not q:
                    self._failures.pop(source_key(source), None)  # keeps the table small
                return None
            return max(1.0, q[0] + self.window_s - now)

    def failed(self, source: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(source, now).append(now)


class Enrolment:
    """Enrolment codes in the registry's SQLite file (on the registry's connection)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry  # its schema has the enrolment_codes table (collector.regdb)

    def close(self) -> None:
        pass  # the registry's connection is its owner's to close

    def __enter__(self) -> Enrolment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> contextlib.AbstractContextManager[Database]:
        return self.registry.transaction()

    def issue(self, station_ids: list[str], expiry: timedelta = DEFAULT_EXPIRY) -> list[IssuedCode]:
        """One new code per station (in one transaction). Earlier unused codes of these
        stations stay valid until they expire or are used; a station's codes all lead to
        the same station. Raises KeyError naming the first station not in the registry."""
        stations = []
        for sid in station_ids:
            st = self.registry.get_station(sid)
            if st is None:
                raise KeyError(sid)
            stations.append(st)
        now = datetime.now(UTC)
        created, expires = _iso(now), _iso(now + expiry)
        issued: list[IssuedCode] = []
        with self._write() as db:
            for st in stations:
                while True:
                    code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
                    cur = db.execute(
                        "INSERT INTO enrolment_codes (hash, station, created_at, expires_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
                        (_hash(code), st.id, created, expires),
                    )
                    if cur.rowcount == 1:
                        break  # else the same code was drawn twice: draw again
                issued.append(IssuedCode(st, display(code), expires))
        return issued

    def revoke_station(self, station_id: str) -> tuple[int, list[TokenInfo]]:
        """Revoke the station's unused codes and its active station tokens; returns how many
        codes, and the tokens revoked."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE enrolment_codes SET revoked_at = ? WHERE station = ?"
                " AND used_at IS NULL AND revoked_at IS NULL",
                (_iso(datetime.now(UTC)), station_id),
            )
            codes = cur.rowcount
        tokens = [
            t
            for t in self.registry.list_tokens()
            if t.active and t.scope_kind == "station" and t.scope_value == station_id
        ]
        for t in tokens:
            self.registry.revoke(t.id)
        return codes, tokens

    def exchange(self, typed: str, source: str, limiter: RateLimiter) -> Enrolled:
        """A new token for the code's station, once. Raises EnrolmentError with the answer
        for the device: 429 rate limited, 404 wrong code, 410 used or expired, 403 revoked."""
        wait = limiter.retry_after(source)
        if wait is not None:
            raise EnrolmentError(
                429,
                f"too many failed enrolment attempts from {source}: try again in "
                f"{wait:.0f} s, and check the code on the sheet",
                wait,
            )
        code = normalise(typed) if isinstance(typed, str) else None
        try:
            return self._claim(code)
        except EnrolmentError as exc:
            if exc.status in (404, 410, 403):
                limiter.failed(source)
            raise

    def _claim(self, code: str | None) -> Enrolled:
        wrong = EnrolmentError(
            404,
            "unknown enrolment code: check it against the sheet (10 letters and digits, "
            "such as 7KQ2M-9XD4T)",
        )
        if code is None:
            raise wrong
        digest = _hash(code)
        now = datetime.now(UTC)
        with self._write() as db:
            row = db.execute(
                "SELECT station, expires_at, used_at, revoked_at FROM enrolment_codes"
                " WHERE hash = ?",
                (digest,),
            ).fetchone()
            if row is None:
                raise wrong
            station_id, expires_at, used_at, revoked_at = row
            if revoked_at is not None:
                raise EnrolmentError(
                    403,
                    f"station {station_id} was revoked by the control room at {revoked_at}: "
                    "ask it for a new enrolment code",
                )
            if used_at is not None:
                raise EnrolmentError(
                    410,
                    f"this enrolment code was already used at {used_at}: a code works once; "
                    "ask the control room for a new one",
                )
            if expires_at <= _iso(now):
                raise EnrolmentError(
                    410,
                    f"this enrolment code expired at {expires_at}: ask the control room for "
                    "a new one",
                )
            db.execute("UPDATE enrolment_codes SET used_at = ? WHERE hash = ?", (_iso(now), digest))
        station = self.registry.get_station(station_id)
        try:
            if station is None:
                raise EnrolmentError(
                    403,
                    f"station {station_id} is no longer in the registry: ask the control "
                    "room for a new enrolment code",
                )
            info, token = self.registry.add_token(station=station_id, note="enrolment")
        except BaseException:
            # The code stays usable when no token came of it.
            with self._write() as db:
                db.execute("UPDATE enrolment_codes SET used_at = NULL WHERE hash = ?", (digest,))
            raise
        with self._write() as db:
            db.execute("UPDATE enrolment_codes SET token_id = ? WHERE hash = ?", (info.id, digest))
        return Enrolled(station, token, info.id)
