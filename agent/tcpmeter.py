"""Bytes that TCP delivered, per direction, over a process's connections, sampled over time.

speedtest-cli divides the bytes its threads counted by the time until its last thread
returned. Traced on the field lab (benchmarks/accuracy/trace_speedtest.py) that misses the
link's rate three ways: the phase waits for threads blocked in a send or a receive on a
connection in TCP retransmission back-off long after the test length (2 Mbit/s: an upload
phase of 18.6 s for a 10 s test, the last 8.6 s at 0.02 Mbit/s); it includes the start-up
ramp (new connections in slow start); and it counts upload bytes when they are handed to a
socket, not when they arrive.

The Meter reads the kernel's counters instead (Linux TCP_INFO: `tcpi_bytes_acked`, payload
bytes the peer acknowledged, plus one each for the SYN and the FIN; `tcpi_bytes_received`,
payload bytes received in order, plus one for the peer's FIN) on every
connection it tracks, every `interval_s`, and once more when a connection closes, so the sum
over connections is known at any sampled time. `window_rate` then gives the rate over the part
of the test in which the link is loaded. stdlib only.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, two __u64 at
# byte 120, present since Linux 4.1 (2015).
_BYTES_OFFSET = 120
_TCP_INFO_LEN = _BYTES_OFFSET + 16
TCP_INFO = getattr(socket, "TCP_INFO", 11)  # 11: Linux's value

Sample = tuple[float, int, int]  # (monotonic time, bytes acked, bytes received), summed


def delivered(sock: socket.socket) -> tuple[int, int]:
    """(bytes acked by the peer, bytes received) on one TCP connection; OSError if unknown."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _TCP_INFO_LEN)
    if len(raw) < _TCP_INFO_LEN:  # a kernel older than 4.1
        raise OSError("TCP_INFO has no byte counters on this kernel")
    acked, received = struct.unpack_from("=QQ", raw, _BYTES_OFFSET)
    return int(acked), int(received)


def supported() -> bool:
    """Whether this system reports the counters (Linux 4.1 and later)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            delivered(sock)
    except OSError:
        return False
    return True


class Meter:
    """Sums the delivered bytes of the connections it tracks; samples them in a thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._live: dict[int, tuple[socket.socket, list[int]]] = {}  # id -> (sock, last)
        self._closed = [0, 0]
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._live[id(sock)] = (sock, [0, 0])

    def forget(self, sock: socket.socket) -> None:
        """Stop tracking without a reading (the connection lives on in another object)."""
        with self._lock:
            self._live.pop(id(sock), None)

    def closing(self, sock: socket.socket) -> None:
        """The final reading of a connection about to close; call before closing it.

        Held under the lock with the sampler, so the sum never goes back.
        """
        with self._lock:
            entry = self._live.pop(id(sock), None)
            if entry is None:
                return
            last = entry[1]
            with contextlib.suppress(OSError):
                last[:] = delivered(sock)
            self._closed[0] += last[0]
            self._closed[1] += last[1]

    def totals(self) -> tuple[int, int]:
        """(acked, received) over every tracked connection, open or closed, now."""
        with self._lock:
            return self._totals()

    def _totals(self) -> tuple[int, int]:
        acked, received = self._closed
        for sock, last in self._live.values():
            # Closed under us without `closing`: its last reading stands.
            with contextlib.suppress(OSError):
                last[:] = delivered(sock)
            acked += last[0]
            received += last[1]
        return acked, received

    def shutdown(self) -> int:
        """Shut down every open tracked connection (both ways); how many there were.

        Unblocks threads stuck in a send or a receive on them: speedtest-cli's threads
        cannot be cancelled otherwise. The base class's shutdown, also for TLS sockets,
        so that a thread inside the TLS object sees an error rather than a missing object.
        """
        with self._lock:
            socks = [sock for sock, _ in self._live.values()]
        for sock in socks:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return len(socks)

    def sample(self) -> Sample:
        """Appends the totals now; under the lock, so samples stay in time order."""
        with self._lock:
            s = (time.monotonic(), *self._totals())
            self.samples.append(s)
        return s

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="tcpmeter", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        return self.samples

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def at(samples: Sequence[tuple[float, int]], t: float) -> float:
    """Cumulative bytes at time t, interpolated linearly between (time, bytes) samples."""
    if not samples:
        raise ValueError("no samples")
    if t <= samples[0][0]:
        return float(samples[0][1])
    for (t0, b0), (t1, b1) in itertools.pairwise(samples):
        if t <= t1:
            return b0 + (b1 - b0) * ((t - t0) / (t1 - t0)) if t1 > t0 else float(b1)
    return float(samples[-1][1])


def window_rate(samples: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """Bits per second delivered between `start` and `end` (monotonic seconds)."""
    if end <= start:
        raise ValueError(f"empty window: {start} .. {end}")
    return (at(samples, end) - at(samples, start)) * 8 / (end - start)


# --- the hooks for a process that runs only speedtest-cli ----------------------------------


class _Metered:
    """Mixin for socket classes: the meter's final reading before the descriptor closes."""

    meter: Meter | None = None  # set by `install`

    def _real_close(self, *args: Any) -> None:
        if _Metered.meter is not None:
            _Metered.meter.closing(self)  # type: ignore[arg-type]
        super()._real_close(*args)  # type: ignore[misc]

    def detach(self) -> int:
        if _Metered.meter is not None:
            _Metered.meter.forget(self)  # type: ignore[arg-type]
        fd: int = super().detach()  # type: ignore[misc]
        return fd


class MeteredSocket(_Metered, socket.socket):
    pass


class MeteredSSLSocket(_Metered, ssl.SSLSocket):
    pass


def install(meter: Meter) -> None:
    """Meter every TCP connection this process opens with socket.create_connection (plain,
    and TLS-wrapped by any SSLContext). For a child process that runs one tool only:
    the hooks are module-level."""
    _Metered.meter = meter
    real = socket.create_connection

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        plain = real(*args, **kwargs)
        timeout = plain.gettimeout()
        sock = MeteredSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.settimeout(timeout)
        meter.track(sock)
        return sock

    socket.create_connection = create_connection
    real_wrap = ssl.SSLContext.wrap_socket

    def wrap_socket(self: ssl.SSLContext, sock: socket.socket, *args: Any, **kw: Any) -> Any:
        tls = real_wrap(self, sock, *args, **kw)
        meter.track(tls)
        return tls

    ssl.SSLContext.sslsocket_class = MeteredSSLSocket
    ssl.SSLContext.wrap_socket = wrap_socket  # type: ignore[method-assign]
