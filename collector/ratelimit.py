"""Per-token limits: token buckets for requests and records, a daily byte quota.

One abusive token must not take the database or the event loop from everyone else
(issue 15, finding 7). Each agent token has two buckets (collector config `limits.*`):
requests/s (checked before the body is read, so a flood costs a dict lookup) and
records/s (checked on the records the body holds, counted before any is decoded, so a
refused envelope costs a scan of its JSON). A request that finds its bucket short is
answered 429 with Retry-After: the seconds until the bucket holds enough, which the agent's
uploader waits before it tries again. Nothing is charged for a request a bucket refuses;
records a bucket let through stay charged even when the envelope is refused afterwards
(malformed, another station's), or a token could have decodes for free.

State lives in this process (one bucket per token that has been used); with N replicas
behind a proxy that routes a station to one replica, a token's limit is per replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """Token buckets keyed by a name (an agent token's id): `rate` per second up to `burst`."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str, n: float = 1.0) -> float:
        """Take `n` from `key`'s bucket: 0.0 when taken, else the seconds until `n` would be
        there (nothing taken). A request larger than the burst can never pass: its wait is
        infinite, and callers cap what they ask for (config: records_burst >= max_records)."""
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens >= n:
            b.tokens -= n
            return 0.0
        if n > self.burst:
            return math.inf
        return (n - b.tokens) / self.rate


def retry_after(wait_s: float) -> str:
    """The Retry-After header value for a wait: whole seconds, at least 1."""
    return str(max(1, math.ceil(min(wait_s, 86400.0))))


class DailyQuota:
    """Bytes per key per UTC day (the speedtest endpoint's cap per agent token)."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._day = -1
        self._used: dict[str, int] = {}

    def _today(self) -> int:
        day = int(self._clock() // 86400)
        if day != self._day:
            self._day, self._used = day, {}
        return day

    def remaining(self, key: str) -> int:
        self._today()
        return max(0, self.limit - self._used.get(key, 0))

    def charge(self, key: str, n: int) -> bool:
        """Count `n` bytes against `key`: False (nothing counted) when that passes the cap."""
        self._today()
        used = self._used.get(key, 0)
        if used + n > self.limit:
            return False
        self._used[key] = used + n
        return True

    def seconds_to_reset(self) -> float:
        return 86400.0 - self._clock() % 86400
