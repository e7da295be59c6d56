"""The drill's settings (short for CI, long for a control-room rehearsal) and its timeline.

The timeline, counted from the first injection (T0):

- an operator's links in one province degrade (delay and some loss): expect *degraded*
  (or worse) on every station of that operator there;
- another operator's links in another province get slow enough to be critical (delay over
  the latency alert level): expect *critical*;
- one station goes dark (every packet dropped both ways): expect *silent*;
- then each recovers (impairments removed): expect *ok* again.

Targets (issue 6): a degraded or critical station is flagged within 2 rounds + 30 s of the
injection, a silent one within its silence time (`status.silent_after_s`) + 30 s. The issue
sets no target for clearing; the drill checks clears against the debounce it configures:
`window_n` good rounds + 30 s, and for a station back from the dark additionally the agent's
upload retry wait (its back-off after failing uploads, at most `retry_allowance_s`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.station import Station

STATUS_NAMES = ("ok", "degraded", "critical", "silent")


@dataclass(frozen=True)
class Timing:
    form: str
    interval_s: float  # the agents' icmp interval: one round
    count: int  # pings per round
    breach_m: int
    window_n: int
    silent_after_s: float
    sweep_interval_s: float
    baseline_s: float  # everyone ok before T0
    degrade_s: float  # how long degraded links stay degraded
    blackout_s: float  # how long the dark station stays dark
    settle_s: float  # after the last recovery, the longest wait for the clears
    retry_allowance_s: float  # the agent's upload back-off after a blackout this long

    def collector_status(self) -> dict[str, Any]:
        return {
            "breach_m": self.breach_m,
            "window_n": self.window_n,
            "silent_after_s": self.silent_after_s,
            "sweeper": True,
            "sweep_interval_s": self.sweep_interval_s,
        }

    def flag_target_s(self, expect: str) -> float:
        if expect == "silent":
            return self.silent_after_s + 30
        return 2 * self.interval_s + 30

    def clear_target_s(self, expect: str) -> float:
        base = self.window_n * self.interval_s + 30
        return base + (self.retry_allowance_s if expect == "silent" else 0)


SHORT = Timing(
    form="short",
    interval_s=10,
    count=5,
    breach_m=2,
    window_n=3,
    silent_after_s=60,
    sweep_interval_s=5,
    baseline_s=20,
    degrade_s=60,
    blackout_s=90,
    settle_s=150,
    retry_allowance_s=60,
)
LONG = Timing(
    form="long",
    interval_s=30,
    count=10,
    breach_m=2,
    window_n=4,
    silent_after_s=120,
    sweep_interval_s=10,
    baseline_s=120,
    degrade_s=300,
    blackout_s=300,
    settle_s=420,
    retry_allowance_s=120,
)
FORMS = {t.form: t for t in (SHORT, LONG)}


@dataclass(frozen=True)
class Problem:
    key: str
    title: str
    stations: tuple[str, ...]
    impairment: dict[str, Any]
    expect: str  # degraded (degraded or critical counts), critical or silent
    start_s: float  # after T0
    duration_s: float
    scope: dict[str, str] = field(default_factory=dict)

    def flags(self, status: int) -> bool:
        """Whether a station_status value means this problem was flagged."""
        if self.expect == "degraded":
            return status in (1, 2)
        return STATUS_NAMES[status] == self.expect if 0 <= status < 4 else False


def timeline(stations: Sequence[Station], timing: Timing) -> list[Problem]:
    """The scripted problems for these (real) stations."""

    def pick(province: str, operator: str) -> tuple[str, ...]:
        return tuple(
            s.id for s in stations if s.province == province and s.expected_operator == operator
        )

    slow = pick("Jawa Barat", "telkomsel")
    very_slow = pick("Sulawesi Selatan", "indosat")
    papua = [s.id for s in stations if s.province == "Papua"]
    if not slow or not very_slow or not papua:
        raise ValueError("the fleet lacks the stations the timeline needs")
    return [
        Problem(
            "degrade",
            "telkomsel in Jawa Barat degrades: +250 ms ± 10 ms delay, 5 % loss",
            slow,
            {"delay_ms": 250, "jitter_ms": 10, "loss_pct": 5},
            "degraded",
            0,
            timing.degrade_s,
            {"operator": "telkomsel", "province": "Jawa Barat"},
        ),
        Problem(
            "critical",
            "indosat in Sulawesi Selatan: +450 ms delay (over the latency alert level)",
            very_slow,
            {"delay_ms": 450},
            "critical",
            0,
            timing.degrade_s,
            {"operator": "indosat", "province": "Sulawesi Selatan"},
        ),
        Problem(
            "blackout",
            f"station {papua[-1]} in Papua goes dark (every packet dropped)",
            (papua[-1],),
            {"blackout": True},
            "silent",
            0,
            timing.blackout_s,
            {"province": "Papua"},
        ),
    ]


CLEAR = {"delay_ms": None, "jitter_ms": 0.0, "loss_pct": 0.0, "blackout": False}
