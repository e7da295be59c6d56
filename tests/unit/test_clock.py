"""agent.clock on this Linux machine: the kernel's boot id, adjtimex's sync state, and the
ClockInfo a record carries."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from agent import clock

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
pytestmark = pytest.mark.skipif(not BOOT_ID_FILE.exists(), reason="needs Linux's /proc")


def test_boot_id_is_the_kernels_without_dashes() -> None:
    want = BOOT_ID_FILE.read_text().strip().replace("-", "")
    assert clock.boot_id() == want
    assert re.fullmatch(r"[0-9a-f]{32}", want)


def test_clock_synced_is_what_adjtimex_answers() -> None:
    assert clock.clock_synced() in (0, 1)


def test_clock_info_now() -> None:
    before = time.monotonic_ns()
    info = clock.clock_info()
    after = time.monotonic_ns()
    assert info.boot_id == clock.boot_id()
    assert info.monotonic_ns is not None and before <= info.monotonic_ns <= after
    assert info.synced == clock.clock_synced()


@pytest.mark.parametrize("synced", [0, 1])
def test_clock_info_takes_a_given_sync_state(synced: int) -> None:
    assert clock.clock_info(synced).synced == synced
