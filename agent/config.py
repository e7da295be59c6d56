"""Agent configuration: YAML loaded into typed, validated objects.

Every problem is collected and reported at once, one per line, as
``FILE: dotted.path: got VALUE, expected WHAT``. Unknown keys are errors.
Environment variables override scalar keys: ``SINYAL_`` + the dotted path in
upper case with ``__`` between levels (``SINYAL_COLLECTOR__TOKEN``,
``SINYAL_STATION__ID``, ``SINYAL_DATA_DIR``); values are parsed as YAML scalars.
See docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

ENV_PREFIX = "SINYAL_"
DEFAULT_CONFIG = "/etc/sinyal/agent.yaml"

_STATION_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_NAME_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._:-]{0,63}$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[0-9A-Za-z_]([0-9A-Za-z_-]{0,62}[0-9A-Za-z_])?"
    r"(\.[0-9A-Za-z_]([0-9A-Za-z_-]{0,62}[0-9A-Za-z_])?)*\.?$"
)
_IFNAME_RE = re.compile(r"^[^\s/]{1,15}$")
_SECRET_KEYS = {"token", "password"}


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Station:
    id: str
    name: str
    lat: float
    lon: float
    tz: str


@dataclass(frozen=True)
class Collector:
    url: str
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca_bundle: Path | None = None
    timeout_s: float = 10.0
    # Plain http:// to a host other than loopback: refused unless this is true (warned at
    # each start; see agent.preflight.collector_exposure).
    allow_insecure: bool = False

    def read_token(self) -> str:
        if self.token is not None:
            return self.token
        assert self.token_file is not None
        return self.token_file.read_text().strip()


@dataclass(frozen=True)
class Uplink:
    name: str
    operator: str
    source: str | None = None  # local IP address to bind
    interface: str | None = None  # or an interface whose address is bound at probe time


@dataclass(frozen=True)
class IcmpTarget:
    host: str
    name: str


@dataclass(frozen=True)
class IcmpProbeConfig:
    enabled: bool
    interval_s: float
    count: int
    spacing_s: float
    timeout_s: float
    payload_bytes: int
    targets: tuple[IcmpTarget, ...]


@dataclass(frozen=True)
class Resolver:
    address: str
    port: int
    name: str


@dataclass(frozen=True)
class DnsProbeConfig:
    enabled: bool
    interval_s: float
    timeout_s: float
    resolvers: tuple[Resolver, ...]
    names: tuple[str, ...]
    qtype: str


@dataclass(frozen=True)
class HttpTarget:
    url: str
    name: str
    expect_status: tuple[int, ...]


@dataclass(frozen=True)
class HttpProbeConfig:
    enabled: bool
    interval_s: float
    timeout_s: float
    max_bytes: int
    ca_bundle: Path | None
    targets: tuple[HttpTarget, ...]


@dataclass(frozen=True)
class ThroughputProbeConfig:
    enabled: bool
    interval_s: float
    timeout_s: float  # hard deadline for the whole test
    backend: str  # "mini" (a self-hosted endpoint) or "ookla" (speedtest.net servers)
    url: str | None  # mini: the endpoint's base URL
    server_id: int | None  # ookla: pin this server id instead of the best of the nearest
    name: str | None  # mini: the server tag (default: the URL's host)
    secure: bool  # ookla: HTTPS to speedtest.net and the servers
    duration_s: float  # per direction
    ping_interval_s: float  # spacing of the latency probes under load
    first_estimate_mb: float  # budget estimate before a test has run


@dataclass(frozen=True)
class UploadTarget:
    url: str
    name: str


@dataclass(frozen=True)
class UploadProbeConfig:
    enabled: bool
    interval_s: float
    timeout_s: float
    payload_bytes: int
    ca_bundle: Path | None
    targets: tuple[UploadTarget, ...]


@dataclass(frozen=True)
class Probes:
    icmp: IcmpProbeConfig | None
    dns: DnsProbeConfig | None
    http: HttpProbeConfig | None
    throughput: ThroughputProbeConfig | None = None
    upload: UploadProbeConfig | None = None


@dataclass(frozen=True)
class BudgetConfig:
    """Bytes heavy tests (throughput, upload) may use; None: no limit."""

    daily_mb: float | None = None
    monthly_mb: float | None = None


@dataclass(frozen=True)
class QuietWindow:
    """A span of the station's local time in which heavy tests do not run.

    end <= start wraps past midnight. `days` (0 Monday .. 6 Sunday) and `dates`
    restrict the days the window starts on; empty means every day.
    """

    start: time
    end: time
    days: tuple[int, ...] = ()
    dates: tuple[date, ...] = ()


@dataclass(frozen=True)
class Schedule:
    jitter_fraction: float
    max_jitter_s: float


@dataclass(frozen=True)
class SpoolConfig:
    max_mb: float


CLOCK_TRUST = ("kernel", "collector", "system")


@dataclass(frozen=True)
class ClockConfig:
    # kernel: the system clock when the kernel says it is synchronised, else the collector's
    # clock; collector: always the collector's clock; system: always the system clock.
    trust: str = "kernel"


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    station: Station
    collector: Collector | None
    uplinks: tuple[Uplink, ...]
    probes: Probes
    schedule: Schedule
    spool: SpoolConfig
    data_dir: Path
    thresholds_file: Path
    clock: ClockConfig = ClockConfig()
    budget: BudgetConfig = BudgetConfig()
    quiet_windows: tuple[QuietWindow, ...] = ()


T = TypeVar("T")


def _show(value: Any, secret: bool = False) -> str:
    if secret and value is not None:
        return "'***'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Reader:
    """Walks the parsed YAML, collecting errors with their dotted paths."""

    def __init__(self, file: str, env_sources: Mapping[str, str]) -> None:
        self.file = file
        self.env_sources = env_sources  # dotted path -> env var that set it
        self.errors: list[str] = []

    def error(self, path: str, got: str, expected: str) -> None:
        where = self.file
        if path in self.env_sources:
            where = f"{self.file} (${self.env_sources[path]})"
        self.errors.append(f"{where}: {path}: got {got}, expected {expected}")

    def mapping(self, value: Any, path: str, keys: set[str], required: set[str]) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.error(path or "(top level)", _show(value), "a mapping")
            return {}
        for key in value:
            if key not in keys:
                self.error(
                    f"{path}.{key}" if path else str(key),
                    "an unknown key",
                    f"one of {', '.join(sorted(keys))}",
                )
        for key in sorted(required - set(value)):
            self.error(f"{path}.{key}" if path else key, "nothing", "a value (required)")
        return value

    def get(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], T | None],
        expected: str,
        default: T | None = None,
    ) -> T | None:
        full = f"{path}.{key}" if path else key
        if key not in m or m[key] is None:
            return default
        value = m[key]
        result = check(value)
        if result is None:
            self.error(full, _show(value, key in _SECRET_KEYS), expected)
        return result


def _string(pattern: re.Pattern[str] | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v.strip():
            return None
        if pattern is not None and not pattern.fullmatch(v):
            return None
        return v

    return check


def _number(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        if (v <= lo if lo_open else v < lo) or v > hi:
            return None
        return float(v)

    return check


def _integer(lo: int, hi: int) -> Callable[[Any], int | None]:
    def check(v: Any) -> int | None:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return None
        return v

    return check


def _boolean(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _ip(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None


def _host(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    return _ip(v) or (v if _HOST_RE.fullmatch(v) else None)


def _timezone(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Asia" is a directory
        return None
    return v


def _http_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        parts = urlsplit(v)
        _ = parts.port  # raises on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return v


def _protected_url(url: str) -> bool:
    """https, or http to this machine (loopback): what needs no allow_insecure."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


class _Loader:
    def __init__(self, reader: _Reader, base: Path) -> None:
        self.r = reader
        self.base = base

    def path_value(self, value: Any) -> Path | None:
        if not isinstance(value, str) or not value or "\0" in value:
            return None
        try:
            p = Path(value).expanduser()
        except RuntimeError:  # ~user that does not exist
            return None
        return p if p.is_absolute() else (self.base / p)

    def existing_file(self, value: Any) -> Path | None:
        p = self.path_value(value)
        try:
            return p if p is not None and p.is_file() else None
        except OSError:  # e.g. a name too long
            return None

    def station(self, raw: Any) -> Station | None:
        r = self.r
        m = r.mapping(
            raw, "station", {"id", "name", "lat", "lon", "tz"}, {"id", "lat", "lon", "tz"}
        )
        sid = r.get(
            m,
            "id",
            "station",
            _string(_STATION_ID_RE),
            "a station id: the 13-digit TPS code or 1..64 letters, digits, '.', '_', '-'",
        )
        name = r.get(m, "name", "station", _string(), "a non-empty string")
        lat = r.get(m, "lat", "station", _number(-90, 90), "a latitude in degrees, -90..90")
        lon = r.get(m, "lon", "station", _number(-180, 180), "a longitude in degrees, -180..180")
        tz = r.get(
            m,
            "tz",
            "station",
            _timezone,
            "an IANA time zone such as Asia/Jakarta, Asia/Makassar or Asia/Jayapura",
        )
        if sid is None or lat is None or lon is None or tz is None:
            return None
        return Station(sid, name or sid, lat, lon, tz)

    def collector(self, raw: Any) -> Collector | None:
        if raw is None:
            return None
        r = self.r
        keys = {"url", "token", "token_file", "ca_bundle", "timeout_s", "allow_insecure"}
        m = r.mapping(raw, "collector", keys, {"url"})
        url = r.get(m, "url", "collector", _http_url, "an http:// or https:// URL")
        token = r.get(m, "token", "collector", _string(), "a non-empty token string")
        token_file = r.get(
            m, "token_file", "collector", self.existing_file, "a readable file holding the token"
        )
        if token is not None and token_file is not None:
            r.error(
                "collector.token_file",
                _show(m["token_file"]),
                "either token or token_file, not both",
            )
        if m and m.get("token") is None and m.get("token_file") is None:
            r.error("collector.token", "nothing", "token or token_file (required with url)")
        ca = r.get(m, "ca_bundle", "collector", self.existing_file, "a readable PEM file")
        timeout = r.get(
            m,
            "timeout_s",
            "collector",
            _number(0, 600, lo_open=True),
            "seconds, > 0 and <= 600",
            10.0,
        )
        insecure = r.get(m, "allow_insecure", "collector", _boolean, "true or false", False)
        if url is not None and not insecure and not _protected_url(url):
            r.error(
                "collector.url",
                _show(url),
                "an https:// URL (plain http only to loopback, or with "
                "collector.allow_insecure: true)",
            )
        if url is None:
            return None
        return Collector(url, token, token_file, ca, timeout or 10.0, bool(insecure))

    def uplinks(self, raw: Any) -> tuple[Uplink, ...]:
        r = self.r
        if raw is None:
            return (Uplink("default", "unknown"),)
        if not isinstance(raw, list) or not raw:
            r.error("uplinks", _show(raw), "a non-empty list of uplinks")
            return ()
        out: list[Uplink] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            p = f"uplinks[{i}]"
            m = r.mapping(item, p, {"name", "operator", "source", "interface"}, {"name"})
            name = r.get(
                m,
                "name",
                p,
                _string(_NAME_RE),
                "a name of 1..64 letters, digits, '.', '_', ':', '-'",
            )
            operator = r.get(
                m,
                "operator",
                p,
                _string(_NAME_RE),
                "an operator label such as telkomsel, indosat, xlsmart",
                "unknown",
            )
            source = r.get(m, "source", p, _ip, "a local IP address")
            iface = r.get(m, "interface", p, _string(_IFNAME_RE), "a network interface name")
            if source is not None and iface is not None:
                r.error(f"{p}.interface", _show(iface), "either source or interface, not both")
            if name is not None:
                if name in seen:
                    r.error(f"{p}.name", _show(name), "a name not used by another uplink")
                seen.add(name)
                out.append(Uplink(name, operator or "unknown", source, iface))
        return tuple(out)

    def _common(
        self, m: dict[str, Any], p: str, interval: float, timeout: float, max_timeout: float
    ) -> tuple[bool, float, float]:
        r = self.r
        enabled = r.get(m, "enabled", p, _boolean, "true or false", True)
        iv = r.get(m, "interval_s", p, _number(10, 86_400), "seconds, 10..86400", interval)
        to = r.get(
            m,
            "timeout_s",
            p,
            _number(0, max_timeout, lo_open=True),
            f"seconds, > 0 and <= {max_timeout:g}",
            timeout,
        )
        return bool(enabled), iv or interval, to or timeout

    def icmp(self, raw: Any) -> IcmpProbeConfig | None:
        if raw is None:
            return None
        r, p = self.r, "probes.icmp"
        keys = {
            "enabled",
            "interval_s",
            "count",
            "spacing_s",
            "timeout_s",
            "payload_bytes",
            "targets",
        }
        m = r.mapping(raw, p, keys, {"targets"})
        enabled, interval, timeout = self._common(m, p, 60.0, 2.0, 10.0)
        count = r.get(m, "count", p, _integer(1, 1000), "an integer, 1..1000", 10)
        spacing = r.get(m, "spacing_s", p, _number(0.01, 60), "seconds, 0.01..60", 0.2)
        payload = r.get(m, "payload_bytes", p, _integer(0, 1472), "bytes, 0..1472", 56)
        targets: list[IcmpTarget] = []
        indices: list[int] = []  # position of each target in the YAML list, for errors
        for i, tp, tm in self._entries(m, "targets", p, "targets", "host", {"host", "name"}):
            host = r.get(tm, "host", tp, _host, "an IP address or host name")
            name = self._label(tm, tp)
            if host is not None:
                targets.append(IcmpTarget(host, name or host))
                indices.append(i)
        self._unique([t.name for t in targets], indices, f"{p}.targets", "target name")
        if count is not None and spacing is not None and interval is not None and timeout:
            round_s = (count - 1) * spacing + count * timeout
            if round_s > interval:
                r.error(
                    f"{p}.interval_s",
                    _show(interval),
                    f"at least one worst-case round, (count-1)*spacing_s + count*timeout_s"
                    f" = {round_s:g} s",
                )
        return IcmpProbeConfig(
            enabled,
            interval,
            count or 10,
            spacing or 0.2,
            timeout,
            56 if payload is None else payload,
            tuple(targets),
        )

    def dns(self, raw: Any) -> DnsProbeConfig | None:
        if raw is None:
            return None
        r, p = self.r, "probes.dns"
        keys = {"enabled", "interval_s", "timeout_s", "resolvers", "names", "qtype"}
        m = r.mapping(raw, p, keys, {"resolvers", "names"})
        enabled, interval, timeout = self._common(m, p, 300.0, 2.0, 30.0)
        qtype = r.get(m, "qtype", p, lambda v: v if v in ("A", "AAAA") else None, "A or AAAA", "A")
        resolvers: list[Resolver] = []
        indices: list[int] = []
        res_keys = {"address", "port", "name"}
        for i, rp, rm in self._entries(m, "resolvers", p, "resolvers", "address", res_keys):
            addr = r.get(rm, "address", rp, _ip, "the IP address of a resolver")
            port = r.get(rm, "port", rp, _integer(1, 65535), "a port, 1..65535", 53)
            name = self._label(rm, rp)
            if addr is not None:
                default_name = addr if port == 53 else f"{addr}:{port}"
                resolvers.append(Resolver(addr, port or 53, name or default_name))
                indices.append(i)
        self._unique([x.name for x in resolvers], indices, f"{p}.resolvers", "resolver name")
        names: list[str] = []
        raw_names = m.get("names")
        if "names" in m and (not isinstance(raw_names, list) or not raw_names):
            r.error(f"{p}.names", _show(raw_names), "a non-empty list of host names")
        elif isinstance(raw_names, list):
            for i, n in enumerate(raw_names):
                if not isinstance(n, str) or _ip(n) is not None or not _HOST_RE.fullmatch(n):
                    r.error(f"{p}.names[{i}]", _show(n), "a host name such as kpu.go.id")
                else:
                    names.append(n)
        return DnsProbeConfig(
            enabled, interval, timeout, tuple(resolvers), tuple(names), qtype or "A"
        )

    def http(self, raw: Any) -> HttpProbeConfig | None:
        if raw is None:
            return None
        r, p = self.r, "probes.http"
        keys = {"enabled", "interval_s", "timeout_s", "max_bytes", "ca_bundle", "targets"}
        m = r.mapping(raw, p, keys, {"targets"})
        enabled, interval, timeout = self._common(m, p, 300.0, 10.0, 120.0)
        max_bytes = r.get(m, "max_bytes", p, _integer(0, 100 * 2**20), "bytes, 0..104857600", 2**20)
        ca = r.get(m, "ca_bundle", p, self.existing_file, "a readable PEM file")
        targets: list[HttpTarget] = []
        indices: list[int] = []
        t_keys = {"url", "name", "expect_status"}
        for i, tp, tm in self._entries(m, "targets", p, "targets", "url", t_keys):
            url = r.get(tm, "url", tp, _http_url, "an http:// or https:// URL")
            name = self._label(tm, tp)
            expect = r.get(
                tm, "expect_status", tp, _status_list, "an HTTP status (100..599) or a list of them"
            )
            if url is not None:
                default = urlsplit(url).hostname or url
                targets.append(HttpTarget(url, name or default, expect or (200,)))
                indices.append(i)
        self._unique([t.name for t in targets], indices, f"{p}.targets", "target name")
        return HttpProbeConfig(
            enabled,
            interval,
            timeout,
            2**20 if max_bytes is None else max_bytes,
            ca,
            tuple(targets),
        )

    def throughput(self, raw: Any) -> ThroughputProbeConfig | None:
        if raw is None:
            return None
        r, p = self.r, "probes.throughput"
        keys = {
            "enabled",
            "interval_s",
            "timeout_s",
            "backend",
            "url",
            "server_id",
            "name",
            "secure",
            "duration_s",
            "ping_interval_s",
            "first_estimate_mb",
        }
        m = r.mapping(raw, p, keys, {"backend"})
        enabled, interval, timeout = self._common(m, p, 21_600.0, 60.0, 600.0)
        backend = r.get(
            m, "backend", p, lambda v: v if v in ("mini", "ookla") else None, "mini or ookla"
        )
        url = r.get(m, "url", p, _http_url, "the http:// or https:// URL of a Speedtest Mini")
        server_id = r.get(m, "server_id", p, _integer(1, 2**31 - 1), "an Ookla server id")
        name = self._label(m, p)
        secure = r.get(m, "secure", p, _boolean, "true or false", False)
        duration = r.get(m, "duration_s", p, _number(1, 60), "seconds per direction, 1..60", 10.0)
        ping = r.get(m, "ping_interval_s", p, _number(0.05, 5), "seconds, 0.05..5", 0.2)
        estimate = r.get(
            m, "first_estimate_mb", p, _number(0, 100_000), "megabytes, 0..100000", 50.0
        )
        if backend == "mini" and "url" not in m:
            r.error(f"{p}.url", "nothing", "the Speedtest Mini URL (required with backend mini)")
        if backend == "ookla":
            for key in ("url", "name"):
                if key in m:
                    r.error(f"{p}.{key}", _show(m[key]), f"no {key} with backend ookla")
        if backend == "mini":
            for key in ("server_id", "secure"):
                if key in m:
                    r.error(f"{p}.{key}", _show(m[key]), f"no {key} with backend mini (ookla only)")
        duration = duration or 10.0
        # Two timed phases plus start-up and idle latency; Ookla also fetches its
        # configuration and server list and pings the nearest servers.
        setup = 15 if backend == "ookla" else 5
        need = 2 * duration + setup
        if "timeout_s" in m and timeout < need:
            r.error(
                f"{p}.timeout_s",
                _show(m["timeout_s"]),
                f"at least 2 * duration_s + {setup} = {need:g} s (one whole {backend} test)",
            )
        elif "timeout_s" not in m:
            timeout = max(timeout, need)
        if interval is not None and timeout > interval:
            r.error(f"{p}.interval_s", _show(interval), f"at least timeout_s ({timeout:g} s)")
        return ThroughputProbeConfig(
            enabled,
            interval,
            timeout,
            backend or "mini",
            url,
            server_id,
            name,
            bool(secure),
            duration,
            ping or 0.2,
            50.0 if estimate is None else estimate,
        )

    def upload(self, raw: Any) -> UploadProbeConfig | None:
        if raw is None:
            return None
        r, p = self.r, "probes.upload"
        keys = {"enabled", "interval_s", "timeout_s", "payload_bytes", "ca_bundle", "targets"}
        m = r.mapping(raw, p, keys, {"targets"})
        enabled, interval, timeout = self._common(m, p, 1800.0, 120.0, 600.0)
        payload = r.get(
            m,
            "payload_bytes",
            p,
            _integer(1, 100_000_000),
            "bytes, 1..100000000 (a tally-sheet photo is about 2000000)",
            2_000_000,
        )
        ca = r.get(m, "ca_bundle", p, self.existing_file, "a readable PEM file")
        targets: list[UploadTarget] = []
        indices: list[int] = []
        for i, tp, tm in self._entries(m, "targets", p, "targets", "url", {"url", "name"}):
            url = r.get(tm, "url", tp, _http_url, "an http:// or https:// URL")
            name = self._label(tm, tp)
            if url is not None:
                targets.append(UploadTarget(url, name or urlsplit(url).hostname or url))
                indices.append(i)
        self._unique([t.name for t in targets], indices, f"{p}.targets", "target name")
        return UploadProbeConfig(
            enabled, interval, timeout, payload or 2_000_000, ca, tuple(targets)
        )

    def budget(self, raw: Any) -> BudgetConfig:
        r = self.r
        m = r.mapping(raw, "budget", {"daily_mb", "monthly_mb"}, set())
        daily = r.get(m, "daily_mb", "budget", _number(0, 10_000_000), "megabytes, 0..10000000")
        monthly = r.get(m, "monthly_mb", "budget", _number(0, 10_000_000), "megabytes, 0..10000000")
        return BudgetConfig(daily, monthly)

    def quiet_windows(self, raw: Any) -> tuple[QuietWindow, ...]:
        r = self.r
        if raw is None:
            return ()
        if not isinstance(raw, list):
            r.error("quiet_windows", _show(raw), "a list of windows {start, end, days, dates}")
            return ()
        out: list[QuietWindow] = []
        clock = "a local time in quotes, 'HH:MM' such as '07:00'"
        for i, item in enumerate(raw):
            p = f"quiet_windows[{i}]"
            m = r.mapping(item, p, {"start", "end", "days", "dates"}, {"start", "end"})
            start = r.get(m, "start", p, _clock_time, clock)
            end = r.get(m, "end", p, _clock_time, clock)
            days = r.get(m, "days", p, _weekdays, "a list of days: mon, tue, ... sun")
            dates = r.get(m, "dates", p, _dates, "a list of dates, YYYY-MM-DD")
            if start is not None and end is not None:
                out.append(QuietWindow(start, end, days or (), dates or ()))
        return tuple(out)

    def _entries(
        self, m: dict[str, Any], key: str, p: str, what: str, shorthand: str, keys: set[str]
    ) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(index, path, mapping) of each entry of the list m[key]; a bare string is
        shorthand for {shorthand: string}."""
        raw = m.get(key)
        if key in m and (not isinstance(raw, list) or not raw):
            self.r.error(f"{p}.{key}", _show(raw), f"a non-empty list of {what}")
            return
        for i, item in enumerate(raw if isinstance(raw, list) else []):
            ip = f"{p}.{key}[{i}]"
            if isinstance(item, str):
                item = {shorthand: item}
            yield i, ip, self.r.mapping(item, ip, keys, {shorthand})

    def _label(self, m: dict[str, Any], p: str) -> str | None:
        return self.r.get(
            m, "name", p, _string(_NAME_RE), "a label of 1..64 letters, digits, '.', '_', ':', '-'"
        )

    def _unique(self, names: list[str], indices: list[int], path: str, what: str) -> None:
        seen: set[str] = set()
        for i, n in zip(indices, names, strict=True):
            if n in seen:
                self.r.error(
                    f"{path}[{i}].name",
                    _show(n),
                    f"a {what} not used twice (set name: to tell them apart)",
                )
            seen.add(n)


_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _clock_time(v: Any) -> time | None:
    # Unquoted 07:00 is a base-60 integer to YAML 1.1, so only strings are accepted.
    m = _CLOCK_RE.match(v) if isinstance(v, str) else None
    return time(int(m.group(1)), int(m.group(2))) if m else None


def _weekdays(v: Any) -> tuple[int, ...] | None:
    if not isinstance(v, list) or not v:
        return None
    days = [
        _WEEKDAYS.index(d.lower()) if isinstance(d, str) and d.lower() in _WEEKDAYS else -1
        for d in v
    ]
    return None if -1 in days else tuple(days)


def _dates(v: Any) -> tuple[date, ...] | None:
    if not isinstance(v, list) or not v:
        return None
    out: list[date] = []
    for d in v:
        if isinstance(d, str):
            try:
                d = date.fromisoformat(d)
            except ValueError:
                return None
        if not isinstance(d, date):
            return None
        out.append(d)
    return tuple(out)


def _status_list(v: Any) -> tuple[int, ...] | None:
    items = v if isinstance(v, list) else [v]
    if not items or any(
        isinstance(x, bool) or not isinstance(x, int) or not 100 <= x <= 599 for x in items
    ):
        return None
    return tuple(items)


_TOP_KEYS = {
    "station",
    "collector",
    "uplinks",
    "probes",
    "schedule",
    "spool",
    "clock",
    "data_dir",
    "thresholds_file",
    "budget",
    "quiet_windows",
}


def _apply_env(
    doc: Any, environ: Mapping[str, str], top_keys: set[str] | None = None
) -> tuple[Any, dict[str, str]]:
    """Overlay SINYAL_A__B=value onto doc["a"]["b"]; returns the doc and path->var sources."""
    sources: dict[str, str] = {}
    if not isinstance(doc, dict):
        return doc, sources
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in ("SINYAL_CONFIG",):
            continue
        parts = [s.lower() for s in var[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in (_TOP_KEYS if top_keys is None else top_keys):
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if parts[-1] in _SECRET_KEYS or parts[-1].endswith(("id", "name")):
            value = text  # never reinterpret tokens or ids (a TPS code is all digits)
        node = doc
        for key in parts[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[parts[-1]] = value
        sources[".".join(parts)] = var
    return doc, sources


def read_yaml(path: Path, missing_hint: str = "") -> Any:
    """Parse a YAML file; every failure is a one-line ConfigError naming the file."""
    name = str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found{missing_hint}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{name}: cannot read: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError([f"{name}: {where}not valid YAML: {problem}"]) from None


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load and validate an agent config; raises ConfigError listing every problem."""
    p = Path(path)
    name = str(path)
    doc = read_yaml(p, " (give one with -c FILE or SINYAL_CONFIG)")
    doc, sources = _apply_env(doc, os.environ if environ is None else environ)
    r = _Reader(name, sources)
    top = r.mapping(doc, "", _TOP_KEYS, {"station"})
    if not isinstance(doc, dict):  # nothing else can be checked
        raise ConfigError(r.errors)
    loader = _Loader(r, p.resolve().parent)
    station = loader.station(top.get("station")) if "station" in top else None
    collector = loader.collector(top.get("collector"))
    uplinks = loader.uplinks(top.get("uplinks"))

    kinds = {"icmp", "dns", "http", "throughput", "upload"}
    pm = r.mapping(top.get("probes"), "probes", kinds, set())
    probes = Probes(
        loader.icmp(pm.get("icmp")),
        loader.dns(pm.get("dns")),
        loader.http(pm.get("http")),
        loader.throughput(pm.get("throughput")),
        loader.upload(pm.get("upload")),
    )
    every = (probes.icmp, probes.dns, probes.http, probes.throughput, probes.upload)
    if not any(x is not None and x.enabled for x in every):
        r.error("probes", "no enabled probe", f"at least one of {', '.join(sorted(kinds))}")
    budget = loader.budget(top.get("budget"))
    quiet = loader.quiet_windows(top.get("quiet_windows"))

    sm = r.mapping(top.get("schedule"), "schedule", {"jitter_fraction", "max_jitter_s"}, set())
    jf = r.get(sm, "jitter_fraction", "schedule", _number(0, 0.5), "a fraction, 0..0.5", 0.1)
    mj = r.get(sm, "max_jitter_s", "schedule", _number(0, 600), "seconds, 0..600", 30.0)

    spm = r.mapping(top.get("spool"), "spool", {"max_mb"}, set())
    max_mb = r.get(
        spm, "max_mb", "spool", _number(0.05, 1_000_000), "megabytes, 0.05..1000000", 256.0
    )

    cm = r.mapping(top.get("clock"), "clock", {"trust"}, set())
    trust = r.get(
        cm,
        "trust",
        "clock",
        lambda v: v if v in CLOCK_TRUST else None,
        "kernel, collector or system",
        "kernel",
    )

    data_dir = r.get(
        top, "data_dir", "", loader.path_value, "a directory path", Path("/var/lib/sinyal")
    )
    thresholds = r.get(
        top,
        "thresholds_file",
        "",
        loader.existing_file,
        "a readable thresholds YAML file",
        loader.path_value("thresholds.yaml"),
    )
    if "thresholds_file" not in top and thresholds is not None and not thresholds.is_file():
        r.error("thresholds_file", "nothing", f"a thresholds file (none at {thresholds})")

    if r.errors or station is None:
        raise ConfigError(r.errors or [f"{name}: station: invalid"])
    assert data_dir is not None and thresholds is not None
    return AgentConfig(
        path=p,
        station=station,
        collector=collector,
        uplinks=uplinks,
        probes=probes,
        schedule=Schedule(0.1 if jf is None else jf, 30.0 if mj is None else mj),
        spool=SpoolConfig(max_mb or 256.0),
        data_dir=data_dir,
        thresholds_file=thresholds,
        clock=ClockConfig(trust or "kernel"),
        budget=budget,
        quiet_windows=quiet,
    )


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("SINYAL_CONFIG", DEFAULT_CONFIG)
