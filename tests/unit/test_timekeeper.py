"""agent.timekeeper: where a record's time comes from, and the spool's correction of records
whose time was not established when they were made."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.contract.record import ClockInfo, Record
from agent.spool import Spool, from_unix_ns
from agent.timekeeper import TimeKeeper

BOOT = "0ca0ebedd3014b2cb1174143b59ed45e"
OLD_BOOT = "5d3c1a7e9b2f4e6a8c0d1f3b5a7e9c2d"
TRUE_START = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)  # wall time when monotonic read 0
WRONG = timedelta(days=-365)  # the board booted a year behind


def unix_ns(t: datetime) -> int:
    d = t - datetime(1970, 1, 1, tzinfo=UTC)
    return ((d.days * 86400 + d.seconds) * 10**6 + d.microseconds) * 1000


def rec(mono_s: float, synced: int | None = 0, boot: str = BOOT, n: int = 0) -> Record:
    """A record made `mono_s` after boot on a clock that is a year wrong."""
    mono = int(mono_s * 1e9)
    return Record(
        "icmp",
        TRUE_START + WRONG + timedelta(seconds=mono_s),
        {"station": "3171011001001", "uplink": "m", "operator": "o", "target": f"t{n}"},
        {"sent": 1, "received": 1, "loss_pct": 0.0, "ok": 1},
        clock=ClockInfo(boot, mono, synced),
    )


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool.sqlite3", reserve_bytes=0)


def read_collector(tk: TimeKeeper, at_mono_s: float, rtt_s: float = 0.02) -> int:
    """The collector answers `true time` at the midpoint of a request sent at at_mono_s."""
    sent = int(at_mono_s * 1e9)
    received = sent + int(rtt_s * 1e9)
    server = unix_ns(TRUE_START) + (sent + received) // 2
    return tk.learn(server, sent, received)


def test_sources_by_trust_mode(spool: Spool) -> None:
    synced, unsynced = rec(10, synced=1), rec(11, synced=0)
    tk = TimeKeeper(spool, "kernel", boot=BOOT)
    a, b = tk.stamp([synced, unsynced])
    assert (
        a.clock is not None and a.clock.source == "system" and a.measured_at == synced.measured_at
    )
    assert (
        b.clock is not None
        and b.clock.source == "unknown"
        and b.measured_at == unsynced.measured_at
    )
    (c,) = TimeKeeper(spool, "system", boot=BOOT).stamp([unsynced])
    assert c.clock is not None and c.clock.source == "system"
    (d,) = TimeKeeper(spool, "collector", boot=BOOT).stamp([synced])
    assert d.clock is not None and d.clock.source == "unknown"  # synced is not enough
    no_clock = Record("icmp", TRUE_START, a.tags, a.fields)
    assert TimeKeeper(spool, "kernel", boot=BOOT).stamp([no_clock]) == [no_clock]


def test_records_get_the_collectors_time_once_it_is_known(spool: Spool) -> None:
    tk = TimeKeeper(spool, "collector", boot=BOOT)
    early = tk.stamp([rec(5, n=i) for i in range(3)])  # before the link came up
    old = tk.stamp([rec(7, boot=OLD_BOOT)])  # left from a boot that never reached it
    spool.put([*early, *old])
    assert tk.waiting() and spool.untimed(BOOT) == 3
    # held back while their time can still be established; the old boot's go out
    sent = spool.batch_raw(hold_boot=tk.hold_boot())
    assert [i for i, _ in sent] == [old[0].id]

    assert read_collector(tk, at_mono_s=100) == 3
    assert not tk.waiting() and spool.untimed(BOOT) == 0 and tk.hold_boot() is None
    bodies = {i: json.loads(b) for i, b in spool.batch_raw()}
    for r in early:
        d = bodies[r.id]
        assert d["measured_at"] == (TRUE_START + timedelta(seconds=5)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        assert d["clock"]["source"] == "collector"
        assert Record.from_dict(d).seq == d["seq"]  # the spool's sequence number rides along
    assert bodies[old[0].id]["clock"]["source"] == "unknown"

    # later records are stamped with the collector's time at once, even after the system
    # clock is stepped: monotonic time does not jump
    (later,) = tk.stamp([rec(200)])
    assert later.measured_at == TRUE_START + timedelta(seconds=200)
    assert later.clock is not None and later.clock.source == "collector"


def test_the_base_survives_a_restart_and_ignores_slow_answers(spool: Spool) -> None:
    tk = TimeKeeper(spool, "collector", boot=BOOT)
    read_collector(tk, at_mono_s=10, rtt_s=0.010)
    base = tk.base_ns()
    assert base is not None and abs(base - unix_ns(TRUE_START)) < 1000
    # an answer that took 5 s has an uncertain midpoint: ignored
    sent, received = int(20e9), int(25e9)
    assert tk.learn(unix_ns(TRUE_START) + sent + int(4.9e9), sent, received) == 0
    assert tk.base_ns() == base
    again = TimeKeeper(spool, "collector", boot=BOOT)
    assert again.base_ns() == base
    assert TimeKeeper(spool, "collector", boot=OLD_BOOT).base_ns() is None


def test_a_record_stored_after_the_first_reading_is_still_corrected(spool: Spool) -> None:
    tk = TimeKeeper(spool, "collector", boot=BOOT)
    late = tk.stamp([rec(3)])  # stamped before the reading...
    read_collector(tk, at_mono_s=4)
    spool.put(late)  # ...stored after it
    assert tk.settle() == 1
    (body,) = [json.loads(b) for _, b in spool.batch_raw()]
    assert body["clock"]["source"] == "collector"
    assert (
        from_unix_ns(unix_ns(TRUE_START) + 3 * 10**9).strftime("%S") == body["measured_at"][17:19]
    )


# --- the collector's answer is checked before it is used (issue 15, finding 9) ---------


def test_implausible_readings_are_refused_and_never_stored(spool: Spool) -> None:
    tk = TimeKeeper(spool, "collector", boot=BOOT)
    sent, received = 10**9, 10**9 + 20 * 10**6
    for value in (float("inf"), 1e30, 10**30, -4 * 10**18, 0, True, "1764000000000000000"):
        assert tk.check(value, sent, received) is not None, value
        assert tk.learn(value, sent, received) == 0  # type: ignore[arg-type]
    assert tk.base_ns() is None
    assert not any(k.startswith("clock_base.") for k in spool.state())


def test_a_reading_may_not_go_back_beyond_round_trips_and_drift(spool: Spool) -> None:
    tk = TimeKeeper(spool, "collector", boot=BOOT)
    read_collector(tk, 100)
    base = tk.base_ns()
    assert base is not None
    hour = 3600 * 10**9
    sent = 100 * 10**9 + hour
    received = sent + 20 * 10**6
    mid = (sent + received) // 2
    # an hour later: 500 ppm of an hour is 1.8 s, plus 2 s of slack and the round trips
    tolerated = 2 * 10**9 + hour * 500 // 10**6 + 20 * 10**6
    assert tk.check(base + mid - tolerated + 10**6, sent, received) is None
    refused = tk.check(base + mid - tolerated - 10**8, sent, received)
    assert refused is not None and "went back" in refused
    assert tk.check(base + mid + 86400 * 10**9, sent, received) is None  # forward: allowed
    tk.learn(base + mid - 86400 * 10**9, sent, received)  # a day back: ignored
    assert tk.base_ns() == base


def test_a_stored_implausible_base_is_dropped_on_start(spool: Spool) -> None:
    spool.set_state(
        **{
            f"clock_base.{BOOT}": f"{10**30} 1000",
            f"clock_base.{OLD_BOOT}": "not numbers",
            "clock_base.cafe": f"{unix_ns(TRUE_START)} 1000 5",
        }
    )
    tk = TimeKeeper(spool, "collector", boot=BOOT)
    assert tk.base_ns() is None and tk.base_ns(OLD_BOOT) is None
    assert tk.base_ns("cafe") == unix_ns(TRUE_START)
    state = spool.state()
    assert state[f"clock_base.{BOOT}"] == "" and state[f"clock_base.{OLD_BOOT}"] == ""
