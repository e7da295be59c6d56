"""The agent's heartbeat record, its upload through a real collector, and `doctor`'s checks of
the collector, the token and the clock offset."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config as agent_config
from agent.contract.record import Record
from agent.heartbeat import Heartbeat, board_temp_c
from agent.preflight import FAIL, OK, collector_checks
from agent.spool import Spool
from tests.conftest import base_config, write_config
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer
from tests.harness.servers import free_port
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


def agent_cfg(tmp_path: Path, url: str, token: str) -> agent_config.AgentConfig:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    doc = base_config(tmp_path)
    doc["collector"] = {"url": url, "token_file": str(token_file), "timeout_s": 3}
    return agent_config.load(write_config(tmp_path, doc), environ={})


def test_doctor_checks_collector_token_and_clock(tmp_path: Path, stack: Stack) -> None:
    checks = {c.name: c for c in collector_checks(agent_cfg(tmp_path, stack.url, stack.token))}
    assert checks["collector"].status == OK
    assert checks["clock offset"].status == OK
    assert checks["token"].status == OK


def test_doctor_flags_a_wrong_token_and_another_station(tmp_path: Path, stack: Stack) -> None:
    checks = {c.name: c for c in collector_checks(agent_cfg(tmp_path, stack.url, "sny_nope"))}
    assert checks["token"].status == FAIL and "revoked" in checks["token"].detail
    doc_dir = tmp_path / "other"
    doc_dir.mkdir()
    cfg = agent_cfg(doc_dir, stack.url, stack.token)
    other = agent_config.load(
        cfg.path, environ={"SINYAL_STATION__ID": "3273011001001"}
    )  # a token for 3171011001001, a config for another station
    checks = {c.name: c for c in collector_checks(other)}
    assert checks["token"].status == FAIL and "3273011001001" in checks["token"].detail


def test_doctor_flags_an_unreachable_collector(tmp_path: Path) -> None:
    cfg = agent_cfg(tmp_path, f"http://127.0.0.1:{free_port()}", "sny_x")
    [check] = collector_checks(cfg)
    assert check.name == "collector" and check.status == FAIL
    assert "not reachable" in check.detail and check.fix
