"""The known fleet of tests/harness/report_fleet.py seeded through a real collector into a real
InfluxDB, for the report tests. PYTEST_DONT_REWRITE.

`seeded(influx, tmp)` starts the collector (uvicorn, loopback) with the fleet's registry and
an admin token for /reports, uploads two days of every station's rounds (plus the voting-hours
edge rounds) with region tokens, checks every record was accepted and yields a `Seeded`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from agent.contract.record import format_time
from collector.app import create_app
from collector.config import CollectorConfig
from collector.registry import Registry
from tests.harness.collector_stack import collector_config_file
from tests.harness.dbs import InfluxServer
from tests.harness.report_fleet import (
    FleetStation,
    edge_records,
    fleet,
    records,
    write_registry_csv,
)

INTERVAL_S = 600  # the fleet's icmp interval
EDGE_STATIONS = (1, 5)  # Sulawesi Selatan (WITA) and the Papua station kept on WITA


@dataclass
class Seeded:
    cfg: CollectorConfig
    config_path: Path
    url: str
    admin_token: str
    database: str
    stations: list[FleetStation]
    day0: datetime  # UTC midnight of the first seeded local date (a date carrier)
    influx: InfluxServer

    @property
    def dates(self) -> tuple[str, str]:
        d0 = self.day0.date()
        return d0.isoformat(), (d0 + timedelta(days=1)).isoformat()


POST_RECORDS = 500


def _post(url: str, token: str, station: str, recs: list[dict[str, Any]]) -> None:
    # Requests of limits.max_records (500) records at most, as agents send them.
    for i in range(0, len(recs), POST_RECORDS):
        body = {
            "schema": 1,
            "agent": {"station": station, "version": "test", "boot_id": None},
            "sent_at": format_time(datetime.now(UTC)),
            "records": recs[i : i + POST_RECORDS],
        }
        r = httpx.post(
            f"{url}/api/v1/measurements",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"Authorization": f"Bearer {token}", "Content-Encoding": "gzip",
                     "Content-Type": "application/json"},
            timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        doc = r.json()
        assert not doc["rejected"], doc["rejected"][:3]
        assert len(doc["accepted"]) == len(recs[i : i + POST_RECORDS])


@contextlib.contextmanager
def seeded(influx: InfluxServer, database: str, tmp: Path) -> Iterator[Seeded]:
    admin = secrets.token_hex(24)
    (tmp / "admin.token").write_text(admin + "\n")
    cfg = collector_config_file(
        tmp, influx.url, database, reports={"admin_token_file": str(tmp / "admin.token")}
    )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    stations = fleet(50)
    registry = Registry(cfg.registry_path, refresh_s=0)
    registry.import_stations_csv(write_registry_csv(stations, tmp / "stations.csv"))
    tokens = {p: registry.add_token(region=p, note="report test")[1] for p in ("32", "73", "91")}
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
    url = f"http://{cfg.listen.host}:{cfg.listen.port}"
    # Three and two days ago: inside the collector's accepted past (35 days), fully passed.
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(3)
    try:
        for s in stations:
            recs = list(records(s, day0, days=2, icmp_every_s=INTERVAL_S))
            if s.index in EDGE_STATIONS:
                recs += edge_records(s, day0)
            _post(url, tokens[s.id[:2]], s.id, recs)
        yield Seeded(cfg, cfg.path, url, admin, database, stations, day0, influx)
    finally:
        server.should_exit = True
        thread.join(10)
        registry.close()
