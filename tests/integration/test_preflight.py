"""agent.preflight: the checks start-up and `doctor` share, each with its fix: ICMP sockets,
the clock, the data directory and its disk, the uplinks, and the collector with its token and
clock offset (against a real collector)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config as agent_config
from agent.clock import clock_synced
from agent.preflight import (
    FAIL,
    OK,
    WARN,
    Check,
    clock_check,
    collector_checks,
    data_dir_check,
    disk_check,
    icmp_fix,
    icmp_mode,
    run_checks,
    uplink_checks,
)
from tests.conftest import base_config, write_config
from tests.harness.collector_stack import Stack, collector_config_file, running_collector
from tests.harness.dbs import InfluxServer
from tests.harness.servers import free_port


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    with running_collector(collector_config_file(tmp_path, influxdb.url, influx_database)) as s:
        yield s


def ping_group_allows_me() -> bool:
    low, high = map(int, Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    return low <= os.getgid() <= high


def test_icmp_mode_is_raw_for_root_else_the_ping_group() -> None:
    privileged, check = icmp_mode()
    assert check.name == "icmp"
    if os.geteuid() == 0:
        assert (privileged, check.status) == (True, OK)
        assert "raw ICMP sockets allowed" in check.detail
    elif ping_group_allows_me():
        assert (privileged, check.status) == (False, OK)
    else:
        assert (privileged, check.status) == (None, FAIL)
        assert check.fix == icmp_fix()


def test_icmp_fix_names_both_ways() -> None:
    fix = icmp_fix()
    assert "AmbientCapabilities=CAP_NET_RAW" in fix
    assert f"setcap cap_net_raw+ep {os.path.realpath(sys.executable)}" in fix
    assert "net.ipv4.ping_group_range" in fix


def test_clock_check_follows_adjtimex() -> None:
    check = clock_check()
    want = {1: OK, 0: WARN, None: WARN}[clock_synced()]
    assert (check.name, check.status) == ("clock", want)
    if check.status == WARN and clock_synced() == 0:
        assert "timedatectl set-ntp true" in check.fix


def test_data_dir_check(tmp_path: Path) -> None:
    made = tmp_path / "a" / "b"
    assert data_dir_check(made) == Check("data_dir", OK, f"{made} is writable")
    assert made.is_dir() and list(made.iterdir()) == []  # the write test leaves nothing
    (tmp_path / "file").write_text("x")
    check = data_dir_check(tmp_path / "file" / "sub")  # not creatable, even as root
    assert check.status == FAIL and check.detail.startswith(f"cannot write to {tmp_path}/file")
    assert "install -d" in check.fix


def test_disk_check_measures_the_nearest_existing_directory(tmp_path: Path) -> None:
    check = disk_check(tmp_path / "not" / "yet")
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    assert check.name == "disk"
    assert check.status == (OK if free_mb >= 200 else FAIL)
    assert check.detail.endswith(f"MB free under {tmp_path}/not/yet")
    assert abs(float(check.detail.split()[0]) - free_mb) < 50


def uplinks_config(tmp_path: Path, uplinks: list[dict[str, str]]) -> agent_config.AgentConfig:
    doc = base_config(tmp_path)
    doc["uplinks"] = uplinks
    return agent_config.load(write_config(tmp_path, doc), environ={})


def test_uplink_checks(tmp_path: Path) -> None:
    unused = "198.51.100.254"  # TEST-NET-2: documentation only, on no machine
    cfg = uplinks_config(tmp_path, [
        {"name": "routed", "operator": "telkomsel"},
        {"name": "loop", "operator": "xl", "interface": "lo"},
        {"name": "local", "operator": "xl", "source": "127.0.0.1"},
        {"name": "gone", "operator": "indosat", "interface": "wwan9"},
        {"name": "wrong", "operator": "indosat", "source": unused},
    ])  # fmt: skip
    checks = uplink_checks(cfg)
    assert [(c.name, c.status) for c in checks] == [
        ("uplink routed", OK), ("uplink loop", OK), ("uplink local", OK),
        ("uplink gone", FAIL), ("uplink wrong", FAIL),
    ]  # fmt: skip
    assert checks[0].detail == "routed by the system, operator telkomsel"
    assert checks[1].detail == checks[2].detail == "bound to 127.0.0.1, operator xl"
    assert checks[3].detail == "interface wwan9 does not exist" and "modem" in checks[3].fix
    assert checks[4].detail.startswith(f"source address {unused} is not on this machine")
    assert "uplinks[].source" in checks[4].fix


def test_no_collector_is_a_warning(tmp_path: Path) -> None:
    cfg = agent_config.load(write_config(tmp_path, base_config(tmp_path)), environ={})
    assert cfg.collector is None
    (check,) = collector_checks(cfg)
    assert (check.name, check.status) == ("collector", WARN)
    assert "collector:" in check.fix


def test_run_checks_in_order(tmp_path: Path) -> None:
    cfg = agent_config.load(write_config(tmp_path, base_config(tmp_path)), environ={})
    names = [c.name for c in run_checks(cfg)]
    assert names == ["config", "icmp", "clock", "data_dir", "disk", "uplink lo", "collector"]
    doc = base_config(tmp_path)
    doc["probes"] = {"dns": {"resolvers": [{"address": "127.0.0.1", "name": "lo"}],
                           "names": ["kpu.go.id"]}}  # fmt: skip
    cfg = agent_config.load(write_config(tmp_path, doc, "no-icmp.yaml"), environ={})
    assert "icmp" not in [c.name for c in run_checks(cfg)]  # not asked for: not checked


def agent_cfg(tmp_path: Path, url: str, token: str) -> agent_config.AgentConfig:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    doc = base_config(tmp_path)
    doc["collector"] = {"url": url, "token_file": str(token_file), "timeout_s": 3}
    return agent_config.load(write_config(tmp_path, doc), environ={})


def test_doctor_checks_collector_token_and_clock(tmp_path: Path, stack: Stack) -> None:
    checks = {c.name: c for c in collector_checks(agent_cfg(tmp_path, stack.url, stack.token))}
    assert checks["collector"].status == OK
    assert checks["clock offset"].status == OK
    assert checks["token"].status == OK


def test_doctor_flags_a_wrong_token_and_another_station(tmp_path: Path, stack: Stack) -> None:
    checks = {c.name: c for c in collector_checks(agent_cfg(tmp_path, stack.url, "sny_nope"))}
    assert checks["token"].status == FAIL and "revoked" in checks["token"].detail
    doc_dir = tmp_path / "other"
    doc_dir.mkdir()
    cfg = agent_cfg(doc_dir, stack.url, stack.token)
    other = agent_config.load(
        cfg.path, environ={"SINYAL_STATION__ID": "3273011001001"}
    )  # a token for 3171011001001, a config for another station
    checks = {c.name: c for c in collector_checks(other)}
    assert checks["token"].status == FAIL and "3273011001001" in checks["token"].detail


def test_doctor_flags_an_unreachable_collector(tmp_path: Path) -> None:
    cfg = agent_cfg(tmp_path, f"http://127.0.0.1:{free_port()}", "sny_x")
    [check] = collector_checks(cfg)
    assert check.name == "collector" and check.status == FAIL
    assert "not reachable" in check.detail and check.fix
