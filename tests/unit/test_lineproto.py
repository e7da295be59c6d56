"""Line protocol encoding without a server. What the encoder accepts is proved to be stored
verbatim by a real InfluxDB in tests/integration/test_sinks.py (the tricky-string table and a
property test); here: exact text, refusals, exact time arithmetic and the structure of each line."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.contract.record import Record
from collector.lineproto import (
    encode_point,
    escape_field_key,
    escape_measurement,
    escape_tag,
    format_field_value,
    record_to_point,
    time_ns,
)
from tests.conftest import FIXTURES

GOLDEN = sorted(p for p in (FIXTURES / "records").glob("*.json") if p.name != "envelope.json")


def golden(name: str) -> Record:
    return Record.from_dict(json.loads((FIXTURES / "records" / name).read_text()))


@pytest.mark.parametrize(
    ("raw", "tag", "measurement"),
    [
        ("plain", "plain", "plain"),
        ("a,b", r"a\,b", r"a\,b"),
        ("a b", r"a\ b", r"a\ b"),
        ("a=b", r"a\=b", "a=b"),  # '=' needs no escape in a measurement (1.x would unescape it)
        (" lead", r"\ lead", r"\ lead"),
        ('q"uote', 'q"uote', 'q"uote'),
        (r"C:\temp", r"C:\temp", r"C:\temp"),  # a backslash before a plain char is literal
        ("Jawa Barat, Kab. Bogor", r"Jawa\ Barat\,\ Kab.\ Bogor", r"Jawa\ Barat\,\ Kab.\ Bogor"),
        ("ünï ☃ 日本", r"ünï\ ☃\ 日本", r"ünï\ ☃\ 日本"),
        ("#hash", "#hash", None),  # a measurement may not start with '#' (a comment line)
    ],
)
def test_escaping(raw: str, tag: str, measurement: str | None) -> None:
    assert escape_tag(raw) == tag
    assert escape_field_key(raw) == tag
    if measurement is None:
        with pytest.raises(ValueError, match="comment"):
            escape_measurement(raw)
    else:
        assert escape_measurement(raw) == measurement


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "new\nline",
        "ends\n",
        "carriage\rreturn",
        "trailing\\",
        "double\\\\backslash",
        "before\\,comma",
        "before\\=equals",
        "before\\ space",
        'before\\"quote',
        "surrogate\ud800",
    ],
)
def test_identifiers_refused(raw: str) -> None:
    for escape in (escape_tag, escape_field_key, escape_measurement):
        with pytest.raises(ValueError):
            escape(raw)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0i"),
        (-42, "-42i"),
        (2**63 - 1, "9223372036854775807i"),
        (-(2**63), "-9223372036854775808i"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (5.0, "5.0"),
        (0.1, "0.1"),
        (1e16, "1e+16"),
        (1e-7, "1e-07"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        ("", '""'),
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("ends\\", r'"ends\\"'),
        ('x" OR 1=1', r'"x\" OR 1=1"'),
        ("a,b=c d", '"a,b=c d"'),
    ],
)
def test_field_values(value: int | float | str, text: str) -> None:
    assert format_field_value(value) == text


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (2**63, ValueError),
        (-(2**63) - 1, ValueError),
        ("new\nline", ValueError),
        ("cr\r", ValueError),
        (True, TypeError),
        (None, TypeError),
        (b"bytes", TypeError),
    ],
)
def test_field_values_refused(value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        format_field_value(value)  # type: ignore[arg-type]


def test_encode_point_sorts_tags_drops_empty_and_absent() -> None:
    line = encode_point(
        "icmp",
        {"target": "nix jkt", "station": "3171011001001", "operator": "", "uplink": "modem0"},
        {"loss_pct": 0.0, "sent": 10, "rtt_avg_ms": None, "error": "timeout"},
        1_795_320_780_123_456_000,
    )
    assert line == (
        r"icmp,station=3171011001001,target=nix\ jkt,uplink=modem0 "
        'loss_pct=0.0,sent=10i,error="timeout" 1795320780123456000'
    )


def test_encode_point_refusals() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        encode_point("m", {"t": "x"}, {}, 0)
    with pytest.raises(ValueError, match="at least one field"):
        encode_point("m", {}, {"f": None}, 0)
    with pytest.raises(ValueError, match="both a tag and a field"):
        encode_point("m", {"ok": "1"}, {"ok": 1}, 0)
    with pytest.raises(ValueError, match="int64"):
        encode_point("m", {}, {"f": 1}, 2**63)
    with pytest.raises(TypeError):
        encode_point("m", {}, {"f": 1}, 1.5)  # type: ignore[arg-type]


def test_time_ns_is_exact() -> None:
    t = datetime(2026, 11, 22, 4, 13, 0, 123456, tzinfo=UTC)
    assert time_ns(t) == 1_795_320_780_123_456_000
    assert time_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert time_ns(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1000
    wib = timezone(timedelta(hours=7))
    assert time_ns(datetime(2026, 11, 22, 11, 13, 0, 123456, tzinfo=wib)) == time_ns(t)
    with pytest.raises(ValueError, match="naive"):
        time_ns(datetime(2026, 1, 1))


@given(
    st.datetimes(
        min_value=datetime(1700, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC),
    )
)
def test_time_ns_matches_integer_microseconds(t: datetime) -> None:
    # float timestamps lose microseconds far from 1970; the integer path must not
    assert (
        time_ns(t) == ((t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000
    )
    assert time_ns(t) % 1000 == 0


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_record_to_point_golden(path: object) -> None:
    record = Record.from_dict(json.loads(path.read_text()))  # type: ignore[attr-defined]
    line = record_to_point(record, {"province": "31", "regency": "3171"})
    head, fields, ts = line.split(" ")
    assert int(ts) == time_ns(record.measured_at)
    tags = dict(kv.split("=") for kv in head.split(",")[1:])
    assert tags == {**record.tags, "province": "31", "regency": "3171"}
    assert list(tags) == sorted(tags)
    assert f'id="{record.id}"' in fields.split(",")
    if record.error is None:
        assert "error=" not in fields
    else:
        assert f'error="{record.error}"' in fields.split(",")


def test_record_to_point_exact_text() -> None:
    line = record_to_point(golden("icmp-total-loss.json"), {"province": "31", "regency": "3171"})
    assert line == (
        "icmp,operator=telkomsel,province=31,regency=3171,station=3171011001001,target=kpu,"
        "uplink=modem0 sent=10i,received=0i,loss_pct=100.0,timeout_ms=2000.0,mos=1.0,ok=0i,"
        'id="7c2e9a4f1b3d4c5e8f6a0b1c2d3e4f50",error="timeout" 1795320842004118000'
    )


def test_record_to_point_extra_tags_win() -> None:
    record = golden("dns-ok.json")
    line = record_to_point(record, {"station": "from-token"})
    assert ",station=from-token," in line
    assert "3171011001001" not in line


def test_record_to_point_reserved_fields() -> None:
    r = golden("dns-ok.json")
    bad = Record(r.kind, r.measured_at, r.tags, {**r.fields, "id": "x"}, None, r.id)
    with pytest.raises(ValueError, match="reserved"):
        record_to_point(bad, {})


def _split_unescaped(s: str, sep: str) -> list[str]:
    """Split at separators not preceded by an escaping backslash (as 1.x scans a line)."""
    parts, cur, i = [], [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if s[i] == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(s[i])
        i += 1
    parts.append("".join(cur))
    return parts


_text = st.text(min_size=1, max_size=20)


@settings(max_examples=300)
@given(_text, st.dictionaries(_text, _text, max_size=5), _text)
def test_line_structure_holds_for_any_accepted_input(
    measurement: str, tags: dict[str, str], field_key: str
) -> None:
    """Whatever is accepted keeps its place: one line; key, fields and time separated by
    exactly two unescaped spaces; one unescaped comma per tag; one unescaped '=' per tag."""
    try:
        line = encode_point(measurement, tags, {field_key: 1}, 1)
    except ValueError:
        return
    assert "\n" not in line and "\r" not in line
    key, fields, ts = _split_unescaped(line, " ")
    assert ts == "1"
    parts = _split_unescaped(key, ",")
    assert len(parts) == 1 + len(tags)
    assert all(len(_split_unescaped(p, "=")) == 2 for p in parts[1:])
    assert _split_unescaped(fields, "=")[-1] == "1i"
    assert len(_split_unescaped(fields, "=")) == 2
