"""agent.tcpmeter: the delivered-bytes counters on real loopback connections, the window
arithmetic, and the hooks that meter every connection a process opens."""

from __future__ import annotations

import itertools
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import tcpmeter
from agent.tcpmeter import Meter, at, window_rate

pytestmark = pytest.mark.skipif(not tcpmeter.supported(), reason="needs Linux TCP_INFO counters")

PAYLOAD = 3 * 2**20


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv


def drain(srv: socket.socket, got: list[int], reply: bytes = b"") -> threading.Thread:
    """Accepts one connection, reads it to EOF, answers `reply`."""

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            while chunk := conn.recv(65536):
                got.append(len(chunk))
            conn.sendall(reply)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_delivered_counts_acknowledged_and_received_payload(listener: socket.socket) -> None:
    got: list[int] = []
    server = drain(listener, got, reply=b"x" * 1000)
    with socket.create_connection(listener.getsockname()) as sock:
        assert tcpmeter.delivered(sock) == (1, 0)  # the SYN counts as one byte acked
        sock.sendall(b"\0" * PAYLOAD)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        server.join(5)
        acked, received = tcpmeter.delivered(sock)
    assert sum(got) == PAYLOAD
    # The payload and the SYN, and the FIN once acknowledged; the peer's FIN likewise.
    assert PAYLOAD + 1 <= acked <= PAYLOAD + 2
    assert 1000 <= received <= 1001


def test_meter_keeps_the_count_of_connections_that_closed(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "create_connection", socket.create_connection)
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", ssl.SSLContext.wrap_socket)
    monkeypatch.setattr(ssl.SSLContext, "sslsocket_class", ssl.SSLContext.sslsocket_class)
    monkeypatch.setattr(tcpmeter._Metered, "meter", None)
    meter = Meter(interval_s=0.01)
    tcpmeter.install(meter)
    meter.start()
    for _ in range(2):
        got: list[int] = []
        server = drain(listener, got, reply=b"ok")
        sock = socket.create_connection(listener.getsockname(), timeout=5)
        assert isinstance(sock, tcpmeter.MeteredSocket) and sock.gettimeout() == 5
        sock.sendall(b"\0" * PAYLOAD)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b"ok"
        server.join(5)
        sock.close()  # its counters go to the meter's closed total
    samples = meter.stop()
    acked, received = samples[-1][1:]
    assert 2 * PAYLOAD + 2 <= acked <= 2 * PAYLOAD + 4  # + SYN and FIN per connection
    assert 4 <= received <= 6
    assert meter.totals() == (acked, received)
    # The sampled sums never go back, including across the closes.
    assert all(a[1] <= b[1] and a[2] <= b[2] for a, b in itertools.pairwise(samples))


def test_tls_connections_are_metered_through_any_context(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setattr(socket, "create_connection", socket.create_connection)
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", ssl.SSLContext.wrap_socket)
    monkeypatch.setattr(ssl.SSLContext, "sslsocket_class", ssl.SSLContext.sslsocket_class)
    monkeypatch.setattr(tcpmeter._Metered, "meter", None)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    got: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            while sum(got) < PAYLOAD and (chunk := tls.recv(65536)):
                got.append(len(chunk))
            tls.sendall(b"ok")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    meter = Meter()
    tcpmeter.install(meter)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    plain = socket.create_connection(listener.getsockname())
    tls = client_ctx.wrap_socket(plain, server_hostname="localhost")
    assert isinstance(tls, tcpmeter.MeteredSSLSocket)
    tls.sendall(b"\0" * PAYLOAD)
    assert tls.recv(2) == b"ok"
    server.join(5)
    tls.close()
    assert sum(got) == PAYLOAD
    acked, _ = meter.totals()
    # The payload and TLS's own bytes (handshake, records), counted once.
    assert PAYLOAD < acked < PAYLOAD * 1.05


def test_shutdown_unblocks_a_thread_stuck_in_a_receive(
    listener: socket.socket,
) -> None:
    meter = Meter()
    sock = socket.create_connection(listener.getsockname())
    meter.track(sock)
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(sock.recv(10)), daemon=True)
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # the peer sends nothing
    assert meter.shutdown() == 1
    reader.join(5)
    assert result == [b""]
    sock.close()


def test_at_interpolates_between_samples_and_holds_at_the_ends() -> None:
    samples = [(10.0, 0), (11.0, 1000), (12.0, 1000), (13.0, 4000)]
    assert at(samples, 9.0) == 0
    assert at(samples, 10.5) == 500
    assert at(samples, 11.5) == 1000
    assert at(samples, 12.25) == 1750
    assert at(samples, 20.0) == 4000
    with pytest.raises(ValueError):
        at([], 1.0)


def test_window_rate_is_bits_delivered_in_the_window_over_its_length() -> None:
    # 1 MB/s, with a stall from 3 s to 4 s
    samples = [(0.0, 0), (3.0, 3_000_000), (4.0, 3_000_000), (6.0, 5_000_000)]
    assert window_rate(samples, 1.0, 3.0) == pytest.approx(8e6)
    assert window_rate(samples, 2.0, 6.0) == pytest.approx(3_000_000 * 8 / 4)
    with pytest.raises(ValueError):
        window_rate(samples, 3.0, 3.0)
