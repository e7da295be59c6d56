"""Huawei HiLink devices (E3372-class dongles, MiFi and B-series routers): the local web API.

The protocol, as these devices speak it:

1. GET /api/webserver/SesTokInfo -> <response><SesInfo>SessionID=...</SesInfo>
   <TokInfo>token</TokInfo></response>: a session cookie and a CSRF token.
2. Every API request sends the cookie and the `__RequestVerificationToken` header; a device
   may hand out a fresh token or cookie in a response's headers, which replace the old ones.
3. Answers are XML: <response>...</response>, or <error><code>N</code>...</error>. 125001,
   125002, 125003 mean a bad or expired token or session (a device that rebooted forgets
   its sessions): handshake again and retry once. 100003 means the device wants a login.

Read: api/device/signal (rsrp, rsrq, sinr, rssi, rscp, ecio with their units, band, cell,
earfcn), api/monitoring/status (network type, bars, service state), api/net/current-plmn
(MCC-MNC and name). Only the device on the local link is contacted; nothing leaves it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import httpx

from agent.contract.record import ErrorCode
from agent.modem import (
    UNKNOWN,
    Reading,
    SourceError,
    bounded_int,
    clean,
    plmn_code,
    printable,
)

TOKEN_ERRORS = {"125001", "125002", "125003"}
LOGIN_ERRORS = {"100003", "108003", "108007"}
UNSUPPORTED_ERRORS = {"100002"}
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")
_MAX_BODY = 64 * 1024
# CurrentNetworkTypeEx (newer firmware) and CurrentNetworkType (older) -> access_tech
_NET_TYPE_EX = {1: "gsm", 2: "gsm", 3: "gsm", 101: "lte", 111: "nr5g"}
_NET_TYPE = {1: "gsm", 2: "gsm", 3: "gsm", 19: "lte", 101: "lte"}
for _n in (*range(4, 10), *range(41, 47), 61, 62, 63, 64, 65):
    _NET_TYPE_EX[_n] = "umts"
for _n in (*range(4, 10), *range(11, 19)):
    _NET_TYPE[_n] = "umts"
_SIGNAL_FIELDS = {
    "rsrp": "rsrp_dbm",
    "rsrq": "rsrq_db",
    "sinr": "sinr_db",
    "rssi": "rssi_dbm",
    "rscp": "rscp_dbm",
    "ecio": "ecio_db",
}


class HiLinkError(Exception):
    def __init__(self, code: str, path: str) -> None:
        super().__init__(f"{path}: HiLink error {code}")
        self.code = code
        self.path = path


def parse_xml(body: bytes, path: str) -> dict[str, str]:
    """The child elements of <response> as text; raises HiLinkError for <error>."""
    if len(body) > _MAX_BODY:
        raise SourceError(ErrorCode.NO_MODEM, f"{path}: answer larger than {_MAX_BODY} bytes")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:  # no entity games from a device
        raise SourceError(ErrorCode.NO_MODEM, f"{path}: answer with a DTD refused")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise SourceError(ErrorCode.NO_MODEM, f"{path}: not a HiLink XML answer ({exc})") from None
    if root.tag == "error":
        raise HiLinkError((root.findtext("code") or "").strip(), path)
    if root.tag != "response":
        raise SourceError(ErrorCode.NO_MODEM, f"{path}: expected <response>, got <{root.tag}>")
    return {child.tag: (child.text or "").strip() for child in root}


def number(text: str | None) -> float | None:
    """-97dBm, ">=-51dBm", "-10.5dB", "9dB" -> the number; "" / "Unknown" -> None."""
    if not text:
        return None
    m = _NUMBER_RE.search(text)
    return float(m.group(0)) if m else None


class HiLinkSource:
    """Readings from a HiLink device at `url` (http://192.168.8.1 by default)."""

    def __init__(self, url: str, timeout_s: float = 5.0, source_ip: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.source_ip = source_ip
        self._client: httpx.AsyncClient | None = None
        self._cookie: str | None = None
        self._token: str | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(local_address=self.source_ip, retries=0)
            self._client = httpx.AsyncClient(
                transport=transport,
                timeout=self.timeout_s,
                follow_redirects=False,
                trust_env=False,  # never through a proxy: the device is on the local link
                headers={"X-Requested-With": "XMLHttpRequest"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _get(self, path: str, auth: bool = True) -> dict[str, str]:
        headers: dict[str, str] = {}
        if auth and self._cookie is not None:
            headers["Cookie"] = self._cookie
        if auth and self._token is not None:
            headers["__RequestVerificationToken"] = self._token
        try:
            # Streamed, so a device that sends without end costs at most _MAX_BODY bytes.
            async with self._http().stream("GET", f"{self.url}/{path}", headers=headers) as resp:
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise SourceError(
                            ErrorCode.NO_MODEM, f"{path}: answer larger than {_MAX_BODY} bytes"
                        )
        except httpx.TimeoutException:
            raise SourceError(ErrorCode.NO_MODEM, f"{self.url}: no answer (timeout)") from None
        except httpx.HTTPError as exc:
            raise SourceError(
                ErrorCode.NO_MODEM, f"{self.url}: cannot reach the HiLink device ({exc})"
            ) from None
        if resp.status_code != 200:
            code = ErrorCode.PERMISSION if resp.status_code in (401, 403) else ErrorCode.NO_MODEM
            raise SourceError(code, f"{self.url}/{path}: HTTP {resp.status_code}")
        # Some firmware rotates the token or the session on every answer.
        fresh = resp.headers.get("__RequestVerificationToken")
        if fresh:
            self._token = fresh.split("#", 1)[0]
        cookie = resp.headers.get("Set-Cookie")
        if cookie and cookie.startswith("SessionID="):
            self._cookie = cookie.split(";", 1)[0]
        return parse_xml(body, path)

    async def handshake(self) -> None:
        self._cookie = self._token = None
        try:
            info = await self._get("api/webserver/SesTokInfo", auth=False)
        except HiLinkError as exc:
            raise SourceError(
                ErrorCode.UNSUPPORTED, f"{self.url}: SesTokInfo answered error {exc.code}"
            ) from None
        ses, tok = info.get("SesInfo", ""), info.get("TokInfo", "")
        if not ses or not tok:
            raise SourceError(ErrorCode.NO_MODEM, f"{self.url}: SesTokInfo without a session")
        self._cookie = ses if ses.startswith("SessionID=") else f"SessionID={ses}"
        self._token = tok

    async def api(self, path: str) -> dict[str, str]:
        """GET an API path with the session, handshaking (again) when the device asks."""
        if self._token is None:
            await self.handshake()
        for attempt in (1, 2):
            try:
                return await self._get(path)
            except HiLinkError as exc:
                if exc.code in TOKEN_ERRORS and attempt == 1:
                    await self.handshake()  # expired, or the device rebooted
                    continue
                raise self._translate(exc) from None
        raise AssertionError("unreachable")

    def _translate(self, exc: HiLinkError) -> SourceError:
        if exc.code in LOGIN_ERRORS or exc.code in TOKEN_ERRORS:
            return SourceError(
                ErrorCode.PERMISSION,
                f"{self.url}/{exc.path}: the device wants a login (error {exc.code}); "
                "turn off its web login or use a device without one",
            )
        if exc.code in UNSUPPORTED_ERRORS:
            return SourceError(ErrorCode.UNSUPPORTED, f"{self.url}/{exc.path}: not supported")
        return SourceError(ErrorCode.NO_MODEM, f"{self.url}/{exc.path}: error {exc.code}")

    async def read(self) -> Reading:
        status = await self.api("api/monitoring/status")
        reading = Reading(modem=self.url)
        reading.access_tech = _tech(status)
        service = status.get("ServiceStatus")
        if status.get("SimStatus") not in (None, "", "1"):
            raise SourceError(ErrorCode.MODEM_DISABLED, f"{self.url}: no usable SIM")
        if service != "2" and (service or reading.access_tech == UNKNOWN):
            raise SourceError(
                ErrorCode.NOT_REGISTERED, f"{self.url}: no service (ServiceStatus {service})"
            )
        reading.registered = True
        reading.roaming = status.get("RoamingStatus") == "1"
        bars, most = number(status.get("SignalIcon")), number(status.get("maxsignal")) or 5
        if bars is not None and 0 <= bars <= most:
            reading.quality_pct = round(100 * bars / most, 1)

        plmn = await self.api("api/net/current-plmn")
        reading.plmn = plmn_code(plmn.get("Numeric"))
        name = plmn.get("FullName") or plmn.get("ShortName")
        if name and printable(name):
            reading.operator_name = printable(name)

        sig = await self.api("api/device/signal")
        values: dict[str, float] = {}
        for key, field in _SIGNAL_FIELDS.items():
            v = clean(field, number(sig.get(key)))
            if v is not None:
                values[field] = v
        reading.values = values
        band = number(sig.get("band"))
        if band is not None and band.is_integer() and 0 < band < 1000:
            prefix = {"lte": "B", "nr5g": "n"}.get(reading.access_tech, "")
            reading.band = f"{prefix}{int(band)}"
        cell = sig.get("cell_id", "")
        if cell.isdigit():
            reading.cell_id = bounded_int(int(cell), 2**36) or None
        earfcn = sig.get("earfcn", "")
        dl = re.search(r"DL:?\s*(\d+)", earfcn) or re.fullmatch(r"(\d+)", earfcn)
        if dl:
            reading.earfcn = bounded_int(int(dl.group(1)), 3_279_165)
        return reading


def _tech(status: dict[str, Any]) -> str:
    ex, plain = number(status.get("CurrentNetworkTypeEx")), number(status.get("CurrentNetworkType"))
    if ex is not None and int(ex) in _NET_TYPE_EX:
        return _NET_TYPE_EX[int(ex)]
    if plain is not None and int(plain) in _NET_TYPE:
        return _NET_TYPE[int(plain)]
    return UNKNOWN


__all__ = ["HiLinkError", "HiLinkSource", "number", "parse_xml"]
