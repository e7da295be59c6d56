"""`make run`'s script end to end: InfluxDB, collector, registry, token and agent on loopback;
records reach InfluxDB and the status view within a minute; stopping leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from collector import view
from collector.config import SinkConfig
from collector.sinks import QueryError, SinkUnavailable
from tests.conftest import ROOT, require_tool
from tests.harness.collector_stack import free_port


@pytest.mark.root
def test_run_script_brings_up_the_stack_and_stops_cleanly(tmp_path: Path) -> None:
    require_tool("influxd")
    influx_port, collector_port = free_port(), free_port()
    env = {
        **os.environ,
        "SINYAL_RUN_DIR": str(tmp_path / "run"),
        "SINYAL_INFLUX_PORT": str(influx_port),
        "SINYAL_COLLECTOR_PORT": str(collector_port),
        "SINYAL_DATA_DIR": str(tmp_path / "agent"),
    }
    env.pop("INFLUX_URL", None)
    proc = subprocess.Popen(
        [str(ROOT / "deploy" / "local" / "run.sh"), "--plain"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    sink = SinkConfig("v1", f"http://127.0.0.1:{influx_port}", database="sinyal")
    try:
        deadline = time.monotonic() + 60
        stored = 0
        rows: list[view.StationRow] = []
        while time.monotonic() < deadline and (stored == 0 or not rows):
            time.sleep(2)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{influx_port}/query",
                    data={"db": "sinyal", "q": 'SELECT count("id") FROM "icmp"'},
                )
                series = r.json()["results"][0].get("series")
                stored = series[0]["values"][0][1] if series else 0
                rows = view.fetch(sink)
            except (httpx.HTTPError, KeyError, ValueError, OSError, QueryError, SinkUnavailable):
                continue
        assert stored >= 3, "the agent's ICMP records reached InfluxDB through the collector"
        assert [r.station for r in rows] == ["3171011001001"]
        assert rows[0].status == 0
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        out, _ = proc.communicate(timeout=30)
    assert "run: InfluxDB" in out
    time.sleep(0.5)
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True
    ).stdout
    assert leftovers == "", f"processes left running: {leftovers}"
