"""Statistics over the raw RTT samples of one round. Definitions are in docs/data-model.md."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    This is the "type 7" estimator (NumPy's default, Excel's PERCENTILE.INC):
    rank h = (n - 1) * q / 100 on the sorted samples, interpolated between
    floor(h) and ceil(h).
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    s = sorted(samples)
    h = (len(s) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (h - lo)


def jitter(rtts: Sequence[float]) -> float | None:
    """Mean absolute difference of consecutive RTTs, in the order the requests were sent.

    Lost requests are skipped (the replies on either side of a gap count as
    consecutive). This is the IPDV-style mean |RTT_i - RTT_(i-1)| that icmplib,
    ping tools and MOS calculators call jitter; it is not RFC 3550's smoothed
    estimator. None with fewer than two replies.
    """
    if len(rtts) < 2:
        return None
    return sum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (len(rtts) - 1)


def stddev(samples: Sequence[float]) -> float:
    """Population standard deviation (divides by n), as ping and icmplib report it."""
    n = len(samples)
    mean = sum(samples) / n
    return math.sqrt(sum((x - mean) ** 2 for x in samples) / n)


def mos(rtt_avg_ms: float, jitter_ms: float, loss_pct: float) -> float:
    """Estimated MOS by the simplified E-model ("effective latency", CalSPEED/NetBeez).

    EffLat = rtt_avg + 2 * jitter + 10 (ms; RTT is used as the latency input)
    R = 93.2 - EffLat / 40               when EffLat < 160
    R = 93.2 - (EffLat - 120) / 10       otherwise
    R = R - 2.5 * loss_pct, clamped to 0..100
    MOS = 1 + 0.035 R + 7e-6 R (R - 60) (100 - R), at least 1

    The cubic dips below 1 for 0 < R < 6.5 (0.989 at R = 3); MOS is 1..4.5 by definition
    (and by the record contract, which rejects less), so it is floored at 1.
    """
    eff = rtt_avg_ms + 2 * jitter_ms + 10
    r = 93.2 - eff / 40 if eff < 160 else 93.2 - (eff - 120) / 10
    r = min(100.0, max(0.0, r - 2.5 * loss_pct))
    return max(1.0, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r))
