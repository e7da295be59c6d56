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
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.contract.configkit import (
    ENV_PREFIX,
    HOST_RE,
    IFNAME_RE,
    NAME_RE,
    STATION_ID_RE,
    ConfigError,
    Key,
    Reader,
    apply_env,
    boolean,
    host_or_ip,
    http_url,
    integer,
    ip_address,
    number,
    one_of,
    read_yaml,
    show,
    string,
    timezone,
)
from agent.contract.envcheck import AGENT_KEYS, unknown_env_errors

__all__ = ["ENV_PREFIX", "ConfigError", "read_yaml"]


def protected_url(url: str) -> bool:
    """https, or http to this machine (loopback): what needs no collector.allow_insecure."""
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


DEFAULT_CONFIG = "/etc/sinyal/agent.yaml"
DEFAULT_DATA_DIR = Path("/var/lib/sinyal")


@dataclass(frozen=True)
class Station:
    id: str
    name: str
    lat: float
    lon: float
    tz: str


@dataclass(frozen=True)
class CollectorEndpoint:
    url: str
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca_bundle: Path | None = None
    timeout_s: float = 10.0
    # Plain http:// to a host other than loopback: refused unless this is true (warned at
    # each start and by doctor: agent.preflight.exposure_checks).
    allow_insecure: bool = False

    def read_token(self) -> str:
        if self.token is not None:
            return self.token
        assert self.token_file is not None
        return self.token_file.read_text().strip()


SIGNAL_SOURCES = ("modemmanager", "hilink")
HILINK_DEFAULT_URL = "http://192.168.8.1"


@dataclass(frozen=True)
class SignalSource:
    """Where an uplink's radio is read (docs/agent.md, Cellular signal)."""

    source: str  # modemmanager or hilink
    modem: str | None = None  # modemmanager: IMEI, port, device or path number; None: first
    bus: str = "system"  # modemmanager: system, session or a D-Bus address
    # hilink: the device's web address; None: the uplink interface's gateway, else
    # HILINK_DEFAULT_URL
    url: str | None = None


@dataclass(frozen=True)
class Uplink:
    name: str
    operator: str = "unknown"
    source: str | None = None  # local IP address to bind
    interface: str | None = None  # or an interface whose address is bound at probe time
    signal: SignalSource | None = None  # the uplink's modem, when its radio is read


@dataclass(frozen=True)
class IcmpTarget:
    host: str
    name: str


@dataclass(frozen=True)
class IcmpProbeConfig:
    enabled: bool = True
    interval_s: float = 60.0
    count: int = 10
    spacing_s: float = 0.2
    timeout_s: float = 2.0
    payload_bytes: int = 56
    targets: tuple[IcmpTarget, ...] = ()


@dataclass(frozen=True)
class Resolver:
    address: str
    port: int = 53
    name: str = ""


@dataclass(frozen=True)
class DnsProbeConfig:
    enabled: bool = True
    interval_s: float = 300.0
    timeout_s: float = 2.0
    resolvers: tuple[Resolver, ...] = ()
    names: tuple[str, ...] = ()
    qtype: str = "A"


@dataclass(frozen=True)
class HttpTarget:
    url: str
    name: str
    expect_status: tuple[int, ...] = (200,)


@dataclass(frozen=True)
class HttpProbeConfig:
    enabled: bool = True
    interval_s: float = 300.0
    timeout_s: float = 10.0
    max_bytes: int = 2**20
    ca_bundle: Path | None = None
    targets: tuple[HttpTarget, ...] = ()


@dataclass(frozen=True)
class ThroughputProbeConfig:
    enabled: bool = True
    interval_s: float = 21_600.0
    # Hard deadline for the whole test; at least one whole test (2 * duration_s + set-up).
    timeout_s: float = 60.0
    backend: str = "mini"  # "mini" (a self-hosted endpoint) or "ookla" (speedtest.net servers)
    url: str | None = None  # mini: the endpoint's base URL
    server_id: int | None = None  # ookla: pin this server id instead of the best of the nearest
    name: str | None = None  # mini: the server tag (default: the URL's host)
    secure: bool = False  # ookla: HTTPS to speedtest.net and the servers
    duration_s: float = 10.0  # per direction
    ping_interval_s: float = 0.2  # spacing of the latency probes under load
    first_estimate_mb: float = 50.0  # budget estimate before a test has run


@dataclass(frozen=True)
class UploadTarget:
    url: str
    name: str


@dataclass(frozen=True)
class UploadProbeConfig:
    enabled: bool = True
    interval_s: float = 1800.0
    timeout_s: float = 120.0
    payload_bytes: int = 2_000_000  # a tally-sheet photo
    ca_bundle: Path | None = None
    targets: tuple[UploadTarget, ...] = ()


@dataclass(frozen=True)
class SignalProbeConfig:
    enabled: bool = True
    interval_s: float = 30.0
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Probes:
    icmp: IcmpProbeConfig | None
    dns: DnsProbeConfig | None
    http: HttpProbeConfig | None
    throughput: ThroughputProbeConfig | None = None
    upload: UploadProbeConfig | None = None
    # Present when an uplink has `signal:` (defaults) or probes.signal is given.
    signal: SignalProbeConfig | None = None


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
    jitter_fraction: float = 0.1
    max_jitter_s: float = 30.0


@dataclass(frozen=True)
class SpoolConfig:
    max_mb: float = 256.0


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
    collector: CollectorEndpoint | None
    uplinks: tuple[Uplink, ...]
    probes: Probes
    schedule: Schedule
    spool: SpoolConfig
    data_dir: Path
    thresholds_file: Path
    clock: ClockConfig = ClockConfig()
    budget: BudgetConfig = BudgetConfig()
    quiet_windows: tuple[QuietWindow, ...] = ()


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


# One key table per section: each key's checker and what it expects. Defaults are stated
# once, on the section's dataclass above; list-valued keys (targets, resolvers) are read by
# the loader's methods.
TIMEOUT = "seconds, > 0 and <= {:g}"


def _probe_keys(max_timeout: float) -> dict[str, Key]:
    return {
        "enabled": Key(boolean, "true or false"),
        "interval_s": Key(number(10, 86_400), "seconds, 10..86400"),
        "timeout_s": Key(number(0, max_timeout, lo_open=True), TIMEOUT.format(max_timeout)),
    }


LABEL = Key(string(NAME_RE), "a label of 1..64 letters, digits, '.', '_', ':', '-'")
COLLECTOR_KEYS = {
    "url": Key(http_url, "an http:// or https:// URL"),
    "token": Key(string(), "a non-empty token string"),
    "timeout_s": Key(number(0, 600, lo_open=True), TIMEOUT.format(600)),
    "allow_insecure": Key(boolean, "true or false"),
}
UPLINK_KEYS = {
    "name": Key(string(NAME_RE), "a name of 1..64 letters, digits, '.', '_', ':', '-'"),
    "operator": Key(string(NAME_RE), "an operator label such as telkomsel, indosat, xlsmart"),
    "source": Key(ip_address, "a local IP address"),
    "interface": Key(string(IFNAME_RE), "a network interface name"),
}
_MODEM_RE = re.compile(r"^[0-9A-Za-z/._:-]{1,128}$")


def _bus_address(v: Any) -> str | None:
    if v in ("system", "session"):
        return str(v)
    if isinstance(v, str) and re.fullmatch(r"(unix|tcp):[^\s]{1,200}", v):
        return v
    return None


SIGNAL_SOURCE_KEYS = {
    "source": Key(one_of(*SIGNAL_SOURCES), "modemmanager or hilink"),
    "modem": Key(string(_MODEM_RE), "an IMEI, port, device path or number"),
    "bus": Key(_bus_address, "system, session or a D-Bus address"),
    "url": Key(http_url, "the device's http:// URL"),
}
SIGNAL_KEYS = {
    "enabled": Key(boolean, "true or false"),
    "interval_s": Key(number(5, 86_400), "seconds, 5..86400"),
    "timeout_s": Key(number(0, 60, lo_open=True), TIMEOUT.format(60)),
}
ICMP_KEYS = {
    **_probe_keys(10.0),
    "count": Key(integer(1, 1000), "an integer, 1..1000"),
    "spacing_s": Key(number(0.01, 60), "seconds, 0.01..60"),
    "payload_bytes": Key(integer(0, 1472), "bytes, 0..1472"),
}
DNS_KEYS = {**_probe_keys(30.0), "qtype": Key(one_of("A", "AAAA"), "A or AAAA")}
RESOLVER_KEYS = {
    "address": Key(ip_address, "the IP address of a resolver"),
    "port": Key(integer(1, 65535), "a port, 1..65535"),
    "name": LABEL,
}
HTTP_KEYS = {
    **_probe_keys(120.0),
    "max_bytes": Key(integer(0, 100 * 2**20), "bytes, 0..104857600"),
}
HTTP_TARGET_KEYS = {
    "url": Key(http_url, "an http:// or https:// URL"),
    "name": LABEL,
    "expect_status": Key(_status_list, "an HTTP status (100..599) or a list of them"),
}
THROUGHPUT_KEYS = {
    **_probe_keys(600.0),
    "backend": Key(one_of("mini", "ookla"), "mini or ookla"),
    "url": Key(http_url, "the http:// or https:// URL of a Speedtest Mini"),
    "server_id": Key(integer(1, 2**31 - 1), "an Ookla server id"),
    "name": LABEL,
    "secure": Key(boolean, "true or false"),
    "duration_s": Key(number(1, 60), "seconds per direction, 1..60"),
    "ping_interval_s": Key(number(0.05, 5), "seconds, 0.05..5"),
    "first_estimate_mb": Key(number(0, 100_000), "megabytes, 0..100000"),
}
UPLOAD_KEYS = {
    **_probe_keys(600.0),
    "payload_bytes": Key(
        integer(1, 100_000_000), "bytes, 1..100000000 (a tally-sheet photo is about 2000000)"
    ),
}
UPLOAD_TARGET_KEYS = {"url": Key(http_url, "an http:// or https:// URL"), "name": LABEL}
BUDGET_KEYS = {
    "daily_mb": Key(number(0, 10_000_000), "megabytes, 0..10000000"),
    "monthly_mb": Key(number(0, 10_000_000), "megabytes, 0..10000000"),
}
SCHEDULE_KEYS = {
    "jitter_fraction": Key(number(0, 0.5), "a fraction, 0..0.5"),
    "max_jitter_s": Key(number(0, 600), "seconds, 0..600"),
}
SPOOL_KEYS = {"max_mb": Key(number(0.05, 1_000_000), "megabytes, 0.05..1000000")}
CLOCK_KEYS = {"trust": Key(one_of(*CLOCK_TRUST), "kernel, collector or system")}


def token_file_problem(path: Path) -> str | None:
    """Why the token file cannot be used (unreadable, empty), or None when it holds a token."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return f"a readable file holding the token (cannot read it: {exc.strerror or exc})"
    except UnicodeDecodeError:
        return "a file holding the token as text (it holds binary data)"
    if not text:
        return "a file holding the token (it is empty: run sinyal-agent enroll, or put it there)"
    return None


class _Loader:
    def __init__(self, reader: Reader, base: Path) -> None:
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
        sid_expected = "a station id: the 13-digit TPS code or 1..64 letters, digits, '.', '_', '-'"
        raw_id = m.get("id")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            # Unquoted digits are a YAML number: leading zeros are gone, so say to quote it.
            r.error(
                "station.id",
                show(raw_id),
                f"{sid_expected}: quote it, id: '{raw_id}' (unquoted, YAML reads a number)",
            )
            m = {k: v for k, v in m.items() if k != "id"}
        sid = r.get(m, "id", "station", string(STATION_ID_RE), sid_expected)
        name = r.get(m, "name", "station", string(), "a non-empty string")
        lat = r.get(m, "lat", "station", number(-90, 90), "a latitude in degrees, -90..90")
        lon = r.get(m, "lon", "station", number(-180, 180), "a longitude in degrees, -180..180")
        tz = r.get(
            m,
            "tz",
            "station",
            timezone,
            "an IANA time zone such as Asia/Jakarta, Asia/Makassar or Asia/Jayapura",
        )
        if sid is None or lat is None or lon is None or tz is None:
            return None
        return Station(sid, name or sid, lat, lon, tz)

    def collector(self, raw: Any) -> CollectorEndpoint | None:
        if raw is None:
            return None
        r = self.r
        keys = {
            **COLLECTOR_KEYS,
            "token_file": Key(self.existing_file, "a readable file holding the token"),
            "ca_bundle": Key(self.existing_file, "a readable PEM file"),
        }
        values = r.section(raw, "collector", CollectorEndpoint, keys, frozenset({"url"}))
        m = raw if isinstance(raw, dict) else {}
        if values["token_file"] is not None:
            problem = token_file_problem(values["token_file"])
            if problem is not None:
                r.error("collector.token_file", show(m["token_file"]), problem)
                values["token_file"] = None
        if values["token"] is not None and values["token_file"] is not None:
            r.error(
                "collector.token_file",
                show(m["token_file"]),
                "either token or token_file, not both",
            )
        if m and m.get("token") is None and m.get("token_file") is None:
            r.error("collector.token", "nothing", "token or token_file (required with url)")
        url = values["url"]
        if url is not None and not values["allow_insecure"] and not protected_url(url):
            r.error(
                "collector.url",
                show(url),
                "an https:// URL (plain http only to loopback, or with "
                "collector.allow_insecure: true)",
            )
        if url is None:
            return None
        return CollectorEndpoint(**values)

    def uplinks(self, raw: Any) -> tuple[Uplink, ...]:
        r = self.r
        if raw is None:
            return (Uplink("default", "unknown"),)
        if not isinstance(raw, list) or not raw:
            r.error("uplinks", show(raw), "a non-empty list of uplinks")
            return ()
        out: list[Uplink] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            p = f"uplinks[{i}]"
            values = r.section(
                item, p, Uplink, UPLINK_KEYS, frozenset({"name"}), frozenset({"signal"})
            )
            name, iface = values["name"], values["interface"]
            if values["source"] is not None and iface is not None:
                r.error(f"{p}.interface", show(iface), "either source or interface, not both")
            if name is not None:
                if name in seen:
                    r.error(f"{p}.name", show(name), "a name not used by another uplink")
                seen.add(name)
                m = item if isinstance(item, dict) else {}
                signal = self.signal_source(m.get("signal"), f"{p}.signal")
                out.append(Uplink(**values, signal=signal))
        return tuple(out)

    def signal_source(self, raw: Any, p: str) -> SignalSource | None:
        if raw is None:
            return None
        r = self.r
        if isinstance(raw, str):
            raw = {"source": raw}
        v = r.section(raw, p, SignalSource, SIGNAL_SOURCE_KEYS, frozenset({"source"}))
        source = v["source"]
        m = raw if isinstance(raw, dict) else {}
        wrong = ("url",) if source == "modemmanager" else ("modem", "bus")
        for key in wrong:
            if key in m and source is not None:
                r.error(f"{p}.{key}", show(m[key]), f"no {key} with source {source}")
        if source is None:
            return None
        return SignalSource(**v)

    def signal(self, raw: Any, wanted: bool) -> SignalProbeConfig | None:
        if raw is None:
            return SignalProbeConfig() if wanted else None
        p = "probes.signal"
        v = self.r.section(raw, p, SignalProbeConfig, SIGNAL_KEYS)
        if not wanted and v["enabled"]:
            self.r.error(p, "a signal probe", "an uplink with signal: {source: ...} to read")
        return SignalProbeConfig(**v)

    def _probe(
        self,
        raw: Any,
        kind: str,
        model: type[Any],
        keys: dict[str, Key],
        required: frozenset[str] = frozenset({"targets"}),
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(path, the scalar values by the key table, the raw mapping for the list keys)."""
        p = f"probes.{kind}"
        lists = required - set(keys)
        values = self.r.section(raw, p, model, keys, required, extra=lists)
        return p, values, raw if isinstance(raw, dict) else {}

    def icmp(self, raw: Any) -> IcmpProbeConfig | None:
        if raw is None:
            return None
        r = self.r
        p, v, m = self._probe(raw, "icmp", IcmpProbeConfig, ICMP_KEYS)
        targets: list[IcmpTarget] = []
        indices: list[int] = []  # position of each target in the YAML list, for errors
        for i, tp, tm in self._entries(m, "targets", p, "targets", "host", {"host", "name"}):
            host = r.get(tm, "host", tp, host_or_ip, "an IP address or host name")
            name = self._label(tm, tp)
            if host is not None:
                targets.append(IcmpTarget(host, name or host))
                indices.append(i)
        self._unique([t.name for t in targets], indices, f"{p}.targets", "target name")
        count, spacing, timeout = v["count"], v["spacing_s"], v["timeout_s"]
        round_s = (count - 1) * spacing + count * timeout
        if round_s > v["interval_s"]:
            r.error(
                f"{p}.interval_s",
                show(v["interval_s"]),
                f"at least one worst-case round, (count-1)*spacing_s + count*timeout_s"
                f" = {round_s:g} s",
            )
        return IcmpProbeConfig(**v, targets=tuple(targets))

    def dns(self, raw: Any) -> DnsProbeConfig | None:
        if raw is None:
            return None
        r = self.r
        lists = frozenset({"resolvers", "names"})
        p, v, m = self._probe(raw, "dns", DnsProbeConfig, DNS_KEYS, lists)
        resolvers: list[Resolver] = []
        indices: list[int] = []
        for i, rp, rm in self._entries(m, "resolvers", p, "resolvers", "address", set()):
            res = r.section(rm, rp, Resolver, RESOLVER_KEYS, frozenset({"address"}))
            addr, port = res["address"], res["port"]
            if addr is not None:
                default_name = addr if port == 53 else f"{addr}:{port}"
                resolvers.append(Resolver(addr, port, res["name"] or default_name))
                indices.append(i)
        self._unique([x.name for x in resolvers], indices, f"{p}.resolvers", "resolver name")
        names: list[str] = []
        raw_names = m.get("names")
        if "names" in m and (not isinstance(raw_names, list) or not raw_names):
            r.error(f"{p}.names", show(raw_names), "a non-empty list of host names")
        elif isinstance(raw_names, list):
            for i, n in enumerate(raw_names):
                if not isinstance(n, str) or ip_address(n) is not None or not HOST_RE.fullmatch(n):
                    r.error(f"{p}.names[{i}]", show(n), "a host name such as kpu.go.id")
                else:
                    names.append(n)
        return DnsProbeConfig(**v, resolvers=tuple(resolvers), names=tuple(names))

    def http(self, raw: Any) -> HttpProbeConfig | None:
        if raw is None:
            return None
        keys = {**HTTP_KEYS, "ca_bundle": Key(self.existing_file, "a readable PEM file")}
        p, v, m = self._probe(raw, "http", HttpProbeConfig, keys)
        targets: list[HttpTarget] = []
        indices: list[int] = []
        for i, tp, tm in self._entries(m, "targets", p, "targets", "url", set()):
            t = self.r.section(tm, tp, HttpTarget, HTTP_TARGET_KEYS, frozenset({"url"}))
            if t["url"] is not None:
                t["name"] = t["name"] or urlsplit(t["url"]).hostname or t["url"]
                targets.append(HttpTarget(**t))
                indices.append(i)
        self._unique([t.name for t in targets], indices, f"{p}.targets", "target name")
        return HttpProbeConfig(**v, targets=tuple(targets))

    def throughput(self, raw: Any) -> ThroughputProbeConfig | None:
        if raw is None:
            return None
        r = self.r
        required = frozenset({"backend"})
        p, v, m = self._probe(raw, "throughput", ThroughputProbeConfig, THROUGHPUT_KEYS, required)
        backend = v["backend"]
        if backend == "mini" and "url" not in m:
            r.error(f"{p}.url", "nothing", "the Speedtest Mini URL (required with backend mini)")
        if backend == "ookla":
            for key in ("url", "name"):
                if key in m:
                    r.error(f"{p}.{key}", show(m[key]), f"no {key} with backend ookla")
        if backend == "mini":
            for key in ("server_id", "secure"):
                if key in m:
                    r.error(f"{p}.{key}", show(m[key]), f"no {key} with backend mini (ookla only)")
        # Two timed phases plus start-up and idle latency; Ookla also fetches its
        # configuration and server list and pings the nearest servers.
        setup = 15 if backend == "ookla" else 5
        need = 2 * v["duration_s"] + setup
        if "timeout_s" in m and v["timeout_s"] < need:
            r.error(
                f"{p}.timeout_s",
                show(m["timeout_s"]),
                f"at least 2 * duration_s + {setup} = {need:g} s (one whole {backend} test)",
            )
        elif "timeout_s" not in m:
            v["timeout_s"] = max(v["timeout_s"], need)
        if v["timeout_s"] > v["interval_s"]:
            r.error(
                f"{p}.interval_s",
                show(v["interval_s"]),
                f"at least timeout_s ({v['timeout_s']:g} s)",
            )
        return ThroughputProbeConfig(**v)

    def upload(self, raw: Any) -> UploadProbeConfig | None:
        if raw is None:
            return None
        keys = {**UPLOAD_KEYS, "ca_bundle": Key(self.existing_file, "a readable PEM file")}
        p, v, m = self._probe(raw, "upload", UploadProbeConfig, keys)
        targets: list[UploadTarget] = []
        indices: list[int] = []
        for i, tp, tm in self._entries(m, "targets", p, "targets", "url", set()):
            t = self.r.section(tm, tp, UploadTarget, UPLOAD_TARGET_KEYS, frozenset({"url"}))
            if t["url"] is not None:
                t["name"] = t["name"] or urlsplit(t["url"]).hostname or t["url"]
                targets.append(UploadTarget(**t))
                indices.append(i)
        self._unique([t.name for t in targets], indices, f"{p}.targets", "target name")
        return UploadProbeConfig(**v, targets=tuple(targets))

    def budget(self, raw: Any) -> BudgetConfig:
        return BudgetConfig(**self.r.section(raw, "budget", BudgetConfig, BUDGET_KEYS))

    def quiet_windows(self, raw: Any) -> tuple[QuietWindow, ...]:
        r = self.r
        if raw is None:
            return ()
        if not isinstance(raw, list):
            r.error("quiet_windows", show(raw), "a list of windows {start, end, days, dates}")
            return ()
        out: list[QuietWindow] = []
        clock = "a local time in quotes, 'HH:MM' such as '07:00'"
        for i, item in enumerate(raw):
            p = f"quiet_windows[{i}]"
            m = r.mapping(item, p, {"start", "end", "days", "dates"}, {"start", "end"})
            for key in ("start", "end"):
                v = m.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 24 * 60:
                    # YAML 1.1 reads unquoted 13:00 as the base-60 number 780.
                    hhmm = f"{v // 60:02d}:{v % 60:02d}"
                    r.error(
                        f"{p}.{key}",
                        f"{hhmm} unquoted (YAML reads it as the number {v})",
                        f"{clock}: quote it, {key}: '{hhmm}'",
                    )
                    m = {k: x for k, x in m.items() if k != key}
            start = r.get(m, "start", p, _clock_time, clock)
            end = r.get(m, "end", p, _clock_time, clock)
            days = r.get(m, "days", p, _weekdays, "a list of days: mon, tue, ... sun")
            dates = r.get(m, "dates", p, _dates, "a list of dates, YYYY-MM-DD")
            if start is not None and end is not None:
                out.append(QuietWindow(start, end, days or (), dates or ()))
        return tuple(out)

    def thresholds_file(self, top: dict[str, Any]) -> Path:
        default = self.base / "thresholds.yaml"
        expected = "a readable thresholds YAML file"
        path = self.r.get(top, "thresholds_file", "", self.existing_file, expected, default)
        if "thresholds_file" not in top and not path.is_file():
            self.r.error("thresholds_file", "nothing", f"a thresholds file (none at {path})")
        return path

    def _entries(
        self, m: dict[str, Any], key: str, p: str, what: str, shorthand: str, keys: set[str]
    ) -> Iterator[tuple[int, str, Any]]:
        """(index, path, mapping) of each entry of the list m[key]; a bare string is
        shorthand for {shorthand: string}. With no keys the entry is given as it is, for the
        caller to read by its key table."""
        raw = m.get(key)
        if key in m and (not isinstance(raw, list) or not raw):
            self.r.error(f"{p}.{key}", show(raw), f"a non-empty list of {what}")
            return
        for i, item in enumerate(raw if isinstance(raw, list) else []):
            item_path = f"{p}.{key}[{i}]"
            if isinstance(item, str):
                item = {shorthand: item}
            yield i, item_path, self.r.mapping(item, item_path, keys, {shorthand}) if keys else item

    def _label(self, m: dict[str, Any], p: str) -> str | None:
        return self.r.get(
            m, "name", p, string(NAME_RE), "a label of 1..64 letters, digits, '.', '_', ':', '-'"
        )

    def _unique(self, names: list[str], indices: list[int], path: str, what: str) -> None:
        seen: set[str] = set()
        for i, n in zip(indices, names, strict=True):
            if n in seen:
                self.r.error(
                    f"{path}[{i}].name",
                    show(n),
                    f"a {what} not used twice (set name: to tell them apart)",
                )
            seen.add(n)


_TOP_KEYS = set(AGENT_KEYS)


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load and validate an agent config; raises ConfigError listing every problem."""
    p = Path(path)
    name = str(path)
    doc = read_yaml(p, " (give one with -c FILE or SINYAL_CONFIG)")
    doc, sources = apply_env(doc, os.environ if environ is None else environ, _TOP_KEYS)
    r = Reader(name, sources)
    top = r.mapping(doc, "", _TOP_KEYS, {"station"})
    if not isinstance(doc, dict):  # nothing else can be checked
        raise ConfigError(r.errors)
    loader = _Loader(r, p.resolve().parent)
    station = loader.station(top.get("station")) if "station" in top else None
    collector = loader.collector(top.get("collector"))
    uplinks = loader.uplinks(top.get("uplinks"))

    kinds = {"icmp", "dns", "http", "throughput", "upload", "signal"}
    probe_sections = r.mapping(top.get("probes"), "probes", kinds, set())
    probes = Probes(
        loader.icmp(probe_sections.get("icmp")),
        loader.dns(probe_sections.get("dns")),
        loader.http(probe_sections.get("http")),
        loader.throughput(probe_sections.get("throughput")),
        loader.upload(probe_sections.get("upload")),
        loader.signal(probe_sections.get("signal"), any(u.signal is not None for u in uplinks)),
    )
    every = (probes.icmp, probes.dns, probes.http, probes.throughput, probes.upload, probes.signal)
    if not any(x is not None and x.enabled for x in every):
        r.error("probes", "no enabled probe", f"at least one of {', '.join(sorted(kinds))}")
    budget = loader.budget(top.get("budget"))
    quiet = loader.quiet_windows(top.get("quiet_windows"))
    schedule = Schedule(**r.section(top.get("schedule"), "schedule", Schedule, SCHEDULE_KEYS))
    spool = SpoolConfig(**r.section(top.get("spool"), "spool", SpoolConfig, SPOOL_KEYS))
    clock = ClockConfig(**r.section(top.get("clock"), "clock", ClockConfig, CLOCK_KEYS))
    data_dir = r.get(top, "data_dir", "", loader.path_value, "a directory path", DEFAULT_DATA_DIR)
    thresholds = loader.thresholds_file(top)

    if data_dir.exists() and not data_dir.is_dir():
        r.error(
            "data_dir", show(top.get("data_dir", str(data_dir))), "a directory (a file is there)"
        )
    r.errors += unknown_env_errors(name, os.environ if environ is None else environ, "agent")
    if r.errors or station is None:
        raise ConfigError(r.errors or [f"{name}: station: invalid"])
    return AgentConfig(
        path=p,
        station=station,
        collector=collector,
        uplinks=uplinks,
        probes=probes,
        schedule=schedule,
        spool=spool,
        data_dir=data_dir,
        thresholds_file=thresholds,
        clock=clock,
        budget=budget,
        quiet_windows=quiet,
    )


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("SINYAL_CONFIG", DEFAULT_CONFIG)
