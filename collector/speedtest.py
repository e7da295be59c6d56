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
from pathlib import Path
from typing import Any

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


def file_size(n: int) -> int:
    """Bytes of random{n}x{n}.jpg: 2*n*n, within 1 % of speedtest.net's own files."""
    return 2 * n * n


class SpeedtestEndpoint:
    def __init__(self, block_bytes: int = DEFAULT_BLOCK, chunk: int = CHUNK) -> None:
        if block_bytes < chunk:
            raise ValueError("block_bytes must be at least one chunk")
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
        name = scope["path"].rstrip("/").rsplit("/", 1)[-1]
        method = scope["method"]
        if method in ("GET", "HEAD"):
            if name == "latency.txt":
                await _reply(send, 200, b"test=test\n")
            elif name.startswith("upload."):
                await _reply(send, 200, b"size=0\n")
            elif name in ("", "speedtest", "index.html"):
                await _reply(send, 200, INDEX, b"text/html")
            elif (m := _RANDOM_RE.match(name)) and m.group(1) == m.group(2):
                n = int(m.group(1))
                if n in SIZES:
                    await self._download(send, file_size(n), method == "HEAD")
                else:
                    await _reply(send, 404, b"not found\n")
            else:
                await _reply(send, 404, b"not found\n")
        elif method == "POST" and name.startswith("upload."):
            size, _ = await _drain(receive)
            await _reply(send, 200, f"size={size}".encode())
        elif method == "POST" and name == "sink":
            size, seconds = await _drain(receive)
            body = json.dumps({"received_bytes": size, "receive_s": round(seconds, 6)})
            await _reply(send, 200, body.encode(), b"application/json")
        else:
            await _reply(send, 405, b"method not allowed\n")

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


async def _drain(receive: Receive) -> tuple[int, float]:
    """Read and discard a request body; (bytes, seconds from first to last byte)."""
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
        if not message.get("more_body", False):
            break
    return size, (last - first) if first is not None else 0.0


async def _reply(send: Send, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
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
