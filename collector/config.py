"""Collector configuration: YAML loaded into typed, validated objects.

Errors are reported all at once as ``FILE: dotted.path: got VALUE, expected WHAT``,
with the same reader as the agent's config (agent.config). Environment variables
override scalar keys: ``SINYAL_`` + dotted path upper-cased with ``__`` between levels
(``SINYAL_SINK__URL``, ``SINYAL_SINK__TOKEN``, ``SINYAL_LISTEN__PORT``).
See docs/collector.md.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.contract.configkit import (
    NAME_RE,
    ConfigError,
    Key,
    Reader,
    apply_env,
    boolean,
    http_url,
    integer,
    number,
    one_of,
    read_yaml,
    show,
    string,
)
from agent.contract.envcheck import COLLECTOR_KEYS, unknown_env_errors

DEFAULT_CONFIG = "/etc/sinyal/collector.yaml"
DEFAULT_DATA_DIR = Path("/var/lib/sinyal")
SINK_KINDS = ("v1", "v2")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold, and for how long (collector.connguard, docs/security.md)."""

    max_connections: int = 4096  # lowered to stay below the process's open-file limit
    max_header_bytes: int = 16384  # request line + headers; 431 beyond
    max_headers: int = 64  # header lines; 431 beyond
    max_url_bytes: int = 4096  # request target; 414 beyond
    header_timeout_s: float = 10.0  # the whole request head, from its first byte
    idle_timeout_s: float = 15.0  # keep-alive: idle between requests
    body_timeout_s: float = 30.0  # no body byte for this long while a body is read
    send_timeout_s: float = 60.0  # the client reads nothing of the answer for this long


@dataclass(frozen=True)
class TlsConfig:
    """HTTPS served by uvicorn: certificate chain and key (PEM); with `client_ca`, clients
    must present a certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080
    tls: TlsConfig | None = None
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)


@dataclass(frozen=True)
class SinkConfig:
    """Where points go. v1: POST line protocol to /write (every InfluxDB 1.x).
    v2: influxdb-client's write API on /api/v2/write (InfluxDB 2.x/3.x/1.8+, VictoriaMetrics)."""

    kind: str
    url: str
    database: str = "sinyal"  # v1 database; for v2 the bucket defaults to it
    retention_policy: str | None = None
    bucket: str | None = None
    org: str = "sinyal"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    retry_after_s: int = 10  # what the API tells agents when the database is unavailable
    # gzip write bodies: "auto" (the default) compresses unless the database is on loopback,
    # where compressing only costs CPU on both sides; "always" / "never".
    gzip: str = "auto"

    @property
    def compress(self) -> bool:
        if self.gzip != "auto":
            return self.gzip == "always"
        host = (urlsplit(self.url).hostname or "").lower()
        return not (host == "localhost" or host == "::1" or host.startswith("127."))

    @property
    def v2_bucket(self) -> str:
        if self.bucket:
            return self.bucket
        return (
            f"{self.database}/{self.retention_policy}" if self.retention_policy else self.database
        )


@dataclass(frozen=True)
class StatusConfig:
    """Debounced station status: degraded/critical after `breach_m` of the last `window_n`
    rounds breach; back to ok after `window_n` good rounds; silent after `silent_after_s`."""

    breach_m: int = 3
    window_n: int = 5
    silent_after_s: float = 300.0
    sweeper: bool = True  # run the silent-station sweeper on this replica
    sweep_interval_s: float = 30.0


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 5 * 2**20  # after decompression
    max_records: int = 1000  # per request (agents send 500)
    past_s: float = 35 * 86400  # oldest accepted measured_at
    future_s: float = 300.0  # newest accepted measured_at, ahead of the server's clock
    # Distinct series (kind + tag values) one station may open (collector.guard).
    max_series_per_station: int = 500
    # Point keys of the most recent writes kept to refuse a history rewrite (collector.guard).
    recent_points: int = 500_000
    # Token buckets per agent token (collector.ratelimit): sustained rate and burst.
    records_per_s: float = 50.0
    records_burst: int = 1000
    requests_per_s: float = 5.0
    requests_burst: int = 30


@dataclass(frozen=True)
class SpeedtestConfig:
    """The /speedtest endpoint: only with a ticket from /api/v1/speedtest/ticket (a token
    needed), at most `daily_bytes_per_token` down + up per token per UTC day."""

    enabled: bool = True
    daily_bytes_per_token: int = 2 * 2**30
    max_upload_bytes: int = 64 * 2**20  # one upload request's body
    ticket_ttl_s: float = 900.0


@dataclass(frozen=True)
class AdminConfig:
    """/metrics and /openapi.json: with `token` set, for `Authorization: Bearer <token>`;
    without, for loopback clients only."""

    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RegistryConfig:
    """What ``stations import`` accepts (collector/regions.py): operator labels besides the
    built-in telkomsel, indosat, xlsmart and smartfren."""

    extra_operators: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportsConfig:
    """The /reports page: off unless an admin token file is set (see docs/reports.md)."""

    admin_token_file: Path | None = None
    keep: int = 20  # generated reports kept under data_dir/reports (oldest removed)


@dataclass(frozen=True)
class ShardConfig:
    """This process's name among the collector processes a proxy routes stations to
    (docs/collector.md, "Several processes"). None: `<hostname>:<listen.port>`."""

    id: str | None = None


@dataclass(frozen=True)
class CollectorConfig:
    path: Path
    listen: Listen
    sink: SinkConfig
    data_dir: Path
    thresholds_file: Path
    status: StatusConfig
    limits: Limits
    registry: RegistryConfig = RegistryConfig()
    reports: ReportsConfig = ReportsConfig()
    speedtest: SpeedtestConfig = field(default_factory=SpeedtestConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    @property
    def shard_id(self) -> str:
        """This process's shard: `shard.id`, else `<hostname>:<listen.port>` (unique across
        the nodes and the processes of a node)."""
        return self.shard.id or f"{socket.gethostname()}:{self.listen.port}"


_TOP = set(COLLECTOR_KEYS)

# One key table per section; each default is stated on the section's dataclass above.
LISTEN_KEYS = {
    "host": Key(string(), "an address to listen on"),
    "port": Key(integer(1, 65535), "a port, 1..65535"),
}
CONNECTION_KEYS = {  # in listen:, beside host and port
    "max_connections": Key(integer(16, 1_000_000), "connections, 16..1000000"),
    "max_header_bytes": Key(integer(1024, 1_048_576), "bytes, 1024..1048576"),
    "max_headers": Key(integer(8, 1000), "header lines, 8..1000"),
    "max_url_bytes": Key(integer(256, 1_048_576), "bytes, 256..1048576"),
    "header_timeout_s": Key(number(0.1, 600), "seconds, 0.1..600"),
    "idle_timeout_s": Key(number(0.1, 3600), "seconds, 0.1..3600"),
    "body_timeout_s": Key(number(0.1, 3600), "seconds, 0.1..3600"),
    "send_timeout_s": Key(number(0.1, 3600), "seconds, 0.1..3600"),
}
SPEEDTEST_KEYS = {
    "enabled": Key(boolean, "true or false"),
    "daily_bytes_per_token": Key(integer(0, 2**50), "bytes"),
    "max_upload_bytes": Key(integer(1024, 2**34), "bytes"),
    "ticket_ttl_s": Key(number(10, 86400), "seconds, 10..86400"),
}
SINK_KEYS = {
    "kind": Key(one_of(*SINK_KINDS), "v1 or v2"),
    "url": Key(http_url, "the database's http(s) base URL"),
    "database": Key(string(), "a database name"),
    "retention_policy": Key(string(), "a retention policy name"),
    "bucket": Key(string(), "a bucket name"),
    "org": Key(string(), "an organisation name"),
    "username": Key(string(), "a user name"),
    "password": Key(string(), "a password"),
    "token": Key(string(), "an API token"),
    "timeout_s": Key(number(0, 600, lo_open=True), "seconds, 0..600"),
    "retry_after_s": Key(integer(1, 3600), "seconds, 1..3600"),
    "gzip": Key(one_of("auto", "always", "never"), "auto, always or never"),
}
STATUS_KEYS = {
    "breach_m": Key(integer(1, 100), "rounds, 1..100"),
    "window_n": Key(integer(1, 100), "rounds, 1..100"),
    "silent_after_s": Key(number(10, 86400), "seconds, 10..86400"),
    "sweeper": Key(boolean, "true or false"),
    "sweep_interval_s": Key(number(1, 3600), "seconds, 1..3600"),
}
LIMITS_KEYS = {
    "max_body_bytes": Key(integer(1024, 2**30), "bytes, 1024..1073741824"),
    "max_records": Key(integer(1, 100_000), "1..100000"),
    "past_s": Key(number(60, 400 * 86400), "seconds"),
    "future_s": Key(number(0, 86400), "seconds, 0..86400"),
    "max_series_per_station": Key(integer(1, 10**6), "series, 1..1000000"),
    "recent_points": Key(integer(0, 10**8), "points, 0..100000000"),
    "records_per_s": Key(number(0.01, 1e7), "records/s"),
    "records_burst": Key(integer(1, 10**9), "records"),
    "requests_per_s": Key(number(0.01, 1e6), "requests/s"),
    "requests_burst": Key(integer(1, 10**7), "requests"),
}


class _Loader:
    """Reads each section of a collector config into its dataclass (the agent's loader has
    the same shape: agent/config.py)."""

    def __init__(self, reader: Reader, base: Path) -> None:
        self.r = reader
        self.base = base

    def path_value(self, v: Any) -> Path | None:
        if not isinstance(v, str) or not v:
            return None
        q = Path(v).expanduser()
        return q if q.is_absolute() else self.base / q

    def existing_file(self, v: Any) -> Path | None:
        q = self.path_value(v)
        return q if q is not None and q.is_file() else None

    def listen(self, raw: Any) -> Listen:
        r = self.r
        conn_keys = frozenset(CONNECTION_KEYS)
        values = r.section(raw, "listen", Listen, LISTEN_KEYS, extra=conn_keys | {"tls"})
        m = raw if isinstance(raw, dict) else {}
        tls = self.tls(m.get("tls"))
        only = {k: v for k, v in m.items() if k in conn_keys}
        connections = ConnectionLimits(
            **r.section(only, "listen", ConnectionLimits, CONNECTION_KEYS)
        )
        return Listen(values["host"], values["port"], tls, connections)

    def tls(self, raw: Any) -> TlsConfig | None:
        if raw is None:
            return None
        keys = {
            "cert": Key(self.existing_file, "a readable PEM certificate (chain) file"),
            "key": Key(self.existing_file, "a readable PEM private key file"),
            "client_ca": Key(self.existing_file, "a readable PEM CA certificate file"),
        }
        values = self.r.section(raw, "listen.tls", TlsConfig, keys, frozenset({"cert", "key"}))
        if values["cert"] is None or values["key"] is None:
            return None
        return TlsConfig(**values)

    def speedtest(self, raw: Any) -> SpeedtestConfig:
        return SpeedtestConfig(**self.r.section(raw, "speedtest", SpeedtestConfig, SPEEDTEST_KEYS))

    def shard(self, raw: Any) -> ShardConfig:
        keys = {"id": Key(string(NAME_RE), "1..64 letters, digits, '.', '_', ':' or '-'")}
        return ShardConfig(**self.r.section(raw, "shard", ShardConfig, keys))

    def admin(self, raw: Any) -> AdminConfig:
        keys = {"token": Key(string(), "an admin token of 16+ characters")}
        values = self.r.section(raw, "admin", AdminConfig, keys)
        if values["token"] is not None and len(values["token"]) < 16:
            self.r.error("admin.token", "'***'", "an admin token of 16+ characters")
        return AdminConfig(**values)

    def sink(self, raw: Any) -> SinkConfig | None:
        r = self.r
        values = r.section(raw, "sink", SinkConfig, SINK_KEYS, frozenset({"kind", "url"}))
        user, password = values["username"], values["password"]
        if values["token"] is not None and (user is not None or password is not None):
            r.error("sink.token", "'***'", "either token or username/password, not both")
        if (user is None) != (password is None):
            r.error(
                "sink.password" if user else "sink.username",
                "nothing",
                "username and password together",
            )
        if values["kind"] is None or values["url"] is None:
            return None
        return SinkConfig(**values)

    def status(self, raw: Any) -> StatusConfig:
        values = self.r.section(raw, "status", StatusConfig, STATUS_KEYS)
        if values["breach_m"] > values["window_n"]:
            self.r.error(
                "status.breach_m",
                show(values["breach_m"]),
                f"at most window_n ({values['window_n']})",
            )
        return StatusConfig(**values)

    def limits(self, raw: Any) -> Limits:
        values = self.r.section(raw, "limits", Limits, LIMITS_KEYS)
        burst, max_records = values["records_burst"], values["max_records"]
        if burst < max_records:
            self.r.error(
                "limits.records_burst",
                show(burst),
                f"at least limits.max_records ({max_records}), or a full request never passes",
            )
        return Limits(**values)

    def reports(self, raw: Any) -> ReportsConfig:
        keys = {
            "admin_token_file": Key(self.existing_file, "a readable file holding a token"),
            "keep": Key(integer(1, 10_000), "reports to keep, 1..10000"),
        }
        values = self.r.section(raw, "reports", ReportsConfig, keys)
        admin = values["admin_token_file"]
        if admin is not None and len(_first_line(admin)) < 32:
            self.r.error(
                "reports.admin_token_file", show(str(admin)), "a token of 32+ characters in it"
            )
        return ReportsConfig(**values)

    def thresholds_file(self, top: dict[str, Any]) -> Path:
        r = self.r
        default = self.base / "thresholds.yaml"
        path = r.get(
            top,
            "thresholds_file",
            "",
            self.existing_file,
            "a readable thresholds YAML file",
            default,
        )
        if "thresholds_file" not in top and not path.is_file():
            r.error("thresholds_file", "nothing", f"a thresholds file (none at {path})")
        return path

    def registry(self, raw: Any) -> RegistryConfig:
        r = self.r
        m = r.mapping(raw, "registry", {"extra_operators"}, set())
        extra = m.get("extra_operators")
        if extra is None:
            return RegistryConfig()
        if not isinstance(extra, list):
            r.error("registry.extra_operators", show(extra), "a list of operator labels")
            return RegistryConfig()
        labels: list[str] = []
        for i, label in enumerate(extra):
            if not isinstance(label, str) or not NAME_RE.fullmatch(label) or label != label.lower():
                r.error(
                    f"registry.extra_operators[{i}]",
                    show(label),
                    "a lower-case operator label of 1..64 letters, digits, '.', '_', ':', '-'",
                )
            elif label in labels:
                r.error(f"registry.extra_operators[{i}]", show(label), "each label once")
            else:
                labels.append(label)
        return RegistryConfig(tuple(labels))


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Load and validate a collector config; raises ConfigError listing every problem."""
    p = Path(path)
    name = str(path)
    doc = read_yaml(p, " (give one with -c FILE)")
    if doc is None:
        doc = {}
    doc, sources = apply_env(doc, os.environ if environ is None else environ, _TOP)
    r = Reader(name, sources)
    if not isinstance(doc, dict):
        raise ConfigError([f"{name}: (top level): got {show(doc)}, expected a mapping"])
    top = r.mapping(doc, "", _TOP, {"sink"})
    loader = _Loader(r, p.resolve().parent)
    listen = loader.listen(top.get("listen"))
    sink = loader.sink(top.get("sink"))
    data_dir = r.get(top, "data_dir", "", loader.path_value, "a directory path", DEFAULT_DATA_DIR)
    thresholds = loader.thresholds_file(top)
    status = loader.status(top.get("status"))
    limits = loader.limits(top.get("limits"))
    registry = loader.registry(top.get("registry"))
    reports = loader.reports(top.get("reports"))
    speedtest = loader.speedtest(top.get("speedtest"))
    admin = loader.admin(top.get("admin"))
    shard = loader.shard(top.get("shard"))
    r.errors += unknown_env_errors(name, os.environ if environ is None else environ, "collector")
    if r.errors or sink is None:
        raise ConfigError(r.errors or [f"{name}: sink: invalid"])
    return CollectorConfig(
        p,
        listen,
        sink,
        data_dir,
        thresholds,
        status,
        limits,
        registry,
        reports,
        speedtest,
        admin,
        shard,
    )


def _first_line(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("SINYAL_COLLECTOR_CONFIG", DEFAULT_CONFIG)
