"""The ingest fast path: the envelopes agents send, checked and encoded in one pass.

The reference is Record.from_dict (validation) and record_to_point (encoding); the fast path
gives the same answer for every input, about three times faster. For the records agents
actually send (canonical times, plain tags, numbers in range) it checks and encodes the raw
JSON (or msgspec-decoded) record with per-kind tables built once and each series' escaped
tag set cached; anything else returns None, and the caller takes the reference path for that
record, so every error message and every unusual value is handled by the reference code.
tests/unit/test_fastpath.py compares the two on generated inputs.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson

from agent.contract.record import (
    CLOCK_KEYS,
    FORMULA_LEAD,
    MEASUREMENTS,
    RECORD_KEYS,
    RECORD_REQUIRED_KEYS,
    SEQ_MAX,
    TAG_VALUE_MAX,
    TIME_SOURCES,
    UNSAFE_CHARS,
    ClockInfo,
    ErrorCode,
    Measurement,
    Record,
)
from collector.admission import RTT_FIELDS
from collector.lineproto import escape_field_key, escape_tag, series_key

_ERROR_CODES = frozenset(e.value for e in ErrorCode)
_TIME_SOURCES = frozenset(TIME_SOURCES)
_hex32 = re.compile(r"[0-9a-f]{32}").fullmatch
# What agents send: format_time()'s output. Other RFC 3339 forms take the reference path.
_canonical_time = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
).fullmatch
_no_control = re.compile(f"[^{UNSAFE_CHARS}]+").fullmatch
_FLOAT, _INT = 0, 1
_MAX_CACHED_SERIES = 500_000


# Record and ClockInfo are frozen slots dataclasses, whose __init__ sets each field through
# object.__setattr__ (their own __setattr__ refuses). The fast path builds them by setting the
# slots directly: the same objects as Record(...) and ClockInfo(...), in half the time.
_RECORD_SLOTS = ("kind", "measured_at", "tags", "fields", "error", "id", "clock", "seq")
_CLOCK_SLOTS = ("boot_id", "monotonic_ns", "synced", "source")
assert tuple(f.name for f in fields(Record)) == _RECORD_SLOTS
assert tuple(f.name for f in fields(ClockInfo)) == _CLOCK_SLOTS
_r_kind, _r_at, _r_tags, _r_fields, _r_error, _r_id, _r_clock, _r_seq = (
    getattr(Record, n).__set__ for n in _RECORD_SLOTS
)
_c_boot, _c_mono, _c_synced, _c_source = (getattr(ClockInfo, n).__set__ for n in _CLOCK_SLOTS)
_new = object.__new__
_dumps = orjson.dumps


def _new_record(
    kind: str,
    measured_at: datetime,
    tags: dict[str, str],
    fields: dict[str, Any],
    error: str | None,
    rid: str,
    clock: ClockInfo | None,
    seq: int | None,
) -> Record:
    r: Record = _new(Record)
    _r_kind(r, kind)
    _r_at(r, measured_at)
    _r_tags(r, tags)
    _r_fields(r, fields)
    _r_error(r, error)
    _r_id(r, rid)
    _r_clock(r, clock)
    _r_seq(r, seq)
    return r


def _new_clock(
    boot: str | None, mono: int | None, synced: int | None, source: str | None
) -> ClockInfo:
    c: ClockInfo = _new(ClockInfo)
    _c_boot(c, boot)
    _c_mono(c, mono)
    _c_synced(c, synced)
    _c_source(c, source)
    return c


@dataclass(frozen=True)
class _KindTable:
    name: str
    tag_keys: frozenset[str]
    tag_values: Callable[[dict[str, Any]], tuple[str, ...]]
    fields: dict[str, tuple[int, float, float, str]]  # name -> (type, lo, hi, "name=")


def _kind_table(spec: Measurement) -> _KindTable | None:
    if len(spec.tags) < 2 or set(spec.tags) & (set(spec.fields) | {"province", "regency"}):
        return None  # not worth a special case: the reference path handles it
    fields: dict[str, tuple[int, float, float, str]] = {}
    for name, fs in spec.fields.items():
        if fs.type is str or name in ("id", "error"):
            return None
        lo = -math.inf if fs.minimum is None else fs.minimum
        hi = math.inf if fs.maximum is None else fs.maximum
        if fs.type is int:  # line protocol integers are int64
            lo, hi = max(lo, -(2**63)), min(hi, 2**63 - 1)
        fields[name] = (_FLOAT if fs.type is float else _INT, lo, hi, escape_field_key(name) + "=")
    return _KindTable(spec.name, frozenset(spec.tags), operator.itemgetter(*spec.tags), fields)


_TABLES = {k: t for k, spec in MEASUREMENTS.items() if (t := _kind_table(spec)) is not None}

# What decode() accepts, as msgspec types: FastPath.decode_envelope() checks whole envelopes
# with them. Patterns end in \Z, not $ (which also matches before a final newline), so they
# mean what re.fullmatch means in decode().
_Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]
_Time = Annotated[
    str,
    msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z"),
]


class _WireClock(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    boot_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    monotonic_ns: Annotated[int, msgspec.Meta(ge=0)] | None = None
    synced: Literal[0, 1] | None = None
    source: Literal["system", "collector", "unknown"] | None = None


class _WireRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: _Hex32
    kind: str
    measured_at: _Time
    tags: dict[str, str]
    fields: dict[str, int | float]
    error: str | None = None
    clock: _WireClock | None = None
    seq: Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)] | None = None


class _WireEnvelope(msgspec.Struct, gc=False):
    records: list[_WireRecord]
    schema: Any = None  # the header is judged by decode_envelope_header(), as without msgspec
    agent: Any = None
    sent_at: Any = None


assert set(_WireClock.__struct_fields__) == CLOCK_KEYS
assert set(_WireRecord.__struct_fields__) == RECORD_KEYS
assert set(_TIME_SOURCES) == {"system", "collector", "unknown"}
_decode_wire = msgspec.json.Decoder(_WireEnvelope).decode


class _WireCount(msgspec.Struct, gc=False):
    records: list[msgspec.Raw]


_count_wire = msgspec.json.Decoder(_WireCount).decode


def count_records(body: bytes) -> int | None:
    """How many records an envelope's body holds, found without decoding any of them: the
    JSON is only scanned (in C, a fiftieth of decode_envelope()'s time), so the per-token
    records limit is checked before a refused request costs a decode. None when the body
    is not a JSON object with a "records" list (the full decode then words the error)."""
    try:
        return len(_count_wire(body).records)
    except (msgspec.DecodeError, ValueError):
        return None


class Hit(NamedTuple):
    """What the fast path makes of a record."""

    record: Record
    tag_values: tuple[str, ...]  # in the order of the measurement's tags
    encoded_fields: str  # the line protocol of its fields and id
    plausible: bool  # its values are known to pass plausibility(); False: let it decide


class FieldForm(NamedTuple):
    """How to check and encode one kind's fields when they come with given keys in a given
    order."""

    types: tuple[type, ...]
    lows: tuple[float, ...]  # lower limits
    highs: tuple[float, ...]  # upper limits
    template: str  # the %-template of their line protocol, for the values
    text_template: str  # the same, for the values' text
    plausible: Callable[[tuple[Any, ...]], bool] | None  # None: the kind has no rule


def _plausible(kind: str, keys: tuple[str, ...]) -> Callable[[tuple[Any, ...]], bool] | None:
    """plausibility() for the fast path: field values in the order of `keys`, their types
    already checked (exactly int or float, finite, in range) -> True when plausibility()
    would find nothing. False means "let plausibility() look" (it words the reason)."""
    if kind != "icmp":
        return None  # plausibility() has no rule for other kinds
    at = {k: i for i, k in enumerate(keys)}
    rtts = tuple(at[n] for n in RTT_FIELDS if n in at)
    i_timeout, i_sent, i_received, i_loss = (
        at.get(n) for n in ("timeout_ms", "sent", "received", "loss_pct")
    )
    rtt_of = operator.itemgetter(*rtts) if len(rtts) > 1 else None

    def plausible(v: tuple[Any, ...]) -> bool:
        if i_timeout is not None and rtts:
            highest = max(rtt_of(v)) if rtt_of is not None else v[rtts[0]]
            if highest > v[i_timeout]:
                return False
        if i_sent is not None and i_received is not None:
            sent, received = v[i_sent], v[i_received]
            if received > sent:
                return False
            if i_loss is not None and sent > 0:
                return bool(abs(v[i_loss] - 100.0 * (sent - received) / sent) <= 0.01)
        return True

    return plausible


def _values_text(values: tuple[Any, ...]) -> tuple[str, ...] | None:
    """Each value's line-protocol text (ints without their "i"), or None when repr() must
    write them. The values are ints and finite floats (the fast path checked); orjson
    writes a float as repr() does, the shortest text that parses back to the same double,
    except in layout: repr() switches to an exponent below 1e-4 and from 1e16, where orjson
    writes "0.00001" or "1e16". Those (and any text with an exponent or four zeros after
    a point, which includes them) are left to repr(). At a dozen fields a record this is
    half the time of repr(); tests/unit/test_fastpath.py checks it against repr()."""
    text = _dumps(values)
    if b"e" in text or b".0000" in text:
        return None
    return tuple(text[1:-1].decode().split(","))


class FastPath:
    """Per-process caches of the fast path (series already checked and their line prefix)."""

    def __init__(self) -> None:
        self._plain_tags: set[tuple[str, tuple[str, ...]]] = set()
        self._prefixes: dict[tuple[str, tuple[str, ...], str, str], str] = {}
        self._forms: dict[tuple[str, tuple[str, ...]], FieldForm] = {}

    def decode_envelope(self, body: bytes) -> dict[str, Any] | None:
        """The whole envelope in one pass: the document decode_envelope_header() reads, with
        every record decoded (its "records" are Hits, for prepare_decoded()), or None
        when any part of it is unusual (then the caller parses the JSON and lets decode() or
        the reference path judge record by record).

        msgspec checks, in C, everything decode() checks in Python about the record's
        keys and the types of its values, the id and time formats and the clock; what is
        left is per kind (tags and fields), as decode() does it."""
        try:
            env = _decode_wire(body)
        except (msgspec.DecodeError, ValueError):
            return None
        hits: list[Hit] = []
        for w in env.records:
            error = w.error
            table = _TABLES.get(w.kind)
            if table is None or (error is not None and error not in _ERROR_CODES):
                return None
            c = w.clock
            info = None if c is None else _new_clock(c.boot_id, c.monotonic_ns, c.synced, c.source)
            hit = self._typed(table, w.id, w.measured_at, w.tags, w.fields, error, info, w.seq)
            if hit is None:
                return None
            hits.append(hit)
        return {"schema": env.schema, "agent": env.agent, "sent_at": env.sent_at, "records": hits}

    def decode(self, d: Any) -> Hit | None:
        """(record, its tag values, its encoded fields, whether its values are known to be
        plausible) when the record is valid and usual, None when the reference path must
        decide (it may still be valid). Not known plausible: plausibility() decides."""
        if type(d) is not dict or not (RECORD_REQUIRED_KEYS <= d.keys() <= RECORD_KEYS):
            return None
        rid, kind, at, tags, raw_fields = (
            d["id"], d["kind"], d["measured_at"], d["tags"], d["fields"]
        )  # fmt: skip
        table = _TABLES.get(kind) if type(kind) is str else None
        if (
            table is None
            or type(rid) is not str
            or not _hex32(rid)
            or type(at) is not str
            or not _canonical_time(at)
            or type(tags) is not dict
            or type(raw_fields) is not dict
        ):
            return None
        error = d.get("error")
        if error is not None and (type(error) is not str or error not in _ERROR_CODES):
            return None
        clock = d.get("clock")
        info = None
        if clock is not None:
            if type(clock) is not dict or not clock.keys() <= CLOCK_KEYS:
                return None
            boot, mono = clock.get("boot_id"), clock.get("monotonic_ns")
            synced, source = clock.get("synced"), clock.get("source")
            if (
                (boot is not None and (type(boot) is not str or len(boot) > 64))
                or (mono is not None and (type(mono) is not int or mono < 0))
                or (synced is not None and (type(synced) is not int or synced not in (0, 1)))
                or (source is not None and source not in _TIME_SOURCES)
            ):
                return None
            info = _new_clock(boot, mono, synced, source)
        seq = d.get("seq")
        if seq is not None and (type(seq) is not int or not 0 <= seq <= SEQ_MAX):
            return None
        return self._typed(table, rid, at, tags, raw_fields, error, info, seq)

    def _typed(
        self,
        table: _KindTable,
        rid: str,
        at: str,
        tags: dict[str, Any],
        raw_fields: dict[str, Any],
        error: str | None,
        info: ClockInfo | None,
        seq: int | None,
    ) -> Hit | None:
        """decode() once the record's shape is known good: its kind's tags and fields."""
        if tags.keys() != table.tag_keys:
            return None
        kind = table.name
        values = table.tag_values(tags)
        try:
            known = (kind, values) in self._plain_tags
        except TypeError:  # a list or an object as a tag value
            return None
        if not known and not self._check_tags(kind, values):
            return None
        try:
            measured_at = datetime.fromisoformat(at)
        except ValueError:
            return None
        keys = tuple(raw_fields)
        form = self._forms.get((kind, keys))
        if form is None:
            form = self._form(table, keys)
            if form is None:
                return None
        types, los, his, template, text_template, plausible = form
        values_f = tuple(raw_fields.values())
        # One type per key (a float field holding an int, or a None, takes the reference
        # path); comparisons are False for NaN and beyond the limits for the infinities.
        if (
            tuple(map(type, values_f)) != types
            or not all(map(operator.le, los, values_f))
            or not all(map(operator.le, values_f, his))
        ):
            return None
        record = _new_record(kind, measured_at, tags, raw_fields, error, rid, info, seq)
        if values_f:
            text = _values_text(values_f)
            encoded = (template % values_f if text is None else text_template % text) + ","
        else:
            encoded = ""  # the id is the point's only field
        if error is None:
            encoded = f'{encoded}id="{rid}"'
        else:
            encoded = f'{encoded}id="{rid}",error="{error}"'
        return Hit(record, values, encoded, plausible is None or plausible(values_f))

    def _form(self, table: _KindTable, keys: tuple[str, ...]) -> FieldForm | None:
        """How to check and encode fields that come with these keys in this order."""
        specs = [table.fields.get(k) for k in keys]
        if any(spec is None for spec in specs):
            return None
        types: list[type] = []
        los: list[float] = []
        his: list[float] = []
        parts: list[str] = []
        for spec in specs:
            assert spec is not None
            kind_of, lo, hi, prefix = spec
            types.append(float if kind_of == _FLOAT else int)
            los.append(lo)
            his.append(hi)
            # %r of a float is repr(): the shortest text that parses back to the same double
            parts.append(prefix.replace("%", "%%") + ("%r" if kind_of == _FLOAT else "%di"))
        if len(self._forms) >= 10_000:
            self._forms.clear()
        template = ",".join(parts)
        text_template = template.replace("%r", "%s").replace("%di", "%si")
        plausible = _plausible(table.name, keys)
        form = FieldForm(tuple(types), tuple(los), tuple(his), template, text_template, plausible)
        self._forms[(table.name, keys)] = form
        return form

    def _check_tags(self, kind: str, values: tuple[str, ...]) -> bool:
        for v in values:
            if type(v) is not str or not 0 < len(v) <= TAG_VALUE_MAX or not _no_control(v):
                return False
            if v[0] in FORMULA_LEAD:
                return False
            try:
                escape_tag(v)
            except (ValueError, TypeError):
                return False
        if len(self._plain_tags) >= _MAX_CACHED_SERIES:
            self._plain_tags.clear()
        self._plain_tags.add((kind, values))
        return True

    def prefix(self, record: Record, values: tuple[str, ...], province: str, regency: str) -> str:
        key = (record.kind, values, province, regency)
        p = self._prefixes.get(key)
        if p is None:
            if len(self._prefixes) >= _MAX_CACHED_SERIES:
                self._prefixes.clear()
            p = self._prefixes[key] = series_key(
                record.kind, {**record.tags, "province": province, "regency": regency}
            )
        return p
