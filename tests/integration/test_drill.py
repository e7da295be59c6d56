"""The voting-day drill (tests/drill): the short form end to end, with real agents in field-lab
stations, a real collector and InfluxDB 1.6.7; and the report's arithmetic on known points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, require_tool
from tests.drill import fleet, report
from tests.drill.plan import SHORT, timeline
from tests.drill.run import Observed, Point
from tests.harness.lab import lab_namespaces
from tests.harness.lab.fixtures import require_lab

T0 = 1_800_000_000.0


def _observed(points: list[tuple[float, str, int]]) -> Observed:
    obs = Observed(started=T0 - 60, t0=T0, ended=T0 + 300)
    obs.injected = {"degrade": T0, "critical": T0, "blackout": T0}
    obs.recovered = {"degrade": T0 + 60, "critical": T0 + 60, "blackout": T0 + 90}
    obs.points = [Point(T0 + dt, sid, status, "") for dt, sid, status in points]
    return obs


def test_report_times_flags_and_clears_against_the_targets() -> None:
    real = fleet.real_fleet(8)
    problems = timeline(real, SHORT)
    deg, crit, dark = (p.stations for p in problems)
    untouched = [s.id for s in real if s.id not in {*deg, *crit, *dark}]
    points = [(-50, s.id, 0) for s in real]
    points += [(21.5, deg[0], 1), (35, deg[0], 2), (83.9, deg[0], 0)]  # within targets
    points += [(55, deg[1], 1)]  # flagged late (target 50 s), never cleared
    points += [(17.9, crit[0], 1), (30, crit[0], 2), (86.5, crit[0], 0)]  # degraded first
    points += [(55, dark[0], 3), (110.3, dark[0], 2), (112, dark[0], 0)]
    points += [(40, untouched[0], 1), (70, untouched[0], 0)]  # a false alarm
    rep = report.build(_observed(points), SHORT, problems, real, [])
    by = {(o.problem, o.station): o for o in rep.outcomes}
    ok = by["degrade", deg[0]]
    assert (ok.flagged_as, ok.time_to_flag_s, ok.time_to_clear_s) == ("degraded", 21.5, 23.9)
    assert ok.flag_ok and ok.clear_ok
    late = by["degrade", deg[1]]
    assert late.time_to_flag_s == 55 and not late.flag_ok and not late.cleared
    c = by["critical", crit[0]]
    assert (c.flagged_as, c.time_to_flag_s) == ("critical", 30)  # degraded is not critical
    d = by["blackout", dark[0]]
    assert (d.flagged_as, d.time_to_flag_s, d.time_to_clear_s) == ("silent", 55, 22)
    assert d.path == ["silent@T0+55.0s", "critical@T0+110.3s", "ok@T0+112.0s"]
    assert list(rep.untouched_not_ok) == [untouched[0]]
    assert not rep.passed
    assert len(rep.failures) == 3, rep.failures  # late flag, no clear, the false alarm
    text = report.markdown(rep)
    assert "**Result: FAIL**" in text and "MISSED" in text and "NOT ok" in text


def _run_drill(
    tmp_path: Path, timeout_s: float, *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """Run the short drill to its end (its log printed); it must exit 0."""
    proc, out, log = _start_drill(tmp_path, 8, *args)
    try:
        rc = proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    print(text)
    assert rc == 0, text
    return proc, out


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_short_drill_flags_and_clears_every_problem_within_the_targets(tmp_path: Path) -> None:
    proc, out = _run_drill(tmp_path, 420)
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert rep["passed"] and not rep["failures"]
    # Every injected station was flagged as expected, then cleared, within the targets.
    injected = {sid for p in rep["problems"] for sid in p["stations"]}
    assert {o["station"] for o in rep["outcomes"]} == injected and len(injected) == 4
    for o in rep["outcomes"]:
        assert o["flagged_as"] in {"degraded": ("degraded", "critical")}.get(
            o["expect"], (o["expect"],)
        ), o
        assert o["time_to_flag_s"] <= o["flag_target_s"], o
        assert o["time_to_clear_s"] <= o["clear_target_s"], o
    assert rep["targets"]["flag_degraded_or_critical_s"] == 2 * 10 + 30
    assert rep["targets"]["flag_silent_s"] == 60 + 30
    # The stations nobody touched stayed ok all along.
    assert len(rep["untouched"]) == 4 and rep["untouched_not_ok"] == {}
    # The simulator is either run or its absence is said plainly.
    assert rep["simulator"].startswith("Simulated stations: ")
    if rep["simulated_stations"] == 0:
        assert "NONE" in rep["simulator"] and "NONE" in md
    assert "time to flag" in md and "Result: PASS" in md
    # Nothing is left behind: the lab's namespaces are gone, the processes stopped.
    assert proc.pid not in lab_namespaces()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(str(out)):
        time.sleep(0.2)
    assert not _running(str(out))


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_short_drill_with_two_collectors_behind_nginx_one_killed_and_restarted(
    tmp_path: Path,
) -> None:
    """issue 20: status owned per shard. Two collector processes behind nginx, the dark
    station's killed 30 s after T0 and restarted 15 s later: no station wrongly flagged,
    every problem flagged and cleared within its target."""
    require_tool("nginx")
    _, out = _run_drill(tmp_path, 480, "--shards", "2", "--kill-shard-at", "30")
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and not rep["failures"] and rep["shards"] == 2
    killed, restarted = rep["shard_events"]
    assert killed.startswith("KILL collector shard drill-s") and "RESTART" in restarted
    for o in rep["outcomes"]:
        assert o["time_to_flag_s"] <= o["flag_target_s"], o
        assert o["time_to_clear_s"] <= o["clear_target_s"], o
    assert rep["untouched_not_ok"] == {} and rep["early_alarms"] == {}
    # The killed process was started again and rebuilt its stations' status.
    k = killed.removeprefix("KILL collector shard drill-s").split()[0]
    assert "status restored" in (out / "run" / f"collector-{k}-restarted.log").read_text()
    assert not _running(str(out))


def _start_drill(
    tmp_path: Path, real: int, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`python -m tests.drill --short` in the background: the process, its out dir, its log."""
    require_lab(("socat",))
    require_tool("influxd")
    out, log = tmp_path / "drill", tmp_path / "drill.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.drill",
                "--short",
                "--real",
                str(real),
                *extra,
                "--out",
                str(out),
            ],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, out, log


def _running(marker: str) -> list[str]:
    """Command lines of processes whose arguments mention `marker` (the drill's own dir)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append(cmd)
    return found


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_ctrl_c_stops_everything_the_drill_started(tmp_path: Path) -> None:
    proc, out, log = _start_drill(tmp_path, 6)
    try:
        deadline = time.monotonic() + 90
        while "agents started" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert len(_running(str(out))) >= 7  # the collector and six agents
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert rc == 130, text
    assert "interrupted; everything it started is stopped" in text
    assert proc.pid not in lab_namespaces()
    assert not _running(str(out))
    influx_url = yaml.safe_load((out / "run" / "collector.yaml").read_text())["sink"]["url"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{influx_url}/ping", timeout=2)
    assert not (out / "report.json").exists()
