"""Trustworthy record times on boards without a real-time clock.

A Raspberry Pi has no battery-backed clock: it can boot with a wrong date and measure for
hours before NTP (or anything else) sets the time. Every record therefore carries its
kernel boot id and CLOCK_MONOTONIC reading (agent.clock), and the TimeKeeper decides where
its `measured_at` comes from (`clock.source`):

system     the system clock, which the kernel said was synchronised (adjtimex) when the
           record was made (or which the configuration trusts): kept as it is.
collector  the collector's clock: the agent asks `GET /api/v1/time` and relates the answer
           to CLOCK_MONOTONIC (base = server time - the request's monotonic midpoint, so the
           error is at most half the round trip plus the monotonic clock's drift since).
           measured_at = base of the record's boot + its monotonic_ns. Monotonic time does
           not jump when the system clock is stepped, so records before and after a step
           get the same, true, time line.
unknown    neither yet. The record waits in the spool (it is not uploaded) until the base of
           its boot is known; then the spool rewrites its time (Spool.retime) and it goes out
           as `collector`. If its boot ended before the collector was ever reached, its time
           can never be established: it is uploaded as `unknown` and the collector rejects
           it (`time_unknown`), so it lands in the dead letters instead of on a wrong day.

`clock.trust` in the config chooses: `kernel` (the default: kernel time when synchronised,
else the collector's), `collector` (always the collector's: for boards whose NTP cannot be
relied on) or `system` (always the system clock, as it is: for machines without adjtimex
whose clock is known to be right).

The base of each boot is kept in the spool's state, so a restarted agent (same boot) keeps
correcting; among measurements it keeps the newest whose round trip is at most twice the
best seen, so it follows the monotonic clock's drift without taking a slow answer's error.

The collector's answer is not trusted blindly (`check`): a reading is refused, never used
and never stored, when it is not an integer, lies outside the plausible window
(EARLIEST_NS..LATEST_NS: not before this software existed, not after 2100), or goes back
in time against the last good reading of this boot by more than the two round trips plus
a generous monotonic drift (DRIFT_PPM). A base read back from the spool that fails the same
window (written by an older agent) is dropped at start, so a restart recovers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from agent.clock import boot_id
from agent.contract.record import Record
from agent.spool import Spool, from_unix_ns

log = logging.getLogger(__name__)

_STATE_PREFIX = "clock_base."

# The plausible window for the collector's clock, in ns since the epoch: a record made by
# this software cannot be older than 2025 nor later than 2100.
EARLIEST_NS = 1_735_689_600 * 10**9  # 2025-01-01T00:00:00Z
LATEST_NS = 4_102_444_800 * 10**9  # 2100-01-01T00:00:00Z
# Backward steps tolerated against the last good reading: both readings' half round trips,
# plus BACKSTEP_SLACK_NS, plus DRIFT_PPM of the monotonic time between them (a crystal
# drifts well under 100 ppm; 500 leaves room for a cold board).
BACKSTEP_SLACK_NS = 2 * 10**9
DRIFT_PPM = 500


def plausible_ns(ns: object) -> bool:
    """Whether `ns` is an integer time (ns since the epoch) inside the plausible window."""
    return isinstance(ns, int) and not isinstance(ns, bool) and EARLIEST_NS <= ns <= LATEST_NS


class TimeKeeper:
    def __init__(self, spool: Spool | None, trust: str = "kernel", boot: str | None = None):
        self.spool = spool
        self.trust = trust
        self.boot = boot if boot is not None else boot_id()
        # boot id -> (base ns, best round trip ns, monotonic ns of the last good reading)
        self._bases: dict[str, tuple[int, int, int | None]] = {}
        if spool is not None:
            dropped: dict[str, str] = {}
            for key, value in spool.state().items():
                if not key.startswith(_STATE_PREFIX) or not value:
                    continue
                entry = _parse_base(value)
                if entry is None:
                    log.warning("clock: dropping an implausible stored base %s=%.60r", key, value)
                    dropped[key] = ""
                    continue
                self._bases[key[len(_STATE_PREFIX) :]] = entry
            if dropped:
                spool.set_state(**dropped)

    def base_ns(self, boot: str | None = None) -> int | None:
        """Wall-clock ns since the epoch at which the boot's CLOCK_MONOTONIC read 0."""
        key = self.boot if boot is None else boot
        entry = None if key is None else self._bases.get(key)
        return None if entry is None else entry[0]

    def stamp(self, records: Sequence[Record]) -> list[Record]:
        """The records with clock.source set, and measured_at from the collector's clock
        when that is the source."""
        out: list[Record] = []
        for r in records:
            c = r.clock
            if c is None or c.source is not None:
                out.append(r)
                continue
            if self.trust == "system" or (self.trust == "kernel" and c.synced == 1):
                out.append(dataclasses.replace(r, clock=dataclasses.replace(c, source="system")))
                continue
            base = None if c.boot_id is None else self.base_ns(c.boot_id)
            if base is not None and c.monotonic_ns is not None:
                out.append(
                    dataclasses.replace(
                        r,
                        measured_at=from_unix_ns(base + c.monotonic_ns),
                        clock=dataclasses.replace(c, source="collector"),
                    )
                )
            else:
                out.append(dataclasses.replace(r, clock=dataclasses.replace(c, source="unknown")))
        return out

    def waiting(self) -> bool:
        """Whether records of this boot wait for the collector's clock."""
        return (
            self.spool is not None
            and self.base_ns() is None
            and self.boot is not None
            and self.spool.untimed(self.boot) > 0
        )

    def hold_boot(self) -> str | None:
        """The boot whose untimed records the uploader must hold back (None: hold nothing)."""
        return self.boot if self.base_ns() is None else None

    def check(self, server_ns: object, sent_mono_ns: int, received_mono_ns: int) -> str | None:
        """Why this reading of the collector's clock must not be used (None: it may be)."""
        if not isinstance(server_ns, int) or isinstance(server_ns, bool):
            return f"not an integer time: {server_ns!r:.60}"
        if not plausible_ns(server_ns):
            return f"implausible time {server_ns} ns (expected 2025..2100)"
        if received_mono_ns < sent_mono_ns:
            return "the monotonic clock went backwards during the request"
        old = None if self.boot is None else self._bases.get(self.boot)
        if old is None:
            return None
        old_base, old_rtt, old_mono = old
        rtt = received_mono_ns - sent_mono_ns
        mid = (sent_mono_ns + received_mono_ns) // 2
        elapsed = mid if old_mono is None else max(0, mid - old_mono)
        slack = (rtt + old_rtt) // 2 + BACKSTEP_SLACK_NS + elapsed * DRIFT_PPM // 10**6
        back = old_base - (server_ns - mid)
        if back > slack:
            return (
                f"the collector's clock went back {back / 1e9:.1f} s against its last good "
                f"reading (tolerated: {slack / 1e9:.1f} s)"
            )
        return None

    def learn(self, server_ns: int, sent_mono_ns: int, received_mono_ns: int) -> int:
        """Take one reading of the collector's clock (unix ns) between two monotonic
        readings of this boot. Returns how many spooled records got their time from it.
        A reading `check` refuses is ignored (logged, never stored)."""
        if self.boot is None:
            return 0
        refused = self.check(server_ns, sent_mono_ns, received_mono_ns)
        if refused is not None:
            log.warning("clock: collector time refused: %s", refused)
            return 0
        rtt = received_mono_ns - sent_mono_ns
        mid = (sent_mono_ns + received_mono_ns) // 2
        base = server_ns - mid
        old = self._bases.get(self.boot)
        if old is not None and rtt > 2 * old[1]:
            return 0  # a slow answer: its midpoint is less certain than what we have
        best = rtt if old is None else min(rtt, old[1])
        self._bases[self.boot] = (base, best, mid)
        if self.spool is None:
            return 0
        self.spool.set_state(**{_STATE_PREFIX + self.boot: f"{base} {best} {mid}"})
        return self.settle()

    def settle(self) -> int:
        """Give this boot's untimed spooled records their time, when the base is known
        (records measured before the first reading but stored after it included)."""
        base = self.base_ns()
        if self.spool is None or self.boot is None or base is None:
            return 0
        if not self.spool.untimed(self.boot):
            return 0
        fixed = self.spool.retime(self.boot, base)
        log.info("clock: %d record(s) got their time from the collector's clock", fixed)
        return fixed


def _parse_base(value: str) -> tuple[int, int, int | None] | None:
    """A stored base ("base rtt [mono]"), or None when it is unreadable or implausible (a
    boot's base is the wall time at which it booted: inside the plausible window too)."""
    parts = value.split()
    if len(parts) not in (2, 3):
        return None
    try:
        numbers = [int(x) for x in parts]
    except ValueError:
        return None
    if not plausible_ns(numbers[0]) or numbers[1] < 0 or min(numbers[2:], default=0) < 0:
        return None
    return numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None
