"""collector.batcher (group commit) against the real InfluxDB 1.6.7: concurrent requests share
writes, each learns exactly its own outcome, and no more than `writers` writes are in flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from collector.batcher import Batcher
from collector.config import SinkConfig
from collector.sinks import SinkUnavailable, V1Sink, WriteResult
from tests.harness.dbs import InfluxServer
from tests.harness.servers import LOOPBACK, closed_port


class CountingSink(V1Sink):
    """The real v1 sink, recording each write's size and how many were in flight at once."""

    def __init__(self, cfg: SinkConfig) -> None:
        super().__init__(cfg)
        self.sizes: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def write_async(self, lines: Sequence[str]) -> WriteResult:
        self.sizes.append(len(lines))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().write_async(lines)
        finally:
            self.in_flight -= 1


def config(url: str, database: str) -> SinkConfig:
    return SinkConfig("v1", url, database, timeout_s=5.0, retry_after_s=7)


def request_lines(r: int, n: int, bad: set[int]) -> list[str]:
    """Request r's n lines; those in `bad` write an integer into the float field f (a field
    type conflict InfluxDB refuses line by line)."""
    return [
        f"m,req=r{r},i=l{i} f={'1i' if i in bad else f'{i}.5'} {r * 1000 + i}" for i in range(n)
    ]


def run(sink: V1Sink, batcher: Batcher, requests: list[list[str]]) -> list[object]:
    async def scenario() -> list[object]:
        try:
            return await asyncio.gather(
                *(batcher.write(lines) for lines in requests), return_exceptions=True
            )
        finally:
            await sink.aclose()

    try:
        return asyncio.run(scenario())
    finally:
        sink.close()


def test_each_request_gets_exactly_its_own_refused_lines(influxdb: InfluxServer) -> None:
    db = f"batch_{uuid.uuid4().hex[:8]}"
    influxdb.databases.append(db)
    influxdb.create_database(db)
    seed = V1Sink(config(influxdb.url, db))
    seed.write(["m,req=seed f=0.5 1"])  # f is a float field from now on
    seed.close()
    sink = CountingSink(config(influxdb.url, db))
    batcher = Batcher(sink, max_lines=250, writers=3)
    bad = {r: ({r % 7, 40 + r % 11} if r % 3 == 0 else set()) for r in range(40)}
    requests = [request_lines(r, 60, bad[r]) for r in range(40)]
    results = run(sink, batcher, requests)

    for r, result in enumerate(results):
        assert isinstance(result, WriteResult), result
        assert set(result.rejected) == bad[r], r
        assert all("field type conflict" in why for why in result.rejected.values())
    # the 40 requests shared writes, none above max_lines (each request fits), <= 3 at once
    assert batcher.writes < len(requests)
    assert max(sink.sizes) <= 250 and sum(sink.sizes) >= 40 * 60
    assert sink.most_in_flight <= 3
    stored = influxdb.query('SELECT count("f") FROM "m" WHERE "req" != \'seed\'', db)
    assert stored[0]["count"] == 40 * 60 - sum(len(b) for b in bad.values())


def test_a_request_larger_than_max_lines_is_written_whole(influxdb: InfluxServer) -> None:
    db = f"batch_{uuid.uuid4().hex[:8]}"
    influxdb.databases.append(db)
    sink = CountingSink(config(influxdb.url, db))
    batcher = Batcher(sink, max_lines=100, writers=2)
    results = run(sink, batcher, [request_lines(0, 300, set()), request_lines(1, 10, set())])
    assert [r.rejected for r in results if isinstance(r, WriteResult)] == [{}, {}]
    assert sorted(sink.sizes) == [10, 300]
    assert influxdb.query('SELECT count("f") FROM "m"', db)[0]["count"] == 310


def test_database_down_fails_every_waiting_request() -> None:
    sink = CountingSink(config(f"http://{LOOPBACK}:{closed_port()}", "x"))
    batcher = Batcher(sink, max_lines=50, writers=2)
    results = run(sink, batcher, [request_lines(r, 20, set()) for r in range(10)])
    assert all(isinstance(r, SinkUnavailable) for r in results), results
    assert sink.most_in_flight <= 2


@pytest.mark.parametrize(("max_lines", "writers", "min_lines"), [(0, 1, 1), (10, 0, 1), (9, 1, 0)])
def test_limits_must_be_positive(max_lines: int, writers: int, min_lines: int) -> None:
    sink = V1Sink(config(f"http://{LOOPBACK}:{closed_port()}", "x"))
    with pytest.raises(ValueError, match="must be >= 1"):
        Batcher(sink, max_lines=max_lines, writers=writers, min_lines=min_lines)
    sink.close()


@pytest.mark.parametrize(
    ("sizes", "expected_writes", "most_in_flight"),
    [
        # idle: the first request goes at once; the rest (30 < min_lines) wait for it
        ([10, 10, 10, 10], [10, 30], 1),
        # 120 >= min_lines queue up while the first is in flight: a second write starts
        ([10, 60, 60], [10, 120], 2),
        ([5], [5], 1),  # a lone small request is never kept waiting
        # a request of min_lines or more is written alone and holds up no small request:
        # the first 10 goes at once beside it (the second waits for the first)
        ([500, 10, 10], [500, 10, 10], 2),
        # large requests leave one of the 4 writers to the small ones
        ([150, 150, 150, 150, 10], [150, 150, 150, 10, 150], 4),
    ],
)
def test_a_further_write_waits_for_min_lines_or_an_idle_database(
    influxdb: InfluxServer, sizes: list[int], expected_writes: list[int], most_in_flight: int
) -> None:
    db = f"batch_{uuid.uuid4().hex[:8]}"
    influxdb.databases.append(db)
    influxdb.create_database(db)
    sink = CountingSink(config(influxdb.url, db))
    batcher = Batcher(sink, max_lines=1000, writers=4, min_lines=100)
    results = run(sink, batcher, [request_lines(r, n, set()) for r, n in enumerate(sizes)])
    assert all(isinstance(r, WriteResult) and not r.rejected for r in results), results
    assert sink.sizes == expected_writes
    assert sink.most_in_flight == most_in_flight
    assert influxdb.query('SELECT count("f") FROM "m"', db)[0]["count"] == sum(sizes)
