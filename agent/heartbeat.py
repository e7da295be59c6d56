"""The agent's heartbeat: one `agent` record a minute about the agent itself.

It tells the control room that the agent is alive even when every probe fails, and how far
behind its uploads are: spool depth, age of the oldest unsent record, evictions, dead
letters, the clock offset learnt from the collector and whether the kernel says the clock is
synchronised, the agent's CPU and memory, and the board temperature where one is readable
(Raspberry Pi: /sys/class/thermal/thermal_zone0/temp).
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

from agent import __version__
from agent.clock import clock_info
from agent.contract.record import MEASUREMENTS, FieldValue, Record, parse_time, utcnow
from agent.spool import Spool, oldest_age_s
from agent.uploadstate import CODE, NEVER, OK, Health

THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_seconds() -> float:
    return time.process_time()  # user + system CPU of all the process's threads


def rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, as a fallback


def board_temp_c(path: Path = THERMAL) -> float | None:
    try:
        return int(path.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


HEARTBEAT_INTERVAL_S = 60.0


class Heartbeat:
    """A Probe (see agent.probes.base) whose records describe the agent."""

    kind = "agent"
    exclusive = False

    def __init__(
        self, station: str, spool: Spool, interval_s: float = HEARTBEAT_INTERVAL_S
    ) -> None:
        self.station = station
        self.spool = spool
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last = (time.monotonic(), cpu_seconds())

    async def run(self) -> list[Record]:
        import asyncio

        return [await asyncio.to_thread(self.record)]

    def record(self) -> Record:
        now_mono, cpu = time.monotonic(), cpu_seconds()
        last_mono, last_cpu = self._last
        self._last = (now_mono, cpu)
        stats = self.spool.stats()
        state = self.spool.state()
        clock = clock_info()
        fields: dict[str, FieldValue | None] = {
            "uptime_s": round(now_mono - self.started, 3),
            "spool_records": stats.records,
            "oldest_unsent_s": _round(oldest_age_s(stats)),
            "dropped_total": stats.dropped_total,
            "dead_letters": self.spool.dead_letter_count(),
            "lost_total": self.spool.lost_total,
            "disk_full": int(self.spool.disk_full),
            "untimed": self.spool.untimed(clock.boot_id) if clock.boot_id else None,
            "clock_offset_ms": _offset(state.get("clock_offset_ms")),
            "clock_synced": clock.synced,
            # Over less than a second the figure is mostly clock granularity: left out.
            "cpu_pct": round(100 * (cpu - last_cpu) / (now_mono - last_mono), 3)
            if now_mono - last_mono >= 1.0
            else None,
            "rss_mb": round(rss_mb(), 2),
            "temp_c": board_temp_c(),
            **upload_fields(state),
        }
        tags = {"station": self.station, "version": __version__}
        clean = {k: v for k, v in fields.items() if v is not None}
        return Record(self.kind, utcnow(), tags, clean, None, clock=clock)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _float(text: str | None) -> float | None:
    try:
        return None if not text else float(text)
    except ValueError:
        return None


def upload_fields(state: dict[str, str]) -> dict[str, FieldValue | None]:
    """The upload state for the control room; nothing when no upload was ever tried (no
    collector configured)."""
    health = Health.from_state(state)
    if health.kind == NEVER and not health.last_error:
        return {}
    failing_s = None
    if health.kind != OK and health.since:
        failing_s = round(max(0.0, time.time() - parse_time(health.since).timestamp()), 3)
    return {
        "upload_ok": int(health.kind == OK),
        "upload_state": CODE.get(health.kind, CODE["other"]),
        "upload_failing_s": 0.0 if health.kind == OK else failing_s,
    }


def _offset(text: str | None) -> float | None:
    """The stored clock offset, unless it is not a finite value the record may carry (a state
    written by an agent that still trusted any answer of the collector)."""
    spec = MEASUREMENTS["agent"].fields["clock_offset_ms"]
    value = _float(text)
    if value is None or not math.isfinite(value):
        return None
    lo, hi = spec.minimum, spec.maximum
    return value if (lo is None or value >= lo) and (hi is None or value <= hi) else None
