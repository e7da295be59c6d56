"""deploy/influxdb: the InfluxDB 1.x config and systemd drop-in that docs/operations.md installs,
checked with Debian's real influxd: the file loads, its tuning takes effect, and a node so
configured takes the collector's writes and answers the report's and dashboards' queries."""

from __future__ import annotations

import configparser
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_tool
from tests.harness.dbs import DEPLOY_INFLUX, deploy_influx_tuning, influxd


def test_shipped_config_loads_in_influxd() -> None:
    """`influxd config -config` merges the file (an unknown key or a bad value fails it) and
    prints the tuned settings."""
    binary = require_tool("influxd")
    out = subprocess.run(
        [binary, "config", "-config", str(DEPLOY_INFLUX / "influxdb.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    merged = out.stdout
    assert 'index-version = "tsi1"' in merged
    assert "cache-snapshot-memory-size = 268435456" in merged
    assert "cache-max-memory-size = 2147483648" in merged
    assert "auth-enabled = true" in merged  # a node on a network never runs without auth


def test_dropin_is_a_service_section_with_gogc() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY_INFLUX / "influxdb.service.d" / "sinyal.conf")
    assert parser.sections() == ["Service"]
    assert parser["Service"]["Environment"] == "GOGC=200"
    assert int(parser["Service"]["LimitNOFILE"]) >= 65536
    # the harness applies what the drop-in says (benchmarks measure the deployed InfluxDB)
    assert deploy_influx_tuning()[1] == {"GOGC": "200"}


def test_tuned_influxd_takes_writes_and_queries(tmp_path: Path) -> None:
    """influxd with the shipped tuning: the tsi1 index is on disk, GOGC reached the process,
    and line protocol written by the collector's encoder is read back exactly."""
    binary = require_tool("influxd")
    options, env = deploy_influx_tuning()
    assert options["index-version"] == "tsi1"
    with influxd(binary, data_options=options, env=env) as db:
        environ = Path(f"/proc/{db.process.pid}/environ").read_bytes().split(b"\0")
        assert b"GOGC=200" in environ
        db.create_database("tuned")
        now = time.time_ns()
        lines = "\n".join(
            f'icmp,station=3171011001,target=t{i} rtt_avg_ms={10 + i},id="r{i}" {now + i}'
            for i in range(50)
        )
        r = httpx.post(f"{db.url}/write", params={"db": "tuned"}, content=lines, timeout=10)
        assert r.status_code == 204, r.text
        rows = db.query('SELECT count("id"), sum("rtt_avg_ms") FROM "icmp"', "tuned")
        assert rows[0]["count"] == 50
        assert rows[0]["sum"] == sum(10 + i for i in range(50))
        doc = db.query_raw('SHOW SERIES FROM "icmp"', "tuned")
        assert len(doc["results"][0]["series"][0]["values"]) == 50
        # tsi1 keeps each shard's index in an `index` directory next to its TSM files
        data = db.log_path.parent / "data" / "tuned"
        index_dirs = list(data.glob("*/*/index"))
        if not index_dirs:
            pytest.fail(f"no tsi1 index directory under {data}: {sorted(data.rglob('*'))}")
