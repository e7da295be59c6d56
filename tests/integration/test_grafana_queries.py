"""Every InfluxQL query of the dashboards, variables, annotations and alert rules runs against
the real InfluxDB 1.6.7, seeded with a scenario of ok, degraded, critical and silent stations,
and gives the answers the control room needs.

The scenario goes through the collector's own code where it can: stations from a registry CSV
(collector.registry), station_status points from collector.status.StatusEngine fed the same
records, encoded with collector.lineproto exactly as the collector writes them. throughput
and upload (not produced by the agent yet) are seeded with design.md's field names.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.contract import thresholds as agent_thresholds
from agent.contract.record import Record
from collector.config import StatusConfig
from collector.lineproto import encode_point, record_to_point
from collector.registry import Registry
from collector.station import Station
from collector.status import StatusEngine
from tests.conftest import ROOT
from tests.harness.dbs import InfluxServer
from tests.harness.grafana_artifacts import (
    Query,
    dashboards,
    default_range_s,
    interpolate,
    queries,
    rules,
)

JAKARTA = ("DKI Jakarta", "Kota Jakarta Pusat", "Asia/Jakarta")
BALI = ("Bali", "Kota Denpasar", "Asia/Makassar")
PAPUA = ("Papua", "Kota Jayapura", "Asia/Jayapura")
TSEL, ISAT = "telkomsel", "indosat"
# Roles: ok; deg-loss (1.5 % loss); deg-rtt (200 ms); crit-timeout (no replies);
# crit-loss (40 % loss on one target); silent (stopped reporting); never (never reported).
# id, name, (province, regency, tz), lat, lon, expected operator, role
ROWS = [
    ("3171011001001", "J1", JAKARTA, -6.17, 106.82, TSEL, "ok"),
    ("3171011001002", "J2", JAKARTA, -6.18, 106.83, ISAT, "ok"),
    ("3171011001003", "J3", JAKARTA, -6.19, 106.84, TSEL, "crit-timeout"),
    ("3171011001004", "J4", JAKARTA, -6.20, 106.85, ISAT, "deg-loss"),
    ("5171011001001", "B1", BALI, -8.65, 115.21, ISAT, "ok"),
    ("5171011001002", "B2", BALI, -8.66, 115.22, TSEL, "ok"),
    ("5171011001003", "B3", BALI, -8.67, 115.23, ISAT, "ok"),
    ("5171011001004", "B4", BALI, -8.68, 115.24, TSEL, "crit-loss"),
    ("5171011001005", "B5", BALI, -8.69, 115.25, ISAT, "silent"),
    ("5171011001006", "B6", BALI, -8.70, 115.26, TSEL, "ok"),
    ("5171011001007", "B7", BALI, -8.71, 115.27, ISAT, "ok"),
    ("9171011001001", "P1", PAPUA, -2.53, 140.71, TSEL, "ok"),
    ("9171011001002", "P2", PAPUA, -2.54, 140.72, TSEL, "never"),
    ("9171011001003", "P3", PAPUA, -2.55, 140.73, TSEL, "deg-rtt"),
]
# id, name, province, regency, lat, lon, tz, expected operator, role
STATIONS = [(i, n, p, r, lat, lon, tz, op, role) for i, n, (p, r, tz), lat, lon, op, role in ROWS]
SID = {s[1]: s[0] for s in STATIONS}
ROLE = {s[0]: s[8] for s in STATIONS}
EXPECTED_STATUS = {"ok": 0, "deg-loss": 1, "deg-rtt": 1, "crit-timeout": 2, "crit-loss": 2,
                   "silent": 3, "never": 3}  # fmt: skip
TARGETS = ("kpu", "nix")
UPLINK = "modem0"
ROUNDS = 30  # one a minute, the last a minute ago
SILENT_AFTER_ROUND = 5  # B5's last upload
DETAIL = "J1"  # the station the station dashboard is checked with (it has every measurement)


def icmp_fields(role: str, target: str) -> tuple[dict[str, int | float], str | None]:
    good: dict[str, int | float] = {
        "sent": 10, "received": 10, "loss_pct": 0.0, "timeout_ms": 2000.0, "rtt_min_ms": 20.0,
        "rtt_avg_ms": 27.0, "rtt_p50_ms": 25.0, "rtt_p95_ms": 40.0, "rtt_max_ms": 45.0,
        "rtt_stddev_ms": 5.0, "jitter_ms": 3.0, "mos": 4.35, "ok": 1,
    }  # fmt: skip
    if role == "deg-loss":
        return {**good, "sent": 200, "received": 197, "loss_pct": 1.5, "mos": 4.3}, None
    if role == "deg-rtt":
        return {**good, "rtt_p50_ms": 200.0, "rtt_avg_ms": 205.0, "rtt_p95_ms": 260.0,
                "rtt_max_ms": 270.0, "rtt_min_ms": 190.0, "mos": 4.1}, None  # fmt: skip
    if role == "crit-timeout":
        return {"sent": 10, "received": 0, "loss_pct": 100.0, "timeout_ms": 2000.0, "mos": 1.0,
                "ok": 0}, "timeout"  # fmt: skip
    if role == "crit-loss" and target == "kpu":
        return {**good, "received": 6, "loss_pct": 40.0, "mos": 2.5}, None
    return good, None


@dataclass
class Scenario:
    db: str
    now: datetime
    stations: dict[str, Station]
    icmp_rounds: list[tuple[str, str, dict[str, int | float]]] = field(default_factory=list)
    status_changes: set[tuple[str, int]] = field(default_factory=set)  # points with age 0


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def write(influxdb: InfluxServer, db: str, lines: list[str]) -> None:
    import httpx

    r = httpx.post(f"{influxdb.url}/write", params={"db": db}, content="\n".join(lines),
                   timeout=30)  # fmt: skip
    assert r.status_code == 204, r.text


def agent_fields(name: str, minute: int) -> tuple[str, dict[str, int | float]]:
    """The heartbeat of a station's agent: version and fields. J1 has a 1 h backlog now; J2 had
    one until its latest heartbeat (spool empty: no oldest_unsent_s); B1's clock is not
    synchronised; B2 has a 10 min backlog; B3 dropped records."""
    f: dict[str, int | float] = {"uptime_s": 3600.0 + 60 * minute, "spool_records": 0,
                                 "dropped_total": 0, "dead_letters": 0, "clock_offset_ms": 12.0,
                                 "clock_synced": 1, "cpu_pct": 0.5, "rss_mb": 36.0}  # fmt: skip
    version = "0.2.0" if name in ("J1", "B1") else "0.1.0"
    last = minute == ROUNDS - 1
    if name == "J1" or (name == "J2" and not last):
        f.update(spool_records=120, oldest_unsent_s=3600.0 + 60 * minute)
    if name == "B1":
        f.update(clock_synced=0, clock_offset_ms=2500.0)
    if name == "B2":
        f.update(spool_records=10, oldest_unsent_s=600.0)
    if name == "B3":
        f.update(dropped_total=42, dead_letters=3)
    return version, f


@pytest.fixture(scope="module")
def scenario(influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("grafana")
    csv = tmp / "stations.csv"
    csv.write_text(
        "id,name,province,regency,lat,lon,tz,expected_operator\n"
        + "".join(
            f"{s[0]},TPS {s[1]},{s[2]},{s[3]},{s[4]},{s[5]},{s[6]},{s[7]}\n" for s in STATIONS
        )
    )
    registry = Registry(tmp / "registry.sqlite", refresh_s=0)
    try:
        assert registry.import_stations_csv(csv).added == len(STATIONS)
        known = {s.id: s for s in registry.stations()}
    finally:
        registry.close()
    assert set(known) == set(ROLE)
    db = "grafana_scenario"
    influxdb.create_database(db)
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(now - timedelta(minutes=31))
    thresholds = agent_thresholds.load(ROOT / "config" / "thresholds.yaml")
    engine = StatusEngine(thresholds, StatusConfig(silent_after_s=300), clock)
    sc = Scenario(db, now, known)
    infos = dict(known)
    lines: list[str] = []

    def status_points(ids: list[str]) -> None:
        for m, tags, fields, t in engine.status_points([infos[i] for i in ids], clock.t):
            lines.append(encode_point(m, tags, fields, t))
            if fields["status_age_s"] == 0:  # (series, time) is the point: rewrites count once
                sc.status_changes.add((tags["station"], t))

    for minute in range(ROUNDS):
        clock.t += timedelta(minutes=1)
        measured = clock.t - timedelta(seconds=5)
        for sid, st in known.items():
            name, role = f"{st.name[4:]}", ROLE[sid]
            if role == "never" or (role == "silent" and minute > SILENT_AFTER_ROUND):
                continue
            region = {"province": st.province, "regency": st.regency}
            records = []
            for tgt in TARGETS:
                fields, error = icmp_fields(role, tgt)
                records.append(Record("icmp", measured, {"station": sid, "uplink": UPLINK,
                                      "operator": st.expected_operator or "", "target": tgt},
                                      fields, error))  # fmt: skip
                sc.icmp_rounds.append((sid, tgt, fields))
            version, hb = agent_fields(name, minute)
            records.append(Record("agent", measured, {"station": sid, "version": version}, hb))
            lines += [record_to_point(r, region) for r in records]
            first = not engine.knows(sid)
            if engine.observe(infos[sid], [r for r in records if r.kind == "icmp"]) or first:
                status_points([sid])
        changed = [c.station for c in engine.sweep(infos.values())]
        if changed:
            status_points(changed)
        if minute % 5 == 4:  # the sweeper's refresh of every station
            status_points(list(known))
    clock.t = now - timedelta(seconds=30)
    changed = [c.station for c in engine.sweep(infos.values())]
    status_points(changed)
    status_points(list(known))
    lines += detail_lines(known[SID[DETAIL]], now)
    write(influxdb, db, lines)
    return sc


def detail_lines(st: Station, now: datetime) -> list[str]:
    """DNS, HTTP, throughput and upload rounds of one station, as the collector writes them
    (throughput and upload with design.md's fields: the agent's probes are being written)."""
    tags = {"station": st.id, "province": st.province, "regency": st.regency,
            "operator": st.expected_operator or "", "uplink": UPLINK}  # fmt: skip
    out = []
    for k in range(6):
        t = now - timedelta(minutes=5 * k + 2)
        dns = {**tags, "resolver": "lab", "qname": "kpu.go.id", "qtype": "A"}
        answer = {"resolve_ms": 30.0 + k, "rcode": 0, "answers": 1, "ok": 1}
        out.append(record_to_point(Record("dns", t, dns, answer), {}))
        out.append(record_to_point(Record("http", t, {**tags, "target": "sirekap"},
                   {"dns_ms": 20.0, "connect_ms": 30.0, "ttfb_ms": 300.0 + k, "total_ms": 900.0,
                    "status": 200, "bytes": 2048, "ok": 1}), {}))  # fmt: skip
        ns = int(t.timestamp()) * 10**9
        out.append(encode_point("throughput", {**tags, "backend": "iperf3", "server": "lab"},
                   {"download_mbps": 12.5 - k, "upload_mbps": 3.5, "idle_latency_ms": 25.0,
                    "loaded_latency_ms": 120.0 + k, "bytes_used": 25_000_000, "duration_s": 10.0,
                    "ok": 1}, ns))  # fmt: skip
        out.append(encode_point("upload", {**tags, "target": "sirekap"},
                   {"payload_bytes": 2_000_000, "duration_s": 4.0 + k, "rate_mbps": 4.0,
                    "ok": 1}, ns))  # fmt: skip
    return out


# -- running the queries as Grafana would -----------------------------------------------------


def run(
    influxdb: InfluxServer,
    sc: Scenario,
    query: Query,
    chosen: dict[str, str | list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the query's answer for the dashboard's default range (alert rules: their
    relative time range) and the chosen variable values."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    if query.dashboard is None:
        assert query.window_s is not None
        span_s, variables = query.window_s, []
    else:
        board = dashboards()[query.dashboard]
        span_s, variables = default_range_s(board), board["templating"]["list"]
    values: dict[str, str | list[str]] = {"station": SID[DETAIL], **(chosen or {})}
    text = interpolate(query.text, variables, values, now_ms - span_s * 1000, now_ms)
    assert not re.search(r"\$[\w{]", text), f"{query.where}: unsubstituted macro in {text}"
    return influxdb.query(text, sc.db, epoch="ms")


def find(where_has: str) -> list[Query]:
    found = [x for x in queries() if where_has in x.where]
    assert found, where_has
    return found


def one(where_has: str) -> Query:
    (found,) = find(where_has)
    return found


def sort_like_grafana(rows: list[dict[str, Any]], panel: dict[str, Any]) -> list[dict[str, Any]]:
    (key,) = panel["options"]["sortBy"]
    return sorted(rows, key=lambda r: r[key["displayName"]], reverse=key["desc"])


def merge_like_grafana(frames: list[list[dict[str, Any]]], key: str) -> dict[str, dict[str, Any]]:
    """Grafana's merge transformation on frames sharing `key` (and time)."""
    out: dict[str, dict[str, Any]] = {}
    for rows in frames:
        for r in rows:
            out.setdefault(r[key], {}).update({k: v for k, v in r.items() if k != "_series"})
    return out


def fires(rule: dict[str, Any], rows: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    """Grafana's B (reduce: last non-null per series) and C (threshold) on the rows of A:
    the label sets that fire."""
    by = {d["refId"]: d["model"] for d in rule["data"]}
    assert by["B"]["reducer"] == "last" and by["B"]["expression"] == "A"
    (cond,) = by["C"]["conditions"]
    op, (limit,) = cond["evaluator"]["type"], cond["evaluator"]["params"]
    last: dict[tuple[str, ...], float] = {}
    for r in rows:
        labels = tuple(f"{k}={r[k]}" for k in ("station", "province", "regency", "operator")
                       if k in r)  # fmt: skip
        value = next(v for k, v in r.items() if k not in ("time", "_series") and "=" not in k
                     and not isinstance(v, str))  # fmt: skip
        if value is not None:
            last[labels] = value
    compare = {"gt": float.__gt__, "lt": float.__lt__}[op]
    return {labels for labels, v in last.items() if compare(float(v), float(limit))}


def names(ids: Iterator[str] | list[str] | set[str]) -> list[str]:
    by_id = {v: k for k, v in SID.items()}
    return sorted(by_id[i] for i in ids)


# -- every query ----------------------------------------------------------------------------


ALL_QUERIES = list(queries())


@pytest.mark.parametrize("query", ALL_QUERIES, ids=[x.where for x in ALL_QUERIES])
def test_every_query_runs_and_answers(
    influxdb: InfluxServer, scenario: Scenario, query: Query
) -> None:
    """Each query parses on InfluxDB 1.6.7 and finds the scenario's data (the scenario has
    something for every panel, variable, annotation and alert)."""
    rows = run(influxdb, scenario, query)
    assert rows, f"{query.where}: no rows"
    if query.panel is not None and len(query.panel["targets"]) == 1:
        # the column a table sorts by (worst first) is one the query returns
        sort = query.panel["options"].get("sortBy") or []
        assert {s["displayName"] for s in sort} <= set(rows[0]), query.where


def test_query_count() -> None:
    assert len(ALL_QUERIES) >= 50  # the report quotes this number; a drop means lost queries


# -- the national overview ------------------------------------------------------------------


def test_map_has_one_row_per_station_with_numeric_position_and_status(
    influxdb: InfluxServer, scenario: Scenario
) -> None:
    q = one("panel 'Stations by status'")
    rows = run(influxdb, scenario, q)
    assert sorted(r["station"] for r in rows) == sorted(ROLE)
    layer = q.panel["options"]["layers"][0] if q.panel else {}
    lat, lon = layer["location"]["latitude"], layer["location"]["longitude"]
    assert layer["config"]["style"]["color"]["field"] == "status"
    for r in rows:
        st = scenario.stations[r["station"]]
        assert isinstance(r[lat], float) and isinstance(r[lon], float)
        assert (r[lat], r[lon]) == (st.lat, st.lon)
        assert r["status"] == EXPECTED_STATUS[ROLE[r["station"]]], r
        assert r["tz"] == st.tz


def test_worst_stations_critical_first_then_degraded_most_loss_first(
    influxdb: InfluxServer, scenario: Scenario
) -> None:
    q = one("panel 'Worst 50 stations'")
    assert q.panel is not None
    rows = sort_like_grafana(run(influxdb, scenario, q), q.panel)
    assert [names([r["station"]])[0] for r in rows] == ["J3", "B4", "J4", "P3"]
    assert [r["status"] for r in rows] == [2, 2, 1, 1]
    assert rows[0]["loss_pct"] == 100 and rows[1]["loss_pct"] == 40
    assert "timeout" in rows[0]["causes"] and "loss" in rows[1]["causes"]
    assert rows[1]["tz"] == "Asia/Makassar" and rows[1]["province"] == "Bali"
    link = next(o for o in q.panel["fieldConfig"]["overrides"]
                if o["matcher"]["options"] == "station")  # fmt: skip
    (links,) = [p["value"] for p in link["properties"] if p["id"] == "links"]
    assert (
        "var-station=${__value.raw}" in links[0]["url"] and "/d/sinyal-station/" in links[0]["url"]
    )


def test_counts_per_status(influxdb: InfluxServer, scenario: Scenario) -> None:
    got = {}
    for q in find("panel 'Stations per status'"):
        if "province" in q.where:
            continue
        (row,) = run(influxdb, scenario, q)
        ((name, value),) = [(k, v) for k, v in row.items() if k not in ("time", "_series")]
        got[name] = value
    assert got == {"ok": 8, "degraded": 2, "critical": 2, "silent": 2}


def test_status_per_province(influxdb: InfluxServer, scenario: Scenario) -> None:
    frames = [run(influxdb, scenario, q) for q in find("panel 'Stations per status and province'")]
    table = merge_like_grafana(frames, "province")
    counts = {p: {k: v for k, v in r.items() if k not in ("time", "province")}
              for p, r in table.items()}  # fmt: skip
    assert counts == {
        "DKI Jakarta": {"ok": 2, "degraded": 1, "critical": 1},
        "Bali": {"ok": 5, "critical": 1, "silent": 1},
        "Papua": {"ok": 1, "degraded": 1, "silent": 1},
    }


def test_province_share_panel(influxdb: InfluxServer, scenario: Scenario) -> None:
    rows = run(influxdb, scenario, one("panel 'Share of reporting stations"))
    share = {r["province"]: round(r["not_ok_pct"], 2) for r in rows}
    assert share == {"DKI Jakarta": 50.0, "Bali": 16.67, "Papua": 50.0}


@pytest.mark.parametrize("uid", ["sinyal-overview", "sinyal-fleet"])
def test_silent_list_is_exactly_the_silent_stations(
    influxdb: InfluxServer, scenario: Scenario, uid: str
) -> None:
    q = one(f"{uid}: panel 'Silent stations'")
    assert q.panel is not None
    rows = sort_like_grafana(run(influxdb, scenario, q), q.panel)
    assert names(r["station"] for r in rows) == ["B5", "P2"]
    by = {names([r["station"]])[0]: r for r in rows}
    assert by["P2"]["last_seen_s"] is None  # never reported
    assert 20 * 60 <= by["B5"]["last_seen_s"] <= 30 * 60  # its last upload, 25 minutes ago
    assert by["B5"]["tz"] == "Asia/Makassar" and by["P2"]["tz"] == "Asia/Jayapura"


def test_variables_filter(influxdb: InfluxServer, scenario: Scenario) -> None:
    """Province and regency lists, and what choosing them (or a search prefix) does."""
    province = one("sinyal-overview: variable province")
    assert sorted(r["value"] for r in run(influxdb, scenario, province)) == [
        "Bali", "DKI Jakarta", "Papua"]  # fmt: skip
    regency = one("sinyal-overview: variable regency")
    rows = run(influxdb, scenario, regency, {"province": ["Bali", "Papua"]})
    assert sorted(r["value"] for r in rows) == ["Kota Denpasar", "Kota Jayapura"]
    mapq = one("panel 'Stations by status'")
    rows = run(influxdb, scenario, mapq, {"province": ["DKI Jakarta"]})
    assert names(r["station"] for r in rows) == ["J1", "J2", "J3", "J4"]
    rows = run(influxdb, scenario, mapq, {"search": "9171"})
    assert names(r["station"] for r in rows) == ["P1", "P2", "P3"]
    rows = run(influxdb, scenario, mapq, {"operator": ["indosat"], "province": ["Bali"]})
    assert names(r["station"] for r in rows) == ["B1", "B3", "B5", "B7"]


# -- alerts ---------------------------------------------------------------------------------


def rule_fires(influxdb: InfluxServer, sc: Scenario, uid: str) -> set[tuple[str, ...]]:
    (r,) = [x for x in rules() if x["uid"] == uid]
    return fires(r, run(influxdb, sc, one(f"rule {uid} A")))


def station_labels(*stations: str) -> set[tuple[str, ...]]:
    out = set()
    for n in stations:
        _, _, prov, reg, _, _, _, op, _ = next(s for s in STATIONS if s[1] == n)
        out.add((f"station={SID[n]}", f"province={prov}", f"regency={reg}", f"operator={op}"))
    return out


def test_alert_station_critical(influxdb: InfluxServer, scenario: Scenario) -> None:
    assert rule_fires(influxdb, scenario, "sinyal-station-critical") == station_labels("J3", "B4")


def test_alert_station_silent(influxdb: InfluxServer, scenario: Scenario) -> None:
    assert rule_fires(influxdb, scenario, "sinyal-station-silent") == station_labels("B5", "P2")


def test_alert_province_degraded(influxdb: InfluxServer, scenario: Scenario) -> None:
    got = rule_fires(influxdb, scenario, "sinyal-province-degraded")
    assert got == {("province=DKI Jakarta",), ("province=Papua",)}  # Bali: 1 of 6 (17 %)


def agent_labels(*stations: str) -> set[tuple[str, ...]]:
    return {lab[:3] for lab in station_labels(*stations)}


def test_alert_agent_backlog(influxdb: InfluxServer, scenario: Scenario) -> None:
    # J1: 1 h backlog; not J2 (emptied in its latest heartbeat), not B2 (10 minutes).
    assert rule_fires(influxdb, scenario, "sinyal-agent-backlog") == agent_labels("J1")


def test_alert_agent_clock(influxdb: InfluxServer, scenario: Scenario) -> None:
    assert rule_fires(influxdb, scenario, "sinyal-agent-clock") == agent_labels("B1")


# -- station, operators, fleet --------------------------------------------------------------


def test_station_dashboard(influxdb: InfluxServer, scenario: Scenario) -> None:
    rows = run(influxdb, scenario, one("panel 'Latency p50 / p95"))
    assert {r["_series"] for r in rows} == {"icmp"}
    series = {(r["target"], r["uplink"]) for r in rows}
    assert series == {("kpu", UPLINK), ("nix", UPLINK)}
    assert {r["p50"] for r in rows if r["p50"] is not None} == {25.0}
    (header,) = run(influxdb, scenario, one("panel 'Station now'"))
    assert header["status"] == 0 and header["tz"] == "Asia/Jakarta"
    assert header["province"] == "DKI Jakarta"
    tp = run(influxdb, scenario, one("panel 'Idle and loaded latency"))
    loaded = [r["loaded"] for r in tp if r["loaded"] is not None]
    assert len(loaded) == 6 and min(loaded) == 120.0
    critical = run(influxdb, scenario, one("panel 'Packet loss"), {"station": SID["J3"]})
    assert {r["loss"] for r in critical if r["loss"] is not None} == {100.0}


def test_status_change_annotations(influxdb: InfluxServer, scenario: Scenario) -> None:
    q = one("annotation 'Status changes'")
    rows = run(influxdb, scenario, q, {"station": SID["J3"]})
    assert [r["status_name"] for r in rows] == ["ok", "critical"]  # first seen, then the change
    assert len(rows) == sum(1 for s, _ in scenario.status_changes if s == SID["J3"])
    assert "error=timeout" in rows[-1]["reasons"]
    rows = run(influxdb, scenario, q, {"station": SID["B5"]})
    assert [r["status_name"] for r in rows] == ["ok", "silent"]


def test_operators_medians_and_share_within_thresholds(
    influxdb: InfluxServer, scenario: Scenario
) -> None:
    medians, within = find("sinyal-operators: panel 'Per operator and province")
    # Grafana's merge joins the two frames on operator and province (and time).
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for q in (medians, within):
        for r in run(influxdb, scenario, q):
            rows.setdefault((r["operator"], r["province"]), {}).update(r)
    expected: dict[tuple[str, str], list[dict[str, int | float]]] = {}
    for sid, _tgt, fields in scenario.icmp_rounds:
        st = scenario.stations[sid]
        expected.setdefault((st.expected_operator or "", st.province), []).append(fields)
    assert set(rows) == set(expected)
    for key, rounds in expected.items():
        got = rows[key]
        assert got["rounds"] == len(rounds)
        assert got["loss_pct"] == pytest.approx(statistics.median(f["loss_pct"] for f in rounds))
        rtts = [f["rtt_p50_ms"] for f in rounds if "rtt_p50_ms" in f]
        assert got["latency_ms"] == pytest.approx(statistics.median(rtts))
        ok = sum(1 for f in rounds if f.get("rtt_p50_ms", 1e9) <= 150 and f["loss_pct"] < 1
                 and f.get("jitter_ms", 1e9) <= 30 and f["mos"] >= 3.6)  # fmt: skip
        # Grafana's calculateField: within / rounds (no "within" row: no round within)
        share = got.get("within", 0) / got["rounds"]
        assert share == pytest.approx(ok / len(rounds)), key
    # Jakarta's telkomsel rounds: J1 all within, J3 none; Bali's telkomsel: B4 half.
    assert rows[("telkomsel", "DKI Jakarta")]["within"] / rows[("telkomsel", "DKI Jakarta")][
        "rounds"] == pytest.approx(0.5)  # fmt: skip


def test_fleet(influxdb: InfluxServer, scenario: Scenario) -> None:
    agents = find("sinyal-fleet: panel 'Agents'")
    counts = {}
    for q in agents:
        (row,) = run(influxdb, scenario, q)
        counts.update({k: v for k, v in row.items() if k not in ("time", "_series")})
    heard = sum(1 for r in ROLE.values() if r != "never")  # B5 too: before it went silent
    assert counts == {"heard": heard, "backlog_over_30m": 1, "clock_problems": 1}
    versions = {r["version"]: r["agents"] for r in run(influxdb, scenario, one("Agent versions"))}
    assert versions == {"0.2.0": 2, "0.1.0": heard - 2}
    backlog = run(influxdb, scenario, one("panel 'Spool backlog'"))
    assert names(r["station"] for r in backlog) == ["B2", "J1"]
    dropped = run(influxdb, scenario, one("panel 'Dropped records'"))
    assert [(names([r["station"]])[0], r["dropped_total"], r["dead_letters"]) for r in dropped] == [
        ("B3", 42, 3)]  # fmt: skip
    clocks = run(influxdb, scenario, one("panel 'Clock problems'"))
    assert [(names([r["station"]])[0], r["clock_synced"]) for r in clocks] == [("B1", 0)]
    q = one("panel 'Last seen'")
    assert q.panel is not None
    seen = sort_like_grafana(run(influxdb, scenario, q), q.panel)
    assert names([seen[0]["station"]]) == ["B5"]  # silent for longest (P2 never uploaded)


def test_scenario_is_what_the_collector_writes(scenario: Scenario) -> None:
    """The seeded status changes came from the real StatusEngine: every station that ever
    reported has a first-seen point, and the problem stations a change on top."""
    changed = sorted(names([s])[0] for s, _ in scenario.status_changes)
    twice = ["B4", "B5", "J3", "J4", "P3"]  # first seen as ok, then their problem
    assert changed == sorted([n for n in SID if n != "P2"] + ["P2"] + twice)
