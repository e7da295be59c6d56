"""The agent's heartbeat record and its upload through a real collector (`doctor`'s checks of
the collector: tests/integration/test_preflight.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.contract.record import Record
from agent.heartbeat import Heartbeat, board_temp_c
from agent.spool import Spool
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer
from tests.integration.test_uploader import once, uploader


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def test_heartbeat_is_a_valid_record_about_the_agent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.put([Record.from_dict(golden("icmp-ok", age_s=120))])
    spool.set_state(clock_offset_ms="12.5")
    hb = Heartbeat(STATION, spool)
    [rec] = asyncio.run(hb.run())
    again = Record.from_dict(rec.to_dict())  # passes the contract the collector applies
    f = again.fields
    assert again.kind == "agent" and again.tags == {"station": STATION, "version": "0.1.0"}
    assert f["spool_records"] == 1 and f["dropped_total"] == 0 and f["dead_letters"] == 0
    assert 110 <= f["oldest_unsent_s"] <= 200
    assert f["clock_offset_ms"] == 12.5
    assert 5 < f["rss_mb"] < 500
    assert "cpu_pct" not in f  # less than a second since the agent started: not meaningful
    hb._last = (hb._last[0] - 10, hb._last[1])  # as if the previous beat was 10 s ago
    assert 0 <= hb.record().fields["cpu_pct"] <= 200
    assert f["uptime_s"] >= 0


def test_board_temperature_reads_the_thermal_zone(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert board_temp_c(zone) == 48.312
    assert board_temp_c(tmp_path / "missing") is None


def test_heartbeat_is_accepted_and_stored(
    tmp_path: Path, stack: Stack, influxdb: InfluxServer
) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.put([Heartbeat(STATION, spool).record()])
    outcome = asyncio.run(once(uploader(spool, stack.url, stack.token)))
    assert outcome is not None and outcome.accepted == 1, outcome
    [row] = influxdb.query('SELECT * FROM "agent"', stack.cfg.sink.database)
    assert row["station"] == STATION and row["province"] == "DKI Jakarta"
    assert row["version"] == "0.1.0"
