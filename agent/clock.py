"""What the agent knows about its own clock: boot id, monotonic time, sync state."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from functools import lru_cache

from agent.contract.record import ClockInfo

_TIME_ERROR = 5  # adjtimex(2): clock not synchronised
_TIMEX_SIZE = 512  # struct timex is ~208 bytes on 64-bit; a larger zeroed buffer is safe


@lru_cache(maxsize=1)
def boot_id() -> str | None:
    """The kernel's random boot id (changes at every boot), or None off Linux."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return None


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def clock_synced() -> int | None:
    """1 when the kernel says the clock is NTP-synchronised, 0 when not, None if unknown.

    Reads adjtimex(2) with modes=0 (a read-only query, no privilege needed):
    it returns TIME_ERROR while the clock is unsynchronised, which is what
    chrony, systemd-timesyncd and ntpd clear once they have set the time.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "adjtimex"):
        return None
    buf = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
    state = libc.adjtimex(buf)
    if state < 0:
        return None
    return 0 if state == _TIME_ERROR else 1


def clock_info(synced: int | None = None) -> ClockInfo:
    return ClockInfo(boot_id(), time.monotonic_ns(), clock_synced() if synced is None else synced)
