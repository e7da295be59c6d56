"""Collector configuration: YAML loaded into typed, validated objects.

Errors are reported all at once as ``FILE: dotted.path: got VALUE, expected WHAT``,
with the same reader as the agent's config (agent.config). Environment variables
override scalar keys: ``SINYAL_`` + dotted path upper-cased with ``__`` between levels
(``SINYAL_SINK__URL``, ``SINYAL_SINK__TOKEN``, ``SINYAL_LISTEN__PORT``).
See docs/collector.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config import (
    ConfigError,
    _apply_env,
    _boolean,
    _http_url,
    _integer,
    _Reader,
    _show,
    _string,
    read_yaml,
)
from agent.config import _number as number

DEFAULT_CONFIG = "/etc/sinyal/collector.yaml"
SINK_KINDS = ("v1", "v2")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold, and for how long (collector.guard, docs/security.md)."""

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
class CollectorConfig:
    path: Path
    listen: Listen
    sink: SinkConfig
    data_dir: Path
    thresholds_file: Path
    status: StatusConfig
    limits: Limits
    speedtest: SpeedtestConfig = field(default_factory=SpeedtestConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite3"


_TOP = {"listen", "sink", "data_dir", "thresholds_file", "status", "limits", "speedtest", "admin"}
_LISTEN_KEYS = {"host", "port", "tls", *ConnectionLimits.__dataclass_fields__}
_RATE_KEYS = ("records_per_s", "records_burst", "requests_per_s", "requests_burst")


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> CollectorConfig:
    p = Path(path)
    name = str(path)
    doc = read_yaml(p, " (give one with -c FILE)")
    if doc is None:
        doc = {}
    doc, sources = _apply_env(doc, os.environ if environ is None else environ, _TOP)
    r = _Reader(name, sources)
    if not isinstance(doc, dict):
        raise ConfigError([f"{name}: (top level): got {_show(doc)}, expected a mapping"])
    top = r.mapping(doc, "", _TOP, {"sink"})
    base = p.resolve().parent

    def path_of(v: Any) -> Path | None:
        if not isinstance(v, str) or not v:
            return None
        q = Path(v).expanduser()
        return q if q.is_absolute() else base / q

    def existing(v: Any) -> Path | None:
        q = path_of(v)
        return q if q is not None and q.is_file() else None

    lm = r.mapping(top.get("listen"), "listen", _LISTEN_KEYS, set())
    host = r.get(lm, "host", "listen", _string(), "an address to listen on", "127.0.0.1")
    port = r.get(lm, "port", "listen", _integer(1, 65535), "a port, 1..65535", 8080)
    tls = _read_tls(r, lm.get("tls"), existing)
    connections = _read_connections(r, lm)

    sink: SinkConfig | None = None
    sk = {
        "kind",
        "url",
        "database",
        "retention_policy",
        "bucket",
        "org",
        "username",
        "password",
        "token",
        "timeout_s",
        "retry_after_s",
        "gzip",
    }
    sm = r.mapping(top.get("sink"), "sink", sk, {"kind", "url"})
    kind = r.get(sm, "kind", "sink", lambda v: v if v in SINK_KINDS else None, "v1 or v2")
    url = r.get(sm, "url", "sink", _http_url, "the database's http(s) base URL")
    database = r.get(sm, "database", "sink", _string(), "a database name", "sinyal")
    rp = r.get(sm, "retention_policy", "sink", _string(), "a retention policy name")
    bucket = r.get(sm, "bucket", "sink", _string(), "a bucket name")
    org = r.get(sm, "org", "sink", _string(), "an organisation name", "sinyal")
    user = r.get(sm, "username", "sink", _string(), "a user name")
    password = r.get(sm, "password", "sink", _string(), "a password")
    token = r.get(sm, "token", "sink", _string(), "an API token")
    if token is not None and (user is not None or password is not None):
        r.error("sink.token", "'***'", "either token or username/password, not both")
    if (user is None) != (password is None):
        r.error(
            "sink.password" if user else "sink.username",
            "nothing",
            "username and password together",
        )
    timeout = r.get(sm, "timeout_s", "sink", number(0, 600, lo_open=True), "seconds, 0..600", 10.0)
    retry = r.get(sm, "retry_after_s", "sink", _integer(1, 3600), "seconds, 1..3600", 10)
    gz = r.get(
        sm,
        "gzip",
        "sink",
        lambda v: v if v in ("auto", "always", "never") else None,
        "auto, always or never",
        "auto",
    )
    if kind is not None and url is not None:
        sink = SinkConfig(
            kind,
            url,
            database or "sinyal",
            rp,
            bucket,
            org or "sinyal",
            user,
            password,
            token,
            timeout or 10.0,
            retry or 10,
            gz or "auto",
        )

    data_dir = r.get(top, "data_dir", "", path_of, "a directory path", Path("/var/lib/sinyal"))
    thresholds = r.get(
        top,
        "thresholds_file",
        "",
        existing,
        "a readable thresholds YAML file",
        path_of("thresholds.yaml"),
    )
    if "thresholds_file" not in top and thresholds is not None and not thresholds.is_file():
        r.error("thresholds_file", "nothing", f"a thresholds file (none at {thresholds})")

    st = r.mapping(
        top.get("status"),
        "status",
        {"breach_m", "window_n", "silent_after_s", "sweeper", "sweep_interval_s"},
        set(),
    )
    m = r.get(st, "breach_m", "status", _integer(1, 100), "rounds, 1..100", 3)
    n = r.get(st, "window_n", "status", _integer(1, 100), "rounds, 1..100", 5)
    if m is not None and n is not None and m > n:
        r.error("status.breach_m", _show(m), f"at most window_n ({n})")
    silent = r.get(st, "silent_after_s", "status", number(10, 86400), "seconds, 10..86400", 300.0)
    sweeper = r.get(st, "sweeper", "status", _boolean, "true or false", True)
    sweep_iv = r.get(st, "sweep_interval_s", "status", number(1, 3600), "seconds, 1..3600", 30.0)

    li = r.mapping(
        top.get("limits"),
        "limits",
        {"max_body_bytes", "max_records", "past_s", "future_s", *_RATE_KEYS},
        set(),
    )
    max_body = r.get(
        li, "max_body_bytes", "limits", _integer(1024, 2**30), "bytes, 1024..1073741824", 5 * 2**20
    )
    max_rec = r.get(
        li, "max_records", "limits", _integer(1, 100_000), "1..100000", Limits.max_records
    )
    past = r.get(li, "past_s", "limits", number(60, 400 * 86400), "seconds", 35 * 86400.0)
    future = r.get(li, "future_s", "limits", number(0, 86400), "seconds, 0..86400", 300.0)
    rates = _read_rates(r, li, max_rec)
    speedtest = _read_speedtest(r, top.get("speedtest"))
    am = r.mapping(top.get("admin"), "admin", {"token"}, set())
    admin_token = r.get(am, "token", "admin", _string(), "an admin token of 16+ characters")
    if admin_token is not None and len(admin_token) < 16:
        r.error("admin.token", "'***'", "an admin token of 16+ characters")

    if r.errors or sink is None:
        raise ConfigError(r.errors or [f"{name}: sink: invalid"])
    assert data_dir is not None and thresholds is not None
    return CollectorConfig(
        path=p,
        listen=Listen(host or "127.0.0.1", port or 8080, tls, connections),
        sink=sink,
        data_dir=data_dir,
        thresholds_file=thresholds,
        status=StatusConfig(m or 3, n or 5, silent or 300.0, bool(sweeper), sweep_iv or 30.0),
        limits=Limits(
            max_body or 5 * 2**20,
            max_rec or Limits.max_records,
            past or 35 * 86400.0,
            300.0 if future is None else future,
            **rates,
        ),
        speedtest=speedtest,
        admin=AdminConfig(admin_token),
    )


# (key, reader, expected text) of each connection limit; defaults from ConnectionLimits.
_CONNECTION_KEYS: tuple[tuple[str, Any, str], ...] = (
    ("max_connections", _integer(16, 1_000_000), "connections, 16..1000000"),
    ("max_header_bytes", _integer(1024, 1_048_576), "bytes, 1024..1048576"),
    ("max_headers", _integer(8, 1000), "header lines, 8..1000"),
    ("max_url_bytes", _integer(256, 1_048_576), "bytes, 256..1048576"),
    ("header_timeout_s", number(0.1, 600), "seconds, 0.1..600"),
    ("idle_timeout_s", number(0.1, 3600), "seconds, 0.1..3600"),
    ("body_timeout_s", number(0.1, 3600), "seconds, 0.1..3600"),
    ("send_timeout_s", number(0.1, 3600), "seconds, 0.1..3600"),
)


def _read_connections(r: _Reader, lm: dict[str, Any]) -> ConnectionLimits:
    d = ConnectionLimits()
    values = {
        key: r.get(lm, key, "listen", check, what, getattr(d, key))
        for key, check, what in _CONNECTION_KEYS
    }
    return ConnectionLimits(**{k: v for k, v in values.items() if v is not None})


def _read_tls(r: _Reader, v: Any, existing: Any) -> TlsConfig | None:
    if v is None:
        return None
    tm = r.mapping(v, "listen.tls", {"cert", "key", "client_ca"}, {"cert", "key"})
    cert = r.get(tm, "cert", "listen.tls", existing, "a readable PEM certificate (chain) file")
    key = r.get(tm, "key", "listen.tls", existing, "a readable PEM private key file")
    ca = r.get(tm, "client_ca", "listen.tls", existing, "a readable PEM CA certificate file")
    return TlsConfig(cert, key, ca) if cert is not None and key is not None else None


def _read_rates(r: _Reader, li: dict[str, Any], max_records: int | None) -> dict[str, Any]:
    d = Limits()
    out: dict[str, Any] = {
        "records_per_s": r.get(
            li, "records_per_s", "limits", number(0.01, 1e7), "records/s", d.records_per_s
        ),
        "records_burst": r.get(
            li, "records_burst", "limits", _integer(1, 10**9), "records", d.records_burst
        ),
        "requests_per_s": r.get(
            li, "requests_per_s", "limits", number(0.01, 1e6), "requests/s", d.requests_per_s
        ),
        "requests_burst": r.get(
            li, "requests_burst", "limits", _integer(1, 10**7), "requests", d.requests_burst
        ),
    }
    burst = out["records_burst"]
    if burst is not None and max_records is not None and burst < max_records:
        r.error(
            "limits.records_burst",
            _show(burst),
            f"at least limits.max_records ({max_records}), or a full request never passes",
        )
    return {k: v for k, v in out.items() if v is not None}


def _read_speedtest(r: _Reader, v: Any) -> SpeedtestConfig:
    d = SpeedtestConfig()
    keys = {"enabled", "daily_bytes_per_token", "max_upload_bytes", "ticket_ttl_s"}
    sm = r.mapping(v, "speedtest", keys, set())
    enabled = r.get(sm, "enabled", "speedtest", _boolean, "true or false", d.enabled)
    daily = r.get(
        sm,
        "daily_bytes_per_token",
        "speedtest",
        _integer(0, 2**50),
        "bytes",
        d.daily_bytes_per_token,
    )
    upload = r.get(
        sm, "max_upload_bytes", "speedtest", _integer(1024, 2**34), "bytes", d.max_upload_bytes
    )
    ttl = r.get(
        sm, "ticket_ttl_s", "speedtest", number(10, 86400), "seconds, 10..86400", d.ticket_ttl_s
    )
    return SpeedtestConfig(
        d.enabled if enabled is None else bool(enabled),
        d.daily_bytes_per_token if daily is None else daily,
        upload or d.max_upload_bytes,
        ttl or d.ticket_ttl_s,
    )


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("SINYAL_COLLECTOR_CONFIG", DEFAULT_CONFIG)
