"""Store and forward through real outages, compared record by record.

Each scenario runs the real agent (`sinyal-agent run --record-log FILE`, which appends every
record it made to FILE), the real collector and the real InfluxDB 1.6.7, and ends by comparing
what the agent produced with what InfluxDB holds: the same count, every id once, the same
values and the same (or the corrected) time.

- The agent's link is cut for minutes in a network namespace while it measures.
- The spool hits its cap while the collector is away: the evicted count is exact, reported in
  the heartbeat and by `status`, and nothing else is lost.
- The board's clock starts a year wrong and is corrected mid-run (libfaketime): every stored
  point has the true time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.contract.record import parse_time
from agent.spool import Spool
from tests.conftest import ROOT, base_config, require, require_tool, write_config
from tests.harness.collector_stack import Stack, collector_config_file, running_collector
from tests.harness.dbs import InfluxServer
from tests.harness.delivery import compare, produced, stored, unix_us
from tests.harness.lab import Lab

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
)


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path / "c", influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def agent_cmd(cfg: Path, log: Path) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "run", "--plain", "-c", str(cfg),
            "--record-log", str(log)]  # fmt: skip


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def config(
    tmp_path: Path,
    url: str,
    token: str,
    icmp: dict[str, Any],
    insecure: bool = False,
    **sections: Any,
) -> Path:
    """insecure: the URL is plain http to a lab address (collector.allow_insecure)."""
    (tmp_path / "token").write_text(token)
    doc = base_config(tmp_path)
    doc["data_dir"] = str(tmp_path / "agent")
    doc["collector"] = {"url": url, "token_file": str(tmp_path / "token"), "timeout_s": 5}
    if insecure:
        doc["collector"]["allow_insecure"] = True
    doc["probes"] = {"icmp": icmp}
    doc["schedule"] = {"jitter_fraction": 0}
    doc.update(sections)
    return write_config(tmp_path, doc)


def stop(proc: subprocess.Popen[Any], timeout_s: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def spool_state(data: Path) -> tuple[int, set[str], int, dict[str, str]]:
    with Spool.in_dir(data) as s:
        return s.stats().records, s.ids(), s.stats().dropped_total, s.state()


def wait_until(cond: Any, timeout_s: float, step_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())


# --- the link is cut for minutes --------------------------------------------------------------


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_link_cut_for_minutes_loses_and_duplicates_nothing(
    tmp_path: Path, stack: Stack, influxdb: InfluxServer, field_lab: Lab
) -> None:
    """The agent measures in a station namespace whose only way to the collector is the lab's
    router. The link is cut for three minutes (everything dropped both ways), then restored."""
    socat = require_tool("socat")
    lab = field_lab
    core, st = lab.core(), lab.station("tps1")
    # The collector runs on loopback in this namespace; the core namespace reaches it through
    # a Unix socket (socat on both sides), so no address of the lab routes to the machine.
    sock = tmp_path / "collector.sock"
    port = stack.url.rsplit(":", 1)[1]
    root_relay = subprocess.Popen(
        [socat, f"UNIX-LISTEN:{sock},fork", f"TCP:127.0.0.1:{port}"], stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(sock.exists, 10, 0.05)
        lab.spawn(core, socat, f"TCP-LISTEN:8080,bind={core.addr},fork,reuseaddr",
                  f"UNIX-CONNECT:{sock}")  # fmt: skip
        icmp = {
            "interval_s": 10,
            "count": 3,
            "spacing_s": 0.2,
            "timeout_s": 1,
            "targets": [{"host": core.target(1), "name": "core1"},
                        {"host": core.target(2), "name": "core2"}],
        }  # fmt: skip
        # plain http between the lab's namespaces (no TLS to test here)
        cfg = config(tmp_path, f"http://{core.addr}:8080", stack.token, icmp, insecure=True)
        log, data = tmp_path / "made.jsonl", tmp_path / "agent"
        agent = lab.spawn(st, *agent_cmd(cfg, log), env=agent_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            # delivered while the link is up
            assert wait_until(lambda: log.exists() and spool_state(data)[3].get("last_upload_at"),
                              30)  # fmt: skip
            lab.impair(st, blackout=True)
            t_cut = time.monotonic()
            time.sleep(180)
            during = spool_state(data)
            lab.impair(st, blackout=False)
            t_back = time.monotonic()
            assert wait_until(lambda: spool_state(data)[0] <= 1, 120)
            drained_s = time.monotonic() - t_back
        finally:
            stop(agent)
    finally:
        root_relay.terminate()
        root_relay.wait(10)
    _, left_ids, dropped, _ = spool_state(data)
    made = produced(log)
    print(f"cut {time.monotonic() - t_cut:.0f} s: {during[0]} records held, "
          f"{len(made)} made, drained {drained_s:.0f} s after the link came back")  # fmt: skip
    assert during[0] >= 30, "the agent kept measuring and spooling through the cut"
    assert "Error" in during[3].get("last_error", "") or during[3].get("last_error")
    assert dropped == 0
    rounds = [r for r in made if r["kind"] == "icmp"]
    cut_rounds = [r for r in rounds if r["fields"]["loss_pct"] == 100.0]
    assert len(cut_rounds) >= 30, "rounds during the cut are records too (loss 100 %)"
    compare(made, stored(influxdb, stack.cfg.sink.database, {"icmp", "agent"}), left_ids)


# --- the spool reaches its cap ----------------------------------------------------------------


def provision(cfg: Any) -> str:
    """A station token in the collector's registry before the collector runs."""
    from collector.registry import Registry
    from tests.harness.collector_stack import STATION, STATIONS_CSV

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Registry(cfg.registry_path) as reg:
        reg.import_stations_csv(STATIONS_CSV)
        return reg.add_token(station=STATION, note="outage test")[1]


@pytest.mark.slow
def test_spool_cap_evicts_exactly_what_it_reports(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    """The collector is away while the agent fills a 50 kB spool: the oldest records are
    evicted, the count is in the spool, in `status` and in the heartbeat, and every record
    that was not evicted reaches InfluxDB once."""
    ccfg = collector_config_file(tmp_path / "c", influxdb.url, influx_database)
    token = provision(ccfg)
    targets = [{"host": f"127.0.0.{i}", "name": f"lo{i}"} for i in range(1, 21)]
    icmp = {"interval_s": 10, "count": 1, "timeout_s": 0.5, "targets": targets}
    url = f"http://{ccfg.listen.host}:{ccfg.listen.port}"
    cfg = config(tmp_path, url, token, icmp, spool={"max_mb": 0.05})
    log, data = tmp_path / "made.jsonl", tmp_path / "agent"
    agent = subprocess.Popen(agent_cmd(cfg, log), env=agent_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_until(lambda: spool_state(data)[2] >= 40, 150), "no eviction"
        with running_collector(ccfg):
            assert wait_until(lambda: spool_state(data)[0] <= 2, 60)
            # a heartbeat made after the last eviction reports the final count
            time.sleep(65)
        stop(agent)
    finally:
        stop(agent)
    left, left_ids, dropped, _ = spool_state(data)
    made = produced(log)
    points = stored(influxdb, influx_database, {"icmp", "agent"})
    evicted = {r["id"] for r in made} - set(points) - left_ids
    print(f"{len(made)} made, {dropped} evicted, {left} left in the spool")
    assert len(evicted) == dropped >= 40
    status = subprocess.run(
        [sys.executable, "-m", "agent.cli", "status", "--json", "-c", str(cfg)],
        capture_output=True, text=True, env=agent_env(), check=True,
    )  # fmt: skip
    assert json.loads(status.stdout)["dropped_total"] == dropped
    beats = sorted((r for r in made if r["kind"] == "agent" and r["id"] in points),
                   key=lambda r: r["measured_at"])  # fmt: skip
    assert points[beats[-1]["id"]][0]["dropped_total"] == dropped
    # the oldest went first: heartbeats, then the oldest measurements
    icmp_made = [r["id"] for r in made if r["kind"] == "icmp"]
    gone = [i for i in icmp_made if i in evicted]
    assert gone == icmp_made[: len(gone)]
    compare(made, points, evicted | left_ids)


# --- the clock starts a year wrong --------------------------------------------------------------


@pytest.mark.slow
def test_a_clock_a_year_wrong_corrected_mid_run(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    """A board boots a year in the past (libfaketime in the agent's process), measures while
    the collector is unreachable, then reaches it; later its system clock is set right
    (stepped forward a year, mid-run). Every point stored has the true time."""
    lib = next((p for p in FAKETIME_LIBS if Path(p).exists()), None)
    require(lib is not None, "libfaketime is not installed (apt install faketime)")
    assert lib is not None
    ccfg = collector_config_file(tmp_path / "c", influxdb.url, influx_database)
    token = provision(ccfg)
    targets = [{"host": "127.0.0.1", "name": "lo1"}, {"host": "127.0.0.2", "name": "lo2"}]
    icmp = {"interval_s": 10, "count": 2, "timeout_s": 0.5, "targets": targets}
    url = f"http://{ccfg.listen.host}:{ccfg.listen.port}"
    cfg = config(tmp_path, url, token, icmp, clock={"trust": "collector"})
    fake = tmp_path / "faketime"
    fake.write_text("-365d\n")
    env = agent_env(LD_PRELOAD=lib, FAKETIME_TIMESTAMP_FILE=str(fake), FAKETIME_NO_CACHE="1",
                    FAKETIME_DONT_FAKE_MONOTONIC="1")  # fmt: skip
    log, data = tmp_path / "made.jsonl", tmp_path / "agent"
    agent = subprocess.Popen(agent_cmd(cfg, log), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    stepped_at = None
    try:
        # measuring a year behind, with no collector: its records wait in the spool
        assert wait_until(lambda: log.exists() and len(produced(log)) >= 4, 40)
        with Spool.in_dir(data) as s:
            waiting = s.untimed(json.loads(log.read_text().splitlines()[0])["clock"]["boot_id"])
        assert waiting >= 4
        with running_collector(ccfg):
            assert wait_until(lambda: spool_state(data)[0] == 0, 60)
            time.sleep(20)
            fake.write_text("+0\n")  # the system clock is set right: a year's step forward
            stepped_at = datetime.now(UTC)
            time.sleep(35)
            assert wait_until(lambda: spool_state(data)[0] == 0, 30)
        stop(agent)
    finally:
        stop(agent)
    made = produced(log)
    a_year_ago = datetime.now(UTC) - timedelta(days=300)
    before = {r["id"] for r in made if parse_time(r["measured_at"]) < a_year_ago}
    print(f"{len(before)} records made a year behind, {len(made) - len(before)} after the "
          f"step; {waiting} waited for the collector's clock")  # fmt: skip
    assert len(before) >= 6 and len(made) - len(before) >= 4
    year_us = 365 * 86400 * 10**6

    def true_us(r: dict[str, Any]) -> int:
        return unix_us(r["measured_at"]) + (year_us if r["id"] in before else 0)

    points = stored(influxdb, influx_database, {"icmp", "agent"})
    compare(made, points, spool_state(data)[1], shift=true_us)
    assert stepped_at is not None
