"""A hostile collector: a real HTTP server on loopback that answers the agent's two requests
(GET /api/v1/time, POST /api/v1/measurements) with whatever a test sets, to try the agent as
a compromised collector, a broken proxy or a captive portal would.

`time_bodies` is a queue of /api/v1/time answers (the last one repeats): bytes as they are,
or a number of seconds to add to the true time (0: an honest clock); `ack` chooses the answer
to an upload:

    "ok"          the collector's real acknowledgement: every id of the envelope accepted
    "huge"        200 with a body of `huge_bytes` bytes, sent in 1 MiB writes
    "huge_chunked" the same without a Content-Length (chunked): only reading tells the size
    "bomb"        200, Content-Encoding gzip: `bomb_bytes` of zeros compressed (~1000:1)
    "drip"        200 with Content-Length 1 MiB, then one byte every 0.2 s
    "reject_huge" 200, the first three ids rejected with a reason of `reason_bytes` characters
    "garbage"     200 with a body that is not JSON
    "422_garbage" 422 with an HTML page (a proxy's, not the collector's error)

Traffic stays on loopback; every answer stops when the server stops.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MIB = 1024 * 1024


@lru_cache(maxsize=4)
def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed, built without holding them in memory."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    parts = [z.compress(block) for _ in range(size // MIB)]
    parts.append(z.flush())
    return b"".join(parts)


@dataclass
class Behaviour:
    time_bodies: list[bytes | float] = field(default_factory=lambda: [0.0])
    ack: str = "ok"
    huge_bytes: int = 512 * MIB
    bomb_bytes: int = 512 * MIB
    reason_bytes: int = 20 * MIB
    uploads: int = 0  # POSTs seen
    times: int = 0  # GET /api/v1/time seen


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        b = self.server.behaviour
        if self.path != "/api/v1/time":
            self._reply(404, b'{"error": "not found"}')
            return
        body = b.time_bodies[min(b.times, len(b.time_bodies) - 1)]
        b.times += 1
        if not isinstance(body, bytes):
            body = json.dumps({"unix_ns": time.time_ns() + int(body * 1e9)}).encode()
        self._reply(200, body)

    def do_POST(self) -> None:
        b = self.server.behaviour
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        b.uploads += 1
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        ids = [r["id"] for r in json.loads(raw)["records"]]
        self.close_connection = True
        with contextlib.suppress(OSError):  # the agent hangs up: that is the point
            getattr(self, "_ack_" + b.ack)(ids)

    def _reply(self, code: int, body: bytes, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", headers.pop("content_type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _ack_ok(self, ids: list[str]) -> None:
        self._reply(200, json.dumps({"accepted": ids, "rejected": []}).encode())

    def _ack_huge(self, ids: list[str]) -> None:
        n = self.server.behaviour.huge_bytes
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        block = b" " * MIB
        sent = 0
        while sent < n and not self.server.stopping.is_set():
            self.wfile.write(block[: n - sent])
            sent += min(MIB, n - sent)

    def _ack_huge_chunked(self, ids: list[str]) -> None:
        """As huge, without a Content-Length (chunked): the size is known only by reading."""
        n = self.server.behaviour.huge_bytes
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"%x\r\n" % MIB + b" " * MIB + b"\r\n"
        sent = 0
        while sent < n and not self.server.stopping.is_set():
            self.wfile.write(chunk)
            sent += MIB
        self.wfile.write(b"0\r\n\r\n")

    def _ack_bomb(self, ids: list[str]) -> None:
        self._reply(200, gzip_bomb(self.server.behaviour.bomb_bytes), Content_Encoding="gzip")

    def _ack_drip(self, ids: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(MIB))
        self.end_headers()
        for _ in range(MIB):
            if self.server.stopping.wait(0.2):
                return
            self.wfile.write(b" ")
            self.wfile.flush()

    def _ack_reject_huge(self, ids: list[str]) -> None:
        reason = "r" * self.server.behaviour.reason_bytes
        rejected = [{"id": i, "reason": reason, "detail": "d" * 1000} for i in ids[:3]]
        self._reply(200, json.dumps({"accepted": [], "rejected": rejected}).encode())

    def _ack_garbage(self, ids: list[str]) -> None:
        self._reply(200, b"<html>not an acknowledgement</html>", content_type="text/html")

    def _ack_422_garbage(self, ids: list[str]) -> None:
        self._reply(422, b"<html>proxy error</html>", content_type="text/html")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # an agent that hangs up mid-answer is what the tests provoke


@dataclass
class HostileCollector:
    url: str
    behaviour: Behaviour


@contextlib.contextmanager
def hostile_collector(behaviour: Behaviour | None = None) -> Iterator[HostileCollector]:
    b = behaviour or Behaviour()
    server = _Server(b)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield HostileCollector(f"http://127.0.0.1:{server.server_address[1]}", b)
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def time_body(unix_ns: Any) -> bytes:
    """A /api/v1/time answer carrying `unix_ns` as given (json allows Infinity, NaN)."""
    return json.dumps({"server_time": "2026-11-22T06:00:00Z", "unix_ns": unix_ns}).encode()
