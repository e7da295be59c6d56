"""agent.budget: quiet windows and the daily and monthly data budget of heavy tests, in the
station's local calendar, with counters that survive a restart (the throughput probe's use of
it, against a real endpoint, is in tests/integration/test_probe_throughput.py)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.budget import BUDGET_FILE, Budget, SkipReason, in_quiet_window
from agent.config import BudgetConfig, QuietWindow
from tests.conftest import base_config, write_config

JKT = ZoneInfo("Asia/Jakarta")


def test_budget_counts_local_days_and_months(tmp_path: Path) -> None:
    b = Budget(tmp_path / "budget.json", BudgetConfig(daily_mb=10, monthly_mb=25), "Asia/Jakarta")
    day1 = datetime(2026, 11, 29, 23, 0, tzinfo=JKT)
    assert b.gate(8_000_000, day1) is None
    b.charge("throughput", 8_000_000, day1)
    assert b.gate(3_000_000, day1) == "daily_budget"
    # 17:30 UTC on the 29th is already 00:30 on the 30th in Jakarta (UTC+7): a new day.
    day2 = datetime(2026, 11, 29, 17, 30, tzinfo=ZoneInfo("UTC")).astimezone(JKT)
    assert b.gate(3_000_000, day2) is None
    b.charge("throughput", 9_000_000, day2)
    b.charge("throughput", 9_000_000, datetime(2026, 11, 30, 12, tzinfo=JKT))
    assert b.used(day2) == (18_000_000, 26_000_000)
    assert b.gate(1, day2) == "daily_budget"
    assert b.gate(1, datetime(2026, 12, 1, 0, 1, tzinfo=JKT)) is None  # a new month
    assert b.estimate("throughput", 5) == 9_000_000  # the last complete test's use


def test_quiet_windows_in_station_local_time() -> None:
    wib = ZoneInfo("Asia/Jakarta")
    voting = QuietWindow(clock(7), clock(13), (), (datetime(2026, 11, 27).date(),))
    nightly = QuietWindow(clock(22), clock(2), (0,))  # Monday nights, past midnight
    w = (voting, nightly)
    assert in_quiet_window(w, datetime(2026, 11, 27, 7, 0, tzinfo=wib))
    assert in_quiet_window(w, datetime(2026, 11, 27, 12, 59, tzinfo=wib))
    assert not in_quiet_window(w, datetime(2026, 11, 27, 13, 0, tzinfo=wib))
    assert not in_quiet_window(w, datetime(2026, 11, 28, 8, 0, tzinfo=wib))  # another day
    # 00:30 UTC on the 27th is 07:30 in Jakarta: voting hours there.
    utc = datetime(2026, 11, 27, 0, 30, tzinfo=ZoneInfo("UTC"))
    assert in_quiet_window(w, utc.astimezone(wib))
    assert in_quiet_window(w, datetime(2026, 11, 23, 23, 0, tzinfo=wib))  # Monday 23:00
    assert in_quiet_window(w, datetime(2026, 11, 24, 1, 0, tzinfo=wib))  # started Monday
    assert not in_quiet_window(w, datetime(2026, 11, 24, 23, 0, tzinfo=wib))  # Tuesday


def test_no_limits_and_no_windows_never_skip(tmp_path: Path) -> None:
    b = Budget(tmp_path / BUDGET_FILE, BudgetConfig(), "Asia/Jakarta")
    b.charge("upload", 10**12)
    assert b.gate(10**12) is None


def test_the_monthly_budget_applies_when_the_day_has_room(tmp_path: Path) -> None:
    b = Budget(tmp_path / BUDGET_FILE, BudgetConfig(daily_mb=100, monthly_mb=150), "UTC")
    utc = ZoneInfo("UTC")
    b.charge("throughput", 90_000_000, datetime(2026, 11, 1, 12, tzinfo=utc))
    b.charge("throughput", 50_000_000, datetime(2026, 11, 2, 12, tzinfo=utc))
    assert b.gate(20_000_000, datetime(2026, 11, 3, 12, tzinfo=utc)) is SkipReason.MONTHLY_BUDGET
    assert b.gate(10_000_000, datetime(2026, 11, 3, 12, tzinfo=utc)) is None  # exactly at it


def test_a_quiet_window_is_checked_first(tmp_path: Path) -> None:
    night = QuietWindow(clock(22), clock(6))
    b = Budget(tmp_path / BUDGET_FILE, BudgetConfig(daily_mb=1), "Asia/Jakarta", [night])
    assert b.gate(10**9, datetime(2026, 11, 3, 23, tzinfo=JKT)) is SkipReason.QUIET_WINDOW
    assert b.gate(10**9, datetime(2026, 11, 3, 12, tzinfo=JKT)) is SkipReason.DAILY_BUDGET
    assert b.gate(1, datetime(2026, 11, 3, 12, tzinfo=JKT)) is None


def test_estimates_per_kind_and_a_cut_off_test(tmp_path: Path) -> None:
    b = Budget(tmp_path / BUDGET_FILE, BudgetConfig(), "Asia/Jakarta")
    assert b.estimate("throughput", 30_000_000) == 30_000_000  # nothing ran yet
    b.charge("throughput", 12_000_000)
    b.charge("upload", 2_000_000)
    b.charge("throughput", 40_000_000, complete=False)  # counted, but not an estimate
    b.charge("upload", 0)  # a test that used nothing keeps the last estimate
    assert b.estimate("throughput", 30_000_000) == 12_000_000
    assert b.estimate("upload", 5) == 2_000_000
    assert b.used()[0] == 54_000_000


def test_counters_are_on_disk_and_a_new_budget_object_reads_them(tmp_path: Path) -> None:
    now = datetime(2026, 11, 3, 9, tzinfo=JKT)
    Budget(tmp_path / "d" / BUDGET_FILE, BudgetConfig(), "Asia/Jakarta").charge("upload", 7, now)
    state = json.loads((tmp_path / "d" / BUDGET_FILE).read_text())
    assert state == {"day": "2026-11-03", "month": "2026-11", "day_bytes": 7,
                     "month_bytes": 7, "last_bytes": {"upload": 7}}  # fmt: skip
    assert not (tmp_path / "d" / "budget.tmp").exists()  # renamed into place
    again = Budget(tmp_path / "d" / BUDGET_FILE, BudgetConfig(), "Asia/Jakarta")
    assert again.used(now) == (7, 7)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_a_damaged_file_restarts_the_counters(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / BUDGET_FILE).write_text(content)
    b = Budget(tmp_path / BUDGET_FILE, BudgetConfig(daily_mb=1), "Asia/Jakarta")
    with caplog.at_level(logging.WARNING, "sinyal.budget"):
        assert b.used() == (0, 0)
        assert b.gate(1) is None
    if content != "[1, 2]":
        assert "budget counters start again" in caplog.text
    b.charge("upload", 5)
    assert b.used()[0] == 5


def test_for_config_uses_the_data_dir_tz_and_windows(tmp_path: Path) -> None:
    from agent import config as agent_config

    doc = base_config(tmp_path)
    doc["budget"] = {"daily_mb": 5}
    doc["quiet_windows"] = [{"start": "07:00", "end": "13:00"}]
    cfg = agent_config.load(write_config(tmp_path, doc), environ={})
    b = Budget.for_config(cfg)
    assert b.path == cfg.data_dir / BUDGET_FILE
    assert b.tz == JKT
    assert b.limits.daily_mb == 5
    assert b.gate(1, datetime(2026, 11, 3, 8, tzinfo=JKT)) is SkipReason.QUIET_WINDOW
