"""End to end: the agent samples signal from a mocked ModemManager (private dbus-daemon),
spools and uploads through the real collector into the real InfluxDB; the collector's status
engine flags the station once RSRP stays below the alert level for the debounce (3 of 5
rounds), and the Grafana queries (run against InfluxDB as Grafana sends them) show it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import CollectorEndpoint
from agent.probes.base import ProbeEnv
from agent.probes.signal import SignalProbe
from agent.spool import Spool
from agent.uploader import Uploader
from tests.conftest import base_config, require_tool, write_config
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    running_collector,
    status_written,
)
from tests.harness.dbs import InfluxServer
from tests.harness.grafana_artifacts import dashboards, interpolate, queries, rules
from tests.harness.modemmanager_mock import MockModemManager, running_modemmanager


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


@pytest.fixture
def mm() -> Iterator[MockModemManager]:
    require_tool("dbus-daemon")
    with running_modemmanager() as service:
        yield service


def latest_status(influx: InfluxServer, db: str) -> dict[str, Any]:
    rows = influx.query(
        f'SELECT last("status") AS status, last("reasons") AS reasons FROM station_status '
        f"WHERE station = '{STATION}'",
        db,
    )
    return rows[0] if rows else {}


def grafana(influx: InfluxServer, db: str, where_has: str, **chosen: str) -> list[dict[str, Any]]:
    (query,) = [x for x in queries() if where_has in x.where]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    variables = dashboards()[query.dashboard]["templating"]["list"] if query.dashboard else []
    text = interpolate(query.text, variables, chosen, now_ms - 3_600_000, now_ms)
    return influx.query(text, db, epoch="ms")


def test_weak_signal_flags_the_station_within_the_debounce(
    tmp_path: Path, stack: Stack, influxdb: InfluxServer, mm: MockModemManager
) -> None:
    modem = mm.add_modem()
    doc = base_config(tmp_path)
    doc["uplinks"] = [
        {"name": "modem0", "operator": "telkomsel",
         "signal": {"source": "modemmanager", "bus": mm.address}}
    ]  # fmt: skip
    from agent import config as agent_config

    cfg = agent_config.load(write_config(tmp_path, doc), environ={})
    probe = SignalProbe.from_env(ProbeEnv(cfg))
    assert probe is not None
    spool = Spool(tmp_path / "spool.sqlite3")
    up = Uploader(spool, CollectorEndpoint(stack.url, token=stack.token, timeout_s=5), STATION, 500)
    db = stack.cfg.sink.database
    # two good rounds, one with RSRP "unknown" (-32768), then weak rounds below -115 dBm
    plan = [-95.0, -32768.0, -118.0, -118.0, -118.0]
    statuses: list[int] = []

    async def rounds() -> None:
        for rsrp in plan:
            modem.signal["lte"]["rsrp"] = rsrp
            spool.put(await probe.run())
            outcome = await up.upload_once()
            assert outcome is not None and outcome.ok, outcome
            await asyncio.to_thread(status_written, stack)
            statuses.append(int(latest_status(influxdb, db).get("status", 0)))
        await probe.close()
        await up.aclose()

    asyncio.run(rounds())
    # Debounce: critical on the third weak round (M = 3), not before.
    assert statuses == [0, 0, 0, 0, 2]
    status = latest_status(influxdb, db)
    assert "weak coverage: RSRP -118 dBm on telkomsel/modem0" in status["reasons"]

    stored = influxdb.query(
        'SELECT "rsrp_dbm", "rsrq_db", "access_tech", "operator", "plmn" FROM "signal" '
        "ORDER BY time",
        db,
    )
    assert [r["rsrp_dbm"] for r in stored] == [-95.0, None, -118.0, -118.0, -118.0]
    assert all(r["rsrq_db"] == -10.0 for r in stored)  # the unknown RSRP alone is absent
    assert {(r["access_tech"], r["operator"], r["plmn"]) for r in stored} == {
        ("lte", "telkomsel", 51010)
    }

    # The control room sees it: the station dashboard's signal panel, the overview's weak
    # coverage table, and the sustained-weak-signal alert's query.
    power = grafana(influxdb, db, "panel 'Signal power per uplink'", station=STATION)
    # the mean of each minute's readings (the rounds may straddle a minute; the unknown is
    # absent, not averaged in as -32768 or 0)
    means = [r["RSRP dBm"] for r in power if r["RSRP dBm"] is not None]
    assert means and all(-118.0 <= m <= -95.0 for m in means)
    assert min(means) <= (-95.0 - 3 * 118.0) / 4 + 1e-9
    (weak,) = grafana(influxdb, db, "sinyal-overview: panel 'Weak coverage per operator")
    assert (weak["operator"], weak["province"], weak["weak_stations"]) == (
        "telkomsel", "DKI Jakarta", 1
    )  # fmt: skip
    (rule,) = [r for r in rules() if r["uid"] == "sinyal-signal-weak"]
    (query,) = [x for x in queries() if x.where.startswith("rule sinyal-signal-weak")]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    window = rule["data"][0]["relativeTimeRange"]["from"]
    text = interpolate(query.text, [], {}, now_ms - window * 1000, now_ms)
    # The window still holds the -95 dBm reading: not sustained yet, so the rule is quiet.
    assert influxdb.query(text, db) == []


def test_collector_stores_signal_records_and_rejects_out_of_range(
    stack: Stack, influxdb: InfluxServer
) -> None:
    import httpx

    from tests.harness.collector_stack import envelope, golden

    good, failed = golden("signal-ok"), golden("signal-not-registered")
    too_strong = golden("signal-ok")
    too_strong["fields"]["rsrp_dbm"] = -20.0  # above the 3GPP range: a bug or garbage
    r = httpx.post(
        f"{stack.url}/api/v1/measurements",
        json=envelope([good, failed, too_strong]),
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["accepted"]) == sorted([good["id"], failed["id"]])
    (rejected,) = body["rejected"]
    assert rejected["reason"] == "invalid"
    assert rejected["detail"] == "records[2].fields.rsrp_dbm: got -20.0, expected -156..-31 dBm"
    db = stack.cfg.sink.database
    (row,) = influxdb.query(f'SELECT * FROM "signal" WHERE "id" = \'{good["id"]}\'', db)
    assert row["rsrp_dbm"] == -97.0 and row["plmn"] == 51010 and row["tac"] == 23918
    assert row["province"] == "DKI Jakarta" and row["access_tech"] == "lte"
    (row,) = influxdb.query(f'SELECT * FROM "signal" WHERE "id" = \'{failed["id"]}\'', db)
    assert row["error"] == "not_registered" and row["rsrp_dbm"] is None
    types = influxdb.field_types(db, "signal")
    assert types["rsrp_dbm"] == "float" and types["operator_mismatch"] == "integer"
    assert types["plmn"] == "integer"
