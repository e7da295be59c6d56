"""The measurement record and the upload envelope: Sinyal's wire contract.

Stdlib only, so the collector can import it without the agent's libraries.
Every record carries the UTC time it was measured, its tags (bounded, used as
InfluxDB tags), its fields (units in their names; "not measured" is absent,
never 0), an error code when the measurement failed, and a unique id.

The measurements, their tags and fields are declared once in MEASUREMENTS; the
collector validates against the same table, and docs/data-model.md describes it
(tests/unit/test_docs.py keeps the two in step).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1

FieldValue = int | float | str


class ContractError(ValueError):
    """A record or envelope does not follow the contract.

    `path` names the offending element (for example `records[3].fields.loss_pct`).
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ErrorCode(StrEnum):
    """Stable error codes; dashboards and reports group failures by them."""

    TIMEOUT = "timeout"  # no answer within the probe's timeout
    HOST_UNREACHABLE = "host_unreachable"  # ICMP destination/host unreachable, EHOSTUNREACH
    NETWORK_UNREACHABLE = "network_unreachable"  # no route (ENETUNREACH)
    NAME_NOT_RESOLVED = "name_not_resolved"  # a target host name did not resolve
    CONNECTION_REFUSED = "connection_refused"  # TCP RST on connect
    CONNECTION_RESET = "connection_reset"  # peer closed or reset mid-exchange
    TLS_ERROR = "tls_error"  # handshake or certificate failure
    HTTP_STATUS = "http_status"  # an HTTP answer whose status was not the expected one
    PROTOCOL_ERROR = "protocol_error"  # malformed answer (HTTP or DNS)
    DNS_NXDOMAIN = "dns_nxdomain"  # the resolver says the name does not exist
    DNS_SERVFAIL = "dns_servfail"  # SERVFAIL
    DNS_REFUSED = "dns_refused"  # REFUSED
    DNS_ERROR = "dns_error"  # any other non-NOERROR rcode
    DNS_NO_ANSWER = "dns_no_answer"  # NOERROR but no record of the asked type
    SOURCE_UNAVAILABLE = "source_unavailable"  # the uplink's source address/interface is gone
    PERMISSION_DENIED = "permission_denied"  # the OS refused the socket
    NO_SERVER = (
        "no_server"  # no test server: server list unavailable, or the pinned id is not in it
    )
    INTERNAL_ERROR = "internal_error"  # a bug in the probe; the message is logged
    # signal: the modem could not give a reading
    NO_MODEM = "no_modem"  # no modem (or no ModemManager / HiLink device answering)
    MODEM_DISABLED = "modem_disabled"  # the modem is there but disabled, locked or failed
    NOT_REGISTERED = "not_registered"  # enabled, but not registered on a network
    PERMISSION = "permission"  # the agent may not read the modem (D-Bus policy, polkit, login)
    UNSUPPORTED = "unsupported"  # the modem cannot report signal values


@dataclass(frozen=True, slots=True)
class FieldSpec:
    type: type  # int, float or str
    unit: str
    description: str
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    description: str
    tags: tuple[str, ...]
    fields: Mapping[str, FieldSpec]


# Tags every agent record carries. The collector adds province and regency
# from its station registry.
COMMON_TAGS = ("station", "uplink", "operator")

_OK = FieldSpec(int, "0/1", "1 when the measurement succeeded, 0 when it failed", 0, 1)

MEASUREMENTS: dict[str, Measurement] = {
    "icmp": Measurement(
        "icmp",
        "One round of ICMP echo requests to one target over one uplink.",
        (*COMMON_TAGS, "target"),
        {
            "sent": FieldSpec(int, "packets", "echo requests sent in the round", 0, 10_000),
            "received": FieldSpec(int, "packets", "echo replies received in time", 0, 10_000),
            "loss_pct": FieldSpec(float, "%", "100 * (sent - received) / sent", 0, 100),
            "timeout_ms": FieldSpec(
                float, "ms", "Tmax: a reply later than this counts as lost", 0, 600_000
            ),
            "rtt_min_ms": FieldSpec(float, "ms", "smallest round-trip time", 0, 600_000),
            "rtt_avg_ms": FieldSpec(float, "ms", "mean round-trip time", 0, 600_000),
            "rtt_p50_ms": FieldSpec(float, "ms", "median round-trip time", 0, 600_000),
            "rtt_p95_ms": FieldSpec(float, "ms", "95th percentile round-trip time", 0, 600_000),
            "rtt_max_ms": FieldSpec(float, "ms", "largest round-trip time", 0, 600_000),
            "rtt_stddev_ms": FieldSpec(
                float, "ms", "population standard deviation of the RTTs", 0, 600_000
            ),
            "jitter_ms": FieldSpec(
                float, "ms", "mean absolute difference of consecutive RTTs", 0, 600_000
            ),
            "mos": FieldSpec(
                float, "1..4.5", "E-model MOS estimate from RTT, jitter, loss", 1, 4.5
            ),
            "ok": _OK,
        },
    ),
    "dns": Measurement(
        "dns",
        "One DNS query for one name to one resolver over one uplink.",
        (*COMMON_TAGS, "resolver", "qname", "qtype"),
        {
            "resolve_ms": FieldSpec(float, "ms", "query sent to answer received", 0, 600_000),
            "rcode": FieldSpec(
                int, "code", "DNS response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN)", 0, 4095
            ),
            "answers": FieldSpec(
                int, "records", "records of the asked type in the answer", 0, 10_000
            ),
            "ok": _OK,
        },
    ),
    "http": Measurement(
        "http",
        "One HTTP GET of one URL over one uplink, with phase timings.",
        (*COMMON_TAGS, "target"),
        {
            "dns_ms": FieldSpec(float, "ms", "name resolution of the URL's host", 0, 600_000),
            "connect_ms": FieldSpec(float, "ms", "TCP connect (SYN to established)", 0, 600_000),
            "tls_ms": FieldSpec(float, "ms", "TLS handshake (https only)", 0, 600_000),
            "ttfb_ms": FieldSpec(
                float,
                "ms",
                "request start to first response byte (excludes dns, connect, tls)",
                0,
                600_000,
            ),
            "total_ms": FieldSpec(float, "ms", "start of resolution to last body byte", 0, 600_000),
            "status": FieldSpec(int, "code", "HTTP status code", 100, 599),
            "bytes": FieldSpec(int, "bytes", "response body bytes received", 0, 2**53),
            "ok": _OK,
        },
    ),
    "throughput": Measurement(
        "throughput",
        "One speed test (download then upload) over one uplink, with latency under load.",
        (*COMMON_TAGS, "backend", "server"),
        {
            "download_mbps": FieldSpec(float, "Mbit/s", "download rate (loaded window)", 0, 1e6),
            "upload_mbps": FieldSpec(float, "Mbit/s", "upload rate (loaded window)", 0, 1e6),
            "download_bytes": FieldSpec(int, "bytes", "bytes received in the download", 0, 2**53),
            "upload_bytes": FieldSpec(int, "bytes", "bytes sent in the upload", 0, 2**53),
            "bytes_used": FieldSpec(
                int, "bytes", "test bytes: download + upload (charged to the budget)", 0, 2**53
            ),
            "duration_s": FieldSpec(float, "s", "start of the test to its end", 0, 86_400),
            "idle_latency_ms": FieldSpec(
                float, "ms", "median TCP connect RTT to the server, link idle", 0, 600_000
            ),
            "loaded_latency_ms": FieldSpec(
                float, "ms", "the higher of download_latency_ms and upload_latency_ms", 0, 600_000
            ),
            "download_latency_ms": FieldSpec(
                float, "ms", "median TCP connect RTT during the download", 0, 600_000
            ),
            "upload_latency_ms": FieldSpec(
                float, "ms", "median TCP connect RTT during the upload", 0, 600_000
            ),
            "loaded_latency_increase_ms": FieldSpec(
                float, "ms", "loaded_latency_ms - idle_latency_ms", -600_000, 600_000
            ),
            "latency_samples": FieldSpec(
                int, "samples", "RTT samples taken under load", 0, 1_000_000
            ),
            "server_host": FieldSpec(str, "text", "host of the test server used"),
            "skipped": FieldSpec(int, "0/1", "1 when the test did not run (see skip_reason)", 0, 1),
            "skip_reason": FieldSpec(str, "text", "daily_budget, monthly_budget or quiet_window"),
            "ok": _OK,
        },
    ),
    "upload": Measurement(
        "upload",
        "One photo-sized upload (HTTP POST) to one target over one uplink.",
        (*COMMON_TAGS, "target"),
        {
            "payload_bytes": FieldSpec(int, "bytes", "size of the payload to upload", 0, 2**53),
            "sent_bytes": FieldSpec(int, "bytes", "payload bytes handed to the network", 0, 2**53),
            "connect_ms": FieldSpec(float, "ms", "TCP connect (and TLS)", 0, 600_000),
            "duration_s": FieldSpec(
                float, "s", "first payload byte sent to the answer received", 0, 86_400
            ),
            "rate_mbps": FieldSpec(float, "Mbit/s", "8 * payload_bytes / duration_s", 0, 1e6),
            "status": FieldSpec(int, "code", "HTTP status code", 100, 599),
            "connected": FieldSpec(int, "0/1", "1 when the connection was established", 0, 1),
            "cut_off": FieldSpec(int, "0/1", "1 when a started transfer did not complete", 0, 1),
            "skipped": FieldSpec(int, "0/1", "1 when the upload did not run", 0, 1),
            "skip_reason": FieldSpec(str, "text", "daily_budget, monthly_budget or quiet_window"),
            "ok": _OK,
        },
    ),
    "signal": Measurement(
        "signal",
        "One reading of the cellular radio of one uplink's modem (no network traffic).",
        (*COMMON_TAGS, "access_tech", "band"),
        {
            # Ranges: 3GPP TS 36.133 / 38.133 reporting ranges (extended), 25.133, 45.008.
            "rsrp_dbm": FieldSpec(
                float, "dBm", "LTE/NR reference signal received power", -156, -31
            ),
            "rsrq_db": FieldSpec(float, "dB", "LTE/NR reference signal received quality", -43, 20),
            "sinr_db": FieldSpec(
                float, "dB", "LTE/NR signal to interference and noise ratio", -23, 40
            ),
            "rssi_dbm": FieldSpec(
                float, "dBm", "received signal strength (LTE wideband, GSM carrier)", -120, -20
            ),
            "rscp_dbm": FieldSpec(float, "dBm", "UMTS received signal code power", -120, -24),
            "ecio_db": FieldSpec(float, "dB", "UMTS Ec/Io of the pilot", -24.5, 0),
            "quality_pct": FieldSpec(
                float, "%", "the modem's own signal quality (ModemManager, HiLink bars)", 0, 100
            ),
            # A number, so signal records take the collector's fast path (no string field);
            # lossless: the MCC's first digit is never 0, so every digit of the MNC is kept.
            "plmn": FieldSpec(
                int, "code", "MCC-MNC of the serving network as digits, e.g. 51010", 20_000, 799_999
            ),
            "operator_mismatch": FieldSpec(
                int, "0/1", "1 when the network is not the uplink's configured operator", 0, 1
            ),
            "roaming": FieldSpec(int, "0/1", "1 when registered roaming", 0, 1),
            "cell_id": FieldSpec(int, "id", "serving cell identity (LTE ECI, NR NCI)", 0, 2**36),
            "tac": FieldSpec(int, "code", "tracking area code (LTE/NR)", 0, 2**24 - 1),
            "lac": FieldSpec(int, "code", "location area code (GSM/UMTS)", 0, 2**16 - 1),
            "earfcn": FieldSpec(int, "channel", "downlink channel number (EARFCN)", 0, 3_279_165),
            "ok": _OK,
        },
    ),
    "agent": Measurement(
        "agent",
        "The agent's heartbeat: its own health, the spool and the clock, every minute.",
        ("station", "version"),
        {
            "uptime_s": FieldSpec(float, "s", "seconds since the agent process started", 0, 1e10),
            "spool_records": FieldSpec(int, "records", "records waiting in the spool", 0, 2**53),
            "oldest_unsent_s": FieldSpec(
                float, "s", "age of the oldest record waiting in the spool", 0, 1e10
            ),
            "dropped_total": FieldSpec(
                int, "records", "records evicted at the spool's size cap, ever", 0, 2**53
            ),
            "dead_letters": FieldSpec(
                int, "records", "records the collector rejected, kept apart", 0, 2**53
            ),
            "lost_total": FieldSpec(
                int, "records", "records that could not be spooled at all (disk full)", 0, 2**53
            ),
            "disk_full": FieldSpec(
                int, "0/1", "1 when the last spool write found the disk full", 0, 1
            ),
            "untimed": FieldSpec(
                int, "records", "spooled records waiting for the collector's clock", 0, 2**53
            ),
            "clock_offset_ms": FieldSpec(
                float, "ms", "collector clock minus agent clock, from the last upload", -1e13, 1e13
            ),
            "clock_synced": FieldSpec(
                int, "0/1", "1 when the kernel says the clock is synced", 0, 1
            ),
            "cpu_pct": FieldSpec(
                float, "%", "agent CPU since the last heartbeat, % of one core", 0, 10_000
            ),
            "rss_mb": FieldSpec(float, "MB", "agent resident memory", 0, 1e6),
            "temp_c": FieldSpec(
                float, "°C", "board temperature (Raspberry Pi), when readable", -100, 200
            ),
            "upload_ok": FieldSpec(
                int, "0/1", "1 when the last upload attempt reached the collector", 0, 1
            ),
            "upload_state": FieldSpec(
                int,
                "code",
                "upload state: 0 ok, 1 never sent, 2 dns, 3 refused, 4 unreachable, 5 timeout,"
                " 6 tls, 7 unauthorized (401), 8 forbidden (403), 9 server (5xx), 10 clock,"
                " 11 token_file, 12 other (agent/uploadstate.py KINDS)",
                0,
                63,
            ),
            "upload_failing_s": FieldSpec(
                float, "s", "how long uploads have been failing (0 when they work)", 0, 1e10
            ),
        },
    ),
}

TAG_VALUE_MAX = 256
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|z|[+-]\d\d:\d\d)$")
# Characters no text from an agent (or the registry) may carry: C0 and C1 controls, DEL, and
# the invisible ones that make a text read differently from what it is (bidi controls,
# zero-width characters, the BOM). A regex character class, shared with the collector's fast
# path. Tag values carrying one are refused; terminals get `printable` text.
UNSAFE_CHARS = "\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
# A leading = + - @ makes a spreadsheet read a CSV cell as a formula: such values are refused.
FORMULA_LEAD = "=+-@"
_CONTROL_RE = re.compile(f"[{UNSAFE_CHARS}]")


def printable(text: str) -> str:
    """`text` with every unsafe character shown as an escape (\\u202e), for a terminal."""
    return _CONTROL_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def new_id() -> str:
    """A fresh record id: 32 lowercase hex digits (a UUID4)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """RFC 3339 UTC with microseconds and a Z suffix."""
    if t.tzinfo is None:
        raise ValueError("naive datetime; measured times must be timezone-aware UTC")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time with an explicit offset; returns an aware UTC datetime."""
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise ValueError(f"got {text!r}, expected an RFC 3339 time such as 2026-11-22T04:13:00Z")
    try:
        t = datetime.fromisoformat(text)  # Python >= 3.11 reads Z and offsets
    except ValueError:
        raise ValueError(f"got {text!r}, expected an RFC 3339 time") from None
    if t.tzinfo is None:
        raise ValueError(f"got {text!r}, expected a time with Z or an explicit offset")
    return t.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """What is needed to correct the measured time later (see docs/data-model.md).

    boot_id: the kernel's boot id when the record was made; monotonic_ns: the
    CLOCK_MONOTONIC reading at measured_at; synced: whether the system clock
    said it was synchronised (1), not (0), or unknown (None).
    """

    boot_id: str | None = None
    monotonic_ns: int | None = None
    synced: int | None = None
    # Where measured_at comes from: "system" (the system clock, synchronised), "collector"
    # (boot_id's monotonic clock against the collector's clock), "unknown" (neither: the
    # collector refuses the record rather than store it at a wrong time); None: not stated.
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "boot_id": self.boot_id,
            "monotonic_ns": self.monotonic_ns,
            "synced": self.synced,
        }
        if self.source is not None:
            d["source"] = self.source
        return d


TIME_SOURCES = ("system", "collector", "unknown")
SEQ_MAX = 2**63 - 1
BOOT_ID_MAX = 64

# The keys of the wire objects, stated once: the decoders below, the collector's fast path
# (its msgspec structs are checked against these at import), the OpenAPI schema
# (envelope_json_schema) and the encoders all follow them.
RECORD_REQUIRED_KEYS = frozenset({"id", "kind", "measured_at", "tags", "fields"})
RECORD_KEYS = RECORD_REQUIRED_KEYS | {"error", "clock", "seq"}
CLOCK_KEYS = frozenset({"boot_id", "monotonic_ns", "synced", "source"})
ENVELOPE_KEYS = frozenset({"schema", "agent", "sent_at", "records"})
AGENT_KEYS = frozenset({"station", "version", "boot_id"})


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    measured_at: datetime
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    error: str | None = None
    id: str = field(default_factory=new_id)
    clock: ClockInfo | None = None
    # The agent's spool sequence number, set when the record is uploaded. The collector
    # puts seq mod 1000 in the nanoseconds of the point's time, so two records of one series
    # measured in the same microsecond (a clock stepped back) do not overwrite each other.
    seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "measured_at": format_time(self.measured_at),
            "tags": dict(self.tags),
            "fields": dict(self.fields),
            "error": self.error,
        }
        if self.clock is not None:
            d["clock"] = self.clock.to_dict()
        if self.seq is not None:
            d["seq"] = self.seq
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Any, path: str = "") -> Record:
        """Decode and validate one record; raises ContractError naming the element."""
        p = f"{path}." if path else ""
        if not isinstance(d, dict):
            raise ContractError(path, f"got {type(d).__name__}, expected an object")
        unknown = sorted(set(d) - RECORD_KEYS)
        if unknown:
            raise ContractError(f"{p}{unknown[0]}", "unknown key")
        for key in ("id", "kind", "measured_at", "tags", "fields"):  # RECORD_REQUIRED_KEYS
            if key not in d:
                raise ContractError(f"{p}{key}", "missing")
        rid = d["id"]
        if not isinstance(rid, str) or not _ID_RE.match(rid):
            raise ContractError(f"{p}id", f"got {rid!r}, expected 32 lowercase hex digits")
        kind = d["kind"]
        spec = MEASUREMENTS.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise ContractError(
                f"{p}kind", f"got {kind!r}, expected one of {', '.join(sorted(MEASUREMENTS))}"
            )
        try:
            measured_at = parse_time(d["measured_at"])
        except ValueError as exc:
            raise ContractError(f"{p}measured_at", str(exc)) from None
        tags = _decode_tags(d["tags"], spec, f"{p}tags")
        fields = _decode_fields(d["fields"], spec, f"{p}fields")
        error = d.get("error")
        if error is not None and error not in ErrorCode.__members__.values():
            raise ContractError(f"{p}error", f"got {error!r}, expected a known error code or null")
        clock = _decode_clock(d.get("clock"), f"{p}clock")
        seq = d.get("seq")
        if seq is not None and (type(seq) is not int or not 0 <= seq <= SEQ_MAX):
            raise ContractError(f"{p}seq", f"got {seq!r}, expected an integer 0..2**63-1")
        return cls(kind, measured_at, tags, fields, error, rid, clock, seq)

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        return cls.from_dict(json.loads(text))


def _decode_tags(raw: Any, spec: Measurement, path: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ContractError(path, f"got {type(raw).__name__}, expected an object")
    for key, value in raw.items():
        if key not in spec.tags:
            raise ContractError(
                f"{path}.{key}", f"unknown tag, expected one of {', '.join(spec.tags)}"
            )
        if not isinstance(value, str) or not value or len(value) > TAG_VALUE_MAX:
            raise ContractError(
                f"{path}.{key}", f"got {value!r}, expected a string of 1..{TAG_VALUE_MAX} chars"
            )
        if _CONTROL_RE.search(value):
            raise ContractError(
                f"{path}.{key}",
                f"got {printable(value)!r}, expected no control, bidi or zero-width characters",
            )
        if value[0] in FORMULA_LEAD:
            raise ContractError(
                f"{path}.{key}",
                f"got {value!r}, expected no leading =, +, - or @ (a spreadsheet formula)",
            )
    for tag in spec.tags:
        if tag not in raw:
            raise ContractError(f"{path}.{tag}", f"missing, {spec.name} records carry it")
    return dict(raw)


def _decode_fields(raw: Any, spec: Measurement, path: str) -> dict[str, FieldValue]:
    if not isinstance(raw, dict):
        raise ContractError(path, f"got {type(raw).__name__}, expected an object")
    out: dict[str, FieldValue] = {}
    specs = spec.fields
    for key, value in raw.items():
        fs = specs.get(key)
        if fs is None:
            raise ContractError(f"{path}.{key}", f"unknown field of {spec.name}")
        if value is None:
            continue  # "not measured": absent, never 0
        vt = type(value)
        # The common cases first: a float for a float field, an int for a number field.
        if vt is float and fs.type is float:
            if not math.isfinite(value):
                raise ContractError(f"{path}.{key}", f"got {value!r}, expected a finite number")
        elif vt is int and fs.type is not str:
            value = float(value) if fs.type is float else value
        else:
            value = _convert_field(value, fs, f"{path}.{key}")
            if fs.type is str:
                out[key] = value
                continue
        lo, hi = fs.minimum, fs.maximum
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ContractError(
                f"{path}.{key}", f"got {value!r}, expected {lo:g}..{hi:g} {fs.unit}"
            )
        out[key] = value
    return out


def _convert_field(value: Any, fs: FieldSpec, path: str) -> FieldValue:
    """The uncommon cases of _decode_fields: strings, floats for int fields, bad types."""
    if fs.type is str:
        if not isinstance(value, str):
            raise ContractError(path, f"got {value!r}, expected a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(path, f"got {value!r}, expected a number in {fs.unit}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ContractError(path, f"got {value!r}, expected a finite number")
    if fs.type is int:
        if isinstance(value, float) and not value.is_integer():
            raise ContractError(path, f"got {value!r}, expected an integer")
        return int(value)
    return float(value)


def _decode_clock(raw: Any, path: str) -> ClockInfo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - CLOCK_KEYS:
        raise ContractError(path, "expected an object with boot_id, monotonic_ns, synced, source")
    boot_id, mono, synced = raw.get("boot_id"), raw.get("monotonic_ns"), raw.get("synced")
    source = raw.get("source")
    if boot_id is not None and (not isinstance(boot_id, str) or len(boot_id) > BOOT_ID_MAX):
        raise ContractError(f"{path}.boot_id", f"got {boot_id!r}, expected a string")
    if mono is not None and (isinstance(mono, bool) or not isinstance(mono, int) or mono < 0):
        raise ContractError(f"{path}.monotonic_ns", f"got {mono!r}, expected an integer >= 0")
    if synced not in (None, 0, 1) or isinstance(synced, bool):
        raise ContractError(f"{path}.synced", f"got {synced!r}, expected 0, 1 or null")
    if source is not None and source not in TIME_SOURCES:
        raise ContractError(
            f"{path}.source", f"got {source!r}, expected one of {', '.join(TIME_SOURCES)} or null"
        )
    return ClockInfo(boot_id, mono, synced, source)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One upload: who sends, when, and a batch of records."""

    station: str
    agent_version: str
    sent_at: datetime
    records: tuple[Record, ...]
    schema: int = SCHEMA_VERSION
    boot_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "agent": {
                "station": self.station,
                "version": self.agent_version,
                "boot_id": self.boot_id,
            },
            "sent_at": format_time(self.sent_at),
            "records": [r.to_dict() for r in self.records],
        }


def encode_envelope(env: Envelope) -> bytes:
    return encode_envelope_records(
        env.station,
        env.agent_version,
        env.sent_at,
        [r.to_json() for r in env.records],
        env.boot_id,
    )


def encode_envelope_records(
    station: str,
    agent_version: str,
    sent_at: datetime,
    record_json: Sequence[str],
    boot_id: str | None = None,
) -> bytes:
    """The envelope around records already encoded by Record.to_json, as they are (the
    agent's spool keeps each record's JSON; re-encoding a batch of 500 would cost more
    than the upload). The one envelope writer: encode_envelope uses it too."""
    head = json.dumps(
        {
            "schema": SCHEMA_VERSION,
            "agent": {"station": station, "version": agent_version, "boot_id": boot_id},
            "sent_at": format_time(sent_at),
        },
        separators=(",", ":"),
        allow_nan=False,
    )
    return (head[:-1] + ',"records":[' + ",".join(record_json) + "]}").encode()


def decode_envelope(data: bytes | str) -> Envelope:
    """Decode an envelope; raises ContractError naming the first bad element.

    Records are validated one by one: a collector that wants to accept the good
    records of a batch and reject the bad ones uses decode_envelope_lenient.
    """
    env, bad = decode_envelope_lenient(data)
    if bad:
        raise bad[0][1]
    return env


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """An envelope whose header is valid and whose records are not decoded yet."""

    station: str
    agent_version: str
    sent_at: datetime
    raw_records: list[Any]
    schema: int = SCHEMA_VERSION
    boot_id: str | None = None


def decode_envelope_header(d: Any) -> EnvelopeHeader:
    """Check an envelope's header (already parsed from JSON); raises ContractError."""
    if not isinstance(d, dict):
        raise ContractError("", "expected a JSON object")
    schema = d.get("schema")
    if type(schema) is not int or schema != SCHEMA_VERSION:  # not True, not 1.0
        raise ContractError("schema", f"got {schema!r}, expected {SCHEMA_VERSION}")
    agent = d.get("agent")
    if not isinstance(agent, dict):
        raise ContractError("agent", "expected an object with station and version")
    station, version = agent.get("station"), agent.get("version")
    if not isinstance(station, str) or not station:
        raise ContractError("agent.station", f"got {station!r}, expected a station id")
    if not isinstance(version, str) or not version:
        raise ContractError("agent.version", f"got {version!r}, expected a version string")
    boot_id = agent.get("boot_id")
    try:
        sent_at = parse_time(d.get("sent_at"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ContractError("sent_at", str(exc)) from None
    raw_records = d.get("records")
    if not isinstance(raw_records, list):
        raise ContractError("records", "expected a list")
    return EnvelopeHeader(
        station,
        version,
        sent_at,
        raw_records,
        schema,
        boot_id if isinstance(boot_id, str) else None,
    )


def decode_envelope_lenient(
    data: bytes | str,
    loads: Callable[[bytes | str], Any] = json.loads,
) -> tuple[Envelope, list[tuple[str | None, ContractError]]]:
    """Decode an envelope, keeping the valid records and listing the invalid ones.

    Returns the envelope (with valid records only) and (record id or None,
    error) for each record that failed. The envelope header itself must be valid.
    """
    try:
        d = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError("", f"not JSON: {exc}") from None
    h = decode_envelope_header(d)
    good: list[Record] = []
    bad: list[tuple[str | None, ContractError]] = []
    for i, raw in enumerate(h.raw_records):
        try:
            good.append(Record.from_dict(raw, f"records[{i}]"))
        except ContractError as exc:
            bad.append((record_id_of(raw), exc))
    env = Envelope(h.station, h.agent_version, h.sent_at, tuple(good), h.schema, h.boot_id)
    return env, bad


def record_id_of(raw: Any) -> str | None:
    """The id of a raw record that may be invalid, when it has a string one."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    return rid if isinstance(rid, str) else None


_JSON_TYPES = {int: "integer", float: "number", str: "string"}


def _record_schema(spec: Measurement) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, fs in spec.fields.items():
        f: dict[str, Any] = {
            "type": _JSON_TYPES[fs.type],
            "description": f"{fs.description} ({fs.unit})",
        }
        if fs.minimum is not None:
            f["minimum"] = fs.minimum
        if fs.maximum is not None:
            f["maximum"] = fs.maximum
        fields[name] = f
    tag = {"type": "string", "minLength": 1, "maxLength": TAG_VALUE_MAX}
    return {
        "type": "object",
        "description": spec.description,
        "required": sorted(RECORD_REQUIRED_KEYS),
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": _ID_RE.pattern},
            "kind": {"const": spec.name},
            "measured_at": {"type": "string", "format": "date-time"},
            "tags": {
                "type": "object",
                "required": list(spec.tags),
                "additionalProperties": False,
                "properties": {t: tag for t in spec.tags},
            },
            "fields": {"type": "object", "additionalProperties": False, "properties": fields},
            "error": {"enum": [*(e.value for e in ErrorCode), None]},
            "clock": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "boot_id": {"type": ["string", "null"], "maxLength": BOOT_ID_MAX},
                    "monotonic_ns": {"type": ["integer", "null"], "minimum": 0},
                    "synced": {"enum": [0, 1, None]},
                    "source": {"enum": [*TIME_SOURCES, None]},
                },
            },
            "seq": {"type": ["integer", "null"], "minimum": 0, "maximum": SEQ_MAX},
        },
    }


def envelope_json_schema() -> dict[str, Any]:
    """The envelope as a JSON Schema (the collector's OpenAPI document), built from the
    same key sets and measurement table the decoders use."""
    return {
        "type": "object",
        "required": sorted(ENVELOPE_KEYS),
        "properties": {
            "schema": {"type": "integer", "enum": [SCHEMA_VERSION]},
            "agent": {
                "type": "object",
                "required": ["station", "version"],
                "properties": {
                    "station": {"type": "string"},
                    "version": {"type": "string"},
                    "boot_id": {"type": ["string", "null"]},
                },
            },
            "sent_at": {"type": "string", "format": "date-time"},
            "records": {
                "type": "array",
                "items": {"oneOf": [_record_schema(m) for m in MEASUREMENTS.values()]},
            },
        },
    }
