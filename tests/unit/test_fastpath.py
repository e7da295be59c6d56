"""collector.ingest.prepare_raw (the API's fast path) gives exactly the answer of the reference
path (Record.from_dict + prepare + record_to_point) on generated inputs: the same lines,
records and stations, and the same rejections with the same reasons and details."""

from __future__ import annotations

import copy
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.contract.record import (
    MEASUREMENTS,
    ContractError,
    Record,
    decode_envelope_header,
    decode_envelope_lenient,
    format_time,
)
from collector.admission import Prepared
from collector.config import Limits
from collector.fastpath import FastPath, Hit, _values_text, count_records
from collector.ingest import prepare_decoded, prepare_raw
from collector.lineproto import record_to_point
from tests.conftest import FIXTURES
from tests.harness.collector_stack import golden
from tests.harness.fake_registry import STATIONS, Registry, Scope
from tests.harness.reference_ingest import prepare

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


LIMITS = Limits()
FIELDS = sorted({f for m in MEASUREMENTS.values() for f in m.fields} | {"made_up", "id"})
TAGS = sorted({t for m in MEASUREMENTS.values() for t in m.tags} | {"province", "x"})

numbers = st.one_of(
    st.floats(),  # NaN and the infinities included
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, 1, -0.0, 0.0, 1.0, 2.5, 100, 100.0, 100.01, 4.5, 4.6, 600_000.0, 2**63]),
)
values = st.one_of(
    numbers, st.none(), st.booleans(), st.text(max_size=8), st.lists(st.integers(), max_size=2)
)
tag_values = st.one_of(
    st.sampled_from(["modem0", "a b", "a,b", "a=b", 'q"', "back\\", "c:\\temp", "tab\tx",
                     "", "x" * 257, "x" * 256, "ünï", "\ud800", "#c", "3171011001002"]),
    st.text(max_size=20),
    st.integers(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)  # fmt: skip
times = st.one_of(
    st.builds(
        lambda s: format_time(NOW + timedelta(seconds=s)),
        st.integers(-40 * 86400, 600),
    ),
    st.sampled_from(["2026-11-22T05:00:00Z", "2026-11-22T05:00:00.1+07:00",
                     "2026-11-22T05:00:00.123456z", "2026-13-22T05:00:00.000000Z",
                     "2026-11-22T05:00:00.000000", "٢٠٢٦-11-22T05:00:00.000000Z", ""]),
    st.integers(),
)  # fmt: skip
clocks = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "boot_id": st.one_of(st.none(), st.text(max_size=70), st.integers()),
            "monotonic_ns": st.one_of(st.none(), st.integers(-5, 2**64), st.floats()),
            "synced": st.sampled_from([None, 0, 1, 2, True, 0.0, "1"]),
            "source": st.sampled_from([None, "system", "collector", "unknown", "ntp", 1]),
            "other": st.integers(),
        },
    ),
    st.integers(),
)


MUTATIONS = ["value", "value", "field", "drop_field", "tag", "drop_tag", "kind", "time", "id",
             "error", "clock", "seq", "key", "drop"]  # fmt: skip


@st.composite
def record(draw: st.DrawFn) -> Any:
    rec: dict[str, Any] = golden(draw(st.sampled_from(["icmp-ok", "icmp-total-loss", "dns-ok",
                                                        "dns-nxdomain", "http-ok",
                                                        "http-refused"])))  # fmt: skip
    rec["tags"]["station"] = draw(st.sampled_from([*STATIONS, "3171011001003", "3271011001001"]))
    rec["measured_at"] = format_time(NOW - timedelta(seconds=draw(st.integers(0, 3600))))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 4]))):
        what = draw(st.sampled_from(MUTATIONS))
        fields, tags = rec.get("fields"), rec.get("tags")
        if what == "value" and isinstance(fields, dict) and fields:  # mostly a valid one
            fields[draw(st.sampled_from(sorted(fields)))] = draw(
                st.one_of(st.floats(0, 4.5), st.integers(0, 1), numbers)
            )
        elif what == "field" and isinstance(fields, dict):
            fields[draw(st.sampled_from(FIELDS))] = draw(values)
        elif what == "drop_field" and isinstance(fields, dict) and fields:
            fields.pop(draw(st.sampled_from(sorted(fields))))
        elif what == "tag" and isinstance(tags, dict):
            tags[draw(st.sampled_from(TAGS))] = draw(tag_values)
        elif what == "drop_tag" and isinstance(tags, dict) and tags:
            tags.pop(draw(st.sampled_from(sorted(tags))))
        elif what == "kind":
            rec["kind"] = draw(st.sampled_from(["icmp", "dns", "http", "agent", "x", 3]))
        elif what == "time":
            rec["measured_at"] = draw(times)
        elif what == "id":
            rec["id"] = draw(st.sampled_from([uuid.uuid4().hex.upper(), "ab", 7, None]))
        elif what == "error":
            rec["error"] = draw(st.sampled_from(["timeout", "nope", None, 1, "tls_error"]))
        elif what == "clock":
            rec["clock"] = draw(clocks)
        elif what == "seq":
            rec["seq"] = draw(st.one_of(st.integers(-1, 2**64), st.sampled_from([None, 1.0, True])))
        elif what == "key":
            rec[draw(st.sampled_from(["extra", "tags", "fields"]))] = draw(values)
        else:
            rec.pop(draw(st.sampled_from(["id", "kind", "tags", "fields", "measured_at"])), None)
    return draw(values) if draw(st.integers(0, 9)) == 0 else rec  # now and then not an object


def reference(raw_records: list[Any]) -> Prepared:
    doc = {"schema": 1, "agent": {"station": "3171011001001", "version": "t"},
           "sent_at": format_time(NOW), "records": copy.deepcopy(raw_records)}  # fmt: skip
    env, bad = decode_envelope_lenient(b"", lambda _: doc)
    return prepare(env, bad, Scope(), Registry(), LIMITS, NOW)


def same(a: Any, b: Any) -> bool:
    """Equality that also holds for NaN (never accepted, but compared inside rejections)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b) and type(a) is type(b)


FAST = FastPath()  # shared across examples, as in the server: its caches must not leak


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.lists(record(), max_size=6))
def test_fast_path_answers_like_the_reference(raw_records: list[Any]) -> None:
    want = reference(raw_records)
    got = prepare_raw(copy.deepcopy(raw_records), Scope(), Registry(), LIMITS, NOW, FAST)
    assert got.lines == want.lines
    assert [r.to_dict() for r in got.rejected] == [r.to_dict() for r in want.rejected]
    assert got.stations == want.stations
    assert len(got.records) == len(want.records)
    for g, w in zip(got.records, want.records, strict=True):
        assert (g.id, g.kind, g.measured_at, g.error, g.clock, g.seq) == (
            w.id, w.kind, w.measured_at, w.error, w.clock, w.seq
        )  # fmt: skip
        assert dict(g.tags) == dict(w.tags)
        assert g.fields.keys() == w.fields.keys()
        assert all(same(g.fields[k], w.fields[k]) for k in g.fields)


def test_the_usual_records_take_the_fast_path() -> None:
    """Golden records (what agents send) are decoded without the reference path."""
    fast = FastPath()
    for name in ("icmp-ok", "icmp-total-loss", "dns-ok", "dns-nxdomain", "http-ok",
                 "http-refused"):  # fmt: skip
        rec = golden(name)
        assert fast.decode(rec) is not None, name
        rec["fields"]["made_up"] = 1
        assert fast.decode(rec) is None, name


@pytest.mark.parametrize(
    ("changes", "plausible"),
    [
        ({}, True),
        ({"rtt_max_ms": 2000.5}, False),  # above timeout_ms 2000.0
        ({"rtt_min_ms": 2000.0, "rtt_max_ms": 2000.0}, True),  # at the timeout is in time
        ({"received": 11}, False),
        ({"loss_pct": 10.0}, False),
        ({"received": 9, "loss_pct": 10.0}, True),
        ({"received": 9, "loss_pct": 10.005}, True),  # within the 0.01 tolerance
        ({"sent": 0, "received": 0, "loss_pct": 100.0}, True),  # nothing sent: no loss rule
    ],
)
def test_fast_plausibility_agrees_with_the_reference(
    changes: dict[str, Any], plausible: bool
) -> None:
    """The fast path checks icmp plausibility on the typed values; when it finds something,
    plausibility() words the rejection. Either way the answer is the reference's."""
    rec = golden("icmp-ok")
    rec["measured_at"] = format_time(NOW - timedelta(minutes=5))
    rec["fields"].update(changes)
    hit = FastPath().decode(copy.deepcopy(rec))
    assert hit is not None and hit.plausible is plausible
    want = reference([rec])
    got = prepare_raw([rec], Scope(), Registry(), LIMITS, NOW, FastPath())
    assert got.lines == want.lines and len(got.lines) == (1 if plausible else 0)
    assert [r.to_dict() for r in got.rejected] == [r.to_dict() for r in want.rejected]


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.floats(0, 600_000),
            st.floats(0, 1e-3),
            st.integers(-(2**63), 2**63 - 1),
        ),
        min_size=1,
        max_size=14,
    )
)
def test_values_text_is_repr_or_declines(values: list[float | int]) -> None:
    """Line protocol's number text from orjson is exactly repr()'s (and str() for ints), or
    the fast path declines and repr() writes it."""
    text = _values_text(tuple(values))
    if text is not None:
        assert list(text) == [repr(v) for v in values]
    else:
        assert any((type(v) is float and ((v != 0 and abs(v) < 1e-4) or abs(v) >= 1e16))
                   or ".0000" in repr(v) for v in values)  # fmt: skip


# --- whole envelopes through msgspec (FastPath.decode_envelope) ------------------------------


def header_or_error(doc: Any) -> Any:
    try:
        h = decode_envelope_header(doc)
    except ContractError as exc:
        return ("error", str(exc))
    return (h.station, h.agent_version, h.sent_at, h.schema, h.boot_id, len(h.raw_records))


envelope_extras = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.sampled_from([1, 2, "1", None]),
        "agent": st.sampled_from([{"station": "3171011001001", "version": "t"},
                                  {"station": "", "version": "t"}, {"version": "t"}, [], None,
                                  {"station": "3171011001001", "version": "t", "boot_id": 7}]),
        "sent_at": st.sampled_from([format_time(NOW), "yesterday", None, 5]),
        "extra": st.integers(),
    },
)  # fmt: skip


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(st.lists(record(), max_size=5), envelope_extras, st.booleans())
def test_envelope_pass_answers_like_record_by_record(
    raw_records: list[Any], extras: dict[str, Any], usual_header: bool
) -> None:
    """Through decode_envelope() (when it takes the envelope) the header and the prepared
    records are exactly what parsing the JSON and deciding record by record gives."""
    doc: dict[str, Any] = {"schema": 1, "agent": {"station": "3171011001001", "version": "t"},
                           "sent_at": format_time(NOW), "records": raw_records}  # fmt: skip
    if not usual_header:
        doc.update(extras)
    body = json.dumps(doc).encode()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert FAST.decode_envelope(body) is None
        return
    want_header = header_or_error(parsed)
    wire = FAST.decode_envelope(body)
    event("record by record" if wire is None else f"envelope pass, {len(wire['records'])} records")
    if wire is None:
        return  # the API then does exactly the record-by-record path
    assert header_or_error(wire) == want_header
    if want_header[0] == "error":
        return
    want = prepare_raw(parsed["records"], Scope(), Registry(), LIMITS, NOW, FastPath())
    got = prepare_decoded(wire["records"], Scope(), Registry(), LIMITS, NOW, FAST)
    assert got.lines == want.lines
    assert [r.to_dict() for r in got.rejected] == [r.to_dict() for r in want.rejected]
    assert got.stations == want.stations
    assert [r.to_dict() for r in got.records] == [r.to_dict() for r in want.records]
    assert [r.clock for r in got.records] == [r.clock for r in want.records]


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.lists(st.one_of(record(), st.integers(), st.none()), max_size=8), envelope_extras)
def test_count_records_agrees_with_the_decoders(
    raw_records: list[Any], extras: dict[str, Any]
) -> None:
    """The records limits are checked on count_records() before any record is decoded: it
    counts what both decoders then find (any records, valid or not), or declines."""
    doc: dict[str, Any] = {"records": raw_records, **extras}
    body = json.dumps(doc).encode()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # refused as not JSON (422), whatever was counted and charged
    assert count_records(body) == len(parsed["records"])
    wire = FAST.decode_envelope(body)
    assert wire is None or len(wire["records"]) == count_records(body)


def test_count_records_declines_what_is_no_envelope() -> None:
    bodies = [b"", b"[]", b"{}", b"not json", b'{"records": 5}', b'{"records": {}}',
              b'{"records": [1, 2', b'{"records": [1, 2]} trailing']  # fmt: skip
    for body in bodies:
        assert count_records(body) is None, body
    # A key given twice: the last one counts, as for orjson and decode_envelope().
    for body in (b'{"records": [1], "records": [1, 2, 3]}', b'{"records": [1, 2], "records": []}'):
        assert count_records(body) == len(orjson.loads(body)["records"])


def test_agents_envelopes_take_the_envelope_pass() -> None:
    """What agents send every minute (icmp, dns, http and heartbeat records) is decoded in
    one pass; one record of another kind (throughput, upload: hourly) or one unusual record
    sends the whole envelope the record-by-record way."""
    golden_env = orjson.loads((FIXTURES / "records" / "envelope.json").read_bytes())
    kinds = {r["kind"] for r in golden_env["records"]}
    assert {"throughput", "upload"} <= kinds
    assert FastPath().decode_envelope(orjson.dumps(golden_env)) is None
    golden_env["records"] = [
        r for r in golden_env["records"] if r["kind"] in {"icmp", "dns", "http", "agent"}
    ]
    wire = FastPath().decode_envelope(orjson.dumps(golden_env))
    assert wire is not None and len(wire["records"]) == len(golden_env["records"]) >= 6
    records = [golden(n) for n in ("icmp-ok", "icmp-total-loss", "dns-ok", "http-refused")]
    doc = {"schema": 1, "agent": {"station": "3171011001001", "version": "t"},
           "sent_at": format_time(NOW), "records": records}  # fmt: skip
    assert FastPath().decode_envelope(json.dumps(doc).encode()) is not None
    changes: list[dict[str, Any]] = [
        {"seq": -1}, {"id": "A" * 32}, {"extra": 1}, {"error": "nope"},
        {"measured_at": "2026-11-22T05:00:00Z"}, {"clock": {"synced": True}},
    ]  # fmt: skip
    for change in changes:
        odd = copy.deepcopy(doc)
        odd["records"][2].update(change)
        assert FastPath().decode_envelope(json.dumps(odd).encode()) is None, change
    odd = copy.deepcopy(doc)
    odd["records"][1]["fields"]["loss_pct"] = 100  # an int in a float field
    assert FastPath().decode_envelope(json.dumps(odd).encode()) is None


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70)),
        min_size=1,
        max_size=20,
    )
)
def test_msgspec_reads_numbers_as_orjson_does(numbers: list[float | int]) -> None:
    """The envelope pass reads field values with msgspec, the record-by-record path with
    orjson: the same text gives the same value of the same type. Beyond int64 orjson reads
    an integer as a float and msgspec as an int; no field takes such an int (int fields
    end at int64, float fields want a float), so such an envelope is read the orjson way."""
    body = json.dumps({"n": numbers}).encode()
    want = orjson.loads(body)["n"]
    got = msgspec.json.decode(body, type=dict[str, list[int | float]])["n"]
    for g, w, v in zip(got, want, numbers, strict=True):
        if type(v) is int and not -(2**63) <= v < 2**64:
            assert type(g) is int and type(w) is float
        else:
            assert (type(g), g) == (type(w), w)
    text = ("[" + ",".join(repr(float(v)) for v in numbers) + "]").encode()
    assert msgspec.json.decode(text, type=list[float]) == orjson.loads(text)


def test_a_record_without_fields_is_its_id_alone() -> None:
    """A failed round may carry no fields: the point's fields are then its id and error,
    on both passes, as on the reference path."""
    rec = golden("http-refused")
    rec["measured_at"] = format_time(NOW - timedelta(minutes=5))
    rec["fields"] = {}
    want = reference([rec])
    assert len(want.lines) == 1 and f' id="{rec["id"]}",error=' in want.lines[0]
    got = prepare_raw([copy.deepcopy(rec)], Scope(), Registry(), LIMITS, NOW, FastPath())
    assert got.lines == want.lines
    doc = {"schema": 1, "agent": {"station": "3171011001001", "version": "t"},
           "sent_at": format_time(NOW), "records": [rec]}  # fmt: skip
    wire = FastPath().decode_envelope(json.dumps(doc).encode())
    assert wire is not None
    fast = FastPath()
    got = prepare_decoded(wire["records"], Scope(), Registry(), LIMITS, NOW, fast)
    assert got.lines == want.lines


MINUTE_KINDS = {"icmp", "dns", "http"}  # what decode_envelope() takes whole


def test_decode_envelope_of_the_golden_envelope_gives_hits() -> None:
    """Each Hit of the golden envelope's minute records: the record Record.from_dict makes,
    the tag values in the measurement's tag order, the line protocol of its fields (what
    record_to_point writes between the tags and the time) and whether it is plausible."""
    golden_env = orjson.loads((FIXTURES / "records" / "envelope.json").read_bytes())
    golden_env["records"] = [r for r in golden_env["records"] if r["kind"] in MINUTE_KINDS]
    wire = FastPath().decode_envelope(orjson.dumps(golden_env))
    assert wire is not None
    assert {k: wire[k] for k in ("schema", "agent", "sent_at")} == {
        k: golden_env[k] for k in ("schema", "agent", "sent_at")
    }
    assert [type(h) for h in wire["records"]] == [Hit] * len(golden_env["records"])
    for raw, hit in zip(golden_env["records"], wire["records"], strict=True):
        want = Record.from_dict(raw)
        assert hit.record.to_dict() == want.to_dict()
        assert hit.record.clock == want.clock
        assert hit.tag_values == tuple(raw["tags"][t] for t in MEASUREMENTS[raw["kind"]].tags)
        line = record_to_point(want, {"province": "P", "regency": "R"})
        assert line.split(" ")[1] == hit.encoded_fields
        assert hit.plausible is True
    # a plausible-looking icmp record whose loss does not match: decoded, left to admission
    odd = copy.deepcopy(golden_env)
    odd["records"] = [r for r in odd["records"] if r["kind"] == "icmp"][:1]
    odd["records"][0]["fields"]["loss_pct"] = 50.0
    wire = FastPath().decode_envelope(orjson.dumps(odd))
    assert wire is not None and wire["records"][0].plausible is False
    assert FastPath().decode(odd["records"][0]) == wire["records"][0]
