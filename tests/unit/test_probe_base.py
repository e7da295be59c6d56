"""agent.probes.base: the Stamp a measurement takes and the record make_record builds."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.clock import boot_id
from agent.config import Uplink
from agent.contract.record import ErrorCode, Record
from agent.probes.base import Stamp, make_record

UPLINK = Uplink("modem0", operator="telkomsel")


def test_stamp_is_utc_now_with_the_clock_facts() -> None:
    before = datetime.now(UTC)
    stamp = Stamp()
    after = datetime.now(UTC)
    assert before <= stamp.time <= after
    assert stamp.time.tzinfo is not None and stamp.time.utcoffset() == UTC.utcoffset(None)
    assert stamp.clock.boot_id == boot_id()
    assert stamp.clock.monotonic_ns is not None


def test_make_record_adds_station_uplink_and_operator_and_drops_unmeasured_fields() -> None:
    stamp = Stamp()
    r = make_record(
        "dns", stamp, "3171011001001", UPLINK, {"qname": "kpu.go.id", "resolver": "1.1.1.1"},
        {"resolve_ms": 12.5, "rcode": None, "ok": 1},
    )  # fmt: skip
    assert isinstance(r, Record)
    assert r.kind == "dns"
    assert r.measured_at == stamp.time
    assert r.clock == stamp.clock
    assert dict(r.tags) == {
        "station": "3171011001001", "uplink": "modem0", "operator": "telkomsel",
        "qname": "kpu.go.id", "resolver": "1.1.1.1",
    }  # fmt: skip
    assert dict(r.fields) == {"resolve_ms": 12.5, "ok": 1}
    assert r.error is None and r.ok


def test_make_record_carries_the_error_codes_value() -> None:
    r = make_record("http", Stamp(), "3171011001001", UPLINK, {"target": "kpu"}, {"ok": 0},
                    ErrorCode.CONNECTION_REFUSED)  # fmt: skip
    assert r.error == "connection_refused"
    assert not r.ok


def test_a_probes_tags_are_applied_after_the_common_ones() -> None:
    r = make_record("icmp", Stamp(), "S1", UPLINK, {"operator": "override"}, {})
    assert r.tags["operator"] == "override"  # a probe's own tag wins, as the dict says
    assert r.tags["station"] == "S1" and r.tags["uplink"] == "modem0"


def test_two_records_of_one_stamp_share_time_but_not_id() -> None:
    stamp = Stamp()
    a = make_record("icmp", stamp, "S1", UPLINK, {"target": "a"}, {"ok": 1})
    b = make_record("icmp", stamp, "S1", UPLINK, {"target": "b"}, {"ok": 1})
    assert a.measured_at == b.measured_at
    assert a.id != b.id
