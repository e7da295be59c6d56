"""agent.scheduler: slots, jitter, the exclusive lock, and a running Scheduler.

The running tests use fake probes with intervals of a fraction of a second and
the real clocks; each lasts about a second.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from agent.contract.record import Record
from agent.probes.base import Probe
from agent.scheduler import (
    OnRecords,
    ProbeState,
    Scheduler,
    SharedExclusiveLock,
    jitter_bound,
    next_slot,
    station_offset,
)

STATION = "3171011001001"


@dataclass(eq=False)
class FakeProbe:
    """Implements the Probe protocol; records when each run started and ended."""

    kind: str
    interval_s: float
    exclusive: bool = False
    duration_s: float = 0.0
    fail: bool = False
    runs: list[tuple[float, float]] = field(default_factory=list)  # time.monotonic()
    wall_starts: list[float] = field(default_factory=list)  # time.time()
    running: int = 0

    async def run(self) -> list[Record]:
        start = time.monotonic()
        self.wall_starts.append(time.time())
        self.running += 1
        try:
            await asyncio.sleep(self.duration_s)
            if self.fail:
                raise RuntimeError(f"bug in {self.kind}")
            return [
                Record(
                    "icmp",
                    datetime.now(UTC),
                    {"station": STATION, "uplink": "lo", "target": self.kind},
                    {"ok": 1},
                )
            ]
        finally:
            self.running -= 1
            self.runs.append((start, time.monotonic()))


def _is_probe(p: Probe) -> Probe:
    return p


_is_probe(FakeProbe("a", 1.0))  # mypy checks the fake against the protocol


class RecordSink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def __call__(self, records: list[Record]) -> None:
        self.records.extend(records)


def run_for(
    probes: Sequence[FakeProbe],
    seconds: float,
    station: str = STATION,
    on_records: OnRecords | None = None,
) -> tuple[Scheduler, float]:
    """Run a Scheduler for `seconds`; returns it and how long run() took to return after stop."""
    sched = Scheduler(
        station, probes, on_records or RecordSink(), rng=random.Random(1), startup_spread_s=0.05
    )

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(sched.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        t = time.monotonic()
        await asyncio.wait_for(task, 5)
        return time.monotonic() - t

    return sched, asyncio.run(main())


# --- slots and jitter ----------------------------------------------------------------------


def test_station_offset_is_deterministic_and_in_range() -> None:
    a = station_offset(STATION, "icmp", 60)
    assert a == station_offset(STATION, "icmp", 60)
    assert 0 <= a < 60
    # It scales with the interval: the same phase as a fraction of it.
    assert station_offset(STATION, "icmp", 300) == pytest.approx(a * 5)


def test_station_offset_differs_by_station_and_kind() -> None:
    offsets = {station_offset(f"3171011001{i:03d}", "icmp", 60) for i in range(100)}
    assert len(offsets) == 100
    assert station_offset(STATION, "icmp", 60) != station_offset(STATION, "dns", 60)


def test_station_offsets_spread_evenly_over_the_interval() -> None:
    interval = 300.0
    deciles = [0] * 10
    for i in range(1000):
        off = station_offset(f"{3171011001000 + i * 7919}", "icmp", interval)
        assert 0 <= off < interval
        deciles[int(off / interval * 10)] += 1
    # 100 expected per decile; a binomial standard deviation is ~9.5.
    assert all(60 <= n <= 140 for n in deciles), deciles


@pytest.mark.parametrize(
    ("now", "interval", "offset", "expected"),
    [
        (100.0, 60.0, 7.5, 127.5),
        (127.4, 60.0, 7.5, 127.5),
        (127.5, 60.0, 7.5, 187.5),  # strictly after: a slot starting now is not "next"
        (0.0, 60.0, 0.0, 60.0),
        (59.999, 60.0, 0.0, 60.0),
        (5.0, 60.0, 7.5, 7.5),
    ],
)
def test_next_slot(now: float, interval: float, offset: float, expected: float) -> None:
    assert next_slot(now, interval, offset) == pytest.approx(expected)


def test_next_slot_on_wall_clock_times() -> None:
    rng = random.Random(2)
    for _ in range(1000):
        now = rng.uniform(1.7e9, 1.9e9)
        interval = rng.choice([10.0, 60.0, 300.0, 900.0])
        offset = station_offset(str(rng.getrandbits(40)), "icmp", interval)
        slot = next_slot(now, interval, offset)
        assert now < slot <= now + interval + 1e-6
        k = (slot - offset) / interval
        assert abs(k - round(k)) < 1e-6  # on the station's grid


@pytest.mark.parametrize(
    ("interval", "fraction", "max_s", "expected"),
    [(300, 0.1, 30, 30), (60, 0.1, 30, 6), (900, 0.1, 30, 30), (60, 0.0, 30, 0), (10, 0.5, 30, 5)],
)
def test_jitter_bound(interval: float, fraction: float, max_s: float, expected: float) -> None:
    assert jitter_bound(interval, fraction, max_s) == pytest.approx(expected)


def test_plan_starts_in_the_slot_within_the_jitter() -> None:
    probe = FakeProbe("icmp", 60.0)
    sched = Scheduler(STATION, [probe], RecordSink(), 0.1, 30.0, rng=random.Random(3))
    state = sched.states[0]
    assert state.jitter_s == 6.0
    assert state.offset_s == station_offset(STATION, "icmp", 60.0)
    now = 1_795_000_000.0
    delays = []
    for i in range(500):
        t = now + i * 7.3
        planned = sched.plan(state, t, first=False)
        slot = next_slot(t, 60.0, state.offset_s)
        assert slot <= planned <= slot + 6.0
        delays.append(planned - slot)
    assert max(delays) > 5.0 and min(delays) < 1.0  # the jitter is used, not constant


def test_first_run_is_within_the_startup_spread() -> None:
    slow = FakeProbe("icmp", 900.0)  # jitter bound 30 s, but the first run comes sooner
    sched = Scheduler(STATION, [slow], RecordSink(), rng=random.Random(4))
    state: ProbeState = sched.states[0]
    plans = [sched.plan(state, 1000.0, first=True) - 1000.0 for _ in range(200)]
    assert all(0 <= d <= 5.0 for d in plans)
    assert max(plans) > 4.0


# --- the shared/exclusive lock -------------------------------------------------------------


def test_lock_lets_shared_holders_in_together_and_exclusive_alone() -> None:
    async def main() -> None:
        lock = SharedExclusiveLock()
        await lock.acquire(False)
        await asyncio.wait_for(lock.acquire(False), 1)  # a second shared holder is not blocked
        assert lock.holders == (2, False)
        excl = asyncio.create_task(lock.acquire(True))
        await asyncio.sleep(0.01)
        assert not excl.done()  # waits for the shared holders
        late = asyncio.create_task(lock.acquire(False))
        await asyncio.sleep(0.01)
        assert not late.done()  # a waiting exclusive holds back new shared holders
        await lock.release(False)
        await lock.release(False)
        await asyncio.wait_for(excl, 1)
        assert lock.holders == (0, True)
        assert not late.done()
        await lock.release(True)
        await asyncio.wait_for(late, 1)
        assert lock.holders == (1, False)

    asyncio.run(main())


def test_lock_cancelled_exclusive_waiter_does_not_block_shared_ones() -> None:
    async def main() -> None:
        lock = SharedExclusiveLock()
        await lock.acquire(False)
        excl = asyncio.create_task(lock.acquire(True))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(lock.acquire(False))
        await asyncio.sleep(0.01)
        assert not late.done()
        excl.cancel()
        await asyncio.wait_for(late, 1)
        assert lock.holders == (2, False)

    asyncio.run(main())


# --- a running scheduler -------------------------------------------------------------------


def test_probes_run_on_their_slots() -> None:
    fast, slow = FakeProbe("fast", 0.2), FakeProbe("slow", 0.5)
    collect = RecordSink()
    sched, _ = run_for([fast, slow], 1.6, on_records=collect)
    assert 7 <= len(fast.runs) <= 10
    assert 3 <= len(slow.runs) <= 5
    for probe, state in zip((fast, slow), sched.states, strict=True):
        assert state.runs == len(probe.runs)
        assert state.missed_slots == 0
        jitter = 0.1 * probe.interval_s
        # After the first (start-up) run, every run starts in the probe's own wall-clock slot,
        # no later than the jitter bound (plus some event-loop latency).
        for t in probe.wall_starts[1:]:
            phase = (t - state.offset_s) % probe.interval_s
            if phase > probe.interval_s / 2:
                phase -= probe.interval_s  # a timer that fired a hair early
            assert -0.005 <= phase <= jitter + 0.05, (probe.kind, phase)
    assert len(collect.records) == len(fast.runs) + len(slow.runs)


def _aligned_station(kinds: tuple[str, str], interval: float) -> str:
    """A station id whose offsets for two probe kinds nearly coincide, so they start together."""
    for i in range(10_000):
        sid = f"{3171011000000 + i}"
        a, b = (station_offset(sid, k, interval) for k in kinds)
        if abs(a - b) < 0.01 * interval:
            return sid
    raise AssertionError("no aligned station id")


def test_exclusive_probe_runs_alone_and_shared_probes_together() -> None:
    a, b = FakeProbe("a", 0.25, duration_s=0.1), FakeProbe("b", 0.25, duration_s=0.1)
    excl = FakeProbe("x", 0.6, exclusive=True, duration_s=0.12)
    run_for([a, b, excl], 2.5, station=_aligned_station(("a", "b"), 0.25))
    assert len(excl.runs) >= 3
    assert len(a.runs) >= 5 and len(b.runs) >= 5
    for xs, xe in excl.runs:
        for s, e in a.runs + b.runs:
            assert e <= xs or s >= xe, f"shared run {s:.3f}..{e:.3f} overlaps exclusive {xs:.3f}"
    shared_overlaps = 0
    for s1, e1 in a.runs:
        shared_overlaps += sum(1 for s2, e2 in b.runs if s1 < e2 and s2 < e1)
    assert shared_overlaps >= 2, "shared probes never ran at the same time"


def test_a_failing_probe_does_not_stop_the_scheduler(caplog: pytest.LogCaptureFixture) -> None:
    bad, good = FakeProbe("bad", 0.2, fail=True), FakeProbe("good", 0.2)
    collect = RecordSink()
    with caplog.at_level(logging.ERROR, logger="sinyal.scheduler"):
        sched, _ = run_for([bad, good], 1.0, on_records=collect)
    assert len(bad.runs) >= 4 and len(good.runs) >= 4
    assert sched.states[0].runs == len(bad.runs)
    assert {r.tags["target"] for r in collect.records} == {"good"}
    failures = [r for r in caplog.records if "probe bad failed" in r.getMessage()]
    assert len(failures) == len(bad.runs)
    assert all(r.exc_info for r in failures)  # logged with the traceback


def test_a_failing_consumer_does_not_stop_the_probes(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe("icmp", 0.2)
    calls = 0

    async def on_records(records: list[Record]) -> None:
        nonlocal calls
        calls += 1
        raise OSError("disk I/O error")

    with caplog.at_level(logging.ERROR, logger="sinyal.scheduler"):
        run_for([probe], 1.0, on_records=on_records)
    assert len(probe.runs) >= 4
    assert calls == len(probe.runs)
    assert any("icmp" in r.getMessage() and r.exc_info for r in caplog.records)


def test_an_overrunning_probe_counts_missed_slots(caplog: pytest.LogCaptureFixture) -> None:
    slow = FakeProbe("slow", 0.2, duration_s=0.45)
    with caplog.at_level(logging.WARNING, logger="sinyal.scheduler"):
        sched, _ = run_for([slow], 1.3)
    assert len(slow.runs) >= 2
    assert sched.states[0].missed_slots >= 2
    assert any("overran" in r.getMessage() for r in caplog.records)


def test_stop_ends_everything_promptly() -> None:
    busy = FakeProbe("busy", 0.3, duration_s=30)  # in the middle of a run at stop
    idle = FakeProbe("idle", 600.0, duration_s=0.0)  # waiting for its next slot at stop
    sched, took = run_for([busy, idle], 0.4)
    assert took < 0.5
    assert len(busy.runs) == 1  # the cancelled run
    assert busy.runs[0][1] - busy.runs[0][0] < 1.0
    assert len(idle.runs) == 1
    assert sched.lock.holders == (0, False)  # the cancelled run gave the lock back
