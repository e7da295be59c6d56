"""InfluxDB line protocol encoding (stdlib only).

One point per line: ``measurement,tag=value field=value time_ns``. Every name and value that
is encoded here reaches the database verbatim or is refused with ValueError; nothing is
silently altered. tests/integration/test_sinks.py proves it against a real InfluxDB 1.6.7.

What is refused, and why (the API validates its inputs too, but the encoder is safe alone):

- ``\\n`` and ``\\r`` anywhere, in names, tag values and string field values. The line
  protocol reference says newlines are not supported in tag or field values; InfluxDB 1.x
  happens to accept a raw newline inside a quoted string, but a parser that splits lines
  first would read the rest as a new point. Refusing them means no input can start a line.
- In measurement names, tag keys, tag values and field keys (the "identifiers"): a backslash
  at the end or before ``\\``, ``,``, ``=``, space or ``"``. Line protocol has no escape for
  a backslash there: 1.x reads ``a\\`` followed by a space as an escaped space, keeps ``\\\\``
  as two characters and turns ``\\=`` into ``=`` (checked on 1.6.7), and no portable way
  to write these is documented. Any other backslash (``C:\\temp``) is stored as it is.
- Empty identifiers, a measurement starting with ``#`` (the whole line would be a comment,
  silently dropped), and strings with lone surrogates (not encodable as UTF-8).
- Non-finite floats, integers outside int64, booleans (send 0/1 ints: that is the contract),
  a key that is both a tag and a field (ambiguous in InfluxQL, an error on InfluxDB 3).

String field values escape ``\\`` and ``"``, which every version undoes, so any backslash and
quote in a string field round-trips.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from agent.contract.record import Record

FieldValue = int | float | str

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Characters a backslash may not precede in an identifier (see the module docstring).
_AFTER_BACKSLASH = frozenset('\\,= "')

# Names and values made only of these need neither escaping nor checks (the common case:
# station codes, operator names, field keys); anything else takes the careful path.
_plain = re.compile(r"[0-9A-Za-z_.:/@+-]+").fullmatch

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _check_text(s: str, what: str) -> None:
    if not isinstance(s, str):
        raise TypeError(f"{what}: got {type(s).__name__}, expected str")
    if "\n" in s or "\r" in s:
        raise ValueError(f"{what}: got {s!r}, line protocol cannot carry a newline")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what}: got {s!r}, not encodable as UTF-8") from None


def _check_identifier(s: str, what: str) -> None:
    _check_text(s, what)
    if not s:
        raise ValueError(f"{what}: empty")
    i = s.find("\\")
    while i != -1:
        if i + 1 == len(s) or s[i + 1] in _AFTER_BACKSLASH:
            raise ValueError(
                f'{what}: got {s!r}, a backslash at the end or before \\ , = space or " '
                "cannot be stored verbatim"
            )
        i = s.find("\\", i + 1)


def escape_measurement(name: str) -> str:
    """Escape a measurement name (comma and space); raises ValueError when it can't be stored."""
    if type(name) is str and _plain(name):
        return name
    _check_identifier(name, "measurement")
    if name.startswith("#"):
        raise ValueError(f"measurement: got {name!r}, a line starting with # is a comment")
    return name.translate(_MEASUREMENT_ESCAPES)


@functools.lru_cache(maxsize=65536)  # station ids, target names and keys repeat
def escape_tag(s: str) -> str:
    """Escape a tag key or tag value (comma, equals, space)."""
    if type(s) is str and _plain(s):
        return s
    _check_identifier(s, "tag")
    return s.translate(_KEY_ESCAPES)


@functools.lru_cache(maxsize=1024)
def escape_field_key(key: str) -> str:
    """Escape a field key (comma, equals, space)."""
    if type(key) is str and _plain(key):
        return key
    _check_identifier(key, "field key")
    return key.translate(_KEY_ESCAPES)


def format_field_value(value: FieldValue) -> str:
    """int -> ``123i``; float -> shortest repr that round-trips; str -> quoted and escaped."""
    if isinstance(value, float) and math.isfinite(value):  # the common cases first
        return repr(value)  # shortest text that parses back to the same double
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return f"{value}i"
    if isinstance(value, bool):
        raise TypeError(f"field value: got {value!r}, booleans are sent as 0/1 integers")
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"field value: got {value}, outside the int64 range")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"field value: got {value!r}, expected a finite number")
        return repr(value)  # shortest text that parses back to the same double
    if isinstance(value, str):
        _check_text(value, "string field value")
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    raise TypeError(f"field value: got {type(value).__name__}, expected int, float or str")


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue | None],
    time_ns: int,
) -> str:
    """One line of line protocol, without the trailing newline.

    Tags are sorted by key (InfluxDB's recommendation); tags with an empty value are
    dropped (line protocol has no empty tag value: absent is the same thing). Fields whose
    value is None are absent ("not measured"); at least one field must remain.
    """
    if isinstance(time_ns, bool) or not isinstance(time_ns, int):
        raise TypeError(f"time_ns: got {type(time_ns).__name__}, expected int")
    if not _INT64_MIN < time_ns < _INT64_MAX:
        raise ValueError(f"time_ns: got {time_ns}, outside the int64 range")
    for key in tags:
        if key in fields and tags[key] != "":
            raise ValueError(f"{key!r} is both a tag and a field")
    field_set = [
        f"{escape_field_key(k)}={format_field_value(v)}" for k, v in fields.items() if v is not None
    ]
    if not field_set:
        raise ValueError(f"{measurement}: a point needs at least one field")
    return f"{series_key(measurement, tags)} {','.join(field_set)} {time_ns}"


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """The part of a line before the fields: the measurement and its tags, sorted by key
    (InfluxDB's recommendation), escaped; tags with an empty value are dropped."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value != "":
            parts.append(f"{escape_tag(key)}={escape_tag(value)}")
    return ",".join(parts)


def time_ns(t: datetime) -> int:
    """Nanoseconds since the epoch, exactly (integer arithmetic, no float rounding)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime; measured times must be timezone-aware UTC")
    d = t - _EPOCH
    return ((d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds) * 1_000


def record_to_point(record: Record, extra_tags: Mapping[str, str]) -> str:
    """The line for one record: measurement = kind, tags = record tags + extra_tags, fields =
    record fields + ``id`` + ``error``; time = measured_at in ns, plus ``seq`` mod 1000 (the
    agent's spool sequence number: see docs/data-model.md, "Idempotency").

    extra_tags win over the record's tags: the collector puts in what it knows (region from
    its registry) and that is never overridden by a payload.

    The record id is a string field ``id`` so an acknowledged record can be found and
    counted in the database. Never a tag: one value per point would be one series per point.

    The error code is a string field ``error`` (absent on success), not a tag. Codes are
    bounded, so a tag would be tolerable, but it would split one link's history into a series
    per error code seen (series are the memory cost of InfluxDB 1.x at 100k stations), and
    per-station queries would have to merge them again. InfluxQL filters on it
    (``WHERE "error" = 'timeout'``); ``ok`` = 0 carries the failure for numeric-only stores
    such as VictoriaMetrics, which turns string fields into 0.
    """
    for key in ("id", "error"):
        if key in record.fields:
            raise ValueError(f"{record.kind}: field {key!r} is reserved for the record's {key}")
    fields: dict[str, FieldValue | None] = dict(record.fields)
    fields["id"] = record.id
    if record.error is not None:
        fields["error"] = str(record.error)
    tags = {**record.tags, **extra_tags}
    t_ns = time_ns(record.measured_at) + (0 if record.seq is None else record.seq % 1000)
    return encode_point(record.kind, tags, fields, t_ns)
