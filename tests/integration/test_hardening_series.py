"""Finding 3 of issue 15: series cardinality from one token. Against the real collector and a
real InfluxDB 1.6.7: a station's new series beyond `limits.max_series_per_station` are refused
per record (`series_limit`) while its known series go on; and when the database itself is at
its series limit (`max-series-per-database`), the collector answers 503 so another station's
agent keeps its valid records and retries, instead of dead-lettering them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import CollectorEndpoint
from agent.contract.record import Record
from agent.spool import Spool
from agent.uploader import Uploader
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

OTHER = "3171011002004"  # in the region the stack's region token covers


def hostile_records(n: int, station: str = STATION, prefix: str = "t") -> list[dict[str, Any]]:
    """n records, each opening a new series (a distinct target)."""
    out = []
    for i in range(n):
        r = golden("icmp-ok", station=station, age_s=120)
        r["tags"]["target"] = f"{prefix}{i}"
        out.append(r)
    return out


def post(stack: Stack, records: list[dict[str, Any]], token: str, station: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/api/v1/measurements",
        json=envelope(records, station=station),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def series_of(influx: InfluxServer, db: str, station: str) -> int:
    doc = influx.query_raw(f'SHOW SERIES FROM "icmp" WHERE "station" = \'{station}\'', db)
    return sum(len(s["values"]) for s in doc["results"][0].get("series", []))


@pytest.fixture
def capped(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(
        tmp_path, influxdb.url, influx_database, limits={"max_series_per_station": 20}
    )
    with running_collector(cfg) as s:
        yield s


def test_new_series_beyond_the_cap_are_refused_per_record(
    capped: Stack, influxdb: InfluxServer
) -> None:
    db = capped.cfg.sink.database
    answer = post(capped, hostile_records(100), capped.token, STATION).json()
    assert len(answer["accepted"]) == 20
    reasons = {r["reason"] for r in answer["rejected"]}
    assert reasons == {"series_limit"} and len(answer["rejected"]) == 80
    detail = answer["rejected"][0]["detail"]
    assert "limits.max_series_per_station" in detail and STATION in detail
    assert series_of(influxdb, db, STATION) == 20
    # The station's known series go on; another station has a cap of its own.
    again = post(capped, hostile_records(20), capped.token, STATION).json()
    assert len(again["accepted"]) == 20 and not again["rejected"]
    other = post(capped, hostile_records(5, OTHER), capped.region_token, OTHER).json()
    assert len(other["accepted"]) == 5
    # /metrics counts the refusals by reason.
    metrics = httpx.get(f"{capped.url}/metrics", timeout=10).text
    assert 'reason="series_limit"' in metrics


@pytest.fixture
def small_db(tmp_path: Path) -> Iterator[InfluxServer]:
    with influxd(require_tool("influxd"), max_series=40) as server:
        yield server


def test_a_full_database_makes_other_stations_retry_not_dead_letter(
    tmp_path: Path, small_db: InfluxServer
) -> None:
    db = f"t_{uuid.uuid4().hex[:12]}"
    small_db.create_database(db)
    cfg = collector_config_file(tmp_path, small_db.url, db)
    with running_collector(cfg) as stack:
        # One station fills the database's series (its cap, 500, is far above 40): ten new
        # series a request until the database refuses, then one a request until it is full.
        codes = []
        for size in (10, 1):
            for i in range(50):
                answer = post(
                    stack, hostile_records(size, prefix=f"{size}-{i}-"), stack.token, STATION
                )
                codes.append(answer.status_code)
                if answer.status_code != 200:
                    break
                assert not answer.json()["rejected"]  # never a refusal for good
            assert answer.status_code == 503 and answer.headers["retry-after"], codes
        # Another station's first upload: new series the database cannot take.
        spool = Spool(tmp_path / "other.sqlite3")
        records = [Record.from_dict(r) for r in hostile_records(5, OTHER, prefix="ok")]
        spool.put(records)
        up = Uploader(
            spool, CollectorEndpoint(stack.url, token=stack.region_token, timeout_s=10), OTHER
        )

        async def once() -> Any:
            try:
                return await up.upload_once()
            finally:
                await up.aclose()

        outcome = asyncio.run(once())
        assert outcome is not None and outcome.status == 503, outcome
        assert outcome.retry_after_s is not None
        assert spool.stats().records == 5 and spool.dead_letter_count() == 0
        spool.close()
