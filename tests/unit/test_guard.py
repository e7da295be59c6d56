"""collector.guard without a server: repeated ids, the series cap, point conflicts, and the
bound on remembered points."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.contract.record import Record
from collector.config import Limits
from collector.guard import Guard
from collector.ingest import Prepared

AT = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


class _Station:
    id = "3171011001001"
    province = "DKI Jakarta"
    regency = "Kota Jakarta Pusat"


def record(target: str, rid: str, second: int = 0) -> Record:
    return Record(
        "icmp",
        AT.replace(second=second),
        {"station": "3171011001001", "uplink": "m", "operator": "o", "target": target},
        {"sent": 1, "received": 1, "loss_pct": 0.0},
        id=rid,
    )


def prepared(*records: Record) -> Prepared:
    p = Prepared()
    for r in records:
        p.records.append(r)
        p.stations.append(_Station())
        p.lines.append(f"icmp,target={r.tags['target']} sent=1i {r.measured_at.second}")
    return p


def rid(n: int) -> str:
    return f"{n:032x}"


def test_repeated_ids_are_kept_once() -> None:
    g = Guard(Limits())
    p = prepared(record("a", rid(1)), record("a", rid(1), 5), record("b", rid(2)))
    g.check(p)
    assert [r.id for r in p.records] == [rid(1), rid(2)] and not p.rejected
    assert len(p.lines) == len(p.stations) == 2


def test_series_beyond_the_cap_are_refused_known_ones_pass() -> None:
    g = Guard(Limits(max_series_per_station=3))
    p = prepared(*(record(f"t{i}", rid(i)) for i in range(5)))
    g.check(p)
    assert [r.id for r in p.records] == [rid(0), rid(1), rid(2)]
    assert [r.reason for r in p.rejected] == ["series_limit"] * 2
    assert "limits.max_series_per_station" in p.rejected[0].detail
    again = prepared(record("t1", rid(10), 30))
    g.check(again)
    assert not again.rejected and g.series_count("3171011001001") == 3


def test_a_new_id_for_a_remembered_point_is_refused() -> None:
    g = Guard(Limits())
    first = prepared(record("a", rid(1)))
    g.remember(first, g.check(first), [rid(1)])
    forged = prepared(record("a", rid(2)))
    g.check(forged)
    assert [r.reason for r in forged.rejected] == ["point_conflict"] and not forged.records
    resend = prepared(record("a", rid(1)))
    g.check(resend)
    assert [r.id for r in resend.records] == [rid(1)]


def test_remembered_points_are_bounded_oldest_forgotten_first() -> None:
    g = Guard(Limits(recent_points=10))
    for i in range(25):
        p = prepared(record("a", rid(i), i % 60))
        g.remember(p, g.check(p), [rid(i)])
    assert len(g._points) == 10
    old = prepared(record("a", rid(99), 0))  # point of rid(0): forgotten
    g.check(old)
    assert not old.rejected
