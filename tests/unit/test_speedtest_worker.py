"""agent.speedtest_worker: the loaded window of a phase and the connection slots (the real
test against a shaped link is in tests/integration/test_probe_throughput.py)."""

from __future__ import annotations

import threading
import time

import pytest

from agent import speedtest_worker as worker
from agent import tcpmeter
from agent.speedtest_worker import Slots, end_stragglers, loaded_rate, omit_s


def test_omit_is_a_quarter_of_the_length_at_most_two_seconds() -> None:
    assert omit_s(4) == 1.0
    assert omit_s(10) == 2.0
    assert omit_s(60) == 2.0


def series(rate_bytes_s: float, until: float, ramp_s: float = 0.0) -> list[tuple[float, int, int]]:
    """(t, acked, received) every 0.1 s from t=100: nothing during the ramp, then the rate."""
    out = []
    for i in range(int(until * 10) + 1):
        t = i / 10
        b = int(max(0.0, t - ramp_s) * rate_bytes_s)
        out.append((100 + t, b, 2 * b))
    return out


def test_the_ramp_and_the_tail_past_the_length_are_left_out() -> None:
    samples = series(1e6, until=18.0, ramp_s=1.5)  # a 10 s phase that its threads kept going
    bits, start, end = loaded_rate(samples, 100.0, 118.0, 10.0, upload=True) or (0, 0, 0)
    assert (start, end) == (2.0, 10.0)
    assert bits == pytest.approx(8e6)
    down = loaded_rate(samples, 100.0, 118.0, 10.0, upload=False)
    assert down is not None and down[0] == pytest.approx(16e6)


def test_a_phase_that_ended_early_is_measured_to_its_end() -> None:
    samples = series(1e6, until=8.0)  # speedtest-cli ran out of requests at 8 s
    rate = loaded_rate(samples, 100.0, 108.0, 10.0, upload=True)
    assert rate is not None and rate[0] == pytest.approx(8e6) and rate[2] == pytest.approx(8.0)


def test_no_rate_without_counters_or_a_window() -> None:
    flat = [(100.0, 0, 0), (110.0, 0, 0)]
    assert loaded_rate(flat, 100.0, 110.0, 10.0, upload=True) is None
    short = series(1e6, until=4.0)  # ended before half of the window after the ramp
    assert loaded_rate(short, 100.0, 104.0, 10.0, upload=True) is None


def test_slots_bound_the_requests_and_refill_behind_a_slow_one() -> None:
    slots = Slots()
    assert slots.threads(3) == 6
    active, peak, done = [0], [0], []
    lock = threading.Lock()

    def request(seconds: float) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(seconds)
        with lock:
            active[0] -= 1
            done.append(seconds)

    run = slots._wrap(lambda thread: request(thread))
    # One slow request and five quick ones started at once, as speedtest-cli's producer does.
    threads = [threading.Thread(target=run, args=(s,)) for s in (1.0, 0.1, 0.1, 0.1, 0.1, 0.1)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    quick_s = time.monotonic() - t0
    threads[0].join()
    assert peak[0] == 3
    assert quick_s < 0.9  # the quick ones did not wait for the slow one


def test_slots_installed_wrap_speedtest_cli_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import speedtest

    monkeypatch.setattr(speedtest.HTTPDownloader, "run", speedtest.HTTPDownloader.run)
    monkeypatch.setattr(speedtest.HTTPUploader, "run", speedtest.HTTPUploader.run)
    real = speedtest.HTTPUploader.run
    worker.Slots().install()
    assert speedtest.HTTPUploader.run is not real


def test_stragglers_are_ended_only_while_the_link_still_moves_data() -> None:
    meter = tcpmeter.Meter()
    t0 = time.monotonic() - 3
    meter.samples = [(t0, 0, 0), (t0 + 1, 100, 0), (t0 + 2, 100, 0)]
    meter._closed = [100, 0]  # nothing more since t0 + 1: a stalled server
    assert not end_stragglers(meter, t0 + 1.5, "upload")
    meter._closed = [150, 0]  # 50 bytes acknowledged since: a connection is draining
    assert end_stragglers(meter, t0 + 1.5, "upload")
    assert not end_stragglers(meter, t0 + 1.5, "download")
