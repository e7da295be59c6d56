"""agent.netutil: the address an uplink binds to, and OS errors as the contract's codes."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

from agent.config import Uplink
from agent.contract.record import ErrorCode
from agent.netutil import SourceUnavailable, error_code_for, interface_ipv4, uplink_source


def test_a_source_address_is_used_as_given() -> None:
    assert uplink_source(Uplink("a", source="192.0.2.7", interface="lo")) == "192.0.2.7"


def test_an_interface_gives_its_ipv4_address() -> None:
    assert interface_ipv4("lo") == "127.0.0.1"
    assert uplink_source(Uplink("a", interface="lo")) == "127.0.0.1"


def test_neither_lets_routing_choose() -> None:
    assert uplink_source(Uplink("a")) is None


def test_a_missing_interface_is_source_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match="interface nosuch0 does not exist"):
        uplink_source(Uplink("a", interface="nosuch0"))


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (errno.ECONNREFUSED, ErrorCode.CONNECTION_REFUSED),
        (errno.ECONNRESET, ErrorCode.CONNECTION_RESET),
        (errno.EPIPE, ErrorCode.CONNECTION_RESET),
        (errno.ECONNABORTED, ErrorCode.CONNECTION_RESET),
        (errno.ENETUNREACH, ErrorCode.NETWORK_UNREACHABLE),
        (errno.ENETDOWN, ErrorCode.NETWORK_UNREACHABLE),
        (errno.EHOSTUNREACH, ErrorCode.HOST_UNREACHABLE),
        (errno.EHOSTDOWN, ErrorCode.HOST_UNREACHABLE),
        (errno.ETIMEDOUT, ErrorCode.TIMEOUT),
        (errno.EADDRNOTAVAIL, ErrorCode.SOURCE_UNAVAILABLE),
        (errno.EACCES, ErrorCode.PERMISSION_DENIED),
        (errno.EPERM, ErrorCode.PERMISSION_DENIED),
    ],
)
def test_errno_values_map_to_codes(number: int, code: ErrorCode) -> None:
    assert error_code_for(OSError(number, "x")) is code
    # libraries that wrap the OSError as text (icmplib) are read too
    assert error_code_for(RuntimeError(f"[Errno {number}] something")) is code


def test_exception_types_map_to_codes() -> None:
    assert error_code_for(ssl.SSLError(1, "handshake")) is ErrorCode.TLS_ERROR
    assert error_code_for(ssl.CertificateError("bad name")) is ErrorCode.TLS_ERROR
    assert error_code_for(socket.gaierror(-2, "Name or service not known")) is (
        ErrorCode.NAME_NOT_RESOLVED
    )
    assert error_code_for(TimeoutError()) is ErrorCode.TIMEOUT


def test_the_cause_chain_is_followed() -> None:
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        except OSError as inner:
            raise RuntimeError("connect failed") from inner
    except RuntimeError as outer:
        assert error_code_for(outer) is ErrorCode.CONNECTION_REFUSED
    try:
        try:
            raise OSError(errno.ENETUNREACH, "unreachable")
        except OSError:
            raise ValueError("while handling")  # noqa: B904 (implicit __context__ on purpose)
    except ValueError as outer:
        assert error_code_for(outer) is ErrorCode.NETWORK_UNREACHABLE


def test_unknown_failures_have_no_code() -> None:
    assert error_code_for(OSError(errno.ENOENT, "no such file")) is None
    assert error_code_for(ValueError("nothing OS-level")) is None
    assert error_code_for(RuntimeError("[Errno 2] not mapped")) is None
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped  # a cycle must end, not hang
    assert error_code_for(looped) is None
