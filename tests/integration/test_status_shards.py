"""Station status owned per shard (issue 20), against a real InfluxDB 1.6.7: a restarted shard
rebuilds its stations' status from their latest station_status points (not from zero), and a
station re-routed to another shard is not flagged silent by the shard it left, while a
station that really stops reporting is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    envelope,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer

NEVER = "3273011001012"  # in the registry, never reports
OTHER = "3171011002004"  # in config/stations.example.csv, like STATION (region 3171)


def _post(s: Stack, records: list[dict[str, Any]], station: str = STATION) -> None:
    r = httpx.post(
        f"{s.url}/api/v1/measurements",
        json=envelope(records, station),
        headers={"Authorization": f"Bearer {s.region_token}"},
        timeout=30,
    )
    assert r.status_code == 200 and len(r.json()["accepted"]) == len(records), r.text


def _points(db: InfluxServer, database: str, station: str) -> list[dict[str, Any]]:
    return db.query(
        f'SELECT "status", "shard", "reasons" FROM "station_status" WHERE station = \'{station}\'',
        database,
    )


def _wait(what: str, ready: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _shard(tmp: Path, db: InfluxServer, database: str, name: str, **status: Any) -> Any:
    return collector_config_file(tmp / name, db.url, database, status=status, shard={"id": name})


def test_a_restarted_shard_rebuilds_its_stations_status(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    cfg = _shard(tmp_path, influxdb, influx_database, "s1")
    with running_collector(cfg) as s:
        _post(s, [golden("icmp-total-loss", age_s=300 - 60 * i) for i in range(5)])
        _wait("the critical point", lambda: _points(influxdb, influx_database, STATION))
    # Restarted (same shard id): critical from the point, owned, and it holds while the
    # new series has fewer than window_n (5) rounds of its own.
    with running_collector(cfg) as s:
        assert s.service is not None
        engine = s.service.engine
        snap = engine.snapshot(STATION)
        assert snap is not None and snap.status == 2 and engine.owns(STATION)
        assert "error=timeout" in snap.reasons[0]
        ok = [golden("icmp-ok", age_s=50 - 10 * i) for i in range(3)]
        for rec in ok:
            rec["tags"]["target"] = "kpu"
        _post(s, ok)
        snap = engine.snapshot(STATION)
        assert snap is not None and snap.status == 2
    # Another shard sees the station's status but does not own it.
    with running_collector(_shard(tmp_path, influxdb, influx_database, "s2")) as s:
        assert s.service is not None
        snap = s.service.engine.snapshot(STATION)
        assert snap is not None and snap.status == 2 and not s.service.engine.owns(STATION)


def test_a_rerouted_station_is_not_flagged_silent_by_the_shard_it_left(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    fast = {"silent_after_s": 10, "sweeper": True, "sweep_interval_s": 1}
    c1 = _shard(tmp_path, influxdb, influx_database, "s1", **fast)  # flags never-reported
    c2 = _shard(tmp_path, influxdb, influx_database, "s2", **fast, flag_never_reported=False)
    with running_collector(c1) as s1, running_collector(c2) as s2:
        _post(s1, [golden("icmp-ok", station=STATION)], STATION)
        # OTHER reports once, to s2 only, then stops reporting altogether.
        _post(s2, [golden("icmp-ok", station=OTHER)], OTHER)
        # STATION moves to s2 (s1's node went away and came back, say) and keeps reporting.
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            _post(s2, [golden("icmp-ok", station=STATION, age_s=1)], STATION)
            time.sleep(2)
        moved = _points(influxdb, influx_database, STATION)
        assert [p["shard"] for p in moved][:2] == ["s1", "s2"]
        assert all(p["status"] == 0 for p in moved), moved  # never silent
        assert s1.service is not None and not s1.service.engine.owns(STATION)
        # OTHER is flagged silent by the shard it reported to, and s1 (which flags the
        # stations that never reported) knows it reported elsewhere: no "never reported".
        gone = _points(influxdb, influx_database, OTHER)
        assert {p["shard"] for p in gone} == {"s2"}, gone  # the first sweep refreshes it too
        assert (gone[0]["status"], gone[-1]["status"]) == (0, 3), gone
        never = _points(influxdb, influx_database, NEVER)
        assert [(p["status"], p["shard"], p["reasons"]) for p in never][:1] == [
            (3, "s1", "never reported")
        ]


def test_a_station_taken_over_keeps_its_status_on_the_new_shard(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    c1 = _shard(tmp_path, influxdb, influx_database, "s1")
    c2 = _shard(tmp_path, influxdb, influx_database, "s2")
    with running_collector(c1) as s1, running_collector(c2) as s2:
        _post(s1, [golden("icmp-total-loss", age_s=300 - 60 * i) for i in range(5)])
        _wait("s1's critical point", lambda: _points(influxdb, influx_database, STATION))
        # Re-routed to s2 (which started before it was critical) with one good round: still
        # critical there (a single good round never clears), not ok from an empty window.
        good = golden("icmp-ok", age_s=10)
        good["tags"]["target"] = "kpu"
        _post(s2, [good])
        _wait(
            "s2's point",
            lambda: any(p["shard"] == "s2" for p in _points(influxdb, influx_database, STATION)),
        )
        pts = _points(influxdb, influx_database, STATION)
        assert [(p["shard"], p["status"]) for p in pts] == [("s1", 2), ("s2", 2)]
        assert "error=timeout" in pts[-1]["reasons"]
