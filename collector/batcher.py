"""Group commit: the lines of concurrent requests go to the database in one write.

Each request submits its lines and waits. An idle collector adds no delay: with no write in
flight, a lone request is written at once. While writes are in flight, newer submissions
queue up, and a further write starts (up to `writers` at once, each taking up to `max_lines`
from the queue) once `min_lines` are waiting, or when a write finishes and nothing else is in
flight. So a busy database gets several writes of a few hundred lines rather than a stream of
one-request writes, and a quiet one is never kept waiting.

A request of `min_lines` or more is a batch by itself: it is written alone, in a lane of its
own (at most `writers` - 1 such writes at once), and its writes do not count as "in flight"
for the queue above. So a station's small upload never waits for another token's large one to
be written: the queue's first write starts at once beside it.

Why these limits: a few large writes leave the database's cores idle between them, many small
ones cost more per point on both sides; the defaults are the best of the variants measured
with benchmarks/ingest.py (benchmarks/results/ingest-tuning.md).

Every request still gets exactly its own outcome: the lines the database refused are mapped
back to the request they came from, and when the database is unavailable every waiting
request gets SinkUnavailable, so nothing is acknowledged that the database did not confirm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from collector.sinks import Sink, WriteResult


@dataclass
class _Pending:
    lines: Sequence[str]
    future: asyncio.Future[WriteResult] = field(repr=False)


class Batcher:
    def __init__(
        self, sink: Sink, max_lines: int = 1_000, writers: int = 8, min_lines: int = 400
    ) -> None:
        if max_lines < 1 or writers < 1 or min_lines < 1:
            raise ValueError(
                f"max_lines ({max_lines}), writers ({writers}) and min_lines ({min_lines})"
                " must be >= 1"
            )
        self.sink = sink
        self.max_lines = max_lines
        self.writers = writers
        self.min_lines = min_lines
        self.queue: list[_Pending] = []  # requests of fewer than min_lines, grouped
        self.queued = 0  # lines in the queue
        self.large: list[_Pending] = []  # requests of min_lines or more, written alone
        self.in_flight = 0  # writes the database has not answered yet
        self.grouped_in_flight = 0  # those of them made from the queue
        self.writes = 0  # database writes made (for metrics and tests)
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, lines: Sequence[str]) -> WriteResult:
        """Write `lines` (possibly together with other requests' lines); returns which of
        them the database refused. Raises SinkUnavailable when the database did not confirm."""
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        if len(lines) >= self.min_lines:
            self.large.append(_Pending(lines, future))
        else:
            self.queue.append(_Pending(lines, future))
            self.queued += len(lines)
        self._start()
        return await future

    def _start(self) -> None:
        """Start the writes the limits allow now."""
        while (
            self.queue
            and self.in_flight < self.writers
            and (self.grouped_in_flight == 0 or self.queued >= self.min_lines)
        ):
            batch: list[_Pending] = []
            n = 0
            while self.queue and (not batch or n + len(self.queue[0].lines) <= self.max_lines):
                p = self.queue.pop(0)
                batch.append(p)
                n += len(p.lines)
            self.queued -= n
            self._launch(batch, grouped=True)
        # One writer is left to the queue, so its first write never waits for large ones.
        while self.large and self.in_flight < max(1, self.writers - 1):
            self._launch([self.large.pop(0)], grouped=False)

    def _launch(self, batch: list[_Pending], grouped: bool) -> None:
        self.in_flight += 1
        self.grouped_in_flight += grouped
        task = asyncio.ensure_future(self._flush(batch, grouped))
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[_Pending], grouped: bool) -> None:
        try:
            await self._write(batch)
        finally:
            self.in_flight -= 1
            self.grouped_in_flight -= grouped
            self._start()

    async def _write(self, batch: list[_Pending]) -> None:
        lines = [line for p in batch for line in p.lines]
        self.writes += 1
        try:
            result = await self.sink.write_async(lines)
        except Exception as exc:  # SinkUnavailable, or a bug: every waiter learns of it
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        offset = 0
        for p in batch:
            mine = {
                i - offset: why
                for i, why in result.rejected.items()
                if offset <= i < offset + len(p.lines)
            }
            if not p.future.done():
                p.future.set_result(WriteResult(mine))
            offset += len(p.lines)
