"""Store and forward under failure, with real processes: the agent is killed with SIGKILL during
uploads ten times in a row and restarted each time; in the end InfluxDB holds every record the
agent had, each exactly once, with the same values."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.contract.record import Record, parse_time
from agent.spool import Spool
from collector.registry import Registry
from tests.conftest import base_config, require_tool, write_config
from tests.harness.collector_stack import (
    STATION,
    STATIONS_CSV,
    Stack,
    collector_config_file,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer, influxd
from tests.harness.delivery import compare, produced, stored

BATCH = 3000  # records added to the spool before each start: uploads are in flight at the kill


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def agent_config(
    tmp_path: Path, url: str, token: str, icmp: dict[str, Any] | None = None, **sections: Any
) -> Path:
    """A loopback agent config that uploads to `url`, spooling in tmp_path/agent."""
    secret = tmp_path / "token"
    secret.write_text(token)
    doc = base_config(tmp_path)
    doc["data_dir"] = str(tmp_path / "agent")
    doc["collector"] = {"url": url, "token_file": str(secret), "timeout_s": 5}
    doc["probes"]["icmp"] = icmp or {**doc["probes"]["icmp"], "interval_s": 30}
    doc.update(sections)
    return write_config(tmp_path, doc)


def start_agent(cfg: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--plain", "-c", str(cfg), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def spooled(data: Path) -> int:
    with Spool.in_dir(data) as s:
        return s.stats().records


def wait_for_an_ack(data: Path, timeout_s: float) -> None:
    """Until the spool shrinks: a batch was acknowledged, uploads are flowing."""
    with Spool.in_dir(data) as watch:
        start = watch.stats().records
        deadline = time.monotonic() + timeout_s
        while watch.stats().records >= start and time.monotonic() < deadline:
            time.sleep(0.005)


@pytest.mark.root
def test_sigkill_during_uploads_ten_times_loses_and_duplicates_nothing(
    tmp_path: Path, stack: Stack, influxdb: InfluxServer
) -> None:
    data = tmp_path / "agent"
    backlog: list[dict[str, object]] = []
    cfg = agent_config(tmp_path, stack.url, stack.token)
    check = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", "-c", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    rng = random.Random(20261122)
    kills = 0
    left_at_kill: list[int] = []
    killed_at: list[float] = []
    log = tmp_path / "made.jsonl"
    for round_ in range(10):
        added = [golden("icmp-ok", age_s=3600 - round_ * 300 - i * 0.05) for i in range(BATCH)]
        backlog += added
        with Spool.in_dir(data) as s:
            s.put([Record.from_dict(r) for r in added])
        proc = start_agent(cfg, "--record-log", str(log))
        wait_for_an_ack(data, 10)  # then kill at a random moment of the next batches
        time.sleep(rng.uniform(0, 0.05))
        killed_at.append(time.time())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        left_at_kill.append(spooled(data))
    # A last, clean run drains what is left.
    assert start_agent(cfg, "--duration", "8", "--record-log", str(log)).wait(30) == 0
    with Spool.in_dir(data) as s:
        left = s.stats().records
        dead = s.dead_letter_count()
        assert s.integrity_ok()
    assert kills == 10
    assert dead == 0
    print("records left in the spool at each kill:", left_at_kill)
    # Most kills hit a spool with uploads still to do (the others found it drained).
    assert sum(1 for n in left_at_kill if n > 0) >= 5, left_at_kill
    db = stack.cfg.sink.database
    with Spool.in_dir(data) as s:
        left_ids = s.ids()
    made = backlog + produced(log)
    points = stored(influxdb, db, {"icmp", "agent"})
    # A measurement logged in the instant before its spool write can die with the agent:
    # never stored, never acknowledged (an in-flight round). Only those may be missing.
    missing = {r["id"] for r in made} - set(points) - left_ids
    in_flight = {
        r["id"]
        for r in made
        if any(0 <= k - parse_time(r["measured_at"]).timestamp() < 10 for k in killed_at)
    }
    assert missing <= in_flight, f"{len(missing - in_flight)} records lost"
    assert not missing & {r["id"] for r in backlog}
    print(f"{len(made)} records, {len(missing)} in flight at a kill")
    assert left <= 20, left  # what the last run measured just before it stopped
    compare(made, points, missing | left_ids)


def start_collector(cfg_path: Path, url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "serve", "-c", str(cfg_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("collector did not start")


@pytest.mark.root
def test_collector_killed_and_restarted_under_load_loses_nothing(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    """The collector (a real `sinyal-collector serve`) is SIGKILLed three times while the agent
    uploads a backlog and measures; the agent backs off, retries, and every record arrives
    exactly once."""
    cfg = collector_config_file(tmp_path / "c", influxdb.url, influx_database)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(cfg.registry_path)
    registry.import_stations_csv(STATIONS_CSV)
    _, token = registry.add_token(station=STATION)
    registry.close()
    url = f"http://{cfg.listen.host}:{cfg.listen.port}"
    data = tmp_path / "agent"
    backlog = [golden("dns-ok", age_s=3000 - i * 0.1) for i in range(20_000)]
    with Spool.in_dir(data) as s:
        s.put([Record.from_dict(r) for r in backlog])
    log = tmp_path / "made.jsonl"
    agent = start_agent(agent_config(tmp_path, url, token), "--record-log", str(log))
    collector = start_collector(cfg.path, url)
    try:
        for _ in range(3):
            wait_for_an_ack(data, 20)  # uploads are flowing: kill
            collector.send_signal(signal.SIGKILL)
            collector.wait(10)
            time.sleep(1.0)  # the agent meets a dead collector and backs off
            collector = start_collector(cfg.path, url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and spooled(data) > 0:
            time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
        collector.send_signal(signal.SIGTERM)
        collector.wait(20)
    with Spool.in_dir(data) as s:
        assert s.stats().records == 0, "the agent delivered its backlog after the restarts"
        assert s.dead_letter_count() == 0
    # The backlog and everything the agent measured meanwhile: every id once, same values.
    made = backlog + produced(log)
    compare(made, stored(influxdb, influx_database, {"dns", "icmp", "agent"}), set())


@pytest.mark.root
@pytest.mark.slow
def test_influxdb_stopped_for_two_minutes(tmp_path: Path) -> None:
    """InfluxDB is stopped (SIGSTOP) for two minutes while the agent measures and uploads: the
    collector answers 503 with Retry-After and acknowledges nothing, the agent keeps every
    record, and once the database runs again everything is delivered exactly once."""
    with influxd(require_tool("influxd")) as db:
        db.create_database("chaos")
        cfg = collector_config_file(
            tmp_path / "c", db.url, "chaos", sink={"timeout_s": 2, "retry_after_s": 5}
        )
        with running_collector(cfg) as stack:
            data = tmp_path / "agent"
            icmp = {
                "interval_s": 10,
                "count": 3,
                "timeout_s": 1,
                "targets": [{"host": "127.0.0.1", "name": "lo"}],
            }
            cfg_path = agent_config(
                tmp_path, stack.url, stack.token, icmp, schedule={"jitter_fraction": 0}
            )
            log = tmp_path / "made.jsonl"
            agent = start_agent(cfg_path, "--record-log", str(log))
            try:
                time.sleep(5)  # the first round is delivered
                os.kill(db.process.pid, signal.SIGSTOP)
                t_stop = time.monotonic()
                refused = checks = 0
                while time.monotonic() - t_stop < 120:
                    r = httpx.get(f"{stack.url}/readyz", timeout=10)
                    checks += 1
                    refused += r.status_code == 503
                    time.sleep(5)
                held = spooled(data)
                os.kill(db.process.pid, signal.SIGCONT)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and spooled(data) > 0:
                    time.sleep(1)
                with Spool.in_dir(data) as s:
                    left, dead = s.stats().records, s.dead_letter_count()
                    last_error = s.state().get("last_error", "")
            finally:
                os.kill(db.process.pid, signal.SIGCONT)
                agent.send_signal(signal.SIGTERM)
                agent.wait(20)
        print(f"held during the outage: {held} records; readyz 503 {refused}/{checks} times")
        assert checks >= 10 and refused == checks  # the collector said so, all along
        assert held >= 12, "the agent kept measuring and kept its records"
        assert left == 0 and dead == 0, (left, dead, last_error)
        made = produced(log)
        assert sum(r["kind"] == "icmp" for r in made) >= 14  # before, during and after
        with Spool.in_dir(data) as s:
            left_ids = s.ids()  # made after the last upload, before the stop
        compare(made, stored(db, "chaos", {"icmp", "agent"}), left_ids)
