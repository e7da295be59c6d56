"""Tickets for the collector's speedtest endpoint, fetched with the agent's token.

The collector serves `/speedtest` only to a URL that carries a short-lived ticket
(``/speedtest/t/<ticket>/...``, docs/security.md): speedtest-cli cannot send the token
itself. Before a throughput or upload test whose URL is a Sinyal speedtest URL (a path
segment ``speedtest``: the collector's own mount or deploy/nginx/speedtest.conf), the probe
asks the configured collector for a ticket and puts it into the URL. Other URLs (a
third-party Speedtest Mini server, any upload target) are used as configured, and the
token is never sent anywhere but the collector.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

from agent.config import AgentConfig

log = logging.getLogger("sinyal.speedtest_ticket")

TICKET_PATH = "/api/v1/speedtest/ticket"
SEGMENT = "speedtest"
_TICKET_RE = re.compile(r"[0-9a-f]{8}\.[0-9]{10}\.[0-9a-f]{32}")
_REUSE_MARGIN_S = 120.0  # a ticket this close to its expiry is not used for a new test

_cache: dict[str, tuple[str, float]] = {}  # collector URL -> (ticket, monotonic expiry)


def wants_ticket(url: str) -> bool:
    segments = urlsplit(url).path.split("/")
    return SEGMENT in segments and "t" not in segments


def with_ticket(url: str, ticket: str) -> str:
    """`url` with ``t/<ticket>`` after its (last) ``speedtest`` path segment."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    i = len(segments) - 1 - segments[::-1].index(SEGMENT)
    segments[i + 1 : i + 1] = ["t", ticket]
    if i + 3 == len(segments):  # the URL ended at the speedtest segment: keep it a directory
        segments.append("")
    return urlunsplit(parts._replace(path="/".join(segments)))


async def fetch_ticket(config: AgentConfig) -> str | None:
    """A ticket from the configured collector, or None (logged) when it gives none."""
    c = config.collector
    if c is None:
        return None
    cached = _cache.get(c.url)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    verify: str | bool = str(c.ca_bundle) if c.ca_bundle else True
    try:
        async with httpx.AsyncClient(verify=verify, timeout=c.timeout_s) as client:
            response = await client.get(
                c.url.rstrip("/") + TICKET_PATH,
                headers={"Authorization": f"Bearer {c.read_token()}"},
            )
        doc = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, OSError, ValueError) as exc:
        log.warning("no speedtest ticket from the collector: %s", type(exc).__name__)
        return None
    ticket = doc.get("ticket") if isinstance(doc, dict) else None
    if not isinstance(ticket, str) or not _TICKET_RE.fullmatch(ticket):
        log.warning("no speedtest ticket from the collector (HTTP %d)", response.status_code)
        return None
    expires = int(ticket.split(".")[1])
    ttl = expires - time.time() - _REUSE_MARGIN_S
    if ttl > 0:
        _cache[c.url] = (ticket, time.monotonic() + ttl)
    return ticket


async def ticketed(url: str, config: AgentConfig) -> str:
    """`url` with a ticket when it is a Sinyal speedtest URL and the collector gives one."""
    if not wants_ticket(url):
        return url
    ticket = await fetch_ticket(config)
    return url if ticket is None else with_ticket(url, ticket)
