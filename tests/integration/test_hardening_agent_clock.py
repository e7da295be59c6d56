"""Finding 9 of issue 15: the agent distrusts the collector's clock. The real agent
(`sinyal-agent run`, clock.trust: collector) against a real HTTP server that answers hostile
`/api/v1/time` bodies: it must not crash, must not use or store the time, and must recover
(records get their true time) once an honest collector answers, also after a restart that
finds an implausible base stored by an older agent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.clock import boot_id
from agent.spool import Spool
from tests.conftest import base_config, require, write_config
from tests.harness.hostile import Behaviour, hostile_collector, time_body

YEAR_1843_NS = -4_000_000_000 * 10**9  # a base that would retime records to 1843


def agent_config(tmp_path: Path, url: str) -> Path:
    secret = tmp_path / "token"
    secret.write_text("tok-hostile-test")
    secret.chmod(0o600)
    doc = base_config(tmp_path)
    doc["collector"] = {"url": url, "token_file": str(secret), "timeout_s": 2}
    doc["clock"] = {"trust": "collector"}
    doc["schedule"] = {"jitter_fraction": 0, "max_jitter_s": 0}  # a round at once
    doc["probes"]["icmp"].update(count=2, spacing_s=0.05, timeout_s=1)
    return write_config(tmp_path, doc)


def run_agent(cfg: Path, seconds: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    argv = [sys.executable, "-m", "agent.cli", "run", "--plain", "--duration", str(seconds)]
    return subprocess.run(
        [*argv, "-c", str(cfg)], capture_output=True, text=True, env=env, timeout=60
    )


def spool_facts(data: Path) -> dict[str, Any]:
    with Spool.in_dir(data) as s:
        return {
            "state": s.state(),
            "records": s.stats().records,
            "untimed": s.untimed(boot_id()),
            "dead": s.dead_letter_count(),
        }


HOSTILE = {
    "infinity": b'{"unix_ns": Infinity}',
    "nan": b'{"unix_ns": NaN}',
    "1e30_float": time_body(1e30),
    "1e30_int": time_body(10**30),
    "year_1843": time_body(YEAR_1843_NS),
    "zero": time_body(0),
    "a_string": time_body("1764000000000000000"),
    "true": time_body(True),
    "huge_digits": b'{"unix_ns": 1' + b"0" * 5000 + b"}",
    "not_json": b"<html>captive portal</html>",
}


@pytest.mark.root
@pytest.mark.parametrize("body", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_time_is_refused_not_stored_then_recovered(tmp_path: Path, body: bytes) -> None:
    require(boot_id() is not None, "needs /proc/sys/kernel/random/boot_id (Linux)")
    data = tmp_path / "data"
    with hostile_collector(Behaviour(time_bodies=[body])) as hostile:
        cfg = agent_config(tmp_path, hostile.url)
        proc = run_agent(cfg, 3)
        assert hostile.behaviour.times >= 1  # the agent did ask
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    facts = spool_facts(data)
    assert not any(k.startswith("clock_base.") and v for k, v in facts["state"].items())
    assert "clock_offset_ms" not in facts["state"]
    assert facts["records"] > 0 and facts["untimed"] == facts["records"]  # held, not sent
    assert facts["dead"] == 0

    # The same spool, an honest collector: every held record gets its true time and goes.
    with hostile_collector(Behaviour(time_bodies=[0.0])) as honest:
        cfg = agent_config(tmp_path, honest.url)
        proc = run_agent(cfg, 3)
        assert honest.behaviour.uploads >= 1
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = spool_facts(data)
    assert facts["untimed"] == 0 and facts["dead"] == 0
    assert facts["records"] == 0, facts  # all acknowledged
    offset = float(facts["state"]["clock_offset_ms"])
    assert abs(offset) < 5000


@pytest.mark.root
def test_a_stored_implausible_base_is_dropped_at_restart(tmp_path: Path) -> None:
    """What an older agent persisted after a `1e30` answer: dropped at start, so the agent
    recovers instead of failing every measurement for the rest of the boot."""
    boot = boot_id()
    require(boot is not None, "needs /proc/sys/kernel/random/boot_id (Linux)")
    data = tmp_path / "data"
    with Spool.in_dir(data) as s:
        s.set_state(
            **{f"clock_base.{boot}": f"{10**30} 1000", "clock_offset_ms": "1e+24"},
        )
    with hostile_collector(Behaviour(time_bodies=[0.0])) as honest:
        proc = run_agent(agent_config(tmp_path, honest.url), 3)
        assert honest.behaviour.uploads >= 1
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropping an implausible stored base" in proc.stderr
    facts = spool_facts(data)
    base, _rtt, _mono = facts["state"][f"clock_base.{boot}"].split()
    assert abs(int(base) + time.monotonic_ns() - time.time_ns()) < 5 * 10**9
    assert facts["records"] == 0 and facts["dead"] == 0


@pytest.mark.root
def test_a_clock_going_back_is_refused_after_a_good_reading(tmp_path: Path) -> None:
    """First an honest answer, then the collector's clock a day behind: the agent keeps
    the first reading (its stored base does not move)."""
    boot = boot_id()
    require(boot is not None, "needs /proc/sys/kernel/random/boot_id (Linux)")
    data = tmp_path / "data"
    with hostile_collector(Behaviour(time_bodies=[0.0])) as honest:
        assert run_agent(agent_config(tmp_path, honest.url), 2).returncode == 0
    good = spool_facts(data)["state"][f"clock_base.{boot}"].split()[0]
    with hostile_collector(Behaviour(time_bodies=[-86400.0])) as behind:
        proc = run_agent(agent_config(tmp_path, behind.url), 2)
        assert behind.behaviour.times >= 1
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "went back" in proc.stderr
    facts = spool_facts(data)
    assert facts["state"][f"clock_base.{boot}"].split()[0] == good
