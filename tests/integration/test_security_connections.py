"""Issue 15, findings 1 and 2: what anonymous sockets can do to the collector.

`sinyal-collector serve` runs as a process of its own (tests.harness.collector_process) and
is attacked over loopback with raw sockets: endless and numerous headers, long URLs, idle
and slowloris connections beyond its file limit, while a real agent's upload must still be
acknowledged. On the old main each of these held memory or sockets without limit.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.collector_process import (
    STATION,
    Attack,
    CollectorProcess,
    collector_config_file,
    collector_process,
    raw_request,
    read_answer,
)
from tests.harness.collector_stack import envelope, golden
from tests.harness.dbs import InfluxServer

LISTEN = {
    "header_timeout_s": 2,
    "idle_timeout_s": 2,
    "body_timeout_s": 2,
    "send_timeout_s": 5,
    "max_header_bytes": 8192,
    "max_headers": 32,
    "max_url_bytes": 2048,
}
FILE_LIMIT = 256  # the collector's RLIMIT_NOFILE: its connection cap becomes 128


@pytest.fixture
def collector(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> Iterator[CollectorProcess]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database, listen=LISTEN)
    with collector_process(cfg, file_limit=FILE_LIMIT) as c:
        yield c


def upload(c: CollectorProcess, n: int = 3, timeout: float = 10.0) -> httpx.Response:
    body = json.dumps(envelope([golden("icmp-ok") for _ in range(n)])).encode()
    return httpx.post(
        f"{c.url}/api/v1/measurements",
        content=body,
        headers={"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"},
        timeout=timeout,
    )


def metric(c: CollectorProcess, name: str, label: str) -> float:
    text = httpx.get(f"{c.url}/metrics", timeout=5).text  # loopback: allowed without a token
    for line in text.splitlines():
        if line.startswith(f'{name}_total{{reason="{label}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{label}}} not on /metrics")


def test_long_header_is_refused_with_431(collector: CollectorProcess) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    status, _ = raw_request(collector.host_port, head)
    assert status == 431
    assert metric(collector, "sinyal_connections_closed", "header_too_large") >= 1


def test_too_many_headers_are_refused_with_431(collector: CollectorProcess) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    status, _ = raw_request(
        collector.host_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"
    )
    assert status == 431
    assert metric(collector, "sinyal_connections_closed", "too_many_headers") >= 1


def test_long_url_is_refused_with_414(collector: CollectorProcess) -> None:
    status, _ = raw_request(
        collector.host_port, b"GET /healthz?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == 414


def test_requests_within_the_limits_are_served(collector: CollectorProcess) -> None:
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Ok: "
        + b"a" * 4000
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, answer = raw_request(collector.host_port, head)
    assert status == 200 and answer.endswith(b'{"status":"ok"}')
    assert upload(collector).status_code == 200


def _endless_headers(host_port: tuple[str, int], total: int, out: list[int | None]) -> None:
    """Send one header value without end until the server closes (or `total` bytes)."""
    with socket.create_connection(host_port, timeout=10) as s:
        chunk = b"a" * 16384
        sent = 0
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        out.append(read_answer(s)[0])


def test_endless_headers_hold_no_memory(collector: CollectorProcess) -> None:
    """Finding 1: a few connections sending endless headers took ~400 MB."""
    before = collector.rss_kib()
    statuses: list[int | None] = []
    threads = [
        threading.Thread(target=_endless_headers, args=(collector.host_port, 16 * 2**20, statuses))
        for _ in range(20)
    ]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, collector.rss_kib())
        time.sleep(0.05)
    for t in threads:
        t.join()
    # 20 x 16 MiB offered; the guard stops each connection after its 8 KiB head limit.
    assert peak - before < 32 * 1024, f"RSS grew {peak - before} KiB"
    assert statuses.count(431) >= 15, statuses
    assert upload(collector).status_code == 200


def test_idle_connection_is_closed_at_the_header_deadline(collector: CollectorProcess) -> None:
    with socket.create_connection(collector.host_port, timeout=10) as s:
        t0 = time.monotonic()
        status, _ = read_answer(s)
        elapsed = time.monotonic() - t0
    assert status == 408
    assert 1.5 < elapsed < 5, elapsed


def test_slowloris_is_closed_at_the_header_deadline(collector: CollectorProcess) -> None:
    """One header byte every 0.2 s: the deadline is for the whole head, not per byte."""
    with socket.create_connection(collector.host_port, timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        closed = False
        with contextlib.suppress(OSError):
            for _ in range(50):  # 10 s at most
                s.sendall(b"X")
                time.sleep(0.2)
        s.settimeout(5)
        status, _ = read_answer(s)
        closed = True
        elapsed = time.monotonic() - t0
    assert closed and status == 408
    assert elapsed < 6, elapsed


def test_stalled_body_is_closed_at_the_body_deadline(collector: CollectorProcess) -> None:
    with socket.create_connection(collector.host_port, timeout=10) as s:
        s.sendall(
            b"POST /api/v1/measurements HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + collector.token.encode()
            + b'\r\nContent-Length: 1000\r\n\r\n{"schema"'
        )
        t0 = time.monotonic()
        status, _ = read_answer(s)
        elapsed = time.monotonic() - t0
    assert status == 408
    assert elapsed < 6, elapsed


def test_agents_get_through_an_idle_and_slowloris_flood(collector: CollectorProcess) -> None:
    """Finding 2: 1,100 idle sockets against the usual 1024 file limit made every upload
    fail. Here 600 sockets against a limit of 256 (cap 128), held open and reopened as the
    collector closes them; every upload meanwhile must be acknowledged."""
    with Attack(collector.host_port, 600) as attack:
        deadline = time.monotonic() + 30
        while attack.opened < 600 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert attack.opened >= 600, attack.opened
        results = []
        for _ in range(10):
            try:
                r = upload(collector, timeout=10)
                results.append(r.status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)
            time.sleep(0.3)
        fds = collector.open_fds()
    assert results == [200] * 10, results
    assert fds < FILE_LIMIT, fds
    assert metric(collector, "sinyal_connections_closed", "evicted") > 0
    assert collector.proc.poll() is None
    assert STATION  # the uploads were for the token's own station
