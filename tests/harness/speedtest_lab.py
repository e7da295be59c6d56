"""Speedtest test servers: the real endpoint (on loopback or behind a tbf-shaped veth), a
stalling endpoint, an Ookla impersonator reached as an HTTP proxy, and the guard fixture.

Nothing here resolves or contacts speedtest.net: the Ookla impersonator is used as
speedtest-cli's HTTP proxy (its ProxyHandler honours http_proxy), so the names in
speedtest-cli's URLs are never looked up; `no_speedtest_net` makes any attempt fail the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness.guard import sitecustomize as guard
from tests.harness.netns import Lab, Link, sh
from tests.harness.servers import LOOPBACK, free_port

GUARD_DIR = Path(__file__).resolve().parent / "guard"
BIN = Path(sys.executable).parent


@pytest.fixture
def no_speedtest_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fails the test if it, or any Python process it starts, resolves a speedtest.net
    name or connects outside loopback and 198.18.0.0/15."""
    log = tmp_path / "guard.log"
    monkeypatch.setenv("SPEEDTEST_GUARD_LOG", str(log))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH")]))
    )
    gai, connect, connect_ex = guard.install()
    try:
        yield log
    finally:
        socket.getaddrinfo = gai  # type: ignore[assignment]
        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"something tried to reach speedtest.net or the outside: {attempts}"


def wait_listening(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s} s")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def endpoint(host: str = LOOPBACK, port: int | None = None) -> Iterator[str]:
    """The built-in endpoint (sinyal-collector speedtest-server) on loopback; yields its URL."""
    port = port or free_port(host)
    proc = subprocess.Popen(
        [str(BIN / "sinyal-collector"), "speedtest-server", "--host", host, "--port", str(port)],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_listening(host, port)
        yield f"http://{host}:{port}/speedtest/"
    finally:
        _stop(proc)


@dataclass
class ShapedLink:
    url: str  # the endpoint's URL, in the far namespace
    link: Link
    down_mbit: float
    up_mbit: float


def tbf(dev: str, mbit: float, latency_ms: int, prefix: list[str]) -> None:
    """Rate-limit a device's egress; `latency` sizes the queue (deep: bufferbloat)."""
    sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
       "burst", "64kb", "latency", f"{latency_ms}ms")  # fmt: skip


@contextlib.contextmanager
def shaped_endpoint(
    lab: Lab, down_mbit: float = 20, up_mbit: float = 5, queue_ms: int = 200
) -> Iterator[ShapedLink]:
    """The endpoint in a namespace behind a veth shaped with tbf on each side's egress:
    down = the server side, up = the client (root namespace) side."""
    ns = lab.namespace()
    link = lab.link(ns)
    tbf(link.far_if, down_mbit, queue_ms, ns.prefix())
    tbf(link.near_if, up_mbit, queue_ms, [])
    port = 8081
    lab.spawn(
        ns, str(BIN / "sinyal-collector"), "speedtest-server", "--host", link.far_addr,
        "--port", str(port),
    )  # fmt: skip
    wait_listening(link.far_addr, port)
    yield ShapedLink(f"http://{link.far_addr}:{port}/speedtest/", link, down_mbit, up_mbit)


# --- a server that stalls mid-transfer --------------------------------------------------------


class _StallHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _StallServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith("latency.txt"):
            body = b"test=test\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # A download: headers, 64 KiB, then nothing (bounded by the server's stop event).
        self.send_response(200)
        self.send_header("Content-Length", str(32_000_000))
        self.end_headers()
        self.wfile.write(os.urandom(65536))
        self.wfile.flush()
        self.server.stalled.set()
        self.server.stop.wait(60)
        self.close_connection = True

    def do_POST(self) -> None:
        self.server.stop.wait(60)
        self.close_connection = True


class _StallServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int]) -> None:
        super().__init__(addr, _StallHandler)
        self.stop = threading.Event()
        self.stalled = threading.Event()


@contextlib.contextmanager
def stalling_endpoint() -> Iterator[tuple[str, _StallServer]]:
    """Answers latency.txt, then stalls every download after 64 KiB."""
    server = _StallServer((LOOPBACK, 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/speedtest/", server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


# --- Ookla impersonated through speedtest-cli's proxy support ------------------------------

OOKLA_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<settings>
<client ip="198.18.0.2" lat="-6.1754" lon="106.8272" isp="Lab" country="ID" />
<server-config threadcount="4" ignoreids="" notonmap="" forcepingid="" preferredserverid=""/>
<download testlength="{length}" initialtest="250K" mintestsize="250K" threadsperurl="4"/>
<upload testlength="{length}" ratio="5" initialtest="0" mintestsize="32K" threads="2"
 maxchunksize="512K" maxchunkcount="50" threadsperurl="4"/>
</settings>
"""


@dataclass
class OoklaServer:
    id: int
    url: str  # .../upload.php
    lat: float
    lon: float

    def xml(self) -> str:
        host = self.url.split("/")[2]
        return (
            f'<server url="{self.url}" lat="{self.lat}" lon="{self.lon}" name="Lab {self.id}" '
            f'country="Indonesia" cc="ID" sponsor="Lab" id="{self.id}" host="{host}"/>'
        )


@dataclass
class OoklaImpersonator:
    proxy_url: str
    servers: list[OoklaServer]
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def ookla_proxy(servers: list[OoklaServer], length_s: int = 2) -> Iterator[OoklaImpersonator]:
    """An HTTP proxy on loopback that answers speedtest.net's configuration and server list
    itself (and nothing else): speedtest-cli's requests for them reach it instead of the
    Internet when http_proxy points here."""
    state = OoklaImpersonator("", servers)
    server_list = "<settings><servers>" + "".join(s.xml() for s in servers)
    server_list += "</servers></settings>"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            path = self.path.split("?")[0]
            if path.endswith("/speedtest-config.php"):
                body = OOKLA_CONFIG.format(length=length_s).encode()
            elif "/speedtest-servers" in path:
                body = server_list.encode()
            else:
                body = b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "text/xml")
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.proxy_url = f"http://{LOOPBACK}:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
