"""HTTP GET with phase timings, with httpx.

Phases (all in ms, on the monotonic clock):
  dns_ms      resolving the URL's host (getaddrinfo); absent for an IP literal
  connect_ms  TCP connect, from httpcore's connect_tcp trace events
  tls_ms      TLS handshake (https), from start_tls trace events
  ttfb_ms     sending the request headers to receiving the response headers
  total_ms    start of resolution to the last body byte read
The host is resolved first and the connection made to that address with the
original Host header and TLS server name, so resolution is timed on its own.
Each measurement uses a fresh connection; redirects are not followed. At most
`max_bytes` of the body are counted (bytes), and reading stops there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

# httpcore imports these on the first connection; importing them here keeps that import
# (~20 ms) out of the first measurement's timings.
import anyio
import anyio._backends._asyncio  # noqa: F401
import h11  # noqa: F401
import httpcore  # noqa: F401
import httpx

from agent.config import HttpProbeConfig, HttpTarget, Uplink
from agent.contract.record import ErrorCode, FieldValue, Record
from agent.contract.version import AGENT_USER_AGENT
from agent.netutil import SourceUnavailable, error_code_for, uplink_source
from agent.probes.base import ProbeEnv, Stamp, make_record


def make_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """A TLS context trusting ca_bundle, else certifi's bundle (httpx's own)."""
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class Trace:
    """Collects httpcore trace events as monotonic timestamps."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.t.setdefault(event, time.monotonic())

    def span(self, start: str, end: str) -> float | None:
        if start in self.t and end in self.t:
            return (self.t[end] - self.t[start]) * 1000
        return None


class HttpProbe:
    kind = "http"
    exclusive = False

    def __init__(self, cfg: HttpProbeConfig, env: ProbeEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.interval_s = cfg.interval_s
        self.station = env.config.station.id
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_env(cls, env: ProbeEnv) -> HttpProbe | None:
        cfg = env.config.probes.http
        return cls(cfg, env) if cfg is not None and cfg.enabled else None

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = make_ssl_context(self.cfg.ca_bundle)
        return self._ssl

    async def run(self) -> list[Record]:
        jobs = [self.measure(u, t) for u in self.env.config.uplinks for t in self.cfg.targets]
        return list(await asyncio.gather(*jobs))

    async def measure(self, uplink: Uplink, target: HttpTarget) -> Record:
        stamp = Stamp()
        exchange = _Exchange(self, uplink, target)
        fields = exchange.fields
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                error = await exchange.run()
        except TimeoutError:
            error = ErrorCode.TIMEOUT
        except SourceUnavailable:
            error = ErrorCode.SOURCE_UNAVAILABLE
        except httpx.TimeoutException:
            error = ErrorCode.TIMEOUT
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            error = error_code_for(exc) or (
                ErrorCode.CONNECTION_RESET
                if isinstance(exc, httpx.ReadError | httpx.WriteError)
                or "disconnected" in str(exc).lower()
                else ErrorCode.PROTOCOL_ERROR
            )
        except httpx.ConnectError as exc:
            error = error_code_for(exc) or ErrorCode.CONNECTION_REFUSED
        except (httpx.HTTPError, OSError) as exc:
            error = error_code_for(exc) or ErrorCode.PROTOCOL_ERROR
        if error is not None:
            fields["ok"] = 0
        return make_record(
            self.kind, stamp, self.station, uplink, {"target": target.name}, fields, error
        )


class _Exchange:
    """One GET of one target over one uplink. Its fields fill in as the phases complete,
    so a failure keeps what was measured before it (dns_ms, connect_ms, ...)."""

    def __init__(self, probe: HttpProbe, uplink: Uplink, target: HttpTarget) -> None:
        self.probe = probe
        self.cfg = probe.cfg
        self.uplink = uplink
        self.target = target
        self.fields: dict[str, FieldValue | None] = {"ok": 0}
        self.trace = Trace()

    async def run(self) -> ErrorCode | None:
        source = uplink_source(self.uplink)
        parts = urlsplit(self.target.url)
        # The client (and its TLS context, ~tens of ms) is built before the clock starts:
        # total_ms measures the network exchange, not our set-up.
        transport = httpx.AsyncHTTPTransport(
            local_address=source,
            retries=0,
            verify=self.probe.ssl_context() if parts.scheme == "https" else False,
        )
        async with httpx.AsyncClient(
            transport=transport, follow_redirects=False, timeout=self.cfg.timeout_s
        ) as client:
            t0 = time.monotonic()
            try:
                address = await self._resolve(parts, source, t0)
                if address is None:
                    return ErrorCode.NAME_NOT_RESOLVED
                status = await self._fetch(client, parts, address, t0)
            finally:
                self.fields.update(self._phases())  # those that completed, even on failure
        if status not in self.target.expect_status:
            return ErrorCode.HTTP_STATUS
        self.fields["ok"] = 1
        return None

    async def _resolve(self, parts: SplitResult, source: str | None, t0: float) -> str | None:
        """The address to connect to (the URL's own when it is one), timed as dns_ms; None
        when the name does not resolve."""
        host = parts.hostname or ""
        if _is_ip(host):
            return host
        family = socket.AF_UNSPEC
        if source is not None:
            family = socket.AF_INET6 if _is_ip(source, 6) else socket.AF_INET
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=family, type=socket.SOCK_STREAM
            )
        except socket.gaierror:
            return None
        self.fields["dns_ms"] = round((time.monotonic() - t0) * 1000, 3)
        return str(infos[0][4][0])

    async def _fetch(
        self, client: httpx.AsyncClient, parts: SplitResult, address: str, t0: float
    ) -> int:
        """GET the resolved address with the URL's Host and SNI; the status."""
        netloc = f"[{address}]" if _is_ip(address, 6) else address
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        request = client.build_request(
            "GET",
            url,
            headers={
                "Host": parts.netloc.rpartition("@")[2],
                "User-Agent": AGENT_USER_AGENT,
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
            extensions={"trace": self.trace, "sni_hostname": parts.hostname or ""},
        )
        response = await client.send(request, stream=True)
        self.fields["status"] = response.status_code
        try:
            received = await self._read_body(response)
            self.fields["total_ms"] = round((time.monotonic() - t0) * 1000, 3)
            self.fields["bytes"] = received
        finally:
            await response.aclose()
        return response.status_code

    async def _read_body(self, response: httpx.Response) -> int:
        """Chunks come as the socket delivers them (up to 64 KiB): stop at the one that holds
        byte max_bytes and count no further, so total_ms is the time to that byte and bytes
        never exceeds max_bytes (0: headers only)."""
        limit = self.cfg.max_bytes
        received = 0
        if limit > 0:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= limit:
                    return limit
        return received

    def _phases(self) -> dict[str, FieldValue | None]:
        span = self.trace.span
        return {
            "connect_ms": _r(
                span("connection.connect_tcp.started", "connection.connect_tcp.complete")
            ),
            "tls_ms": _r(span("connection.start_tls.started", "connection.start_tls.complete")),
            "ttfb_ms": _r(
                span(
                    "http11.send_request_headers.started",
                    "http11.receive_response_headers.complete",
                )
            ),
        }


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or ip.version == version


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
