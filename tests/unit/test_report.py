"""collector.report without servers: periods and zones, the user's errors, InfluxQL text and
escaping, threshold conditions, number and date formats."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.contract.thresholds import Threshold
from collector.config import SinkConfig
from collector.registry import Station
from collector.report.i18n import Lang
from collector.report.model import crosses_condition, meets_condition
from collector.report.query import Q, ReportQuery, ident, literal
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


def test_a_province_with_an_odd_zone_station_names_only_that_station() -> None:
    rq = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope())
    q = Q("t", "icmp", ('count("loss_pct")',), ("loss_pct",), ("operator",))
    text = rq.text(q)
    # Papua is WIT; its one WITA station is left out there and added to WITA's window.
    assert "\"province\" = 'Papua'" in text and "\"station\" != '9103011001005'" in text
    assert "\"station\" = '9103011001005'" in text
    assert text.count("(SELECT") == 3  # one subquery per zone window
    per_station = rq.text(Q("s", "icmp", ('count("loss_pct")',), ("loss_pct",), ("station",)))
    assert per_station.count("SELECT") == 3 and "(SELECT" not in per_station


def test_scope_filters_are_tag_conditions() -> None:
    rq = ReportQuery(SinkConfig("v1", "http://127.0.0.1:1"), scope(zone="WIB", operator="xlsmart"))
    text = rq.text(Q("t", "icmp", ('count("loss_pct")',), ("loss_pct",), ()))
    assert "\"operator\" = 'xlsmart'" in text and "(SELECT" not in text


def _t(hiw: bool, inclusive: bool) -> Threshold:
    return Threshold("m", ("icmp.x",), hiw, "", 1.0, 2.0, 3.0, inclusive, "s")


def test_threshold_conditions_match_the_thresholds_model() -> None:
    assert meets_condition(_t(True, False), "x") == '"x" <= 2'
    assert meets_condition(_t(True, True), "x") == '"x" < 2'
    assert meets_condition(_t(False, False), "x") == '"x" >= 2'
    assert crosses_condition(_t(True, True), "x", "alert") == '"x" >= 3'
    assert crosses_condition(_t(False, False), "x", "warn") == '"x" < 2'


def test_numbers_and_dates_in_both_languages() -> None:
    id_, en = Lang("id"), Lang("en")
    assert id_.number(1234.5) == "1.234,5" and en.number(1234.5) == "1,234.5"
    assert id_.number(1234567) == "1.234.567"
    assert id_.date(datetime(2026, 12, 3)) == "3 Desember 2026"
    assert en.date(datetime(2026, 12, 3)) == "3 December 2026"
    assert id_.number(None) == "–"
