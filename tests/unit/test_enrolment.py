"""collector.enrolment without a server: code form and typing, the rate limiter's keys and
its bounded memory, the answer the agent accepts, and the config block it rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.enroll import EnrollError, _answer, replace_block
from collector import enrolment
from collector.enrolment import RateLimiter, normalise, parse_duration, source_key


def test_codes_are_forgiving_to_type() -> None:
    assert normalise("7kq2m-9xd4t") == "7KQ2M9XD4T"
    assert normalise(" 7KQ2M 9XD4T ") == "7KQ2M9XD4T"
    assert normalise("O1L2M-9XD4T") == "0112M9XD4T"
    for bad in ("", "7KQ2M", "7KQ2M-9XD4TT", "7KQ2M-9XD4U", "7KQ2M-9XD4!"):
        assert normalise(bad) is None


def test_durations() -> None:
    assert parse_duration("14d") is not None and parse_duration("14d").days == 14  # type: ignore[union-attr]
    assert parse_duration("90m").total_seconds() == 5400  # type: ignore[union-attr]
    for bad in ("0m", "1s", "366d", "d", "-1h", "1.5h"):
        assert parse_duration(bad) is None


def test_limit_keys_group_an_ipv6_subscriber() -> None:
    assert (
        source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::1") == ("2001:db8:1:2::/64")
    )
    assert source_key("::ffff:198.18.0.1") == "198.18.0.1"
    assert source_key("198.18.0.1") == "198.18.0.1"


def test_limiter_blocks_after_the_attempts_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = RateLimiter(attempts=3, window_s=600)
    for _ in range(3):
        assert limiter.retry_after("198.18.0.1") is None
        limiter.failed("198.18.0.1")
    wait = limiter.retry_after("198.18.0.1")
    assert wait is not None and 500 < wait <= 600
    assert limiter.retry_after("198.18.0.2") is None
    monkeypatch.setattr(enrolment, "MAX_SOURCES", 100)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 250}.{i % 250}")
    assert len(limiter._failures) <= 100


def test_agent_refuses_an_answer_that_is_not_an_enrolment() -> None:
    station = {"id": "3171011001001", "name": "TPS 1", "lat": -6.2, "lon": 106.8,
               "tz": "Asia/Jakarta"}  # fmt: skip
    good = {"station": station, "token": "sny_abcdefgh12345678", "token_id": "ab12cd34"}
    assert _answer(good).station["id"] == "3171011001001"
    changes: list[dict[str, object]] = [
        {"token": "sny_x\nrm -rf /"},
        {"token_id": None},
        {"station": {**station, "tz": "Mars/Base"}},
        {"station": {**station, "name": "x" * 500}},
        {"station": {**station, "lat": 91}},
    ]
    for change in changes:
        with pytest.raises(EnrollError):
            _answer({**good, **change})


def test_replace_block_keeps_the_rest(tmp_path: Path) -> None:
    text = (
        "# head\nstation:\n  id: '0000000000000'\n  lat: 0\n\n# probes follow\nprobes:\n"
        "  icmp: {targets: [127.0.0.1]}\n"
    )
    out = replace_block(text, "station", "station:\n  id: '1'\n")
    assert out == (
        "# head\nstation:\n  id: '1'\n\n# probes follow\nprobes:\n  icmp: {targets: [127.0.0.1]}\n"
    )
    assert replace_block(out, "collector", "collector:\n  url: x\n").endswith(
        "collector:\n  url: x\n"
    )
