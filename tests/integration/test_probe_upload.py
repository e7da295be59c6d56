"""Upload probe: a photo-sized POST to the real endpoint's sink, to a refused port, and to
servers that cut the transfer off midway (reset) or stall it (timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.contract.record import MEASUREMENTS, Record
from agent.probes.base import ProbeEnv
from agent.probes.upload import UploadProbe
from tests.harness.servers import LOOPBACK, closed_port
from tests.harness.speedtest_lab import endpoint, no_speedtest_net

__all__ = ["no_speedtest_net"]
MakeConfig = Callable[..., AgentConfig]
pytestmark = pytest.mark.usefixtures("no_speedtest_net")


def upload(make_config: MakeConfig, url: str, **options: Any) -> Record:
    cfg = make_config(probes={"upload": {"targets": [{"url": url, "name": "t"}], **options}})
    assert cfg.probes.upload is not None
    records = asyncio.run(UploadProbe(cfg.probes.upload, ProbeEnv(cfg)).run())
    assert len(records) == 1
    r = records[0]
    assert Record.from_dict(r.to_dict()) == r
    assert set(r.tags) == set(MEASUREMENTS["upload"].tags)
    return r


@contextlib.contextmanager
def rude_server(read_bytes: int, reset: bool) -> Iterator[str]:
    """Accepts one connection, reads `read_bytes`, then resets it (RST) or just stops reading."""
    srv = socket.create_server((LOOPBACK, 0))
    srv.settimeout(10)
    done = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                got = 0
                while got < read_bytes:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                if reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{srv.getsockname()[1]}/upload"
    finally:
        done.set()
        srv.close()
        thread.join(10)


def test_photo_reaches_the_sink(make_config: MakeConfig) -> None:
    with endpoint() as url:
        r = upload(make_config, url + "sink", payload_bytes=2_000_000)
    f = r.fields
    assert r.error is None and f["ok"] == 1
    assert f["payload_bytes"] == f["sent_bytes"] == 2_000_000
    assert (f["connected"], f["cut_off"], f["status"]) == (1, 0, 200)
    assert f["rate_mbps"] == pytest.approx(8 * 2_000_000 / f["duration_s"] / 1e6, rel=1e-3)
    assert f["connect_ms"] >= 0


def test_refused_is_a_failure_to_connect(make_config: MakeConfig) -> None:
    r = upload(make_config, f"http://{LOOPBACK}:{closed_port()}/sink")
    assert r.error == "connection_refused"
    assert (r.fields["connected"], r.fields["cut_off"], r.fields["sent_bytes"]) == (0, 0, 0)
    assert "duration_s" not in r.fields and "rate_mbps" not in r.fields


def test_reset_midway_is_a_cut_off(make_config: MakeConfig) -> None:
    with rude_server(200_000, reset=True) as url:
        r = upload(make_config, url, payload_bytes=8_000_000)
    assert r.error == "connection_reset", r
    assert (r.fields["connected"], r.fields["cut_off"], r.fields["ok"]) == (1, 1, 0)
    assert 0 < r.fields["sent_bytes"] < 8_000_000
    assert "rate_mbps" not in r.fields


def test_stall_midway_is_a_cut_off_at_the_timeout(make_config: MakeConfig) -> None:
    with rude_server(100_000, reset=False) as url:
        r = upload(make_config, url, payload_bytes=20_000_000, timeout_s=2)
    assert r.error == "timeout"
    assert (r.fields["connected"], r.fields["cut_off"]) == (1, 1)
    assert r.fields["sent_bytes"] < 20_000_000


def test_budget_skips_an_upload_that_would_pass_it(make_config: MakeConfig) -> None:
    with endpoint() as url:
        cfg = make_config(
            probes={"upload": {"targets": [url + "sink"], "payload_bytes": 600_000}},
            budget={"daily_mb": 1},
        )
        assert cfg.probes.upload is not None
        probe = UploadProbe(cfg.probes.upload, ProbeEnv(cfg))
        first, second = asyncio.run(probe.run()), asyncio.run(probe.run())
    assert first[0].fields["ok"] == 1
    assert second[0].fields == {
        "payload_bytes": 600_000,
        "skipped": 1,
        "skip_reason": "daily_budget",
    }
