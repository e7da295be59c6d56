"""agent.runner: the probe environment decided once, the spool opened from the config,
records stored (with the audit log, at the cap and on a full disk), one pass of every probe
(`once`) and the daemon's path from a probe to the spool and the view. The probes measure a
loopback port nothing listens on: refused connections, no server."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent.contract.record import Record
from agent.preflight import FAIL, Check
from agent.runner import Daemon, PreflightError, build_env, open_spool, run_once, store
from agent.spool import SPOOL_FILE, Spool
from tests.conftest import base_config, write_config
from tests.harness.servers import closed_port
from tests.harness.tmpfs import small_disk


def config(tmp_path: Path, icmp: bool = False, **sections: Any) -> agent_config.AgentConfig:
    doc = base_config(tmp_path)
    port = closed_port()
    doc["probes"] = {"http": {"timeout_s": 2, "targets": [
        {"url": f"http://127.0.0.1:{port}/", "name": "closed"}]}}  # fmt: skip
    if icmp:
        doc["probes"]["icmp"] = base_config(tmp_path)["probes"]["icmp"]
    doc.update(sections)
    return agent_config.load(write_config(tmp_path, doc), environ={})


def record(i: int, kind: str = "http") -> Record:
    at = datetime(2026, 11, 22, 4, 0, i % 60, tzinfo=UTC)
    tags = {"station": "3171011001001", "uplink": "lo", "operator": "test", "target": f"t{i}"}
    return Record(kind, at, tags, {"ok": 0, "dns_ms": 1.5}, "connection_refused")


def test_build_env_decides_icmp_once(tmp_path: Path) -> None:
    env = build_env(config(tmp_path))
    assert env.icmp_privileged is False  # no ICMP probe: nothing to decide
    if os.geteuid() == 0:
        assert build_env(config(tmp_path, icmp=True)).icmp_privileged is True
    err = PreflightError(Check("icmp", FAIL, "no raw ICMP socket", "setcap ..."))
    assert str(err) == "icmp: no raw ICMP socket" and err.check.fix == "setcap ..."


def test_open_spool_in_the_data_dir_with_its_cap(tmp_path: Path) -> None:
    cfg = config(tmp_path, spool={"max_mb": 2})
    spool = open_spool(cfg)
    assert spool.path == cfg.data_dir / SPOOL_FILE and spool.path.exists()
    assert spool.max_bytes == 2 * 2**20


def test_store_spools_and_appends_the_record_log(tmp_path: Path) -> None:
    spool = Spool(tmp_path / SPOOL_FILE)
    log_file = tmp_path / "records.jsonl"
    store(spool, [record(1), record(2)], str(log_file))
    store(spool, [record(3)], str(log_file))
    assert [r.tags["target"] for r in spool.batch()] == ["t1", "t2", "t3"]
    lines = log_file.read_text().splitlines()
    assert [Record.from_json(ln).tags["target"] for ln in lines] == ["t1", "t2", "t3"]


def test_an_unwritable_record_log_does_not_lose_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / SPOOL_FILE)
    with caplog.at_level(logging.ERROR, "sinyal.agent"):
        store(spool, [record(1)], str(tmp_path))  # a directory
    assert f"record log {tmp_path}" in caplog.text
    assert len(spool.batch()) == 1


def test_store_at_the_cap_evicts_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / SPOOL_FILE, max_bytes=20_000)
    with caplog.at_level(logging.WARNING, "sinyal.agent"):
        for i in range(0, 200, 10):
            store(spool, [record(j) for j in range(i, i + 10)])
    assert "evicted" in caplog.text and "oldest record(s)" in caplog.text
    assert 0 < len(spool.batch(1000)) < 200
    assert spool.lost_total == 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "1m") as mnt:
        yield mnt


@pytest.mark.root
def test_a_full_disk_loses_the_records_without_a_crash(
    full_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(full_disk / SPOOL_FILE, reserve_bytes=0)
    st = os.statvfs(full_disk)
    (full_disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize))
    with caplog.at_level(logging.ERROR, "sinyal.agent"):
        store(spool, [record(i) for i in range(50)])
        store(spool, [record(i) for i in range(50, 60)])
    assert spool.lost_total == 60
    assert "10 record(s) lost (60 so far)" in caplog.text
    assert spool.batch() == []


def test_run_once_runs_every_probe_stamps_and_stores(tmp_path: Path) -> None:
    cfg = config(tmp_path, clock={"trust": "system"})
    spool = open_spool(cfg)
    records = asyncio.run(run_once(build_env(cfg), spool))
    assert [(r.kind, r.tags["target"], r.error) for r in records] == [
        ("http", "closed", "connection_refused")
    ]
    assert records[0].clock is not None and records[0].clock.source == "system"
    assert [r.id for r in spool.batch()] == [r.id for r in records]
    again = asyncio.run(run_once(build_env(cfg), None))  # `once` without a spool
    assert len(again) == 1 and len(spool.batch()) == 1


def test_the_daemon_spools_then_shows_until_stopped(tmp_path: Path) -> None:
    cfg = config(tmp_path, clock={"trust": "system"})
    spool = open_spool(cfg)
    shown: list[Record] = []
    log_file = tmp_path / "audit.jsonl"

    async def main() -> Daemon:
        stop = asyncio.Event()

        def show(records: Sequence[Record]) -> None:
            # by the time a record is shown it is already in the spool
            assert {r.id for r in records} <= {r.id for r in spool.batch(1000)}
            shown.extend(records)
            if {r.kind for r in shown} >= {"http", "agent"}:
                stop.set()

        daemon = Daemon(build_env(cfg), spool, show, str(log_file))
        assert daemon.uploader is None  # no collector configured
        await asyncio.wait_for(daemon.run(stop), 30)
        assert daemon.wake.is_set()  # the uploader would be woken
        return daemon

    asyncio.run(main())
    kinds = sorted({r.kind for r in shown})
    assert kinds == ["agent", "http"]
    assert all(r.clock is None or r.clock.source == "system" for r in shown)
    assert len(log_file.read_text().splitlines()) == len(shown)
