"""Uplink binding and mapping of OS errors to the contract's stable error codes."""

from __future__ import annotations

import errno
import fcntl
import re
import socket
import ssl
import struct

from agent.config import Uplink
from agent.contract.record import ErrorCode

_SIOCGIFADDR = 0x8915


class SourceUnavailable(Exception):
    """The uplink's source address or interface cannot be used right now."""


def interface_ipv4(name: str) -> str:
    """The IPv4 address of a network interface (SIOCGIFADDR), or SourceUnavailable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            reason = "does not exist" if exc.errno == errno.ENODEV else "has no IPv4 address"
            raise SourceUnavailable(f"interface {name} {reason}") from None
    return socket.inet_ntoa(packed[20:24])


def uplink_source(uplink: Uplink) -> str | None:
    """The local address probes on this uplink bind to (None: let routing choose)."""
    if uplink.source is not None:
        return uplink.source
    if uplink.interface is not None:
        return interface_ipv4(uplink.interface)
    return None


_ERRNO_CODES = {
    errno.ECONNREFUSED: ErrorCode.CONNECTION_REFUSED,
    errno.ECONNRESET: ErrorCode.CONNECTION_RESET,
    errno.EPIPE: ErrorCode.CONNECTION_RESET,
    errno.ECONNABORTED: ErrorCode.CONNECTION_RESET,
    errno.ENETUNREACH: ErrorCode.NETWORK_UNREACHABLE,
    errno.ENETDOWN: ErrorCode.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: ErrorCode.HOST_UNREACHABLE,
    errno.EHOSTDOWN: ErrorCode.HOST_UNREACHABLE,
    errno.ETIMEDOUT: ErrorCode.TIMEOUT,
    errno.EADDRNOTAVAIL: ErrorCode.SOURCE_UNAVAILABLE,
    errno.EACCES: ErrorCode.PERMISSION_DENIED,
    errno.EPERM: ErrorCode.PERMISSION_DENIED,
}

_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")


def error_code_for(exc: BaseException) -> ErrorCode | None:
    """The stable error code for an OS-level failure, following __cause__/__context__."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return ErrorCode.TLS_ERROR
        if isinstance(e, socket.gaierror):
            return ErrorCode.NAME_NOT_RESOLVED
        if isinstance(e, TimeoutError):
            return ErrorCode.TIMEOUT
        if isinstance(e, OSError) and e.errno in _ERRNO_CODES:
            return _ERRNO_CODES[e.errno]
        m = _ERRNO_IN_TEXT.search(str(e))  # libraries that wrap OSError as text (icmplib)
        if m and int(m.group(1)) in _ERRNO_CODES:
            return _ERRNO_CODES[int(m.group(1))]
        e = e.__cause__ or e.__context__
    return None
