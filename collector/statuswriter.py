"""Writes `station_status` points off the acknowledgement path.

The ingest path hands points to `StatusWriter.put` (no I/O, no await) and answers the agent;
one background task writes what is queued in batches. While the database is down the task
keeps the points and retries with a growing pause (1 s doubling to `max_backoff_s`), so a
status transition is never lost to an outage of the database, and `close()` writes what is
left on shutdown (within `close_timeout_s`).

Memory stays bounded: per station the queue keeps every transition (a point whose status
differs from the point queued before it) and only the newest of a run of points with the
same status (its first point, the change, and its newest: a periodic refresh replaces the
refresh before it), so a station holds a few
points, however long the outage. A station that flaps for longer than `per_station`
transitions loses its oldest queued transitions first (counted in `dropped`); the map shows
its newest state either way. Points the database refuses (a type conflict, say) are logged
and dropped: retrying cannot make them valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from collector.lineproto import encode_point
from collector.sinks import SinkUnavailable, WriteResult

log = logging.getLogger("sinyal.collector.status")

Point = tuple[str, dict[str, str], dict[str, int | float | str], int]


class StatusWriter:
    def __init__(
        self,
        write: Callable[[Sequence[str]], Awaitable[WriteResult]],
        *,
        delay_s: float = 0.2,
        max_backoff_s: float = 30.0,
        per_station: int = 64,
        max_lines: int = 5_000,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._write = write
        self.delay_s = delay_s
        self.max_backoff_s = max_backoff_s
        self.per_station = per_station
        self.max_lines = max_lines
        self.close_timeout_s = close_timeout_s
        self._queue: dict[str, list[Point]] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # points the database confirmed
        self.dropped = 0  # transitions dropped over the per-station bound
        self.refused = 0  # points the database refused
        self.failures = 0  # writes that failed (database unavailable)
        self._writing = 0  # points in the write in flight

    # -- the ingest side ---------------------------------------------------------------------

    def put(self, points: Sequence[Point]) -> None:
        """Queue points (tags must carry `station`); returns at once."""
        for p in points:
            self._add(p)
        if points:
            self._wake.set()

    def _add(self, p: Point) -> None:
        sid = p[1].get("station", "")
        q = self._queue.setdefault(sid, [])
        status = p[2].get("status")
        if (
            len(q) >= 2
            and q[-1][2].get("status") == status == q[-2][2].get("status")
            and q[-1][3] <= p[3]
        ):
            q[-1] = p  # a run of one status keeps its first point (the change) and its newest
            return
        q.append(p)
        q.sort(key=lambda x: x[3])  # history points may come after newer live ones
        if len(q) > self.per_station:
            del q[0]
            self.dropped += 1

    def pending(self) -> int:
        """Points queued or being written."""
        return sum(len(q) for q in self._queue.values()) + self._writing

    # -- the task ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Write what is queued (one more try, within close_timeout_s), then stop."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.close_timeout_s)
            except TimeoutError:
                log.warning("station_status: %d points not written at shutdown", self.pending())
            self._task = None

    async def flush(self) -> bool:
        """Write everything queued now; False when the database did not confirm."""
        while self._queue:
            batch = self._take()
            self._writing = len(batch)
            try:
                result = await self._write([encode_point(*p) for p in batch])
            except SinkUnavailable as exc:
                self.failures += 1
                for p in batch:  # back in the queue, in time order with newer arrivals
                    self._add(p)
                log.warning("station_status not written yet (%d points): %s", len(batch), exc)
                return False
            finally:
                self._writing = 0
            self.refused += len(result.rejected)
            for why in result.rejected.values():
                log.warning("station_status point refused by the database: %s", why)
            self.written += len(batch) - len(result.rejected)
        return True

    def _take(self) -> list[Point]:
        batch: list[Point] = []
        for sid in list(self._queue):
            q = self._queue.pop(sid)
            batch.extend(q)
            if len(batch) >= self.max_lines:
                break
        return batch

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            if not self._queue:
                if self._stop.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
            if not self._stop.is_set():
                # A short pause gathers the points of concurrent uploads into one write.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.delay_s)
            try:
                ok = await self.flush()
            except Exception:  # a bug must not end the task: the points stay queued
                log.exception("station_status writer failed")
                ok = False
            if ok:
                backoff = 1.0
                continue
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(self.max_backoff_s, backoff * 2)
