"""collector.admission: each rejection reason a decoded record can get besides the contract,
with a registry and token scope in memory (tests/harness/fake_registry.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.contract.record import ClockInfo, Record
from collector.admission import Admission, Prepared, Rejection, index_of, plausibility
from collector.config import Limits
from collector.lineproto import record_to_point
from tests.harness.fake_registry import STATIONS, Registry, Scope

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
LIMITS = Limits(past_s=3600, future_s=300)
ICMP = {"sent": 10, "received": 9, "loss_pct": 10.0, "timeout_ms": 2000.0,
        "rtt_min_ms": 20.0, "rtt_avg_ms": 30.0, "rtt_p50_ms": 28.0, "rtt_p95_ms": 60.0,
        "rtt_max_ms": 70.0, "ok": 1}  # fmt: skip


def icmp(station: str = "3171011001001", at: datetime = NOW, **changes: Any) -> Record:
    tags = {"station": station, "uplink": "modem0", "operator": "telkomsel", "target": "kpu"}
    clock = changes.pop("clock", None)
    return Record("icmp", at, tags, {**ICMP, **changes}, clock=clock)


def admit(*records: Record, scope: Scope | None = None) -> list[Rejection]:
    rejected: list[Rejection] = []
    checks = Admission(scope or Scope(), Registry(), LIMITS, NOW)
    for r in records:
        checks.admit(r, rejected)
    return rejected


def test_a_good_record_gets_its_registry_station() -> None:
    rejected: list[Rejection] = []
    station = Admission(Scope(), Registry(), LIMITS, NOW).admit(icmp(), rejected)
    assert station == STATIONS["3171011001001"]
    assert rejected == []


def test_out_of_scope() -> None:
    r = icmp("3171011001001")
    (rej,) = admit(r, scope=Scope("51"))
    assert rej == Rejection(r.id, "out_of_scope", "station 3171011001001 is outside the token")


def test_unknown_station() -> None:
    r = icmp("3171019999999")  # inside the token's region, not registered
    (rej,) = admit(r)
    assert rej == Rejection(r.id, "unknown_station", "station 3171019999999 not registered")


def test_time_unknown() -> None:
    r = icmp(clock=ClockInfo("b" * 32, 1, 0, "unknown"))
    (rej,) = admit(r)
    assert (rej.id, rej.reason) == (r.id, "time_unknown")
    assert "could not be established" in rej.detail
    assert admit(icmp(clock=ClockInfo("b" * 32, 1, 1, "collector"))) == []


@pytest.mark.parametrize(
    ("offset_s", "admitted"),
    [(-3600, True), (-3601, False), (300, True), (301, False), (0, True)],
)
def test_time_out_of_range_at_the_limits(offset_s: int, admitted: bool) -> None:
    r = icmp(at=NOW + timedelta(seconds=offset_s))
    rejected = admit(r)
    if admitted:
        assert rejected == []
    else:
        (rej,) = rejected
        assert (rej.id, rej.reason) == (r.id, "time_out_of_range")
        oldest, newest = NOW - timedelta(hours=1), NOW + timedelta(minutes=5)
        assert rej.detail == (
            f"measured_at {r.measured_at.isoformat()} outside "
            f"[{oldest.isoformat()}, {newest.isoformat()}]"
        )


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"rtt_max_ms": 2000.5}, "rtt_max_ms 2000.5 above the round's timeout_ms 2000.0"),
        ({"received": 11}, "received 11 > sent 10"),
        ({"loss_pct": 20.0}, "loss_pct 20.0 does not match sent 10, received 9"),
    ],
)
def test_implausible(changes: dict[str, Any], why: str) -> None:
    r = icmp(**changes)
    assert plausibility(r) == why
    assert admit(r) == [Rejection(r.id, "implausible", why)]
    # a caller that knows the values are plausible (the fast path) skips the check
    assert Admission(Scope(), Registry(), LIMITS, NOW).admit(r, [], plausible=True) is not None


def test_plausible_values() -> None:
    assert plausibility(icmp(loss_pct=10.005)) is None  # within 0.01
    assert plausibility(icmp(sent=0, received=0, loss_pct=100.0)) is None  # nothing sent
    assert plausibility(icmp(rtt_max_ms=2000.0)) is None  # at the timeout is in time
    dns = Record("dns", NOW, {"station": "3171011001001"}, {"received": 5, "sent": 1})
    assert plausibility(dns) is None  # the rules are ICMP's


def test_the_checks_run_in_order_and_each_record_on_its_own() -> None:
    """Scope before registry before time before values; one station looked up once per run
    of its records, and a record of another station in between is judged for its own."""
    bad_time_and_values = icmp(at=NOW - timedelta(days=2), received=11)
    other = icmp("5171011001001")
    good = icmp()
    rejected = admit(bad_time_and_values, other, good)
    assert [(r.id, r.reason) for r in rejected] == [
        (bad_time_and_values.id, "time_out_of_range"), (other.id, "out_of_scope"),
    ]  # fmt: skip


def test_reference_line_adds_the_registrys_region() -> None:
    r = icmp("3171011001002")
    station = STATIONS["3171011001002"]
    rejected: list[Rejection] = []
    line = Admission.reference_line(r, station, rejected)
    assert line == record_to_point(r, {"province": station.province, "regency": station.regency})
    assert line is not None and r'province=DKI\,\ "Jakarta"' in line and rejected == []
    reserved = dataclasses.replace(r, fields={**r.fields, "id": 1})
    assert Admission.reference_line(reserved, station, rejected) is None
    assert [(x.id, x.reason) for x in rejected] == [(r.id, "invalid")]
    assert "reserved" in rejected[0].detail


def test_rejection_to_dict_and_index_of() -> None:
    assert Rejection("a", "invalid").to_dict() == {"id": "a", "reason": "invalid"}
    assert Rejection(None, "invalid", "records[3].kind: bad", 3).to_dict() == {
        "id": None, "reason": "invalid", "detail": "records[3].kind: bad", "index": 3,
    }  # fmt: skip
    assert index_of("records[12].fields.rtt_ms") == 12
    assert index_of("records[x]") is None
    assert index_of("agent.station") is None
    assert Prepared() == Prepared([], [], [], [])
