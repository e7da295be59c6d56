"""The collector's connection guard: limits on what one TCP connection may hold, for how long.

uvicorn's HTTP protocol (httptools) accepts request heads of any size and keeps a
connection that sends nothing, or one byte now and then, open for ever. On the public
internet that is a denial of service for anyone with a socket (docs/security.md, findings
1 and 2 of issue 15). `GuardedHttpToolsProtocol` is uvicorn's own protocol with these
limits added, each answering the way RFC 9110 says and closing the connection:

  request line + headers over `max_header_bytes`   431, and close
  more than `max_headers` header lines              431, and close
  a request target over `max_url_bytes`            414, and close
  no complete request head `header_timeout_s`       408, and close (slowloris, or a socket
    after the connection opened or the request's     that never sends anything)
    first byte
  no body bytes for `body_timeout_s` while the      408 if no answer started, and close
    body is being read
  an answer the client does not read for            close (a client that stops reading)
    `send_timeout_s`
  idle between requests for `idle_timeout_s`        close (uvicorn's keep-alive timeout)

and a cap on open connections (`max_connections`), kept below the process's file limit
(`effective_connection_cap`) so that accept() never fails with EMFILE: a new connection
over the cap closes the connection that has waited longest without a request in progress
(idle, or still sending its request head), so an attacker's idle or slow sockets cannot
lock real agents out; only when every connection is busy with a request is the new one
refused. Memory per connection is thereby bounded by the head limit plus uvicorn's 64 KiB
body buffer (reading pauses above it) and the kernel's socket buffers.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from collector.config import ConnectionLimits

log = logging.getLogger("sinyal.collector.connguard")

# File descriptors kept free of connections: the registry, the database client's sockets,
# log files, the listening sockets and the event loop's own.
FD_RESERVE = 128

# Reasons a connection is closed or refused by the guard, as counted on /metrics.
HEADER_TOO_LARGE = "header_too_large"
TOO_MANY_HEADERS = "too_many_headers"
URL_TOO_LONG = "url_too_long"
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
SEND_TIMEOUT = "send_timeout"
EVICTED = "evicted"
REFUSED = "refused"
REASONS = (
    HEADER_TOO_LARGE,
    TOO_MANY_HEADERS,
    URL_TOO_LONG,
    HEADER_TIMEOUT,
    BODY_TIMEOUT,
    SEND_TIMEOUT,
    EVICTED,
    REFUSED,
)

_STATUS_TEXT = {
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's LimitNOFILE, compose's
    ulimits); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def effective_connection_cap(configured: int, file_limit: int) -> int:
    """The connection cap actually used: the configured one, lowered to stay FD_RESERVE
    below the process's file limit (at least 16, so a tiny limit still serves)."""
    return max(16, min(configured, file_limit - FD_RESERVE))


class ConnectionGuard:
    """State shared by every connection of one server: the cap, the connections that may
    be evicted (oldest first), and the counters the collector exposes on /metrics."""

    def __init__(
        self, limits: ConnectionLimits, cap: int, on_close: Callable[[str], None] | None = None
    ) -> None:
        self.limits = limits
        self.cap = cap
        self.open = 0
        # Connections without a request in progress, in the order they became so (a dict
        # keeps insertion order: the first key is the one that has waited longest).
        self.waiting: dict[GuardedHttpToolsProtocol, None] = {}
        self.counts = dict.fromkeys(REASONS, 0)
        self._on_close = on_close

    def count(self, reason: str) -> None:
        self.counts[reason] += 1
        if self._on_close is not None:
            self._on_close(reason)

    def admit(self) -> bool:
        """Make room for a new connection: True when it may stay."""
        if self.open < self.cap:
            return True
        while self.waiting:
            victim = next(iter(self.waiting))
            self.waiting.pop(victim)
            if not victim.transport.is_closing():
                victim.transport.abort()
                self.count(EVICTED)
                return True
        self.count(REFUSED)
        return False

    def protocol(self) -> type[GuardedHttpToolsProtocol]:
        """The protocol class to give uvicorn (Config(http=...)), bound to this guard."""
        guard = self

        class Bound(GuardedHttpToolsProtocol):
            pass

        Bound.guard = guard
        return Bound


class _CorkedWrites:
    """What uvicorn's response cycle writes in one turn of the event loop, sent as one write.

    uvicorn writes an answer's head and its body separately: two system calls and two TCP
    segments for every acknowledgement. The cycle's writes are kept until the answer is
    complete, the end of the loop's turn or `FLUSH_BYTES`, whichever comes first, and then
    written together; closing writes what is kept first, so nothing is reordered or lost.
    The cycle uses only write, close and is_closing."""

    FLUSH_BYTES = 64 * 1024
    __slots__ = ("_kept", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._kept:
            self._loop.call_soon(self.flush)
        self._kept.append(data)
        self._size += len(data)
        if self._size >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._kept:
            return
        data = self._kept[0] if len(self._kept) == 1 else b"".join(self._kept)
        self._kept.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `ConnectionGuard` (module docstring)."""

    guard: ConnectionGuard

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._counted = False
        self._in_head = True
        self._head_bytes = 0  # raw bytes received while the head is read
        self._header_count = 0
        self._header_bytes = 0  # of the parsed header lines, names and values
        self._url_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.guard.admit():
            transport.abort()
            return
        self.guard.open += 1
        self._counted = True
        super().connection_made(transport)
        self._start_waiting()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self.guard.open -= 1
        self.guard.waiting.pop(self, None)
        for timer in (self._head_timer, self._body_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
            self._arm_head_timer()  # a keep-alive connection's next request has begun
        elif self._body_timer is not None:
            self._arm_body_timer()
        super().data_received(data)
        if self._refusal is None and self._in_head and self._head_bytes > self._head_allowance():
            self._refuse(431, HEADER_TOO_LARGE)
        if self._refusal is not None:
            status, reason = self._refusal
            self._send_error(status, reason)

    def _head_allowance(self) -> int:
        # A chunk may carry the previous request's last body bytes along with this head.
        lim = self.guard.limits
        return lim.max_header_bytes + lim.max_url_bytes

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._header_bytes = 0
        self._url_bytes = 0
        self._start_waiting()
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.guard.limits.max_url_bytes:
            self._refuse(414, URL_TOO_LONG)
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        lim = self.guard.limits
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > lim.max_headers:
            self._refuse(431, TOO_MANY_HEADERS)
            return
        if self._header_bytes + self._url_bytes > lim.max_header_bytes:
            self._refuse(431, HEADER_TOO_LARGE)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return
        self._in_head = False
        self._cancel("_head_timer")
        self.guard.waiting.pop(self, None)
        super().on_headers_complete()
        if self.cycle is not None and self.scope["method"] == "POST":
            # POST answers (the uploads' acknowledgements) are small: one write, not two
            self.cycle.transport = _CorkedWrites(self.transport, self.loop)  # type: ignore[assignment]
        if not self.parser.should_upgrade():
            self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel("_body_timer")
        if self._refusal is None:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.cycle is not None and isinstance(self.cycle.transport, _CorkedWrites):
            self.cycle.transport.flush()  # before anything may close the connection
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._in_head = True
            self._head_bytes = 0
            self._start_waiting()

    # --- flow control -------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(
                self.guard.limits.send_timeout_s, self._send_timed_out
            )

    def resume_writing(self) -> None:
        self._cancel("_send_timer")
        super().resume_writing()

    # --- helpers ------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        self.guard.waiting.pop(self, None)
        self.guard.waiting[self] = None

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.guard.limits.header_timeout_s, self._head_timed_out
            )

    def _arm_body_timer(self) -> None:
        self._cancel("_body_timer")
        self._body_timer = self.loop.call_later(
            self.guard.limits.body_timeout_s, self._body_timed_out
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.guard.count(HEADER_TIMEOUT)
            self._send_error(408, HEADER_TIMEOUT)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        if self.flow.read_paused:
            # The application has not read what arrived: the client is not the slow one.
            self._arm_body_timer()
            return
        self.guard.count(BODY_TIMEOUT)
        if self.cycle.response_started:
            self.transport.abort()
        else:
            self.cycle.response_complete = True  # the application's answer goes nowhere
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self._send_error(408, BODY_TIMEOUT)

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.transport.is_closing():
            self.guard.count(SEND_TIMEOUT)
            self.transport.abort()

    def _refuse(self, status: int, reason: str) -> None:
        if self._refusal is None:
            self._refusal = (status, reason)
            self.guard.count(reason)

    def _send_error(self, status: int, reason: str) -> None:
        """Answer `status` with a one-line reason and close; nothing more is read."""
        body = reason.replace("_", " ").encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _STATUS_TEXT[status], len(body), body)
        )
        self.transport.close()
        self.guard.waiting.pop(self, None)
