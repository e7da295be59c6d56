"""The control-room status view, its InfluxQL run against the real InfluxDB 1.6.7."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from collector import cli, view
from collector.lineproto import encode_point
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    envelope,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer

SILENT_STATION = "7371011001001"


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def seed(stack: Stack, influxdb: InfluxServer) -> None:
    """One critical station through the API (five rounds of total loss) and one silent
    station's status point written directly."""
    recs = [golden("icmp-total-loss", age_s=300 - 60 * i) for i in range(5)]
    r = httpx.post(
        f"{stack.url}/api/v1/measurements",
        json=envelope(recs),
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )
    assert len(r.json()["accepted"]) == 5
    deadline = time.monotonic() + 10  # the status writer writes after the acknowledgement
    while not influxdb.query('SELECT "status" FROM "station_status"', stack.cfg.sink.database):
        assert time.monotonic() < deadline, "no station_status point within 10 s"
        time.sleep(0.05)
    line = encode_point(
        "station_status",
        {
            "station": SILENT_STATION,
            "province": "Sulawesi Selatan",
            "regency": "Kota Makassar",
            "operator": "telkomsel",
        },
        {"status": 3, "reasons": "silent", "last_seen_s": 900.0, "lat": -5.13, "lon": 119.41},
        time.time_ns() - 60 * 10**9,
    )
    httpx.post(
        f"{influxdb.url}/write", params={"db": stack.cfg.sink.database}, content=line
    ).raise_for_status()


def test_fetch_and_render_show_critical_and_silent_stations(
    stack: Stack, influxdb: InfluxServer
) -> None:
    seed(stack, influxdb)
    rows = view.fetch(stack.cfg.sink)
    by_id = {r.station: r for r in rows}
    assert by_id[STATION].status == 2
    assert by_id[STATION].province == "DKI Jakarta"
    assert by_id[STATION].loss_pct == 100
    assert "loss" in by_id[STATION].reasons
    silent = by_id[SILENT_STATION]
    assert silent.status == 3
    assert 950 <= (silent.seen_ago_s or 0) <= 1100  # 900 s when written, 60 s ago
    assert [r.station for r in view.worst_first(rows)] == [STATION, SILENT_STATION]
    assert view.counts_by_province(rows) == {
        "DKI Jakarta": [0, 0, 1, 0],
        "Sulawesi Selatan": [0, 0, 0, 1],
    }
    console = Console(record=True, width=200)
    console.print(view.render(rows))
    text = console.export_text()
    assert "2 stations" in text
    assert "worst stations" in text and "silent stations" in text
    assert STATION in text and SILENT_STATION in text and "critical" in text


def test_status_command_json_and_table(
    stack: Stack, influxdb: InfluxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(stack, influxdb)
    assert cli.main(["status", "--json", "-c", str(stack.cfg.path)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["station"] for x in lines] == [STATION, SILENT_STATION]
    assert cli.main(["status", "-c", str(stack.cfg.path)]) == 0
    assert "control room" in capsys.readouterr().out
    assert cli.main(["status", "--window", "1 day", "-c", str(stack.cfg.path)]) == 2
