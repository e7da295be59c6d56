"""Data budget and quiet windows for heavy tests (throughput, upload).

A station on a metered SIM must not spend its data on speed tests, and a test must
never compete with the polling station's own uploads. Before a heavy test runs, the
probe asks `Budget.gate`: the test is skipped (and recorded as skipped, with the
reason) when the station's local time is inside a quiet window, or when the bytes
already used today or this month plus the test's estimate would pass a limit.
Days and months are the station's local calendar.

The counters live in ``data_dir/budget.json``, rewritten atomically (temporary file,
fsync, rename) under an advisory lock, so they survive restarts and a `once` run
beside the daemon. The estimate for a kind is the bytes its last test used, or the
configured first estimate before any test ran. A test cut off at its deadline is
charged at least its estimate, since its real use is unknown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.config import AgentConfig, BudgetConfig, QuietWindow

log = logging.getLogger("sinyal.budget")

BUDGET_FILE = "budget.json"
MB = 1_000_000


class SkipReason(StrEnum):
    DAILY_BUDGET = "daily_budget"
    MONTHLY_BUDGET = "monthly_budget"
    QUIET_WINDOW = "quiet_window"


def in_quiet_window(windows: Sequence[QuietWindow], local: datetime) -> bool:
    """Whether the local time falls in one of the windows (end <= start wraps midnight)."""
    t = local.time().replace(tzinfo=None)
    for w in windows:
        if w.start < w.end:
            starts = [local.date()] if w.start <= t < w.end else []
        else:  # past midnight: started today (after start) or yesterday (before end)
            starts = []
            if t >= w.start:
                starts.append(local.date())
            if t < w.end:
                starts.append(local.date() - timedelta(days=1))
        for day in starts:
            if (not w.days or day.weekday() in w.days) and (not w.dates or day in w.dates):
                return True
    return False


class Budget:
    def __init__(
        self,
        path: Path,
        limits: BudgetConfig,
        tz: str,
        quiet_windows: Sequence[QuietWindow] = (),
    ) -> None:
        self.path = path
        self.limits = limits
        self.tz = ZoneInfo(tz)
        self.quiet_windows = tuple(quiet_windows)

    @classmethod
    def for_config(cls, cfg: AgentConfig) -> Budget:
        return cls(cfg.data_dir / BUDGET_FILE, cfg.budget, cfg.station.tz, cfg.quiet_windows)

    def _local(self, now: datetime | None) -> datetime:
        return (now or datetime.now(self.tz)).astimezone(self.tz)

    @contextlib.contextmanager
    def _state(self, write: bool) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                state = self._read()
                yield state
                if write:
                    self._write(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A damaged file must not stop measuring; start counting again, and say so.
            log.warning("%s unreadable (%s); budget counters start again", self.path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @staticmethod
    def _used(state: dict[str, Any], local: datetime) -> tuple[int, int]:
        day, month = local.date().isoformat(), local.strftime("%Y-%m")
        d = state.get("day_bytes", 0) if state.get("day") == day else 0
        m = state.get("month_bytes", 0) if state.get("month") == month else 0
        return int(d), int(m)

    def used(self, now: datetime | None = None) -> tuple[int, int]:
        """Bytes used today and this month (local calendar)."""
        with self._state(write=False) as state:
            return self._used(state, self._local(now))

    def estimate(self, kind: str, first_estimate: int) -> int:
        """Bytes the next test of this kind is expected to use."""
        with self._state(write=False) as state:
            last = state.get("last_bytes", {}).get(kind)
        return int(last) if isinstance(last, int) and last > 0 else first_estimate

    def gate(self, estimate: int, now: datetime | None = None) -> SkipReason | None:
        """Why a heavy test using about `estimate` bytes must not run now, or None."""
        local = self._local(now)
        if in_quiet_window(self.quiet_windows, local):
            return SkipReason.QUIET_WINDOW
        day, month = self.used(local)
        if self.limits.daily_mb is not None and day + estimate > self.limits.daily_mb * MB:
            return SkipReason.DAILY_BUDGET
        if self.limits.monthly_mb is not None and month + estimate > self.limits.monthly_mb * MB:
            return SkipReason.MONTHLY_BUDGET
        return None

    def charge(
        self, kind: str, used: int, now: datetime | None = None, complete: bool = True
    ) -> None:
        """Add the bytes a test used; a complete test's use becomes its kind's estimate."""
        local = self._local(now)
        with self._state(write=True) as state:
            day, month = self._used(state, local)
            state.update(
                day=local.date().isoformat(),
                month=local.strftime("%Y-%m"),
                day_bytes=day + used,
                month_bytes=month + used,
            )
            if complete and used > 0:
                state.setdefault("last_bytes", {})[kind] = used
