"""Station status off the acknowledgement path (issue 20): with a real InfluxDB 1.6.7 that is
stopped (SIGSTOP) while status points wait to be written, the uploads were acknowledged
before any status point was written, the status writer retries, and every transition
arrives once the database runs again; at shutdown what is queued is written."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from collector.statuswriter import StatusWriter
from tests.conftest import require_tool
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    envelope,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer, influxd


def _post(s: Stack, records: list[dict[str, object]]) -> list[str]:
    r = httpx.post(
        f"{s.url}/api/v1/measurements",
        json=envelope(records),
        headers={"Authorization": f"Bearer {s.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["accepted"])


def _statuses(db: InfluxServer, database: str) -> list[tuple[int, int, str]]:
    rows = db.query('SELECT "status", "shard" FROM "station_status"', database)
    return [(r["time"], r["status"], r["shard"]) for r in rows]


def _writer(s: Stack) -> StatusWriter:
    assert s.service is not None
    return s.service.status_writer


def test_transitions_wait_out_a_stopped_database_and_none_is_lost(tmp_path: Path) -> None:
    with influxd(require_tool("influxd")) as db:
        db.create_database("s")
        cfg = collector_config_file(tmp_path, db.url, "s", sink={"timeout_s": 1})
        with running_collector(cfg) as s:
            writer = _writer(s)
            writer.delay_s = 3.0  # the points wait long enough for the database to be stopped
            # ok -> critical (five rounds of total loss), then critical -> ok (five good ones)
            t0 = time.time_ns()
            down = [golden("icmp-total-loss", age_s=300 - 60 * i) for i in range(5)]
            up = [golden("icmp-ok", age_s=50 - 10 * i) for i in range(5)]
            for rec in up:  # the same series (target) as the failing rounds
                rec["tags"]["target"] = "kpu"  # type: ignore[index]
            assert len(_post(s, down)) == 5
            assert len(_post(s, up)) == 5
            # Both uploads were acknowledged; no status point was written on their way.
            assert _statuses(db, "s") == []
            deadline = time.monotonic() + 10  # a station new to this shard: read first
            while writer.pending() < 2:
                assert time.monotonic() < deadline, "the status points were never queued"
                time.sleep(0.05)
            assert writer.pending() == 2
            os.kill(db.process.pid, signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 30
                while writer.failures < 2:  # tried, failed, tried again after its pause
                    assert time.monotonic() < deadline, "the status writer never tried"
                    time.sleep(0.1)
                assert writer.pending() == 2 and writer.written == 0
            finally:
                os.kill(db.process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 60
            while writer.pending():
                assert time.monotonic() < deadline, "status points never written"
                time.sleep(0.2)
            # A write that timed out may have landed too once the database ran again: the
            # retry rewrites the same points (same times, same values), nothing doubles.
            rows = _statuses(db, "s")
            shard = cfg.shard_id
            assert [(st, sh) for _, st, sh in rows] == [(2, shard), (0, shard)]
            assert t0 < rows[0][0] < rows[1][0]  # at the instants the changes happened
            assert writer.written == 2


def test_queued_points_are_written_at_shutdown(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        _writer(s).delay_s = 60.0  # would not write before the shutdown on its own
        assert len(_post(s, [golden("icmp-total-loss", age_s=60 - 10 * i) for i in range(5)]))
        assert _statuses(influxdb, influx_database) == []
    rows = influxdb.query('SELECT "status", "station" FROM "station_status"', influx_database)
    assert [(r["station"], r["status"]) for r in rows] == [(STATION, 2)]
