"""The agent's uploader against a real collector and InfluxDB: acknowledged records leave the
spool, rejected ones become dead letters, nothing is lost when the collector is unreachable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import CollectorEndpoint
from agent.contract.record import Record
from agent.spool import Spool
from agent.uploader import Backoff, Outcome, Uploader
from tests.harness.collector_stack import (
    Stack,
    collector_config_file,
    free_port,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def spool_with(tmp_path: Path, records: list[dict[str, object]]) -> Spool:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.put([Record.from_dict(r) for r in records])
    return spool


def uploader(spool: Spool, url: str, token: str, batch: int = 500) -> Uploader:
    return Uploader(spool, CollectorEndpoint(url, token=token, timeout_s=5), "3171011001001", batch)


async def once(up: Uploader) -> Outcome | None:
    try:
        return await up.upload_once()
    finally:
        await up.aclose()


def count(influx: InfluxServer, db: str, kind: str) -> int:
    rows = influx.query(f'SELECT count("id") FROM "{kind}"', db)
    return int(rows[0]["count"]) if rows else 0


def test_acknowledged_records_leave_the_spool(
    tmp_path: Path, stack: Stack, influxdb: InfluxServer
) -> None:
    records = [golden("icmp-ok", age_s=600 - i) for i in range(250)]
    spool = spool_with(tmp_path, records)
    up = uploader(spool, stack.url, stack.token, batch=100)

    async def drain() -> list[int]:
        sent = []
        while (o := await up.upload_once()) is not None:
            assert o.ok, o.error
            sent.append(o.accepted)
        await up.aclose()
        return sent

    assert asyncio.run(drain()) == [100, 100, 50]
    assert spool.stats().records == 0
    assert count(influxdb, stack.cfg.sink.database, "icmp") == 250
    assert spool.state()["last_upload_at"]
    assert abs(float(spool.state()["clock_offset_ms"])) < 1000


def test_freshest_batch_first_then_oldest_first(tmp_path: Path, stack: Stack) -> None:
    records = [golden("dns-ok", age_s=1000 - i) for i in range(30)]  # oldest first
    spool = spool_with(tmp_path, records)
    up = uploader(spool, stack.url, stack.token, batch=10)

    async def order() -> list[set[str]]:
        batches = []
        for _ in range(3):
            before = spool.ids()
            await up.upload_once()
            batches.append(before - spool.ids())
        await up.aclose()
        return batches

    first, second, third = asyncio.run(order())
    ids = [r["id"] for r in records]
    assert first == set(ids[20:])  # the newest records, so the map recovers at once
    assert second == set(ids[:10])  # then the backlog, oldest first
    assert third == set(ids[10:20])


def test_rejected_records_become_dead_letters(tmp_path: Path, stack: Stack) -> None:
    good = golden("http-ok")
    other = golden("http-ok", station="3273011001001")  # outside the token's scope
    spool = spool_with(tmp_path, [good, other])
    up = uploader(spool, stack.url, stack.token)
    outcome = asyncio.run(once(up))
    assert outcome is not None and outcome.accepted == 1 and outcome.rejected == 1
    assert spool.stats().records == 0
    [dead] = spool.dead_letters()
    assert dead["id"] == other["id"] and dead["reason"] == "out_of_scope"
    assert spool.dead_letter_count() == 1


def test_unreachable_collector_keeps_everything(tmp_path: Path) -> None:
    records = [golden("icmp-ok") for _ in range(5)]
    spool = spool_with(tmp_path, records)
    up = uploader(spool, f"http://127.0.0.1:{free_port()}", "sny_x")
    outcome = asyncio.run(once(up))
    assert outcome is not None and not outcome.ok and outcome.status is None
    assert spool.stats().records == 5
    assert up.freshest_next
    assert "ConnectError" in spool.state()["last_error"]


def test_wrong_token_keeps_everything(tmp_path: Path, stack: Stack) -> None:
    spool = spool_with(tmp_path, [golden("icmp-ok")])
    up = uploader(spool, stack.url, "sny_wrong")
    outcome = asyncio.run(once(up))
    assert outcome is not None and outcome.status == 401
    assert spool.stats().records == 1 and spool.dead_letter_count() == 0


def test_backoff_is_full_jitter_and_honours_retry_after() -> None:
    b = Backoff(base_s=1, cap_s=60, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(10)]
    for n, d in enumerate(delays):
        assert 0 <= d <= min(60, 2**n)
    for _ in range(20):  # after many failures, Retry-After still bounds the wait
        assert 30 <= b.next_delay(retry_after_s=30) <= 60
    b.reset()
    assert b.next_delay() <= 1


def test_a_probe_that_succeeds_again_ends_a_long_backoff(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    """The link was down long enough for the backoff to grow to minutes; when a probe
    reaches its target again, the uploader retries at once instead of sleeping on."""
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    spool = spool_with(tmp_path, [golden("icmp-ok") for _ in range(5)])
    up = Uploader(
        spool,
        CollectorEndpoint(f"http://{cfg.listen.host}:{cfg.listen.port}", token="x", timeout_s=2),
        "3171011001001",
        backoff=Backoff(base_s=600, cap_s=600),  # every wait is up to ten minutes
    )

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(up.run(stop, asyncio.Event()))
        await asyncio.sleep(1.0)  # the first attempt failed: nothing listens yet
        with running_collector(cfg) as s:
            up.collector = CollectorEndpoint(s.url, token=s.token, timeout_s=2)
            t0 = asyncio.get_running_loop().time()
            up.link_back.set()  # what the daemon does when a probe succeeds
            while spool.stats().records and asyncio.get_running_loop().time() - t0 < 20:
                await asyncio.sleep(0.1)
            took = asyncio.get_running_loop().time() - t0
        stop.set()
        await task
        return took

    took = asyncio.run(scenario())
    assert spool.stats().records == 0
    assert took < 10, took
