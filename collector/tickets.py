"""Speedtest tickets: short-lived signed URL prefixes that an agent obtains with its token.

speedtest-cli (the agent's throughput backend) builds its own requests and cannot send an
Authorization header, so `/speedtest` is protected by a ticket in the path instead:

    GET /api/v1/speedtest/ticket   (Authorization: Bearer <agent token>)
    -> {"ticket": "<token id>.<expiry>.<signature>", "path": "t/<ticket>/", ...}

and then every speedtest URL carries it: ``/speedtest/t/<ticket>/random1000x1000.jpg``.
The signature is HMAC-SHA256 over ``<token id>.<expiry unix seconds>`` with a key kept in
the data directory (`speedtest.key`, 0600, made at first start; every replica on a host
shares it). A ticket names the token it was issued to, so bytes are charged to that
token's daily quota; it ends at its expiry, and a revoked token's ticket ends with it
(the token must still be active when the ticket is used). nginx checks tickets the same
way through `auth_request` to `/api/v1/speedtest/authorize` (deploy/nginx/speedtest.conf).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_TICKET_RE = re.compile(r"([0-9a-f]{8})\.([0-9]{10})\.([0-9a-f]{32})")
KEY_BYTES = 32


@dataclass(frozen=True)
class Ticket:
    token_id: str
    expires: int  # unix seconds
    text: str


def load_key(path: Path) -> bytes:
    """The signing key at `path`, created (0600, 32 random bytes) when it does not exist.
    Processes starting together (serve --workers, one unit per port) all get the one key
    that appears first: it is written aside and linked into place whole."""
    if not path.exists():
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process was first: its key is the key
        finally:
            aside.unlink()
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: expected {KEY_BYTES} random bytes, got {len(key)}")
    return key


class TicketSigner:
    def __init__(self, key: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def _sign(self, token_id: str, expires: int) -> str:
        msg = f"{token_id}.{expires}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, token_id: str) -> Ticket:
        expires = int(self._clock() + self.ttl_s)
        text = f"{token_id}.{expires}.{self._sign(token_id, expires)}"
        return Ticket(token_id, expires, text)

    def verify(self, text: str) -> Ticket | None:
        """The ticket, when `text` is one this key signed and it has not expired."""
        m = _TICKET_RE.fullmatch(text)
        if m is None:
            return None
        token_id, expires_s, sig = m.groups()
        expires = int(expires_s)
        if not hmac.compare_digest(sig, self._sign(token_id, expires)):
            return None
        if expires < self._clock():
            return None
        return Ticket(token_id, expires, text)


def ticket_in_path(path: str) -> str | None:
    """The ticket segment of a speedtest path (``.../t/<ticket>/<file>``), if any."""
    parts = path.split("/")
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1] == "t" and _TICKET_RE.fullmatch(parts[i]):
            return parts[i]
    return None
