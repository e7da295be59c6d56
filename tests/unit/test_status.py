"""collector.status: debounce boundaries, silence, registry stations, status points, properties."""

from __future__ import annotations

import json
import math
import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.contract import thresholds as agent_thresholds
from agent.contract.record import MEASUREMENTS, ErrorCode, Record, new_id
from collector.config import StatusConfig
from collector.station import Station
from collector.status import (
    _GOOD_ROUND,
    MAX_REASON_LEN,
    MAX_REASONS,
    Status,
    StatusChange,
    StatusEngine,
)
from tests.conftest import FIXTURES, ROOT

TH = agent_thresholds.load(ROOT / "config" / "thresholds.yaml")
T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
SID = "3171011001001"


def station(
    sid: str,
    province: str = "",
    regency: str = "",
    lat: float = 0.0,
    lon: float = 0.0,
    operator: str | None = None,
    tz: str = "",
) -> Station:
    """A registry row (collector.station.Station, the collector's one station model)."""
    return Station(sid, sid, province, regency, lat, lon, tz, operator)


INFO = station(SID, "31", "3171", -6.1754, 106.8272, "telkomsel")
OK, DEG, CRIT, SILENT = Status.OK, Status.DEGRADED, Status.CRITICAL, Status.SILENT


def golden(name: str) -> Record:
    return Record.from_dict(json.loads((FIXTURES / "records" / f"{name}.json").read_text()))


ICMP_OK = golden("icmp-ok")
ICMP_DOWN = golden("icmp-total-loss")
HTTP_REFUSED = golden("http-refused")
DNS_NXDOMAIN = golden("dns-nxdomain")


class FakeClock:
    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def engine(m: int = 3, n: int = 5, silent: float = 300.0) -> tuple[StatusEngine, FakeClock]:
    clock = FakeClock()
    return StatusEngine(TH, StatusConfig(m, n, silent), clock), clock


def icmp(grade: str, i: int, rng: random.Random, target: str = "nix-jakarta") -> Record:
    """Round i of an icmp series, with values drawn inside the band that grade names:
    G good, F fair (not a breach), D warn (degraded-level), C alert (critical-level),
    E a failed round (error set)."""
    at = T0 + timedelta(seconds=60 * i)
    tags = {**ICMP_OK.tags, "target": target}
    if grade == "E":
        return replace(ICMP_DOWN, id=new_id(), measured_at=at, tags=tags)
    rtt = rng.uniform(10, 90)
    loss = 0.0
    if grade == "F":
        rtt = rng.uniform(105, 145)  # fair latency: between good (100) and warn (150)
    elif grade == "D":
        rtt = rng.uniform(160, 390)  # warn: > 150, not > 400
    elif grade == "C":
        loss = rng.choice([2.0, 10.0, 30.0, 60.0])  # alert: >= 2 %
    fields = {**ICMP_OK.fields, "rtt_p50_ms": round(rtt, 3), "loss_pct": loss}
    return replace(ICMP_OK, id=new_id(), measured_at=at, tags=tags, fields=fields)


def drive(
    eng: StatusEngine, clock: FakeClock, grades: str, seed: int = 7
) -> tuple[list[Status], dict[int, Status]]:
    """Feed one round per upload; return the status after each round and, by round index,
    the changes observe reported."""
    rng = random.Random(seed)
    statuses: list[Status] = []
    changes: dict[int, Status] = {}
    for i, g in enumerate(grades):
        clock.advance(60)
        out = eng.observe(INFO, [icmp(g, i, rng)])
        if out:
            (change,) = out
            changes[i] = change.new
        snap = eng.snapshot(SID)
        assert snap is not None
        statuses.append(snap.status)
    return statuses, changes


def transitions(statuses: list[Status]) -> dict[int, Status]:
    prev = OK
    out: dict[int, Status] = {}
    for i, s in enumerate(statuses):
        if s != prev:
            out[i] = s
        prev = s
    return out


# -- debounce boundaries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "n", "grades", "expected"),
    [
        # 3 of 5: the third degraded-level round in 5 (index 4, with a good round between)
        # degrades; the third critical round in 5 (index 8) is critical; 5 clean rounds
        # (fair counts as clean) clear it at index 13.
        (3, 5, "GDGDD" + "CGCC" + "GFGGF" + "GG", {4: DEG, 8: CRIT, 13: OK}),
        # 2 of 3
        (2, 3, "GDGD" + "CGC" + "GGG" + "G", {3: DEG, 6: CRIT, 9: OK}),
        # critical steps down to degraded after N rounds without a critical one
        (3, 5, "CCC" + "DDDDD" + "GGGGG", {2: CRIT, 7: DEG, 12: OK}),
        (2, 3, "GCC" + "DDD" + "GGG", {2: CRIT, 5: DEG, 8: OK}),
    ],
)
def test_transitions_exactly_at_debounce_boundaries(
    m: int, n: int, grades: str, expected: dict[int, Status]
) -> None:
    for seed in (1, 2, 3):
        eng, clock = engine(m, n)
        statuses, changes = drive(eng, clock, grades, seed)
        assert transitions(statuses) == expected
        assert changes == expected


@pytest.mark.parametrize(("m", "n"), [(3, 5), (2, 3), (2, 2), (5, 8)])
@pytest.mark.parametrize("bad", ["D", "C", "E"])
def test_a_single_bad_round_never_flips(m: int, n: int, bad: str) -> None:
    eng, clock = engine(m, n)
    statuses, changes = drive(eng, clock, "G" * n + bad + "G" * n)
    assert set(statuses) == {OK}
    assert changes == {}


@pytest.mark.parametrize(("m", "n"), [(3, 5), (2, 3), (2, 2)])
@pytest.mark.parametrize(("bad", "level"), [("D", DEG), ("C", CRIT), ("E", CRIT)])
def test_a_single_good_round_never_clears(m: int, n: int, bad: str, level: Status) -> None:
    eng, clock = engine(m, n)
    statuses, _ = drive(eng, clock, bad * n + "G" + bad * n)
    assert transitions(statuses) == {m - 1: level}


def test_window_slides_good_rounds_between_do_not_reset() -> None:
    eng, clock = engine(3, 5)
    # breaches at 0, 2, 4: three in the last five, good rounds between do not reset the count
    assert transitions(drive(eng, clock, "DGDGD")[0]) == {4: DEG}
    eng, clock = engine(3, 5)
    # breaches at 0, 1, 5: the first has left the window when the third arrives
    assert transitions(drive(eng, clock, "DDGGGD")[0]) == {}
    eng, clock = engine(3, 5)
    assert transitions(drive(eng, clock, "DGGGDGGDGGGD")[0]) == {}
    eng, clock = engine(3, 5)
    assert transitions(drive(eng, clock, "DDGGD")[0]) == {4: DEG}


def test_degraded_and_critical_rounds_add_up_to_degraded() -> None:
    eng, clock = engine(3, 5)
    # two critical + one degraded round: not enough for critical, enough for degraded
    assert transitions(drive(eng, clock, "CDC")[0]) == {2: DEG}


@pytest.mark.parametrize(
    ("template", "cause"),
    [
        (ICMP_DOWN, "timeout"),
        (HTTP_REFUSED, "connection_refused"),
        (DNS_NXDOMAIN, "dns_nxdomain"),
        (replace(ICMP_OK, fields={**ICMP_OK.fields, "ok": 0}), "failed"),
    ],
)
def test_failed_records_are_critical_breaches(template: Record, cause: str) -> None:
    eng, clock = engine(3, 5)
    seen: list[Status] = []
    for i in range(4):
        clock.advance(60)
        eng.observe(INFO, [replace(template, id=new_id(), measured_at=T0 + timedelta(minutes=i))])
        snap = eng.snapshot(SID)
        assert snap is not None
        seen.append(snap.status)
    assert seen == [OK, OK, CRIT, CRIT]
    assert snap is not None and cause in snap.causes
    (reason,) = snap.reasons
    assert reason.startswith(f"{template.kind}[")
    assert ("error=" in reason) if template.error else ("ok=0" in reason)


def test_total_loss_reason_names_the_series_and_the_thresholds() -> None:
    eng, _ = engine(2, 3)
    rounds = [
        replace(ICMP_DOWN, measured_at=T0 + timedelta(minutes=i), id=new_id()) for i in (0, 1)
    ]
    eng.observe(INFO, rounds)
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is CRIT
    assert snap.reasons == ("icmp[kpu@modem0] error=timeout, loss_pct=100>=2, mos=1<3.1",)
    assert snap.causes == ("loss", "mos", "timeout")


def test_per_series_debounce_takes_the_worst_series() -> None:
    """A target failing every round goes critical after M of its own rounds, even though
    healthy targets are probed in between (pooled over the station it would be 3 of 7)."""
    eng, clock = engine(3, 5)
    rng = random.Random(5)
    order = ["kpu", "nix-jakarta", "dns-google"] * 3
    statuses = []
    for i, target in enumerate(order[:7]):
        clock.advance(20)
        rec = icmp("C" if target == "kpu" else "G", i // 3, rng, target)
        eng.observe(INFO, [rec])
        snap = eng.snapshot(SID)
        assert snap is not None
        statuses.append(snap.status)
    assert transitions(statuses) == {6: CRIT}
    assert snap is not None
    assert snap.reasons[0].startswith("icmp[kpu@modem0] loss_pct=")
    assert (snap.series, snap.series_breaching) == (3, 1)
    # the map shows the worst icmp series
    assert snap.icmp_target == "kpu" and snap.loss_pct is not None and snap.loss_pct >= 2


def test_reasons_are_bounded() -> None:
    eng, _ = engine(1, 1)
    rng = random.Random(1)
    recs = [icmp("C", 0, rng, f"target-{k:02d}-" + "x" * 120) for k in range(7)]
    eng.observe(INFO, recs)
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is CRIT
    assert len(snap.reasons) == MAX_REASONS + 1
    assert snap.reasons[-1] == f"+{7 - MAX_REASONS} more"
    assert all(len(r) <= MAX_REASON_LEN for r in snap.reasons)


def test_resent_records_count_once() -> None:
    eng, clock = engine(3, 5)
    rng = random.Random(3)
    batch = [icmp("C", i, rng) for i in range(2)]
    for _ in range(3):  # the same upload resent after lost acknowledgements
        clock.advance(60)
        assert eng.observe(INFO, batch) == []
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is OK
    clock.advance(60)
    assert [c.new for c in eng.observe(INFO, [icmp("C", 2, rng)])] == [CRIT]


def test_one_change_per_upload_for_a_replayed_backlog() -> None:
    eng, clock = engine(3, 5)
    rng = random.Random(4)
    backlog = [icmp(g, i, rng) for i, g in enumerate("CCCCC" + "GGGGG" + "DDD")]
    clock.advance(60)
    (change,) = eng.observe(INFO, backlog)
    assert (change.old, change.new, change.at) == (OK, DEG, clock.t)


def test_series_of_a_removed_target_is_forgotten() -> None:
    eng, clock = engine(3, 5, silent=300)
    rng = random.Random(6)
    for i in range(3):
        clock.advance(60)
        eng.observe(INFO, [icmp("C", i, rng, "gone"), icmp("G", i, rng, "kept")])
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is CRIT
    # "gone" (60 s interval) is dropped once "kept" is more than max(3 x 60, 2 x 300) s newer
    changes: list[tuple[int, StatusChange]] = []
    for i in range(3, 20):
        clock.advance(60)
        changes += [(i, c) for c in eng.observe(INFO, [icmp("G", i, rng, "kept")])]
    assert [(i, c.new) for i, c in changes] == [(13, OK)]
    snap = eng.snapshot(SID)
    assert snap is not None and snap.series == 1


# -- silence ---------------------------------------------------------------------------------


def test_silent_exactly_after_silent_after_s_and_cleared_by_next_upload() -> None:
    eng, clock = engine(3, 5, silent=300)
    rng = random.Random(8)
    clock.advance(10)
    eng.observe(INFO, [icmp("G", 0, rng)])
    seen_at = clock.t
    clock.t = seen_at + timedelta(seconds=300) - timedelta(microseconds=1)
    assert eng.sweep() == []
    clock.t = seen_at + timedelta(seconds=300)
    assert eng.sweep() == [
        StatusChange(SID, OK, SILENT, ("no data for >=300s",), seen_at + timedelta(seconds=300))
    ]
    assert eng.sweep() == []  # reported once
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is SILENT and snap.causes == ("silent",)
    assert snap.last_seen == seen_at and snap.last_seen_s == 300.0
    clock.advance(1000)
    (back,) = eng.observe(INFO, [icmp("G", 30, rng)])
    assert (back.old, back.new, back.at) == (SILENT, OK, clock.t)


def test_history_is_kept_across_silence() -> None:
    eng, clock = engine(3, 5, silent=300)
    statuses, _ = drive(eng, clock, "CCC")
    assert statuses[-1] is CRIT
    clock.advance(600)
    assert [c.new for c in eng.sweep()] == [SILENT]
    clock.advance(60)
    rng = random.Random(9)
    (back,) = eng.observe(INFO, [icmp("G", 20, rng)])
    assert back.new is CRIT  # one good round after the outage does not clear it
    for i in range(21, 25):
        clock.advance(60)
        out = eng.observe(INFO, [icmp("G", i, rng)])
    assert [c.new for c in out] == [OK]


def test_resend_during_silence_still_ends_it() -> None:
    eng, clock = engine(3, 5, silent=300)
    rec = icmp("G", 0, random.Random(1))
    eng.observe(INFO, [rec])
    clock.advance(300)
    assert len(eng.sweep()) == 1
    clock.advance(5)
    assert [c.new for c in eng.observe(INFO, [rec])] == [OK]


def test_registry_stations_that_never_reported_become_silent() -> None:
    eng, clock = engine(3, 5, silent=300)
    quiet = station("3171011001002", "31", "3171", -6.18, 106.83, "indosat")
    talker = station("3171011001003", "31", "3171", -6.19, 106.84, "xl")
    clock.advance(10)
    eng.observe(talker, [icmp("G", 0, random.Random(2))])
    assert eng.snapshot(quiet.id) is None
    clock.t = T0 + timedelta(seconds=299)
    assert eng.sweep([quiet, talker]) == []
    assert eng.status_points([quiet], clock.t) == []  # no invented "ok" before that
    clock.t = T0 + timedelta(seconds=300)
    changes = eng.sweep([quiet, talker])
    assert changes == [StatusChange(quiet.id, OK, SILENT, ("never reported",), clock.t)]
    assert eng.sweep([quiet, talker]) == []
    ((_, tags, fields, _),) = eng.status_points([quiet], clock.t)
    assert fields["status"] == 3 and fields["status_name"] == "silent"
    assert fields["reasons"] == "never reported"
    assert "last_seen_s" not in fields and "rtt_p50_ms" not in fields
    assert tags["operator"] == "indosat"


# -- status points ---------------------------------------------------------------------------


def test_status_points_tags_fields_types() -> None:
    eng, clock = engine(3, 5)
    statuses, _ = drive(eng, clock, "GGCCC")
    assert statuses[-1] is CRIT
    now = clock.t + timedelta(seconds=42)
    other = station("9999999999999")  # no state: no point
    points = eng.status_points([INFO, other], now)
    assert len(points) == 1
    measurement, tags, fields, t_ns = points[0]
    assert measurement == "station_status"
    assert tags == {"station": SID, "province": "31", "regency": "3171", "operator": "telkomsel"}
    assert t_ns == int(now.timestamp()) * 10**9 and isinstance(t_ns, int)
    expected_types: dict[str, type] = {
        "status": int,
        "status_name": str,
        "reasons": str,
        "causes": str,
        "status_age_s": float,
        "series": int,
        "series_breaching": int,
        "lat": float,
        "lon": float,
        "last_seen_s": float,
        "rtt_p50_ms": float,
        "loss_pct": float,
        "jitter_ms": float,
        "mos": float,
        "icmp_target": str,
        "icmp_uplink": str,
    }
    assert {k: type(v) for k, v in fields.items()} == expected_types
    assert fields["status"] == 2 and fields["status_name"] == "critical"
    assert fields["last_seen_s"] == 42.0 and fields["status_age_s"] == 42.0
    assert fields["lat"] == INFO.lat and fields["lon"] == INFO.lon
    assert fields["loss_pct"] >= 2  # type: ignore[operator]
    assert fields["causes"] == "loss"
    assert str(fields["reasons"]).startswith("icmp[nix-jakarta@modem0] loss_pct=")
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in fields.values())


def test_status_points_ok_station_and_registry_fallbacks() -> None:
    eng, clock = engine(3, 5)

    row = Station("3273010001007", "x", "", "", math.nan, math.nan, "", "indihome")  # no regions

    eng.observe(row.id, [golden("dns-ok")])
    ((_, tags, fields, _),) = eng.status_points([row], clock.t)
    assert tags == {"station": row.id, "province": "32", "regency": "3273", "operator": "indihome"}
    assert fields["status"] == 0 and fields["reasons"] == "" and fields["causes"] == ""
    assert "lat" not in fields and "rtt_p50_ms" not in fields and "icmp_target" not in fields


def test_status_points_carry_the_registry_zone() -> None:
    """Dashboards show the station's local zone (WIB/WITA/WIT) next to its times."""
    eng, clock = engine(3, 5)
    jayapura = station("9171011001006", "Papua", "Kota Jayapura", -2.53, 140.72, "tsel",
                       "Asia/Jayapura")  # fmt: skip
    eng.observe(jayapura, [golden("icmp-ok")])
    ((_, _, fields, _),) = eng.status_points([jayapura], clock.t)
    assert fields["tz"] == "Asia/Jayapura"


def test_breach_m_above_window_n_is_refused() -> None:
    with pytest.raises(ValueError, match="breach_m"):
        StatusEngine(TH, StatusConfig(breach_m=4, window_n=3))


def test_concurrent_observers() -> None:
    eng, _ = engine(2, 3)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            rng = random.Random(k)
            info = station(f"31710110010{k:02d}")
            for i in range(200):
                eng.observe(info, [icmp(rng.choice("GDCE"), i, rng)])
                if i % 50 == 0:
                    eng.sweep([info])
                    eng.status_points([info], T0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- properties ------------------------------------------------------------------------------

grades = st.sampled_from("GFDCE")


@settings(max_examples=150, deadline=None)
@given(
    mn=st.integers(2, 6).flatmap(lambda m: st.tuples(st.just(m), st.integers(m, 8))),
    history=st.text(alphabet="GFDCE", max_size=20),
    steady=grades,
    other=grades,
    seed=st.integers(0, 2**16),
)
def test_a_single_round_never_changes_a_steady_status(
    mn: tuple[int, int], history: str, steady: str, other: str, seed: int
) -> None:
    m, n = mn
    eng, clock = engine(m, n)
    statuses, _ = drive(eng, clock, history + steady * n + other, seed)
    assert statuses[-1] == statuses[-2]


def _record_dicts() -> st.SearchStrategy[dict[str, Any]]:
    def for_kind(kind: str) -> st.SearchStrategy[dict[str, Any]]:
        spec = MEASUREMENTS[kind]
        tags = {
            t: st.sampled_from(["modem0", "tps-wifi"]) if t == "uplink" else st.sampled_from("ab")
            for t in spec.tags
            if t != "station"
        }
        fields: dict[str, st.SearchStrategy[Any]] = {}
        for name, fs in spec.fields.items():
            lo = fs.minimum if fs.minimum is not None else 0
            hi = min(fs.maximum if fs.maximum is not None else 1e6, 1e6)
            fields[name] = (
                st.integers(int(lo), int(hi))
                if fs.type is int
                else st.text(min_size=1, max_size=20)
                if fs.type is str
                else st.floats(lo, hi, allow_nan=False, allow_infinity=False)
            )
        return st.fixed_dictionaries(
            {
                "kind": st.just(kind),
                "tags": st.fixed_dictionaries(tags),
                "fields": st.fixed_dictionaries({}, optional=fields),
                "error": st.none() | st.sampled_from([e.value for e in ErrorCode]),
                "offset_s": st.integers(-600, 3600),
            }
        )

    return st.one_of(*(for_kind(k) for k in sorted(MEASUREMENTS)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mn=st.integers(1, 4).flatmap(lambda m: st.tuples(st.just(m), st.integers(m, 6))),
    uploads=st.lists(
        st.tuples(st.lists(_record_dicts(), max_size=8), st.floats(0, 900)), max_size=12
    ),
)
def test_engine_never_raises_on_valid_records(
    mn: tuple[int, int], uploads: list[tuple[list[dict[str, Any]], float]]
) -> None:
    m, n = mn
    eng, clock = engine(m, n, silent=300)
    for batch, wait in uploads:
        clock.advance(wait)
        records = []
        for d in batch:
            at = clock.t + timedelta(seconds=d["offset_s"])
            raw = {
                "id": new_id(),
                "kind": d["kind"],
                "measured_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "tags": {"station": SID, **d["tags"]},
                "fields": d["fields"],
                "error": d["error"],
            }
            records.append(Record.from_dict(raw))
        records.sort(key=lambda r: r.measured_at)
        for change in eng.observe(INFO, records):
            assert change.old != change.new
        eng.sweep([INFO])
        snap = eng.snapshot(SID)
        assert snap is not None and snap.status in Status
        assert len(snap.reasons) <= MAX_REASONS + 1
        assert all(len(r) <= MAX_REASON_LEN for r in snap.reasons)
        for _, tags, fields, _ in eng.status_points([INFO], clock.t):
            assert set(tags) == {"station", "province", "regency", "operator"}
            assert isinstance(fields["status"], int) and 0 <= fields["status"] <= 3
            for v in fields.values():
                assert isinstance(v, int | str) or math.isfinite(v)


# -- throughput and upload -------------------------------------------------------------------


def test_bufferbloat_degrades_and_skipped_tests_neither_count_nor_clear() -> None:
    eng, clock = engine(m=2, n=3)
    bloated = golden("throughput-ok")  # loaded latency +121 ms: warn (>= 60), not alert
    skipped = golden("throughput-skipped")
    assert TH.grade("throughput", "loaded_latency_increase_ms", 120.976) == "warn"
    for i in range(2):
        clock.advance(60)
        eng.observe(INFO, [replace(bloated, id=new_id(), measured_at=T0 + timedelta(hours=i))])
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status == DEG
    assert snap.reasons == ("throughput[mini collector@modem0] loaded_latency_increase_ms=121>=60",)
    for i in range(5):  # skipped for the budget: no news about the link, so no recovery
        clock.advance(60)
        at = T0 + timedelta(hours=3 + i)
        eng.observe(INFO, [replace(skipped, id=new_id(), measured_at=at)])
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status == DEG


def test_cut_off_upload_is_a_failed_round() -> None:
    eng, clock = engine(m=1, n=3)
    clock.advance(60)
    (change,) = eng.observe(INFO, [golden("upload-cut-off")])
    assert change.new == CRIT
    assert change.reasons == ("upload[collector@modem0] error=connection_reset",)


# -- the engine's shortcuts agree with the plain definitions ---------------------------------


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.text(alphabet="GFDCE", min_size=1, max_size=40),
    st.sampled_from([(3, 5), (2, 3), (1, 1), (4, 8)]),
)
def test_window_counts_kept_per_round_match_the_window(grades: str, mn: tuple[int, int]) -> None:
    """_round keeps each series' critical and breaching counts as rounds enter and leave
    the window; they always equal a count over the window itself."""
    eng, clock = engine(*mn)
    rng = random.Random(3)
    for i, g in enumerate(grades):
        clock.advance(60)
        eng.observe(INFO, [icmp(g, i, rng)])
        (series,) = eng._stations[SID].series.values()
        assert series.critical == sum(1 for r in series.window if r.level == 2)
        assert series.breaching == sum(1 for r in series.window if r.level != 0)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.data())
def test_the_quick_good_round_check_is_threshold_breaches(data: st.DataObject) -> None:
    """_grade's common case inlines Threshold.breaches(): a round is good without an
    explanation exactly when no graded field breaches."""
    eng, _ = engine()
    kind = data.draw(st.sampled_from(sorted(MEASUREMENTS)))
    graded = eng._graded(kind)
    fields: dict[str, Any] = {}
    for name, t in graded:
        fields[name] = data.draw(
            st.one_of(
                st.sampled_from([t.good, t.warn, t.alert, -t.warn, 0, True, None, "x"]),
                st.floats(allow_nan=True),
                st.integers(-1000, 1000),
            )
        )
    rec = Record(kind, T0, {"station": SID}, fields)
    breaches = any(
        (type(v) is float or type(v) is int) and t.breaches(v)
        for (name, t) in graded
        if (v := fields.get(name)) is not None
    )
    rnd = eng._grade(rec)
    if not breaches:
        assert rnd is _GOOD_ROUND
    else:
        assert rnd is not _GOOD_ROUND
