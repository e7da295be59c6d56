"""collector.status grades signal rounds: weak coverage, fall back to 3G, operator mismatch,
unreadable modems, debounce, and latency and signal said together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.contract import thresholds as agent_thresholds
from agent.contract.record import FieldValue, Record
from collector.config import StatusConfig
from collector.status import Status, StatusEngine
from tests.conftest import ROOT

TH = agent_thresholds.load(ROOT / "config" / "thresholds.yaml")
T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
SID = "3171011001001"


def signal(i: int, error: str | None = None, tech: str = "lte", **fields: Any) -> Record:
    tags = {
        "station": SID,
        "uplink": "modem0",
        "operator": "telkomsel",
        "access_tech": tech,
        "band": "B3",
    }
    values: dict[str, FieldValue] = {"ok": 0 if error else 1}
    if error is None:
        values.update({"rsrp_dbm": -90.0, "rsrq_db": -9.0, "sinr_db": 12.0})
    values.update(fields)
    return Record("signal", T0 + timedelta(seconds=30 * i), tags, values, error)


def icmp(i: int, rtt: float) -> Record:
    tags = {"station": SID, "uplink": "modem0", "operator": "telkomsel", "target": "kpu"}
    fields: dict[str, FieldValue] = {"sent": 10, "received": 10, "loss_pct": 0.0}
    fields["rtt_p50_ms"] = rtt
    return Record("icmp", T0 + timedelta(seconds=30 * i), tags, fields)


def engine() -> StatusEngine:
    return StatusEngine(TH, StatusConfig(3, 5, 300.0), lambda: T0)


def test_weak_rsrp_is_critical_after_the_debounce_and_named() -> None:
    e = engine()
    for i in range(2):
        assert e.observe(SID, [signal(i, rsrp_dbm=-118.0)]) == []  # M = 3: not yet
    (change,) = e.observe(SID, [signal(2, rsrp_dbm=-118.0)])
    assert change.new is Status.CRITICAL
    assert change.reasons == ("weak coverage: RSRP -118 dBm on telkomsel/modem0",)
    snap = e.snapshot(SID)
    assert snap is not None and snap.causes == ("lte_rsrp",)


def test_warn_level_rsrq_and_sinr_degrade() -> None:
    e = engine()
    for i in range(3):
        e.observe(SID, [signal(i, rsrq_db=-18.0, sinr_db=0.0)])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.DEGRADED
    text = snap.reasons[0]
    assert "RSRQ -18 dB" in text and "SINR 0 dB" in text


def test_fall_back_to_3g_is_said_and_keeps_the_series() -> None:
    e = engine()
    e.observe(SID, [signal(0)])
    for i in range(1, 4):
        e.observe(SID, [signal(i, tech="umts", rscp_dbm=-100.0)])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.DEGRADED
    assert snap.series == 1  # the technology is not part of the series
    assert snap.reasons == ("fell back to 3G on telkomsel/modem0",)
    assert snap.causes == ("fallback_3g",)


def test_operator_mismatch_is_a_finding() -> None:
    e = engine()
    for i in range(3):
        e.observe(SID, [signal(i, operator_mismatch=1)])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.DEGRADED
    assert snap.reasons == ("operator mismatch: on telkomsel/modem0, not the configured operator",)


def test_not_registered_is_critical_and_permission_is_not_counted() -> None:
    e = engine()
    for i in range(3):
        e.observe(SID, [signal(i, error="permission")])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.OK and snap.series == 0
    for i in range(3, 6):
        e.observe(SID, [signal(i, error="not_registered")])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.CRITICAL
    assert snap.reasons == ("signal error=not_registered on telkomsel/modem0",)


def test_one_bad_round_does_not_flag() -> None:
    e = engine()
    e.observe(SID, [signal(0, rsrp_dbm=-125.0)])
    for i in range(1, 6):
        e.observe(SID, [signal(i)])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.OK


def test_latency_and_signal_both_bad_are_said_together() -> None:
    e = engine()
    for i in range(3):
        e.observe(SID, [icmp(i, 900.0), signal(i, rsrp_dbm=-108.0)])
    snap = e.snapshot(SID)
    assert snap is not None and snap.status is Status.CRITICAL  # latency alert, signal warn
    assert snap.reasons[0] == "latency and signal both bad (radio on modem0)"
    assert snap.reasons[1] == "weak coverage: RSRP -108 dBm on telkomsel/modem0"
    assert snap.reasons[2].startswith("icmp[kpu@modem0] rtt_p50_ms=900>400")
    assert set(snap.causes) == {"latency", "lte_rsrp"}
