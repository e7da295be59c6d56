"""A Speedtest-Mini-compatible test endpoint, and a sink for photo-sized uploads.

A plain ASGI application (no framework in the data path), mounted by the collector
app at /speedtest and runnable alone (`sinyal-collector speedtest-server`). It routes
on the last path segment, so it answers under any prefix:

  GET  latency.txt              "test=test" (speedtest-cli's latency check)
  GET  random{N}x{N}.jpg        2*N*N bytes of incompressible data, N one of
                                speedtest.net's sizes (350 .. 4000), as Ookla's files
  POST upload.php               reads and discards the body; answers "size=<bytes>"
  GET  upload.php               "size=0" (how speedtest-cli recognises a mini server)
  GET  index.html, /            a page naming the upload extension, for --mini clients
  POST sink                     the upload probe's target: reads and discards the body,
                                answers JSON {"received_bytes": n, "receive_s": t},
                                t from the first body byte to the last

Access (issue 15, finding 4): mounted in the collector, every path needs a ticket
(collector.tickets: ``/speedtest/t/<ticket>/<file>``, obtained with an agent token), and the
bytes served and received are charged to that token's daily quota (`speedtest.*` in the
collector config): 401 without a valid ticket, 429 with Retry-After when the day's bytes
are spent, 413 for an upload over `max_upload_bytes` (also enforced while reading a body
sent without Content-Length). `sinyal-collector speedtest-server` alone has no registry and
so no tickets: it caps upload sizes only, for lab and private networks.

Download data comes from one random block generated at start-up (os.urandom, 8 MiB by
default) and is sent as memoryview slices of it, starting at a random offset: no
per-request generation and no copies. A repeating 8 MiB block is incompressible for
any compressor whose window is smaller than that (gzip: 32 KiB, brotli: 16 MiB at most,
so take a bigger block if a path compresses with brotli's largest window).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.ratelimit import DailyQuota, retry_after

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# speedtest.net's download image sizes (speedtest-cli asks for these).
SIZES = (350, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
_RANDOM_RE = re.compile(r"^random(\d+)x(\d+)\.jpg$")
CHUNK = 256 * 1024
DEFAULT_BLOCK = 8 * 2**20
INDEX = b'<html><body>Sinyal Speedtest Mini endpoint. upload_extension: "php"</body></html>\n'


DEFAULT_MAX_UPLOAD = 64 * 2**20


def file_size(n: int) -> int:
    """Bytes of random{n}x{n}.jpg: 2*n*n, within 1 % of speedtest.net's own files."""
    return 2 * n * n


def download_size(name: str) -> int | None:
    """Bytes of a download file by its name, None when it is not one we serve."""
    m = _RANDOM_RE.match(name)
    if m is None or m.group(1) != m.group(2) or int(m.group(1)) not in SIZES:
        return None
    return file_size(int(m.group(1)))


class Refusal(Exception):
    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass
class Access:
    """Who may use the endpoint and how much: `check` maps a request path to the quota key
    (the agent token's id) its ticket grants, or None."""

    check: Callable[[str], str | None]
    quota: DailyQuota
    on_refuse: Callable[[str], None] | None = None

    def key(self, path: str) -> str:
        key = self.check(path)
        if key is None:
            self.count("no_ticket")
            raise Refusal(
                401,
                "a speedtest ticket is needed in the path (/speedtest/t/TICKET/...):"
                " GET /api/v1/speedtest/ticket with the agent token",
                [],
            )
        return key

    def charge(self, key: str, n: int) -> None:
        if not self.quota.charge(key, n):
            self.count("quota")
            wait = retry_after(self.quota.seconds_to_reset())
            raise Refusal(
                429,
                f"this token's speedtest bytes for today ({self.quota.limit}) are spent",
                [(b"retry-after", wait.encode())],
            )

    def count(self, reason: str) -> None:
        if self.on_refuse is not None:
            self.on_refuse(reason)


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"upload larger than {limit} bytes", [])


class SpeedtestEndpoint:
    def __init__(
        self,
        block_bytes: int = DEFAULT_BLOCK,
        chunk: int = CHUNK,
        access: Access | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    ) -> None:
        if block_bytes < chunk:
            raise ValueError("block_bytes must be at least one chunk")
        self.access = access
        self.max_upload_bytes = max_upload_bytes
        self.chunk = chunk
        block = os.urandom(block_bytes)
        # The block plus one chunk of its start, so any chunk-long slice is contiguous.
        self.data = memoryview(block + block[:chunk])
        self.block_bytes = block_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._serve(scope, receive, send)
        except Refusal as exc:
            await _reply(send, exc.status, exc.reason.encode() + b"\n", headers=exc.headers)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"].rstrip("/").rsplit("/", 1)[-1]
        method = scope["method"]
        key = self.access.key(scope["path"]) if self.access is not None else None
        if method in ("GET", "HEAD"):
            if name == "latency.txt":
                await _reply(send, 200, b"test=test\n")
            elif name.startswith("upload."):
                await _reply(send, 200, b"size=0\n")
            elif name in ("", "speedtest", "index.html"):
                await _reply(send, 200, INDEX, b"text/html")
            elif (size := download_size(name)) is not None:
                if key is not None and method == "GET":
                    assert self.access is not None
                    self.access.charge(key, size)
                await self._download(send, size, method == "HEAD")
            else:
                await _reply(send, 404, b"not found\n")
        elif method == "POST" and name.startswith("upload."):
            size, _ = await self._upload(scope, receive, key)
            await _reply(send, 200, f"size={size}".encode())
        elif method == "POST" and name == "sink":
            size, seconds = await self._upload(scope, receive, key)
            body = json.dumps({"received_bytes": size, "receive_s": round(seconds, 6)})
            await _reply(send, 200, body.encode(), b"application/json")
        else:
            await _reply(send, 405, b"method not allowed\n")

    async def _upload(self, scope: Scope, receive: Receive, key: str | None) -> tuple[int, float]:
        """Read and discard an upload within the size cap and the token's quota: charged
        up front by Content-Length, or as it arrives when the body is chunked."""
        limit = self.max_upload_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if self.access is not None:
                self.access.count("too_large")
            raise too_large(limit)
        charge: Callable[[int], None] | None = None
        if key is not None:
            access = self.access
            assert access is not None
            if declared is not None:
                access.charge(key, declared)
            else:

                def charge(n: int) -> None:
                    access.charge(key, n)

        return await _drain(receive, limit, charge)

    async def _download(self, send: Send, size: int, head: bool) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"image/jpeg"),
                    (b"content-length", str(size).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        offset = random.randrange(self.block_bytes)
        left = size
        while left > 0:
            n = min(self.chunk, left)
            left -= n
            await send(
                {
                    "type": "http.response.body",
                    "body": self.data[offset : offset + n],
                    "more_body": left > 0,
                }
            )
            offset = (offset + n) % self.block_bytes

    def write_files(self, directory: Path) -> list[Path]:
        """The download files for a static server (deploy/nginx), each from os.urandom."""
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for n in SIZES:
            path = directory / f"random{n}x{n}.jpg"
            if not path.exists() or path.stat().st_size != file_size(n):
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    left = file_size(n)
                    while left > 0:
                        k = min(left, 4 * 2**20)
                        f.write(os.urandom(k))
                        left -= k
                os.replace(tmp, path)
            out.append(path)
        return out


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _drain(
    receive: Receive, limit: int, charge: Callable[[int], None] | None = None
) -> tuple[int, float]:
    """Read and discard a request body of at most `limit` bytes (413 beyond); `charge` is
    told of each chunk. Returns (bytes, seconds from first to last byte)."""
    size = 0
    first: float | None = None
    last = time.perf_counter()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body = message.get("body", b"")
        if body:
            last = time.perf_counter()
            if first is None:
                first = last
            size += len(body)
            if size > limit:
                raise too_large(limit)
            if charge is not None:
                charge(len(body))
        if not message.get("more_body", False):
            break
    return size, (last - first) if first is not None else 0.0


async def _reply(
    send: Send,
    status: int,
    body: bytes,
    ctype: bytes = b"text/plain",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app() -> SpeedtestEndpoint:
    """Factory for uvicorn (--workers needs an import string)."""
    return SpeedtestEndpoint()
