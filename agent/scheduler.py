"""Runs each probe on its interval, spread over the fleet and never in lockstep.

A probe with interval I runs in slots k*I + offset (wall clock), where offset
is derived from a hash of the station id and probe kind: every station gets
its own fixed phase, so a fleet's probes are spread evenly over the interval
and one station's schedule is reproducible. Each run starts a bounded random
jitter after its slot (at most jitter_fraction * I and max_jitter_s), so even
stations with colliding offsets do not stay in step. The first run after
start-up happens within a few seconds, so a technician sees results at once.

A probe marked exclusive runs alone: it waits for running probes to finish and
holds back the others until it is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agent.contract.record import Record
from agent.probes.base import Probe

log = logging.getLogger("sinyal.scheduler")

STARTUP_SPREAD_S = 5.0


class SharedExclusiveLock:
    """Many shared holders or one exclusive holder; a waiting exclusive blocks new shared ones."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    async def acquire(self, exclusive: bool) -> None:
        async with self._cond:
            if exclusive:
                self._exclusive_waiting += 1
                try:
                    await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                except BaseException:
                    # Cancelled while waiting: the shared waiters this one held back may go.
                    self._exclusive_waiting -= 1
                    self._cond.notify_all()
                    raise
                self._exclusive_waiting -= 1
                self._exclusive = True
            else:
                await self._cond.wait_for(
                    lambda: not self._exclusive and self._exclusive_waiting == 0
                )
                self._shared += 1

    async def release(self, exclusive: bool) -> None:
        async with self._cond:
            if exclusive:
                self._exclusive = False
            else:
                self._shared -= 1
            self._cond.notify_all()

    @property
    def holders(self) -> tuple[int, bool]:
        return self._shared, self._exclusive


@dataclass
class ProbeState:
    probe: Probe
    offset_s: float
    jitter_s: float
    runs: int = 0
    missed_slots: int = 0
    next_run: float | None = None  # wall-clock time of the next planned run
    last_duration_s: float | None = None


def station_offset(station_id: str, kind: str, interval_s: float) -> float:
    """Deterministic phase in [0, interval) from the station id and probe kind."""
    digest = hashlib.sha256(f"{station_id}/{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval_s


def jitter_bound(interval_s: float, fraction: float, max_s: float) -> float:
    return min(interval_s * fraction, max_s)


def next_slot(now: float, interval_s: float, offset_s: float) -> float:
    """The first slot start strictly after `now`."""
    k = math.floor((now - offset_s) / interval_s) + 1
    return k * interval_s + offset_s


OnRecords = Callable[[list[Record]], Awaitable[None]]


class Scheduler:
    def __init__(
        self,
        station_id: str,
        probes: Sequence[Probe],
        on_records: OnRecords,
        jitter_fraction: float = 0.1,
        max_jitter_s: float = 30.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        startup_spread_s: float = STARTUP_SPREAD_S,
    ) -> None:
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_records = on_records
        self.startup_spread_s = startup_spread_s
        self.lock = SharedExclusiveLock()
        self.states = [
            ProbeState(
                p,
                station_offset(station_id, p.kind, p.interval_s),
                jitter_bound(p.interval_s, jitter_fraction, max_jitter_s),
            )
            for p in probes
        ]

    def plan(self, state: ProbeState, now: float, first: bool) -> float:
        """Wall-clock time of the next run of this probe."""
        if first:
            return now + self.rng.uniform(0, min(self.startup_spread_s, state.jitter_s or 1.0))
        return next_slot(now, state.probe.interval_s, state.offset_s) + self.rng.uniform(
            0, state.jitter_s
        )

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._loop(s, stop), name=f"probe-{s.probe.kind}")
            for s in self.states
        ]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, state: ProbeState, stop: asyncio.Event) -> None:
        first = True
        last_slot: float | None = None
        while not stop.is_set():
            now = self.clock()
            state.next_run = self.plan(state, now, first)
            slot = next_slot(now, state.probe.interval_s, state.offset_s)
            if last_slot is not None and not first:
                skipped = round((slot - last_slot) / state.probe.interval_s) - 1
                if skipped > 0:
                    state.missed_slots += skipped
                    log.warning(
                        "probe %s overran its interval: %d slot(s) skipped",
                        state.probe.kind,
                        skipped,
                    )
            last_slot = slot
            first = False
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, state.next_run - self.clock()))
                return
            except TimeoutError:
                pass
            await self.run_probe(state)

    async def run_probe(self, state: ProbeState) -> None:
        probe = state.probe
        await self.lock.acquire(probe.exclusive)
        started = time.monotonic()
        try:
            records = await probe.run()
        except Exception:
            # A bug in a probe must not stop the agent; it is logged with its traceback.
            log.exception("probe %s failed", probe.kind)
            records = []
        finally:
            await self.lock.release(probe.exclusive)
            state.last_duration_s = time.monotonic() - started
            state.runs += 1
        if records:
            try:
                await self.on_records(records)
            except Exception:
                # Otherwise this probe's loop would end silently and it would never run again.
                log.exception("probe %s: %d record(s) not handed over", probe.kind, len(records))
