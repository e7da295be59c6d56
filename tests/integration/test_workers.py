"""`sinyal-collector serve --workers N` as users run it: N real collector processes on their
own ports under a supervising parent, writing to a real InfluxDB."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.uploader import upload_path
from tests.conftest import ROOT
from tests.harness.collector_process import CollectorProcess, collector_process
from tests.harness.collector_stack import STATION, collector_config_file, envelope, golden
from tests.harness.dbs import InfluxServer
from tests.harness.servers import free_port


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def shard_of(url: str) -> str:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'^sinyal_shard\{shard="([^"]+)"\} 1\.0$', metrics, re.M)
    assert found, metrics[:500]
    return found.group(1)


def accepted_by(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^sinyal_records_accepted_total ([0-9.e+]+)$", metrics, re.M)
    assert found
    return float(found.group(1))


def upload(url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{url}{upload_path(STATION)}",
        json=envelope([golden("icmp-ok")]),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


def serve_cmd(cfg_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", "serve", "-c", str(cfg_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


@pytest.fixture
def two_workers(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> tuple[CollectorProcess, str]:
    base = free_port()
    second = base + 1
    with socket.socket() as probe:  # the next port must be free too
        try:
            probe.bind(("127.0.0.1", second))
        except OSError:
            pytest.skip(f"port {second} after the free port {base} is taken")
    cfg = collector_config_file(
        tmp_path, influxdb.url, influx_database, listen={"port": base}, shard={"id": "node-a"}
    )
    with collector_process(cfg, serve_args=("--workers", "2"), ports=(second,)) as proc:
        yield proc, f"http://127.0.0.1:{second}"


def test_two_workers_serve_as_two_shards_and_a_killed_one_comes_back(
    two_workers: tuple[CollectorProcess, str],
) -> None:
    proc, second = two_workers
    first = proc.url
    base = proc.cfg.listen.port
    assert shard_of(first) == f"node-a:{base}"
    assert shard_of(second) == f"node-a:{base + 1}"
    for url in (first, second):
        r = upload(url, proc.token)
        assert r.status_code == 200, r.text
        assert len(r.json()["accepted"]) == 1
        assert accepted_by(url) == 1.0  # each process counts its own
    workers = children(proc.proc.pid)
    assert len(workers) == 2
    # Kill the worker of the second port: the port closes, the parent says so and restarts it.
    victim = next(pid for pid in workers if f":{base + 1}" in _listening_ports(pid))
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: not answers(second), 5)
    assert answers(first)
    assert wait_for(lambda: answers(second), 15), proc.log()
    assert re.search(rf"worker node-a:{base + 1} \(port {base + 1}\) was killed by signal SIGKILL",
                     proc.log()), proc.log()  # fmt: skip
    assert "restarted" in proc.log()
    assert upload(second, proc.token).status_code == 200
    assert victim not in children(proc.proc.pid)
    # SIGTERM to the parent stops every worker, and the parent exits 0.
    current = children(proc.proc.pid)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0, proc.log()
    for pid in current:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not answers(first) and not answers(second)


def _listening_ports(pid: int) -> str:
    """The local addresses this process listens on, from /proc/net/tcp and its fds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
            found.append(f":{int(cols[1].split(':')[1], 16)}")
    return " ".join(found)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_a_port_in_use_stops_before_any_worker_starts(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    base = free_port()
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database, listen={"port": base})
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", base + 1))
        except OSError:
            pytest.skip(f"port {base + 1} is taken already")
        taken.listen(1)
        r = serve_cmd(cfg.path, "--workers", "2")
    assert r.returncode == 4, r.stderr
    assert f"cannot listen on 127.0.0.1:{base + 1}" in r.stderr
    assert "Traceback" not in r.stderr
    with socket.socket() as again:  # the first port was released
        again.bind(("127.0.0.1", base))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--workers", "0"), "--workers: got 0, expected 1..64 processes"),
        (("--ports", "8081,x"), "--ports: got '8081,x', expected distinct ports"),
        (("--ports", "8081,8081"), "--ports: got '8081,8081', expected distinct ports"),
        (("--ports", "70000"), "--ports: got '70000'"),
        (("--shard-id", "a b"), "--shard-id: got 'a b', expected 1..64 letters"),
    ],
)
def test_bad_worker_options_are_one_line_and_exit_2(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str, args: tuple[str, ...],
    expected: str,
) -> None:  # fmt: skip
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    r = serve_cmd(cfg.path, *args)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_worker_that_cannot_start_stops_the_service(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    """A data_dir the workers cannot create: each fails at start; the parent exits 1."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database,
                                data_dir=str(blocker / "collector"))  # fmt: skip
    base = cfg.listen.port
    r = serve_cmd(cfg.path, "--ports", f"{base},{free_port()}")
    assert r.returncode == 1, r.stderr
    assert "while starting" in r.stderr
    assert "Traceback" not in r.stderr
