"""Upload health: whether the station's results reach the control room, and if not, why.

The uploader reports every attempt here; this module turns it into a state a person can read
("collector unreachable: connection refused", "token refused (401)", "clock not
synchronised", "DNS failure: cannot resolve collector.example"), keeps it in the spool's
state table (so `sinyal-agent status` and the heartbeat read it), and logs each CHANGE of
state once (never every retry). Times shown to a person are local to the station, with
the zone name (WIB, WITA, WIT) and an ISO date: `format_local`.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from agent.contract.record import format_time, parse_time
from agent.spool import Spool

log = logging.getLogger("sinyal.uploader")

# State kinds, stable codes (the heartbeat's upload_state field, the dashboard's mapping).
OK = "ok"
NEVER = "never"  # nothing sent yet
KINDS = (
    OK,
    NEVER,
    "dns",  # the collector's name does not resolve
    "refused",  # nothing listens at the collector's address and port
    "unreachable",  # no route, network down
    "timeout",  # no answer in time
    "tls",  # the TLS handshake failed (certificate not trusted, wrong host)
    "unauthorized",  # 401: the token is unknown or revoked
    "forbidden",  # 403: the token may not write for this station
    "server",  # 5xx: the collector or its database is down
    "clock",  # the records' time is not established or the collector refuses it
    "token_file",  # the token file cannot be read
    "other",
)
# The numeric code of each kind for the heartbeat (dashboards map numbers to colours).
CODE = {k: i for i, k in enumerate(KINDS)}

# Words for each kind: what a technician reads first.
HEADLINE = {
    "dns": "DNS failure",
    "refused": "collector unreachable",
    "unreachable": "collector unreachable",
    "timeout": "collector unreachable",
    "tls": "TLS failure",
    "unauthorized": "token refused (401)",
    "forbidden": "token refused (403)",
    "server": "collector error",
    "clock": "clock not synchronised",
    "token_file": "token file unreadable",
    "other": "upload failing",
}


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        stack += [e.__cause__, e.__context__]
    return out


def classify_exception(exc: BaseException, host: str) -> tuple[str, str]:
    """(kind, reason in words) of a failed request that got no HTTP answer."""
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, socket.gaierror) for e in chain) or any(
        s in text for s in ("name or service not known", "name resolution", "nodename nor servname")
    ):
        return "dns", f"DNS failure: cannot resolve {host}"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "certificate" in text:
        return "tls", f"TLS failure with {host}: certificate not trusted or wrong host name"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text:
        return "refused", f"collector unreachable: connection refused by {host}"
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "unreachable", f"collector unreachable: no route to {host} (link down?)"
    if "timeout" in type(exc).__name__.lower() or "timed out" in text:
        return "timeout", f"collector unreachable: no answer from {host} in time"
    return "other", f"upload failing: {type(exc).__name__}: {exc}"


def classify_status(
    status: int, detail: str, retry_after_s: float | None = None
) -> tuple[str, str]:
    """(kind, reason in words) of an HTTP answer that was not a success."""
    if status == 401:
        return "unauthorized", "token refused (401): revoked or wrong token; enrol again"
    if status == 403:
        return "forbidden", "token refused (403): it may not write for this station"
    if status == 503:
        wait = f", retry in {retry_after_s:.0f} s" if retry_after_s else ""
        return "server", f"collector error (503): its database is down{wait}"
    if status >= 500:
        return "server", f"collector error (HTTP {status})"
    return "other", f"upload refused: {detail}"


@dataclass(frozen=True)
class Health:
    """What the spool's state table says about uploads (read by status, heartbeat, view)."""

    kind: str
    reason: str
    since: str | None  # UTC ISO time the current state began
    last_ok_at: str | None
    last_error: str | None
    last_error_at: str | None

    @property
    def ok(self) -> bool:
        return self.kind in (OK, NEVER)

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Health:
        return cls(
            kind=state.get("upload_kind") or (OK if state.get("last_upload_at") else NEVER),
            reason=state.get("upload_reason", ""),
            since=state.get("upload_since") or None,
            last_ok_at=state.get("last_upload_at") or None,
            last_error=state.get("last_error") or None,
            last_error_at=state.get("last_error_at") or state.get("last_attempt_at") or None,
        )


class Tracker:
    """Keeps the upload state in the spool and logs each change of it once."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        # The first outcome after a start is logged whatever it is (journald then says the
        # state after every restart); `since` carries over when the state did not change.
        self.kind: str | None = None
        self.reason = ""
        state = spool.state()
        self.stored_kind = state.get("upload_kind") or None
        self.stored_reason = state.get("upload_reason", "")

    def _now(self) -> str:
        return format_time(datetime.now(UTC))

    def success(self) -> None:
        now = self._now()
        values = {
            "last_upload_at": now,
            "upload_kind": OK,
            "upload_reason": "uploads reach the collector",
        }
        if self.kind != OK:
            if self.stored_kind != OK or self.kind is not None:
                values["upload_since"] = now
            was = self.reason if self.kind is not None else self.stored_reason
            failed_before = (self.kind or self.stored_kind) not in (None, NEVER, OK)
            if failed_before:
                log.info("uploads work again (was: %s)", was)
            else:
                log.info("uploads work: the collector accepts this station's records")
        self.kind, self.reason = OK, values["upload_reason"]
        self.spool.set_state(**values)

    def failure(self, kind: str, reason: str) -> None:
        now = self._now()
        values = {
            "last_attempt_at": now,
            "last_error": reason,
            "last_error_at": now,
            "upload_kind": kind,
            "upload_reason": reason,
        }
        if kind != self.kind:
            if self.kind is not None or self.stored_kind != kind:
                values["upload_since"] = now
            log.warning("uploads failing: %s; results stay in the spool", reason)
        self.kind, self.reason = kind, reason
        self.spool.set_state(**values)


# --- local time for people ------------------------------------------------------------------


def format_local(when: datetime | str | float | None, tz: str, seconds: bool = True) -> str:
    """'2026-12-04 23:43:20 WIB': ISO date, 24-hour time, the zone's own name."""
    if when is None or when == "":
        return "never"
    if isinstance(when, str):
        when = parse_time(when)
    elif isinstance(when, int | float):
        when = datetime.fromtimestamp(when, UTC)
    local = when.astimezone(ZoneInfo(tz))
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def ago(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min', '2 d 4 h'."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
