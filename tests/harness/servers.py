"""Real servers on loopback for the probe tests: dnsmasq, a silent UDP resolver, HTTP(S).

Everything here listens on 127.0.0.1 only and is stopped when its context manager exits.
No test traffic leaves the machine: dnsmasq runs with --no-resolv and --local domains, so
it never has an upstream to forward to.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.exception
import dns.message
import dns.query

LOOPBACK = "127.0.0.1"


# --- ports -----------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free for both TCP and UDP on host right now (a server may still race)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")


def closed_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on (TCP connects are refused, UDP gets port unreachable)."""
    return free_port(host)


# --- DNS -------------------------------------------------------------------------------------


@dataclass
class DnsServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _dnsmasq_config(
    host: str,
    port: int,
    addresses: Mapping[str, str],
    host_records: Mapping[str, Sequence[str]],
    local_domains: Sequence[str],
    extra: Sequence[str],
    pid_file: Path,
) -> str:
    lines = [
        "no-resolv",  # never read /etc/resolv.conf: no upstream resolver, ever
        "no-hosts",
        "bind-interfaces",
        f"listen-address={host}",
        f"port={port}",
        f"pid-file={pid_file}",
        "log-queries",
        "log-facility=-",
    ]
    lines += [f"local=/{d}/" for d in local_domains]  # answered here: NXDOMAIN when unknown
    lines += [f"address=/{name}/{ip}" for name, ip in addresses.items()]
    lines += [f"host-record={name},{','.join(ips)}" for name, ips in host_records.items()]
    lines += extra
    return "\n".join(lines) + "\n"


def _dns_answers(host: str, port: int, qname: str) -> bool:
    try:
        dns.query.udp(dns.message.make_query(qname, "A"), host, port=port, timeout=0.2)
    except (dns.exception.Timeout, OSError):
        return False
    return True


@contextlib.contextmanager
def dnsmasq(
    binary: str,
    *,
    addresses: Mapping[str, str] | None = None,
    host_records: Mapping[str, Sequence[str]] | None = None,
    local_domains: Sequence[str] = ("test", "invalid"),
    extra: Sequence[str] = (),
    host: str = LOOPBACK,
    port: int | None = None,
    startup_s: float = 5.0,
) -> Iterator[DnsServer]:
    """dnsmasq on host:port (a free high port by default) with its own temporary config.

    `addresses` are --address=/name/ip (the name and every name under it); `host_records`
    are --host-record=name,ip... (exactly that name; a missing address family is NODATA);
    names under `local_domains` that are not configured are NXDOMAIN; any other name is
    REFUSED, since there is no upstream; `extra` are further config lines. Yields once
    dnsmasq answers queries.
    """
    if addresses is None:
        addresses = {"good.test": "192.0.2.10"}
    if host_records is None:
        host_records = {}
    with tempfile.TemporaryDirectory(prefix="sinyal-dnsmasq-") as tmp:
        tmpdir = Path(tmp)
        os.chmod(tmpdir, 0o755)  # dnsmasq drops privileges to nobody after start-up
        log_path = tmpdir / "dnsmasq.log"
        for _attempt in range(3):  # the port can be taken between free_port() and the bind
            use_port = port or free_port(host)
            conf = tmpdir / "dnsmasq.conf"
            conf.write_text(
                _dnsmasq_config(
                    host,
                    use_port,
                    addresses,
                    host_records,
                    local_domains,
                    extra,
                    tmpdir / "dnsmasq.pid",
                )
            )
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [binary, "--keep-in-foreground", f"--conf-file={conf}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + startup_s
            ready = False
            probe_name = f"ready.{local_domains[0]}" if local_domains else "ready.test"
            while time.monotonic() < deadline and proc.poll() is None:
                if _dns_answers(host, use_port, probe_name):
                    ready = True
                    break
                time.sleep(0.05)
            if ready:
                break
            _stop(proc)
            if port is not None or "Address already in use" not in log_path.read_text():
                raise RuntimeError(
                    f"dnsmasq did not answer on {host}:{use_port} within {startup_s:g} s:\n"
                    + log_path.read_text(errors="replace")
                )
        else:
            raise RuntimeError("dnsmasq: no free port after 3 attempts")
        try:
            yield DnsServer(host, use_port, proc, log_path)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def black_hole_udp(host: str = LOOPBACK) -> Iterator[tuple[str, int]]:
    """A bound UDP socket that never reads nor answers: queries to it time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        yield host, int(s.getsockname()[1])


# --- HTTP ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Routes (all GET):

    /                     200, body "ok"
    /bytes?n=N            200, body of N bytes
    /delay?ms=D           waits D ms before sending the headers, then 200, body "ok"
    /status/C             status C, small body
    /reset                TCP RST before any response (SO_LINGER 0, then close)
    /close                FIN before any response (plain close)
    /slow?n=N&chunk=C&interval_ms=I
                          headers at once (Content-Length N), then C bytes every I ms
    """

    server: _HttpServer
    protocol_version = "HTTP/1.1"
    timeout = 5  # a stuck client cannot hold a handler thread for long

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.server.requests.append(
            Request(
                self.path,
                self.headers.get("Host"),
                self.headers.get("User-Agent"),
                getattr(self.connection, "sni", None),
            )
        )
        path = parts.path
        if path == "/":
            self._reply(200, b"ok")
        elif path == "/bytes":
            self._reply(200, b"x" * int(q.get("n", "0")))
        elif path == "/delay":
            if not self.server.stopping.wait(int(q.get("ms", "0")) / 1000):
                self._reply(200, b"ok")
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._reply(code, f"status {code}\n".encode())
        elif path == "/reset":
            self._abort(reset=True)
        elif path == "/close":
            self._abort(reset=False)
        elif path == "/slow":
            self._slow(
                int(q.get("n", "1000")),
                int(q.get("chunk", "100")),
                int(q.get("interval_ms", "100")),
            )
        else:
            self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _abort(self, reset: bool) -> None:
        self.close_connection = True
        sock = self.connection
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Close the descriptor now, bypassing socketserver's shutdown(SHUT_WR), which would
        # send a FIN first. detach() leaves the socket objects with fd -1, so their later
        # close()/shutdown() cannot touch a descriptor another thread has since reused.
        os.close(sock.detach())

    def _slow(self, n: int, chunk: int, interval_ms: int) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.send_header("Connection", "close")
        self.end_headers()
        sent = 0
        try:
            while sent < n:
                self.wfile.write(b"s" * min(chunk, n - sent))
                sent += min(chunk, n - sent)
                if sent < n and self.server.stopping.wait(interval_ms / 1000):
                    return
        except OSError:
            return  # the client gave up (its timeout): expected


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins handler threads (each bounded, see timeout)

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.stopping = threading.Event()
        self.requests: list[Request] = []
        self.tls_failures = 0
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the handler's thread, so a client that rejects
        # the certificate cannot stall the accept loop.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.tls_failures += 1
            return  # the client refused our certificate (or hung up): that is the test
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up mid-response are part of the tests


def _remember_sni(
    sock: ssl.SSLSocket | ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext
) -> None:
    sock.sni = name  # type: ignore[union-attr]  # read back by the handler


@dataclass(frozen=True)
class Request:
    """What the server saw of one request."""

    path: str
    host: str | None  # the Host header
    user_agent: str | None
    sni: str | None  # the TLS server name the client sent (https only)


@dataclass
class HttpServer:
    scheme: str
    host: str
    port: int
    ca_bundle: Path | None
    _server: _HttpServer

    @property
    def requests(self) -> list[Request]:
        return self._server.requests

    @property
    def tls_failures(self) -> int:
        """Handshakes that failed on the server side (a client that rejected the cert)."""
        return self._server.tls_failures

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"


@contextlib.contextmanager
def http_server(
    tls: bool = False,
    host: str = LOOPBACK,
    cert_names: Sequence[str] = ("localhost", LOOPBACK),
) -> Iterator[HttpServer]:
    """A threaded HTTP server on host with the routes of _Handler.

    With tls=True it serves HTTPS with a certificate for `cert_names` from a throwaway
    trustme CA; the CA's PEM is written to a temporary file (`ca_bundle`). The server
    records the SNI name each client sent (Request.sni).
    """
    with tempfile.TemporaryDirectory(prefix="sinyal-http-") as tmp:
        context: ssl.SSLContext | None = None
        ca_path: Path | None = None
        if tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert(*cert_names)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert.configure_cert(context)
            context.sni_callback = _remember_sni
            ca_path = Path(tmp) / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_path))
        server = _HttpServer((host, 0), context)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="test-http-server",
            daemon=True,
        )
        thread.start()
        try:
            yield HttpServer(
                "https" if tls else "http", host, int(server.server_address[1]), ca_path, server
            )
        finally:
            server.stopping.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
