"""The sinks end to end against real databases on loopback: InfluxDB 1.6.7 for the v1 sink
and InfluxQL, VictoriaMetrics for the v2 sink (tests/harness/dbs.py starts them). Also proves that
what collector.lineproto accepts is stored verbatim, and that it refuses exactly what its
docstring says."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.contract.record import MEASUREMENTS, Record
from collector.config import SinkConfig
from collector.lineproto import (
    encode_point,
    escape_field_key,
    escape_tag,
    format_field_value,
    record_to_point,
    time_ns,
)
from collector.sinks import (
    GZIP_MIN_BYTES,
    QueryError,
    SinkUnavailable,
    V1Sink,
    V2Sink,
    WriteResult,
    _error_text,
    _Refused,
    _write_resolving,
    make_sink,
    query_influxql,
)
from tests.conftest import FIXTURES, require_tool
from tests.harness.dbs import (
    Answer,
    InfluxServer,
    ScriptedRequest,
    VictoriaMetrics,
    influxd,
    scripted_server,
    silent_tcp_server,
)
from tests.harness.servers import LOOPBACK, closed_port

GOLDEN_FILES = sorted(p for p in (FIXTURES / "records").glob("*.json") if p.name != "envelope.json")
EXTRA = {"province": "31", "regency": "3171"}


def golden(path: Path) -> Record:
    return Record.from_dict(json.loads(path.read_text()))


def golden_records() -> list[Record]:
    return [golden(p) for p in GOLDEN_FILES]


def envelope_records() -> list[Record]:
    doc = json.loads((FIXTURES / "records" / "envelope.json").read_text())
    return [Record.from_dict(r) for r in doc["records"]]


def v1_config(url: str, database: str, **kw: Any) -> SinkConfig:
    kw.setdefault("timeout_s", 5.0)
    return SinkConfig("v1", url, database, retry_after_s=7, **kw)


@pytest.fixture
def v1(influxdb: InfluxServer, influx_database: str) -> Iterator[V1Sink]:
    sink = V1Sink(v1_config(influxdb.url, influx_database))
    yield sink
    sink.close()


def by_id(server: InfluxServer, db: str, kind: str, rid: str) -> list[dict[str, Any]]:
    return server.query(f'SELECT * FROM "{kind}" WHERE "id" = \'{rid}\'', db)


# --- what the encoder accepts is stored verbatim ---------------------------------------------


def refused_as_string_field(s: str) -> bool:
    """The rule of collector.lineproto, restated: a newline or CR, or not UTF-8 (lone
    surrogates)..."""
    return "\n" in s or "\r" in s or any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def refused_as_identifier(s: str) -> bool:
    """...and for names and tag values also: empty, or a backslash at the end or before
    backslash, comma, equals, space or double quote."""
    if not s or refused_as_string_field(s):
        return True
    return any(c == "\\" and (i + 1 == len(s) or s[i + 1] in '\\,= "') for i, c in enumerate(s))


TRICKY = [
    "plain",
    "with,comma",
    "with space",
    " leading and trailing ",
    "a=b",
    "==",
    ",",
    " ",
    'double"quote',
    '"',
    "'single'",
    'x" OR 1=1',
    "x' OR '1'='1",
    "'; DROP DATABASE sinyal; --",
    "/regex.*/",
    "$timeFilter",
    r"C:\temp\new",  # \t and \n here are backslash + letter: allowed, stored as they are
    "back\\slash",
    "trailing\\",
    "double\\\\",
    "\\,",
    "\\=",
    "\\ ",
    '\\"',
    "new\nline",
    "ends with newline\n",
    "\r\n",
    "tab\there",
    "zero\x00byte",
    "ünïcödé",
    "Jawa Barat 日本語 🛰️",
    "\u2028line separator\u2029",
    "#hash",
    "",
]


def test_tricky_strings_stored_verbatim(influxdb: InfluxServer, influx_database: str) -> None:
    """Each tricky string as a tag value, a string field value, a tag key, a field key and a
    measurement name: refused exactly by the rule, otherwise read back verbatim."""
    db = influx_database
    lines: list[str] = []
    expect: dict[str, dict[int, str]] = {"tagv": {}, "fieldv": {}, "tagkey": {}, "fieldkey": {}}
    for i, s in enumerate(TRICKY):
        t, tag_i = i + 1, {"i": str(i)}
        for kind in expect:
            refused = refused_as_string_field(s) if kind == "fieldv" else refused_as_identifier(s)
            if kind == "tagv" and s == "":
                refused = False  # an empty tag value is dropped, not refused
            try:
                if kind == "tagv":
                    line = encode_point(kind, {**tag_i, "v": s}, {"n": 1}, t)
                elif kind == "fieldv":
                    line = encode_point(kind, tag_i, {"s": s}, t)
                elif kind == "tagkey":
                    line = encode_point(kind, {**tag_i, s: "x"}, {"n": 1}, t)
                else:
                    line = encode_point(kind, tag_i, {s: 1}, t)
            except ValueError:
                assert refused, f"{kind} {s!r} refused but the rule allows it"
                continue
            assert not refused, f"{kind} {s!r} accepted but the rule refuses it"
            lines.append(line)
            expect[kind][i] = s
    sink = V1Sink(v1_config(influxdb.url, db))
    assert sink.write(lines).rejected == {}
    sink.close()
    stored_tag = {int(r["i"]): r["v"] for r in influxdb.query("SELECT * FROM tagv", db)}
    assert stored_tag == {i: (s if s else None) for i, s in expect["tagv"].items()}
    stored_field = {int(r["i"]): r["s"] for r in influxdb.query("SELECT * FROM fieldv", db)}
    assert stored_field == expect["fieldv"]
    for kind, value in (("tagkey", "x"), ("fieldkey", 1)):
        rows = {int(r["i"]): r for r in influxdb.query(f"SELECT * FROM {kind}", db)}
        assert set(rows) == set(expect[kind])
        for i, s in expect[kind].items():
            assert rows[i][s] == value, (kind, s)
    # Measurement names, in a database of their own to list them unambiguously.
    names_db = f"{db}_m"
    influxdb.create_database(names_db)
    names, lines = [], []
    for s in TRICKY:
        refused = refused_as_identifier(s) or s.startswith("#")
        try:
            lines.append(encode_point(s, {}, {"n": 1}, 1))
        except ValueError:
            assert refused, s
            continue
        assert not refused, s
        names.append(s)
    sink = V1Sink(v1_config(influxdb.url, names_db))
    assert sink.write(lines).rejected == {}
    sink.close()
    assert {r["name"] for r in influxdb.query("SHOW MEASUREMENTS", names_db)} == set(names)


_tricky_chars = st.sampled_from([*",= \"\\'#\t\n\r\x00", "日", "\U0001f6f0", "\u2028"])
_text = st.text(alphabet=st.one_of(_tricky_chars, st.characters()), max_size=12)
_counter = itertools.count()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(_text, _text, _text, _text), min_size=50, max_size=50))
def test_round_trip_property(
    influxdb: InfluxServer, items: list[tuple[str, str, str, str]]
) -> None:
    """Random tag keys/values, field keys and string values: refused exactly by the rule,
    otherwise stored verbatim. One batch of 50 points per example, 8 examples."""
    db = "prop"
    if db not in influxdb.databases:
        influxdb.create_database(db)
    measurement = f"p{next(_counter)}"
    lines, expect = [], {}
    for i, (tag_key, tag_value, field_key, value) in enumerate(items):
        tags: dict[str, str] = {"i": str(i)}
        fields: dict[str, int | str] = {}
        tk, fk = "k" + tag_key, "f" + field_key  # prefixed: no clash with i, v, s
        candidates: list[tuple[Any, str, bool, dict[str, Any], str, Any]] = [
            (escape_tag, tk, refused_as_identifier(tk), tags, tk, "x"),
            (escape_field_key, fk, refused_as_identifier(fk), fields, fk, 1),
            (format_field_value, value, refused_as_string_field(value), fields, "s", value),
        ]
        if tag_value:
            candidates.append(
                (escape_tag, tag_value, refused_as_identifier(tag_value), tags, "v", tag_value)
            )
        for encoder, text, refused, target, key, stored in candidates:
            if refused:
                with pytest.raises(ValueError):
                    encoder(text)
            else:
                encoder(text)
                target[key] = stored
        lines.append(encode_point(measurement, tags, fields or {"n": 1}, i + 1))
        expect[i] = (tags, fields)
    sink = V1Sink(v1_config(influxdb.url, db))
    try:
        assert sink.write(lines).rejected == {}
    finally:
        sink.close()
    rows = {int(r["i"]): r for r in influxdb.query(f'SELECT * FROM "{measurement}"', db)}
    assert set(rows) == set(expect)
    for i, (tags, fields) in expect.items():
        row = rows[i]
        for k, v in tags.items():
            assert row[k] == v, (k, v)
        for k, v in fields.items():
            assert row[k] == v, (k, v)


# --- v1 sink against InfluxDB 1.6.7 ----------------------------------------------------------


def test_golden_records_round_trip(
    influxdb: InfluxServer, influx_database: str, v1: V1Sink
) -> None:
    records = golden_records()
    result = v1.write([record_to_point(r, EXTRA) for r in records])
    assert result == WriteResult(rejected={}, requests=1)
    for r in records:
        rows = by_id(influxdb, influx_database, r.kind, r.id)
        assert len(rows) == 1, r.id
        row = rows[0]
        assert row["time"] == time_ns(r.measured_at)  # exact to the microsecond (and ns)
        for k, v in {**r.tags, **EXTRA}.items():
            assert row[k] == v
        for k, v in r.fields.items():
            assert row[k] == v, k
            if not isinstance(v, str):
                assert float(row[k]) == float(v), k  # floats exact, ints exact
        assert row["id"] == r.id
        assert row.get("error") == r.error  # no record of a kind failed: no error column
        types = influxdb.field_types(influx_database, r.kind)
        for k in r.fields:
            spec = MEASUREMENTS[r.kind].fields[k]
            expected = {int: "integer", float: "float", str: "string"}[spec.type]
            assert types[k] == expected, k
        assert types["id"] == "string"


def test_write_is_idempotent(influxdb: InfluxServer, influx_database: str, v1: V1Sink) -> None:
    lines = [record_to_point(r, EXTRA) for r in envelope_records()]
    v1.write(lines)
    v1.write(lines)
    v1.write(lines[:2])
    kinds = ",".join(f'"{k}"' for k in sorted({r.kind for r in envelope_records()}))
    rows = influxdb.query(f'SELECT count("id") FROM {kinds}', influx_database, epoch=None)
    assert sum(r["count"] for r in rows) == len(lines)


def test_partial_write_names_exactly_the_refused_lines(
    influxdb: InfluxServer, influx_database: str, v1: V1Sink
) -> None:
    db = influx_database
    icmp, dns = golden(FIXTURES / "records/icmp-ok.json"), golden(FIXTURES / "records/dns-ok.json")
    v1.write([record_to_point(icmp, EXTRA), record_to_point(dns, EXTRA)])  # sets field types

    def icmp_line(station: str, **fields: Any) -> str:
        return encode_point(
            "icmp", {**icmp.tags, "station": station}, fields, time_ns(icmp.measured_at)
        )

    def dns_line(station: str, **fields: Any) -> str:
        return encode_point(
            "dns", {**dns.tags, "station": station}, fields, time_ns(dns.measured_at)
        )

    lines = [
        icmp_line("good0", loss_pct=1.5, sent=10),
        icmp_line("bad1", loss_pct=5, sent=10),  # loss_pct is a float field: int conflicts
        dns_line("good2", resolve_ms=12.5, rcode=0),
        "this is not line protocol",
        icmp_line("good4", loss_pct=0.0),
        dns_line("bad5", rcode=1.5),  # rcode is an integer field
        dns_line("good6", rcode=3),
        icmp_line("bad7", loss_pct="high"),
        icmp_line("good8", rtt_avg_ms=27.5),
    ]
    result = v1.write(lines)
    assert set(result.rejected) == {1, 3, 5, 7}
    assert "field type conflict" in result.rejected[1] and '"loss_pct"' in result.rejected[1]
    assert "is type integer, already exists as type float" in result.rejected[1]
    assert result.rejected[3].startswith("unable to parse 'this is not line protocol'")
    assert '"rcode"' in result.rejected[5] and "is type float" in result.rejected[5]
    assert '"loss_pct"' in result.rejected[7] and "is type string" in result.rejected[7]
    assert result.requests <= 2 * len(lines)
    stations = {
        r["station"]
        for r in influxdb.query('SELECT * FROM "icmp","dns"', db)
        if r["station"] != icmp.tags["station"]
    }
    assert stations == {"good0", "good2", "good4", "good6", "good8"}


def test_mass_conflict_takes_few_requests(
    influxdb: InfluxServer, influx_database: str, v1: V1Sink
) -> None:
    """A whole measurement in conflict (someone wrote loss_pct as an integer) must not cost
    one request per line: a group whose every point was dropped is refused as a whole."""
    v1.write(["icmp,station=seed loss_pct=1.5 1"])
    lines = []
    for i in range(400):
        lines.append(f"icmp,station=s{i} loss_pct={i}i {i + 10}")  # conflicting
        lines.append(f"dns,station=s{i} resolve_ms={i}.5 {i + 10}")  # fine
    result = v1.write(lines)
    assert set(result.rejected) == set(range(0, 800, 2))
    assert all("field type conflict" in why for why in result.rejected.values())
    assert result.requests <= 10
    assert influxdb.query("SELECT count(resolve_ms) FROM dns", influx_database)[0]["count"] == 400


def test_missing_database_is_created(influxdb: InfluxServer) -> None:
    db = f"new_{uuid.uuid4().hex[:8]}"
    sink = V1Sink(v1_config(influxdb.url, db))
    try:
        assert sink.write(["m,t=a f=1 1"]).rejected == {}
        assert sink.write(["m,t=a f=2 2"]).requests == 1
    finally:
        sink.close()
    influxdb.databases.append(db)
    assert [r["f"] for r in influxdb.query("SELECT f FROM m", db)] == [1, 2]


def test_missing_retention_policy_is_unavailable(
    influxdb: InfluxServer, influx_database: str
) -> None:
    sink = V1Sink(v1_config(influxdb.url, influx_database, retention_policy="nope"))
    with pytest.raises(SinkUnavailable, match="retention policy not found") as exc:
        sink.write(["m f=1 1"])
    assert exc.value.retry_after_s == 7
    sink.close()


def test_locally_refused_lines_are_never_sent(
    influxdb: InfluxServer, influx_database: str, v1: V1Sink
) -> None:
    result = v1.write(["", "# a comment", "a f=1 1\nb f=2 2", "c f=3 3"])
    assert set(result.rejected) == {0, 1, 2}
    assert [r["_series"] for r in influxdb.query("SELECT * FROM /.*/", influx_database)] == ["c"]


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_database_down_is_unavailable_quickly(kind: str) -> None:
    cfg = SinkConfig(kind, f"http://{LOOPBACK}:{closed_port()}", "db", timeout_s=5.0)
    sink = make_sink(cfg)
    t0 = time.monotonic()
    with pytest.raises(SinkUnavailable, match="unreachable") as exc:
        sink.write(["m f=1 1"])
    assert time.monotonic() - t0 < 1.0
    assert exc.value.retry_after_s == cfg.retry_after_s
    assert sink.ping() is False
    sink.close()


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_silent_database_times_out(kind: str) -> None:
    with silent_tcp_server() as url:
        sink = make_sink(SinkConfig(kind, url, "db", timeout_s=0.5))
        t0 = time.monotonic()
        with pytest.raises(SinkUnavailable, match=r"did not answer within 0\.5 s"):
            sink.write(["m f=1 1"])
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed < 3.0, elapsed
        sink.close()


def test_auth_and_a_database_that_goes_away() -> None:
    """A second influxd with auth: user/password works (Basic), wrong or missing credentials
    and missing privileges are SinkUnavailable (never a partial reject), and a sink whose
    database is stopped under it fails fast."""
    binary = require_tool("influxd")
    with influxd(binary, admin=("admin", "s3cret pass")) as srv:
        srv.create_database("sec")
        srv.query("CREATE USER reader WITH PASSWORD 'r'")
        srv.query('GRANT READ ON "sec" TO reader')
        good = V1Sink(v1_config(srv.url, "sec", username="admin", password="s3cret pass"))
        assert good.write(["m,t=a f=1 1"]) == WriteResult({}, 1)
        cfg = v1_config(srv.url, "sec", username="admin", password="s3cret pass")
        assert query_influxql(cfg, "SELECT f FROM m") == [{"_series": "m", "time": 1, "f": 1}]
        attempts = {
            "wrong password": v1_config(srv.url, "sec", username="admin", password="nope"),
            "no credentials": v1_config(srv.url, "sec"),
            "token on 1.x": v1_config(srv.url, "sec", token="tok"),
            "read-only user": v1_config(srv.url, "sec", username="reader", password="r"),
            "cannot create": v1_config(srv.url, "other", username="reader", password="r"),
        }
        for what, bad_cfg in attempts.items():
            sink = V1Sink(bad_cfg)
            with pytest.raises(SinkUnavailable) as exc:
                sink.write(["m,t=b f=2 2"])
            message = str(exc.value)
            assert "credentials" in message or "CREATE DATABASE failed" in message, what
            assert "nope" not in message and "s3cret" not in message
            sink.close()
        with pytest.raises(SinkUnavailable, match="credentials"):
            query_influxql(v1_config(srv.url, "sec"), "SELECT * FROM m")
        assert srv.query("SELECT count(f) FROM m", "sec")[0]["count"] == 1
        srv.stop()
        t0 = time.monotonic()
        with pytest.raises(SinkUnavailable, match="unreachable"):
            good.write(["m,t=a f=3 3"])  # its kept-alive connection is gone too
        assert time.monotonic() - t0 < 1.0
        assert good.ping() is False
        good.close()


def test_ping(influxdb: InfluxServer, v1: V1Sink) -> None:
    assert v1.ping() is True


@pytest.mark.parametrize("gz", ["always", "auto"])
def test_gzip_large_batch(influxdb: InfluxServer, influx_database: str, gz: str) -> None:
    """20,000 lines in one request. With gzip (always; auto does not compress for a loopback
    database) the body is gzipped (Content-Encoding: gzip); had 1.6.7 ignored the header,
    the compressed bytes would be 'unable to parse'."""
    cfg = v1_config(influxdb.url, influx_database, gzip=gz)
    assert cfg.compress is (gz == "always")
    v1 = V1Sink(cfg)
    base = golden(FIXTURES / "records/icmp-ok.json")
    t0 = time_ns(base.measured_at)
    lines = [
        encode_point(
            "icmp",
            {**base.tags, **EXTRA, "station": f"{3171011001000 + i % 2000}"},
            {**base.fields, "id": uuid.uuid4().hex},
            t0 + i * 1000,
        )
        for i in range(20_000)
    ]
    size = len("\n".join(lines).encode())
    assert size > GZIP_MIN_BYTES
    start = time.perf_counter()
    result = v1.write(lines)
    elapsed = time.perf_counter() - start
    v1.close()
    assert result == WriteResult({}, 1)
    count = influxdb.query("SELECT count(loss_pct) FROM icmp", influx_database)[0]["count"]
    assert count == 20_000
    print(f"\n20,000 lines, {size / 1e6:.1f} MB raw, gzip {gz}: confirmed in {elapsed:.2f} s")


def test_query_influxql(influxdb: InfluxServer, influx_database: str, v1: V1Sink) -> None:
    v1.write([record_to_point(r, EXTRA) for r in envelope_records()])
    cfg = v1_config(influxdb.url, influx_database)
    rows = query_influxql(
        cfg, 'SELECT last("ok") FROM "icmp","http" GROUP BY "uplink"; SHOW MEASUREMENTS'
    )
    last = {(r["_series"], r["uplink"]): r["last"] for r in rows if "last" in r}
    assert last == {("icmp", "modem0"): 0, ("http", "modem0"): 1, ("http", "tps-wifi"): 0}
    kinds = sorted({r.kind for r in envelope_records()})
    assert [r["name"] for r in rows if r["_series"] == "measurements"] == kinds
    rows = query_influxql(cfg, 'SELECT "id" FROM "dns" ORDER BY time DESC LIMIT 1', epoch=None)
    assert rows == [
        {
            "_series": "dns",
            "time": "2026-11-22T04:15:07.91287Z",
            "id": "3e8b1f6d2c7a4b9e8d5c4b3a2f1e0d9c",
        }
    ]
    with pytest.raises(QueryError, match="error parsing query"):
        query_influxql(cfg, "SELEKT 1")
    with pytest.raises(QueryError, match="database not found"):
        query_influxql(cfg, "SELECT * FROM m", database="nope")
    with pytest.raises(SinkUnavailable):
        query_influxql(v1_config(f"http://{LOOPBACK}:{closed_port()}", "x"), "SHOW DATABASES")


# --- v2 sink against VictoriaMetrics (and InfluxDB 1.6.7, which lacks the v2 API) -----------


def test_v2_golden_records_in_victoria_metrics(victoria_metrics: VictoriaMetrics) -> None:
    """What VictoriaMetrics keeps: numeric fields as metrics `{kind}_{field}` with the tags as
    labels, time cut to milliseconds; string fields (id, error) become the value 0."""
    run = uuid.uuid4().hex
    sink = V2Sink(SinkConfig("v2", victoria_metrics.url, "sinyal", bucket="qos", token="ignored"))
    records = golden_records()
    assert sink.ping() is True
    result = sink.write([record_to_point(r, {**EXTRA, "run": run}) for r in records])
    assert result == WriteResult({}, 1)
    series = victoria_metrics.export(f'{{run="{run}"}}')
    got = {
        (s["metric"]["__name__"], s["metric"]["station"], s["metric"]["uplink"], ts): v
        for s in series
        for v, ts in zip(s["values"], s["timestamps"], strict=True)
    }
    labels = {frozenset(k for k in s["metric"] if k != "__name__") for s in series}
    for r in records:
        expected_labels = frozenset({*r.tags, *EXTRA, "run"})
        assert expected_labels in labels
        ms = time_ns(r.measured_at) // 1_000_000
        key = (r.tags["station"], r.tags["uplink"], ms)
        for k, v in r.fields.items():
            expected = 0 if isinstance(v, str) else float(v)  # string fields are lost too
            assert got[(f"{r.kind}_{k}", *key)] == expected, (r.id, k)
        assert got[(f"{r.kind}_id", *key)] == 0  # the string is lost
        if r.error is not None:
            assert got[(f"{r.kind}_error", *key)] == 0
    allowed = {"__name__", "run", *EXTRA, *(t for m in MEASUREMENTS.values() for t in m.tags)}
    assert all(set(s["metric"]) <= allowed for s in series)  # no db or bucket label
    assert len(got) == sum(len(r.fields) + 1 + (r.error is not None) for r in records)
    sink.close()


def test_v2_resend_is_idempotent_with_dedup(victoria_metrics: VictoriaMetrics) -> None:
    """Series + timestamp overwrite on InfluxDB; VictoriaMetrics keeps duplicate samples
    unless started with -dedup.minScrapeInterval (the fixture uses 1ms, as a deployment must)."""
    run = uuid.uuid4().hex
    sink = V2Sink(SinkConfig("v2", victoria_metrics.url, "sinyal"))
    records = envelope_records()
    lines = [record_to_point(r, {**EXTRA, "run": run}) for r in records]
    sink.write(lines)
    sink.write(lines)
    series = victoria_metrics.export(f'{{run="{run}", __name__=~".*_ok"}}')
    stamps = [t for s in series for t in s["timestamps"]]
    assert len(stamps) == sum("ok" in r.fields for r in records)  # a skipped test has no ok
    assert all(len(set(s["timestamps"])) == len(s["timestamps"]) for s in series)
    sink.close()


def test_v2_victoria_metrics_skips_bad_lines_silently(victoria_metrics: VictoriaMetrics) -> None:
    run = uuid.uuid4().hex
    t = time_ns(golden(GOLDEN_FILES[0]).measured_at)
    sink = V2Sink(SinkConfig("v2", victoria_metrics.url, "sinyal"))
    lines = [f"m,run={run} a=1 {t}", "not line protocol", f"m,run={run} a=2 {t + 10**6}"]
    assert sink.write(lines).rejected == {}  # VictoriaMetrics answers 204, only logs the line
    [s] = victoria_metrics.export(f'{{run="{run}"}}')
    assert s["values"] == [1, 2]
    assert s["timestamps"] == [t // 10**6, t // 10**6 + 1]
    sink.close()


def test_v2_against_influxdb_1_6_is_unavailable(influxdb: InfluxServer) -> None:
    sink = V2Sink(SinkConfig("v2", influxdb.url, "sinyal"))
    with pytest.raises(SinkUnavailable, match="use sink kind v1"):
        sink.write(["m f=1 1"])
    sink.close()


# --- statuses the real servers rarely give, from a scripted server ---------------------------


@pytest.mark.parametrize("kind", ["v1", "v2"])
@pytest.mark.parametrize(
    ("status", "retry_after", "expected_retry"),
    [(500, None, 7), (503, "120", 120), (429, "3", 7), (404, None, 7)],
)
def test_failing_database_is_unavailable(
    kind: str, status: int, retry_after: str | None, expected_retry: int
) -> None:
    headers = {"Content-Type": "application/json"}
    if retry_after:
        headers["Retry-After"] = retry_after
    body = json.dumps({"error": "engine on fire", "message": "engine on fire"}).encode()
    with scripted_server(lambda req: (status, headers, body)) as (url, seen):
        sink = make_sink(SinkConfig(kind, url, "db", retry_after_s=7))
        with pytest.raises(SinkUnavailable) as exc:
            sink.write(["m f=1 1", "m f=2 2"])
        assert exc.value.retry_after_s == expected_retry
        assert len(seen) == 1  # no client retries: the agents' spools retry
        sink.close()


def _refuse_bad(status: int) -> Callable[[ScriptedRequest], Answer]:
    """Answers like InfluxDB: the lines containing BAD are dropped, the others stored."""

    def answer(req: ScriptedRequest) -> Answer:
        bad = [line for line in req.lines if "BAD" in line]
        if not bad:
            return 204, {}, b""
        why = f"partial write: field type conflict: {bad[0]} dropped={len(bad)}"
        key = "message" if req.path.startswith("/api/v2/") else "error"
        return status, {"Content-Type": "application/json"}, json.dumps({key: why}).encode()

    return answer


@pytest.mark.parametrize(("kind", "status"), [("v1", 400), ("v2", 400), ("v2", 422)])
def test_refused_lines_are_found_on_both_apis(kind: str, status: int) -> None:
    lines = [f"m,s=s{i} f={i} {i}" for i in range(40)]
    for i in (3, 17, 18, 39):
        lines[i] = f"m,s=BAD{i} f={i}i {i}"
    with scripted_server(_refuse_bad(status)) as (url, seen):
        sink = make_sink(SinkConfig(kind, url, "db"))
        result = sink.write(lines)
        sink.close()
    assert set(result.rejected) == {3, 17, 18, 39}
    assert result.rejected[17] == f"partial write: field type conflict: {lines[17]} dropped=1"
    written = {line for req in seen if not any("BAD" in x for x in req.lines) for line in req.lines}
    assert written == {line for line in lines if "BAD" not in line}
    assert result.requests == len(seen) <= 2 * len(lines)


def test_too_large_batches_are_split() -> None:
    def answer(req: ScriptedRequest) -> Answer:
        if len(req.lines) > 3:
            return 413, {}, b'{"error":"Request Entity Too Large"}'
        return 204, {}, b""

    lines = [f"m f={i} {i}" for i in range(10)]
    with scripted_server(answer) as (url, seen):
        sink = V1Sink(SinkConfig("v1", url, "db"))
        result = sink.write(lines)
        sink.close()
    assert result.rejected == {}
    assert sorted(line for req in seen if len(req.lines) <= 3 for line in req.lines) == sorted(
        lines
    )


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (b'{"error":"partial write: x dropped=1"}', None, "partial write: x dropped=1"),
        (b'{"code":"invalid","message":"unable to parse"}', None, "unable to parse"),
        (
            b'{"error":"partial write of line protocol occurred","data":[{"original_line":'
            b'"m f=1i","line_number":2,"error_message":"invalid column type for column \'f\'"}]}',
            None,
            "partial write of line protocol occurred: invalid column type for column 'f'",
        ),
        (b"", "from the header", "from the header"),
        (b"<html>gateway</html>", None, "<html>gateway</html>"),
        (b"", None, "Bad Gateway"),
    ],
)
def test_error_text(body: bytes, header: str | None, expected: str) -> None:
    assert _error_text(body, header, "Bad Gateway") == expected


# --- the resolving logic on its own ----------------------------------------------------------


def test_resolving_splits_too_large_batches() -> None:
    def post(batch: list[str]) -> _Refused | None:
        if len(batch) > 3 or "huge" in batch:
            return _Refused("413 Request Entity Too Large", too_large=True)
        return None

    lines = [f"m f={i} {i}" for i in range(10)]
    lines[4] = "huge"
    result = _write_resolving(lines, post)
    assert result.rejected == {4: "413 Request Entity Too Large"}
    assert result.requests <= 2 * len(lines)


def test_resolving_takes_named_parse_errors_out_at_once() -> None:
    lines = ["m f=1 1", "bad one", "m f=2 2", "bad ' : two", "m f=3 3"]
    posts: list[list[str]] = []

    def post(batch: list[str]) -> _Refused | None:
        posts.append(batch)
        bad = [b for b in batch if b.startswith("bad")]
        if not bad:
            return None
        return _Refused("\n".join(f"unable to parse '{b}': invalid field format" for b in bad))

    result = _write_resolving(lines, post)
    assert result.rejected == {
        1: "unable to parse 'bad one': invalid field format",
        3: "unable to parse 'bad ' : two': invalid field format",
    }
    assert posts[1] == ["m f=1 1", "m f=2 2", "m f=3 3"]  # the rest, rewritten once
    assert result.requests == 2


def test_resolving_is_bounded_without_hints() -> None:
    lines = [f"m{i % 3} f={i} {i}" for i in range(256)]
    bad = set(range(0, 256, 7))

    def post(batch: list[str]) -> _Refused | None:
        n = sum(1 for b in batch if lines.index(b) in bad)
        return _Refused("no idea which") if n else None

    result = _write_resolving(lines, post)
    assert set(result.rejected) == bad
    assert result.requests <= 2 * len(lines)


# --- v1 in the event loop ---------------------------------------------------------------------


def test_v1_write_async_answers_like_write(influxdb: InfluxServer) -> None:
    """The API's path: the whole-batch case in the loop, everything else through write()."""
    db = f"async_{uuid.uuid4().hex[:8]}"
    influxdb.databases.append(db)
    sink = V1Sink(v1_config(influxdb.url, db))
    down = V1Sink(v1_config(f"http://{LOOPBACK}:{closed_port()}", "x"))

    async def scenario() -> list[WriteResult]:
        try:
            out = [await sink.write_async(["m,t=a f=1.5 1"])]  # creates the database
            out.append(await sink.write_async(["m,t=a f=2.5 2", "m,t=b f=3.5 3"]))
            # a type conflict and a comment: resolved exactly, as write() does
            out.append(await sink.write_async(["m,t=c f=4.5 4", "m,t=d f=1i 5", "# no"]))
            with pytest.raises(SinkUnavailable, match="unreachable"):
                await down.write_async(["m f=1 1"])
            return out
        finally:
            await sink.aclose()
            await down.aclose()

    created, whole, partial = asyncio.run(scenario())
    sink.close()
    down.close()
    assert created.rejected == {} and whole == WriteResult({}, 1)
    assert set(partial.rejected) == {1, 2} and "field type conflict" in partial.rejected[1]
    rows = influxdb.query('SELECT "f" FROM "m"', db)
    assert [r["f"] for r in rows] == [1.5, 2.5, 3.5, 4.5]
