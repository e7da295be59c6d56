"""agent.stats: the statistics stored for an ICMP round, checked against known values."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from agent import stats


def _mos_of_r(r: float) -> float:
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


# --- percentile (type 7) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 95, 3.85),  # numpy.percentile([1, 2, 3, 4], 95)
        ([1, 2, 3, 4], 25, 1.75),
        ([15, 20, 35, 40, 50], 40, 29.0),  # rank 1.6: 20 + 0.6 * 15
        ([3, 1, 2], 50, 2),  # unsorted input
        ([7.5], 0, 7.5),
        ([7.5], 50, 7.5),
        ([7.5], 100, 7.5),
        ([10, 20], 0, 10),
        ([10, 20], 100, 20),
        ([10, 20], 95, 19.5),
    ],
)
def test_percentile_known_values(samples: list[float], q: float, expected: float) -> None:
    assert stats.percentile(samples, q) == pytest.approx(expected)


@pytest.mark.parametrize("n", [2, 3, 10, 11, 57, 200])
def test_percentile_matches_statistics_quantiles_inclusive(n: int) -> None:
    # quantiles(method="inclusive") is the type-7 estimator: cut point k of n=100 is q=k.
    rng = random.Random(n)
    samples = [rng.uniform(0.01, 400) for _ in range(n)]
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    for q, want in zip(range(1, 100), cuts, strict=True):
        assert stats.percentile(samples, q) == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert stats.percentile(samples, 0) == min(samples)
    assert stats.percentile(samples, 100) == max(samples)


def test_percentile_does_not_reorder_its_input() -> None:
    samples = [5.0, 1.0, 3.0]
    stats.percentile(samples, 50)
    assert samples == [5.0, 1.0, 3.0]


@pytest.mark.parametrize(("samples", "q"), [([], 50), ([1.0], -0.1), ([1.0], 100.1)])
def test_percentile_rejects_bad_input(samples: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        stats.percentile(samples, q)


# --- jitter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtts", "expected"),
    [
        ([10, 20, 15], 7.5),  # (|20-10| + |15-20|) / 2
        ([1, 3], 2.0),
        ([3, 1], 2.0),
        ([5, 5, 5, 5], 0.0),
        ([10, 30, 10, 30], 20.0),
        ([1.25, 1.5, 1.0, 2.0], (0.25 + 0.5 + 1.0) / 3),
    ],
)
def test_jitter_is_mean_absolute_consecutive_difference(rtts: list[float], expected: float) -> None:
    assert stats.jitter(rtts) == pytest.approx(expected)


def test_jitter_depends_on_send_order_not_on_the_distribution() -> None:
    # Same samples, same stddev; alternating order is jittery, sorted order is smooth.
    assert stats.jitter([10, 30, 10, 30]) == pytest.approx(20.0)
    assert stats.jitter([10, 10, 30, 30]) == pytest.approx(20 / 3)


@pytest.mark.parametrize("rtts", [[], [12.0]])
def test_jitter_needs_two_replies(rtts: list[float]) -> None:
    assert stats.jitter(rtts) is None


# --- stddev ----------------------------------------------------------------------------


def test_stddev_is_population_stddev() -> None:
    assert stats.stddev([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(2.0)
    assert stats.stddev([1, 2]) == pytest.approx(0.5)  # the sample stddev would be 0.707
    assert stats.stddev([3.3]) == 0.0
    rng = random.Random(7)
    samples = [rng.gauss(40, 8) for _ in range(500)]
    assert stats.stddev(samples) == pytest.approx(statistics.pstdev(samples), rel=1e-9)


# --- mos (simplified E-model) ----------------------------------------------------------


def test_mos_of_a_perfect_link() -> None:
    # EffLat = 0 + 0 + 10 ms, R = 93.2 - 10/40 = 92.95
    expected = _mos_of_r(92.95)
    assert expected == pytest.approx(4.4044, abs=1e-4)
    assert stats.mos(0, 0, 0) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("rtt", "jitter", "loss", "r"),
    [
        (20, 5, 0, 93.2 - 40 / 40),  # EffLat 40
        (100, 10, 1, 93.2 - 130 / 40 - 2.5),  # EffLat 130, loss 1 %
        (149.9, 0, 0, 93.2 - 159.9 / 40),  # just below the knee
        (150, 0, 0, 93.2 - (160 - 120) / 10),  # EffLat 160: second branch
        (300, 20, 0, 93.2 - (350 - 120) / 10),  # EffLat 350
        (300, 20, 10, 93.2 - (350 - 120) / 10 - 25),
    ],
)
def test_mos_formula_at_chosen_points(rtt: float, jitter: float, loss: float, r: float) -> None:
    assert stats.mos(rtt, jitter, loss) == pytest.approx(_mos_of_r(r), abs=1e-12)


def test_mos_is_continuous_at_the_effective_latency_knee() -> None:
    # Both branches give R = 89.2 at EffLat = 160 ms.
    below, at = stats.mos(150 - 1e-9, 0, 0), stats.mos(150, 0, 0)
    assert below == pytest.approx(at, abs=1e-9)
    assert at == pytest.approx(_mos_of_r(89.2), abs=1e-12)


@pytest.mark.parametrize(
    ("rtt", "jitter", "loss"),
    [(0, 0, 100), (20, 1, 100), (5000, 0, 0), (0, 0, 50), (2000, 500, 30)],
)
def test_mos_floors_at_1_when_r_clamps_to_0(rtt: float, jitter: float, loss: float) -> None:
    assert stats.mos(rtt, jitter, loss) == pytest.approx(1.0, abs=1e-12)


def test_mos_floors_at_1_where_the_cubic_dips_below_it() -> None:
    # 36 % loss on a perfect link: R = 92.95 - 90 = 2.95, where the cubic gives 0.989.
    assert _mos_of_r(2.95) < 1
    assert stats.mos(0, 0, 36) == 1.0
    assert all(stats.mos(0, 0, loss / 10) >= 1.0 for loss in range(0, 1001))


def test_mos_ceiling_when_r_clamps_to_100() -> None:
    # Real inputs cannot exceed R = 92.95; a negative latency (a clock step) must
    # still give a MOS inside the contract's 1..4.5.
    assert stats.mos(-1000, 0, 0) == pytest.approx(4.5, abs=1e-12)


def test_mos_stays_in_range_and_falls_with_every_impairment() -> None:
    rtts = [0, 10, 50, 100, 149, 150, 151, 200, 400, 800, 2000]
    for loss in (0, 0.5, 5, 20, 40, 100):
        values = [stats.mos(r, 2, loss) for r in rtts]
        assert all(1.0 <= v <= 4.5 for v in values)
        assert all(a >= b for a, b in itertools.pairwise(values))
    assert stats.mos(50, 0, 0) > stats.mos(50, 10, 0) > stats.mos(50, 10, 2)
    assert math.isfinite(stats.mos(1e9, 1e9, 0))
