"""Answers from the collector, read as from a stranger: bounded in size and in time.

The agent runs unattended on a small board; whatever sits at the collector's address (a
compromised collector, a captive portal, a proxy gone wrong) must not be able to exhaust its
memory or stall it. `request` therefore

- reads the body itself, undecoded, and gives up once it passes `max_bytes` (a declared
  Content-Length above it is refused before any of the body is read);
- decompresses gzip or deflate itself with an output bound, so a small compressed body
  cannot expand past `max_bytes` either (any other Content-Encoding is refused);
- gives the whole exchange, from connecting to the last byte, one deadline (`deadline_s`),
  so a server that drips one byte at a time (each read within the per-read timeout) cannot
  hold the request open for ever.

Every such failure is an `AnswerError`: to the uploader, no answer at all (retry later,
never a reason to dead-letter a record).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

import httpx

# The largest answer the agent reads, compressed and decompressed. An acknowledgement of a
# full batch (500 ids, a few rejections with their detail) is tens of kilobytes.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# A whole request may take this many times the collector's per-read timeout (timeout_s).
DEADLINE_FACTOR = 6


class AnswerError(Exception):
    """The collector's answer was refused: too large, too slow or not decodable."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes  # decoded (decompressed), at most max_bytes


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline_s: float,
    max_bytes: int = MAX_ANSWER_BYTES,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request with a bounded answer. Raises httpx.HTTPError when there was no answer
    (connection, TLS, per-read timeout) and AnswerError when the answer was refused."""
    try:
        async with asyncio.timeout(deadline_s):
            return await _exchange(client, method, url, max_bytes, content, headers)
    except TimeoutError:
        raise AnswerError(f"no complete answer within {deadline_s:g} s") from None


async def _exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    max_bytes: int,
    content: bytes | None,
    headers: dict[str, str] | None,
) -> Answer:
    sent = {**(headers or {}), "Accept-Encoding": "gzip"}
    async with client.stream(method, url, content=content, headers=sent) as response:
        declared = response.headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > max_bytes:
            raise AnswerError(f"answer of {int(declared)} bytes (more than {max_bytes})")
        decoder = _decoder(response.headers.get("content-encoding", ""))
        raw = 0
        out = bytearray()
        async for chunk in response.aiter_raw():
            raw += len(chunk)
            if raw > max_bytes:
                raise AnswerError(f"answer larger than {max_bytes} bytes")
            out += decoder.feed(chunk, max_bytes - len(out) + 1)
            if len(out) > max_bytes:
                raise AnswerError(f"answer decompresses to more than {max_bytes} bytes")
        decoder.finish()
        return Answer(response.status_code, response.headers, bytes(out))


class _Decoder:
    """Identity, or zlib with an output bound per call (zlib's max_length)."""

    def __init__(self, wbits: int | None) -> None:
        self._z = None if wbits is None else zlib.decompressobj(wbits)

    def feed(self, chunk: bytes, room: int) -> bytes:
        if self._z is None:
            return chunk
        try:
            return self._z.decompress(chunk, room)
        except zlib.error as exc:
            raise AnswerError(f"answer does not decompress: {exc}") from None

    def finish(self) -> None:
        if self._z is not None and not self._z.eof:
            raise AnswerError("compressed answer is truncated")


def _decoder(encoding: str) -> _Decoder:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return _Decoder(None)
    if name in ("gzip", "x-gzip"):
        return _Decoder(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return _Decoder(zlib.MAX_WBITS)
    raise AnswerError(f"answer with an unsupported Content-Encoding {encoding[:40]!r}")
