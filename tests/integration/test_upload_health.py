"""Upload health a technician can see (issue 17, point 3): the real uploader against real
servers, and the live view rendered by rich to a fixed 80x24 console for each failure kind:
collector down, token refused (401), clock not synchronised, DNS failure; then recovery.
Also: each change of state is logged once, `status` says the last error with its time in the
station's zone, and the heartbeat carries the state."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import CollectorEndpoint as Collector
from agent.contract.record import Record
from agent.heartbeat import Heartbeat
from agent.spool import Spool
from agent.uploader import Uploader
from agent.uploadstate import CODE
from tests.conftest import ROOT
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    free_port,
    golden,
    running_collector,
)
from tests.harness.netns import netns_lab  # noqa: F401  (fixture)
from tests.harness.upload_view import screen


def check_screen(text: str, expect: str) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24, text
    assert all(len(line) <= 80 for line in lines), text
    assert lines[0].startswith(f"Sinyal · station {STATION} · 20")
    assert lines[0].endswith(" WITA")
    upload = " ".join(lines[1:4])  # the upload line, wrapped on 80 columns
    assert expect in upload, text
    # 30 targets do not fit in 24 lines: the failing ones first, then as many as fit, then a
    # summary of the rest; the spool line stays at the bottom.
    icmp = lines.index(next(line for line in lines if line.startswith("icmp")))
    assert lines[icmp + 2].split()[:2] == ["target-28", "timeout"]
    assert lines[icmp + 3].split()[:2] == ["target-29", "timeout"]
    assert re.fullmatch(r"… \d+ more icmp targets, \d+ ok", lines[-2]), text
    assert lines[-1].startswith("spool ")
    return lines


def test_collector_down(tmp_path: Path) -> None:
    text = screen(f"http://127.0.0.1:{free_port()}", "sny_x")
    lines = check_screen(
        text, "UPLOAD FAILING: collector unreachable: connection refused by 127.0.0.1"
    )
    assert "last ok never" in " ".join(lines[1:4])
    assert "backlog 31, oldest 20" in " ".join(lines[1:4])


def test_token_refused(stack: Stack) -> None:
    text = screen(stack.url, "sny_wrong")
    check_screen(text, "UPLOAD FAILING: token refused (401): revoked or wrong token; enrol again")


def test_clock_not_synchronised(stack: Stack) -> None:
    # A board whose clock is 40 days behind (trust: system): the collector refuses the time.
    text = screen(stack.url, stack.token, age_s=40 * 86400)
    check_screen(text, "UPLOAD FAILING: clock not synchronised: the collector refused 31")


def test_tls_not_trusted() -> None:
    # An https server whose certificate comes from a CA the agent was not given.
    from tests.harness.servers import http_server

    with http_server(tls=True) as server:
        text = screen(server.url(""), "sny_x")
    check_screen(text, "UPLOAD FAILING: TLS failure with 127.0.0.1: certificate not trusted")


def test_database_down(tmp_path: Path) -> None:
    # The collector answers, its InfluxDB does not: 503, records stay in the spool.
    from tests.harness.servers import closed_port

    cfg = collector_config_file(tmp_path, f"http://127.0.0.1:{closed_port()}", "sinyal")
    with running_collector(cfg) as down:
        text = screen(down.url, down.token)
    check_screen(text, "UPLOAD FAILING: collector error (503): its database is down")


def test_upload_ok(stack: Stack) -> None:
    text = screen(stack.url, stack.token)
    lines = check_screen(text, "upload ok · last 20")
    assert "WITA · backlog 0" in " ".join(lines[1:3])


@pytest.mark.root
@pytest.mark.netns
def test_dns_failure(netns_lab) -> None:  # noqa: F811
    from tests.harness.nodns import namespace_without_dns

    ns = namespace_without_dns(netns_lab)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [*ns.prefix(), sys.executable, "-m", "tests.harness.upload_view",
         "http://collector.sinyal-test:8080", "sny_x", "60"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check_screen(proc.stdout, "UPLOAD FAILING: DNS failure: cannot resolve collector.sinyal-test")


def test_each_change_logged_once_and_status_and_heartbeat(
    tmp_path: Path,
    stack: Stack,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spool = Spool(tmp_path / "data" / "spool.sqlite3")
    spool.put([Record.from_dict(golden("icmp-ok"))])
    down = Uploader(spool, Collector(f"http://127.0.0.1:{free_port()}", token="x"), STATION)
    caplog.set_level(logging.INFO, "sinyal.uploader")

    async def attempts(up: Uploader, n: int) -> None:
        try:
            for _ in range(n):
                await up.upload_once()
        finally:
            await up.aclose()

    asyncio.run(attempts(down, 3))
    failing = [r.getMessage() for r in caplog.records if "failing" in r.getMessage()]
    assert failing == [
        "uploads failing: collector unreachable: connection refused by 127.0.0.1; "
        "results stay in the spool"
    ]
    # after a restart the state is logged once more, and "since" is still when it began
    since = spool.state()["upload_since"]
    caplog.clear()
    again = Uploader(spool, Collector(down.collector.url, token="x"), STATION)
    asyncio.run(attempts(again, 2))
    assert len([r for r in caplog.records if "failing" in r.getMessage()]) == 1
    assert spool.state()["upload_since"] == since
    beat = Heartbeat(STATION, spool).record()
    assert beat.fields["upload_ok"] == 0
    assert beat.fields["upload_state"] == CODE["refused"]
    assert isinstance(beat.fields["upload_failing_s"], float)

    # status, as a technician runs it: the last error with its time in the station's zone
    from agent import cli
    from tests.conftest import base_config, write_config

    doc = base_config(tmp_path)
    doc["collector"] = {"url": "http://127.0.0.1:9/", "token": "x"}
    doc["station"]["tz"] = "Asia/Jayapura"
    path = write_config(tmp_path, doc)
    spool.close()
    assert cli.main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "uploads:        FAILING since 20" in out
    assert "last error:     collector unreachable: connection refused by 127.0.0.1 (at 20" in out
    assert " WIT)" in out
    # doctor says it too, beside its own check of the collector now
    assert cli.main(["doctor", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[WARN] uploads: the agent's uploads FAIL since 20" in out
    assert "[FAIL] collector: http://127.0.0.1:9/ not reachable: collector unreachable: " in out

    spool = Spool(tmp_path / "data" / "spool.sqlite3")
    logging.getLogger().addHandler(caplog.handler)  # the CLI replaced the root's handlers
    caplog.clear()
    asyncio.run(attempts(Uploader(spool, Collector(stack.url, token=stack.token), STATION), 2))
    assert [r.getMessage() for r in caplog.records if "again" in r.getMessage()] == [
        "uploads work again (was: collector unreachable: connection refused by 127.0.0.1)"
    ]
    beat = Heartbeat(STATION, spool).record()
    assert beat.fields["upload_ok"] == 1 and beat.fields["upload_state"] == CODE["ok"]
    assert beat.fields["upload_failing_s"] == 0.0
    spool.close()


def test_records_waiting_for_a_clock_that_cannot_be_read(tmp_path: Path) -> None:
    """A board without a synchronised clock (clock.trust: collector) behind a server that is
    not a Sinyal collector (its /api/v1/time answers 404): the records wait for a time, and
    the state says so instead of staying silent."""
    from agent.clock import boot_id, clock_info
    from agent.timekeeper import TimeKeeper
    from tests.harness.servers import http_server

    if boot_id() is None:
        pytest.skip("no kernel boot id here")
    spool = Spool(tmp_path / "spool.sqlite3")
    tk = TimeKeeper(spool, "collector")
    record = Record.from_dict(golden("icmp-ok"))
    spool.put(tk.stamp([dataclasses.replace(record, clock=clock_info(synced=0))]))
    assert spool.untimed(boot_id()) == 1
    with http_server() as server:
        up = Uploader(spool, Collector(server.url(""), token="x"), STATION, timekeeper=tk)

        async def once() -> object:
            try:
                return await up.upload_once()
            finally:
                await up.aclose()

        assert asyncio.run(once()) is None  # nothing sendable: the record is held
    state = spool.state()
    assert state["upload_kind"] == "clock"
    assert state["upload_reason"] == (
        "clock not synchronised: 1 record(s) wait for the collector's clock "
        "(HTTP 404 from /api/v1/time)"
    )
    spool.close()
