"""A real collector for tests: uvicorn on a free loopback port, a registry, a real InfluxDB."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from agent.contract.record import format_time
from collector import config as collector_config
from collector.app import IngestService, create_app
from collector.config import CollectorConfig
from collector.registry import Registry
from tests.conftest import FIXTURES, ROOT
from tests.harness.dbs import InfluxServer
from tests.harness.servers import free_port

STATIONS_CSV = ROOT / "config" / "stations.example.csv"
STATION = "3171011001001"  # in config/stations.example.csv


def collector_config_file(
    tmp: Path, influx_url: str, database: str, **overrides: Any
) -> CollectorConfig:
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "sink": {"kind": "v1", "url": influx_url, "database": database, "timeout_s": 5,
                 "retry_after_s": 7},
        "data_dir": str(tmp / "collector"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
        "status": {"sweeper": False},
        # Tests drive agents faster than stations report: per-token limits out of their way
        # (tests/integration/test_security_limits.py sets and tests them).
        "limits": {"requests_per_s": 10_000, "requests_burst": 10_000,
                   "records_per_s": 1e6, "records_burst": 10**7},
    }  # fmt: skip
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(doc))
    return collector_config.load(path, environ={})


@dataclass
class Stack:
    cfg: CollectorConfig
    url: str
    registry: Registry
    token: str  # scoped to STATION
    region_token: str  # scoped to region 3171
    token_id: str
    service: IngestService | None = None  # the running collector's own objects, for tests


@contextlib.contextmanager
def running_collector(cfg: CollectorConfig) -> Iterator[Stack]:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry.for_config(cfg, refresh_s=0)
    registry.import_stations_csv(STATIONS_CSV)
    info, token = registry.add_token(station=STATION, note="test")
    _, region_token = registry.add_token(region="3171", note="test region")
    app = create_app(cfg)
    server = uvicorn.Server(
        uvicorn.Config(app, host=cfg.listen.host, port=cfg.listen.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("collector did not start")
        time.sleep(0.02)
    try:
        yield Stack(cfg, f"http://{cfg.listen.host}:{cfg.listen.port}", registry, token,
                    region_token, info.id, app.state.collector)  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(10)
        registry.close()


def status_written(stack: Stack, timeout_s: float = 10.0) -> None:
    """Wait until the collector wrote the status points of what it acknowledged (they are
    written after the acknowledgement, collector.statuswriter)."""
    assert stack.service is not None
    deadline = time.monotonic() + timeout_s
    while not stack.service.status_settled():
        if time.monotonic() > deadline:
            raise AssertionError(f"status points not written within {timeout_s:g} s")
        time.sleep(0.02)


def golden(name: str, station: str = STATION, age_s: float = 60.0) -> dict[str, Any]:
    """A golden record with a fresh id, the given station and a recent measured_at."""
    d: dict[str, Any] = copy.deepcopy(
        json.loads((FIXTURES / "records" / f"{name}.json").read_text())
    )
    d["id"] = uuid.uuid4().hex
    d["tags"]["station"] = station
    d["measured_at"] = format_time(datetime.now(UTC) - timedelta(seconds=age_s))
    return d


def envelope(records: list[dict[str, Any]], station: str = STATION) -> dict[str, Any]:
    return {
        "schema": 1,
        "agent": {"station": station, "version": "test", "boot_id": None},
        "sent_at": format_time(datetime.now(UTC)),
        "records": records,
    }


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    """A running collector writing to a fresh InfluxDB database, stations imported."""
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s
