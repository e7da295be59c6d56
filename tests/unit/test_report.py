"""collector.report without servers: periods and zones, the user's errors, InfluxQL text and
escaping, threshold conditions, the grouped aggregates against InfluxQL's definitions, number
and date formats."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.contract.thresholds import Threshold
from collector.config import SinkConfig
from collector.registry import Station
from collector.report import compute
from collector.report.i18n import Lang
from collector.report.model import crosses_condition, meets_condition
from collector.report.query import (
    SPLIT,
    QueryError,
    Read,
    ReportQuery,
    Rows,
    ident,
    literal,
    parse_series_key,
)
from collector.report.render import PdfProcess
from collector.report.scope import ReportError, ReportRequest, Window, resolve

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
STATIONS = [
    Station("7371011001001", "A", "Sulawesi Selatan", "Kota Makassar", -5.1, 119.4,
            "Asia/Makassar", "telkomsel"),
    Station("9171011001001", "B", "Papua", "Kota Jayapura", -2.5, 140.7, "Asia/Jayapura",
            "indosat"),
    Station("9171011001002", "C", "Papua", "Kota Jayapura", -2.5, 140.7, "Asia/Jayapura", None),
    Station("9103011001005", "D", "Papua", "Kabupaten Jayapura", -2.6, 140.5, "Asia/Makassar",
            "xlsmart"),
    Station("3273011001001", "E", "Jawa Barat", "Kota Bandung", -6.9, 107.6, "Asia/Jakarta",
            "telkomsel"),
]  # fmt: skip
OPS = ["indosat", "telkomsel", "xlsmart"]


def scope(**kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"start": "2026-12-02", "end": "2026-12-02"} | kw
    return resolve(ReportRequest(**args), STATIONS, OPS, NOW)  # type: ignore[arg-type]


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def test_each_station_reads_the_period_in_its_own_zone() -> None:
    s = scope()
    wins = {g.zone: g.windows for g in s.groups}
    assert wins["WIB"] == (Window(utc("2026-12-01T17:00"), utc("2026-12-02T17:00")),)
    assert wins["WITA"] == (Window(utc("2026-12-01T16:00"), utc("2026-12-02T16:00")),)
    assert wins["WIT"] == (Window(utc("2026-12-01T15:00"), utc("2026-12-02T15:00")),)
    assert s.single_window is None


def test_zone_option_reads_the_period_in_that_zone_for_everyone() -> None:
    s = scope(zone="WIT")
    assert {g.windows for g in s.groups} == {
        (Window(utc("2026-12-01T15:00"), utc("2026-12-02T15:00")),)
    }
    assert s.single_window is not None


def test_voting_hours_are_07_to_13_in_each_stations_own_zone() -> None:
    s = scope(voting_hours=True, end="2026-12-03")
    wita = next(g for g in s.groups if g.zone == "WITA")
    # 07:00 WITA is 23:00 UTC the day before; 13:00 WITA is 05:00 UTC.
    assert wita.windows == (
        Window(utc("2026-12-01T23:00"), utc("2026-12-02T05:00")),
        Window(utc("2026-12-02T23:00"), utc("2026-12-03T05:00")),
    )
    assert {s.id for s in wita.stations} == {"7371011001001", "9103011001005"}
    # 06:59 WITA is out, 07:00 in, 12:59 in, 13:00 out.
    w = wita.windows[0]
    for hhmm, inside in (("22:59", False), ("23:00", True), ("04:59", True), ("05:00", False)):
        day = "2026-12-01" if hhmm.startswith("2") else "2026-12-02"
        t = utc(f"{day}T{hhmm}")
        assert (w.start <= t < w.end) is inside, hhmm


def test_a_period_running_past_now_is_cut_and_says_so() -> None:
    s = scope(start="2026-12-04", end="2026-12-04", zone="WIB")
    assert s.clipped and s.groups[0].windows[0].end == NOW


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"start": "2026-12-03", "end": "2026-12-02T10:00"}, "an empty period"),
        ({"start": "2027-01-01", "end": "2027-01-02"}, "the period is in the future"),
        (
            {"province": "Jabar"},
            "--province: got 'Jabar', expected a province of the registry: "
            "Jawa Barat, Papua, Sulawesi Selatan",
        ),
        ({"operator": "xl"}, "--operator: got 'xl', expected one of indosat, telkomsel, xlsmart"),
        ({"regency": "Bogor"}, "--regency: got 'Bogor'"),
        ({"station": "1"}, "--station: got '1'"),
        ({"start": "02/12/2026"}, "expected a local date YYYY-MM-DD"),
        ({"start": "2026-02-30"}, "--from: got '2026-02-30'"),
        ({"zone": "UTC"}, "--zone: got 'UTC'"),
        ({"formats": ("csv", "docx")}, "--format: got 'csv,docx'"),
        ({"lang": "jv"}, "--lang: got 'jv'"),
    ],
)
def test_the_users_errors_name_option_value_and_what_is_expected(
    kw: dict[str, object], message: str
) -> None:
    with pytest.raises(ReportError) as e:
        scope(**kw)
    assert message in str(e.value)


def test_influxql_literals_and_identifiers_cannot_be_escaped_from() -> None:
    assert literal("Jawa'; DROP DATABASE x; --") == "'Jawa\\'; DROP DATABASE x; --'"
    assert literal("a\\'b") == "'a\\\\\\'b'"
    assert ident('x"y') == '"x\\"y"'


ICMP = Read("icmp", "icmp", ("loss_pct", "rtt_p50_ms"), ("station", "operator"))


def test_one_statement_per_stretch_of_time_the_zones_windows_cover() -> None:
    rq = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope())
    # A day in each station's own zone: WIT starts at 15:00 UTC, WIB ends at 17:00 UTC.
    assert rq.spans == [Window(utc("2026-12-01T15:00"), utc("2026-12-02T17:00"))]
    text = rq.text(ICMP)
    assert text.count("SELECT") == 1 and "(SELECT" not in text
    assert 'SELECT "loss_pct", "rtt_p50_ms" FROM "icmp"' in text
    assert text.endswith('GROUP BY "station", "operator"')
    # Voting hours: 22:00-06:00 UTC covers 07-13 WIT, WITA and WIB, one stretch a day.
    rq = ReportQuery(
        SinkConfig("v1", "http://127.0.0.1:1"), scope(voting_hours=True, end="2026-12-03")
    )
    assert rq.spans == [
        Window(utc("2026-12-01T22:00"), utc("2026-12-02T06:00")),
        Window(utc("2026-12-02T22:00"), utc("2026-12-03T06:00")),
    ]
    assert rq.text(ICMP).count("SELECT") == 2


def test_the_largest_read_is_split_by_station_into_two_complementary_statements() -> None:
    rq = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope())
    rq._parts["icmp"] = list(SPLIT)
    a, b = rq.text(ICMP).split("; ")
    assert 'AND "station" =~ /[02468]$/ GROUP BY' in a
    assert 'AND "station" !~ /[02468]$/ GROUP BY' in b
    assert a.replace("=~", "!~") == b


def test_scope_filters_are_tag_conditions() -> None:
    rq = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope(zone="WIB", operator="xlsmart"))
    text = rq.text(ICMP)
    assert "\"operator\" = 'xlsmart'" in text and "(SELECT" not in text


def test_series_keys_are_parsed_with_line_protocol_escaping() -> None:
    key = r"icmp,operator=indosat,province=Papua,regency=Kota\ Jayapura,station=9171011001003"
    assert parse_series_key(key) == (
        "icmp",
        {"operator": "indosat", "province": "Papua", "regency": "Kota Jayapura",
         "station": "9171011001003"},
    )  # fmt: skip
    assert parse_series_key(r"a\,b\ c,k\=1=v\,2\=3,x=y=z") == (
        "a,b c",
        {"k=1": "v,2=3", "x": "y=z"},
    )
    assert parse_series_key("icmp") == ("icmp", {})
    # Keys holding NUL or SOH (not written by the collector) take the regular expressions.
    assert parse_series_key("m\x00\\,x,k=v\\=w\\ z") == ("m\x00,x", {"k": "v=w z"})
    for bad in ("icmp,foo", r"icmp,fo\=o", "icmp\x01,fo\\=o"):
        with pytest.raises(QueryError, match="not `measurement,tag=value"):
            parse_series_key(bad)


def test_reads_ask_for_messagepack_alone_and_gzip_only_over_a_network() -> None:
    # InfluxDB 1.6 answers JSON to "application/x-msgpack, application/json;q=0.5".
    near = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope())
    assert (near._accept, near._encoding) == ("application/x-msgpack", "identity")
    for url in ("http://[::1]:8086", "http://localhost:8086"):
        assert ReportQuery(SinkConfig("v1", url), scope())._encoding == "identity"
    far = ReportQuery(SinkConfig("v1", "https://influx.example:8086"), scope())
    assert far._encoding == "gzip"


FULL = Read("icmp", "icmp", ("loss_pct",),
            ("station", "operator", "province", "regency", "uplink", "target"))  # fmt: skip


def _key(s: str, op: str, prov: str, up: str = "m0", tgt: str = "kpu") -> dict[str, str]:
    return {"station": s, "operator": op, "province": prov, "regency": "R", "uplink": up,
            "target": tgt}  # fmt: skip


def test_reads_group_by_the_fewest_tags_the_series_index_allows() -> None:
    rq = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope())
    one = [_key("1", "a", "P"), _key("1", "b", "P"), _key("2", "a", "Q")]
    group, full = rq.grouping(FULL, one)
    assert group == ("station", "operator")
    assert full is not None and full[("1", "b")] == ("1", "b", "P", "R", "m0", "kpu")
    # Two targets of one station and operator: their rounds are told apart (series count).
    two = [*one, _key("1", "a", "P", tgt="dns")]
    group, full = rq.grouping(FULL, two)
    assert group == ("station", "operator", "uplink", "target")
    assert full is not None and full[("1", "a", "m0", "dns")][5] == "dns"
    # A station whose province changed: every tag, as the rows' tags group the tables.
    moved = [*two, _key("2", "a", "Z")]
    assert rq.grouping(FULL, moved) == (FULL.tags, None)
    rows4 = Read("dns", "dns", ("ok",), FULL.tags[:4])
    assert rq.grouping(rows4, [_key("2", "a", "Q"), _key("2", "a", "Z")]) == (rows4.tags, None)
    assert rq.grouping(rows4, [_key("2", "a", "Q")])[0] == ("station", "operator")


def _t(hiw: bool, inclusive: bool) -> Threshold:
    good, warn, alert = (1.0, 2.0, 3.0) if hiw else (3.0, 2.0, 1.0)
    return Threshold("m", ("icmp.x",), hiw, "", good, warn, alert, inclusive, "s")


def _rows(values: list[float | None]) -> Rows:
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    n = len(v)
    return Rows(("station",), [("s",)], np.zeros(n, np.int64), np.arange(n, dtype=np.int64),
                {"x": v})  # fmt: skip


@pytest.mark.parametrize(("hiw", "inclusive"), [(True, False), (True, True), (False, False),
                                                (False, True)])  # fmt: skip
def test_threshold_conditions_match_the_thresholds_model(hiw: bool, inclusive: bool) -> None:
    t = _t(hiw, inclusive)
    values = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, None]
    meets = meets_condition(t, "x").test(_rows(values)).tolist()
    assert meets == [v is not None and not t.breaches(v) for v in values]
    # Warn or worse is the opposite of meeting, for a present value; alert lies beyond.
    warn = crosses_condition(t, "x", "warn").test(_rows(values)).tolist()
    assert warn == [v is not None and t.breaches(v) for v in values]
    alert = crosses_condition(t, "x", "alert").test(_rows(values)).tolist()
    assert all(w for w, a in zip(warn, alert, strict=True) if a)
    assert str(meets_condition(_t(True, True), "x")) == "x < 2"


def nearest_rank(v: list[float], p: float) -> float | None:
    """InfluxQL percentile(): rank floor(N x P / 100 + 0.5), none at rank 0, capped at N."""
    v = sorted(v)
    i = math.floor(len(v) * p / 100.0 + 0.5) - 1
    return v[min(i, len(v) - 1)] if i >= 0 else None


def median(v: list[float]) -> float | None:
    v = sorted(v)
    n = len(v)
    if not n:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.one_of(st.none(), st.floats(-1e6, 1e6)), st.booleans()),
        max_size=60,
    ),
    st.sampled_from([1.0, 10.0, 50.0, 95.0, 99.9, 100.0]),
)
def test_grouped_aggregates_follow_influxqls_definitions(
    rows: list[tuple[int, float | None, bool]], p: float
) -> None:
    groups = 5
    gid = np.array([g for g, _, _ in rows], dtype=np.int64)
    vals = np.array([np.nan if v is None else v for _, v, _ in rows], dtype=np.float64)
    cond = np.array([c for _, _, c in rows], dtype=bool)
    mask = ~np.isnan(vals) & cond
    srt = compute.Sorted.of(gid, vals, compute.by_value(vals, mask), groups)
    pct, med = srt.percentile(p), srt.median()
    n = compute.count(gid, mask, groups)
    tot = compute.total(gid, vals, mask, groups)
    for g in range(groups):
        mine = [v for gg, v, c in rows if gg == g and v is not None and c]
        assert n[g] == len(mine)
        assert math.isclose(tot[g], sum(mine), abs_tol=1e-6)
        want_p, want_m = nearest_rank(mine, p), median(mine)
        assert math.isnan(pct[g]) if want_p is None else pct[g] == want_p, (g, mine)
        assert math.isnan(med[g]) if want_m is None else med[g] == want_m, (g, mine)


def test_worst_hours_and_hourly_means() -> None:
    h = compute.HOUR_NS
    gid = np.array([0, 0, 0, 0, 1, 1], dtype=np.int64)
    time = np.array([0, h + 1, h + 2, 2 * h, 5 * h, 5 * h + 7], dtype=np.int64)
    mask = np.array([True, True, True, True, False, True])
    # Most rows first, earlier first on a tie; whole UTC hours.
    assert compute.worst_hours(gid, time, mask, 2, 2) == [[(h, 2), (0, 1)], [(5 * h, 1)]]
    a = np.array([1.0, 2.0, 4.0, np.nan, np.nan, np.nan])
    b = np.array([0.0, 10.0, 0.0, 5.0, np.nan, 3.0])
    assert compute.hourly_means(gid, time, [a, b], 2) == [
        (0, 0, [1.0, 0.0]),
        (0, h, [3.0, 5.0]),
        (0, 2 * h, [None, 5.0]),
        (1, 5 * h, [None, 3.0]),
    ]


def test_numbers_and_dates_in_both_languages() -> None:
    id_, en = Lang("id"), Lang("en")
    assert id_.number(1234.5) == "1.234,5" and en.number(1234.5) == "1,234.5"
    assert id_.number(1234567) == "1.234.567"
    assert id_.date(datetime(2026, 12, 3)) == "3 Desember 2026"
    assert en.date(datetime(2026, 12, 3)) == "3 December 2026"
    assert id_.number(None) == "–"


def test_the_pdf_process_writes_the_file_or_says_why(tmp_path: Path) -> None:
    good = PdfProcess(tmp_path / "a.pdf")
    good.send("<h1>Laporan</h1><p>1.234,5</p>")
    good.wait()
    good.stop()
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF-")
    bad = PdfProcess(tmp_path / "missing" / "b.pdf")
    bad.send("<p>x</p>")
    with pytest.raises(RuntimeError, match=r"^b\.pdf: the PDF renderer failed: .*No such file"):
        bad.wait()
    bad.stop()
