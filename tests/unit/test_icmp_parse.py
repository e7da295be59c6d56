"""agent.probes.icmp.parse_reply: echo replies and ICMP errors, as raw and datagram sockets
deliver them (the probe's own parser; icmplib's is private). The probe itself is tested
against real sockets in tests/integration/test_probe_icmp.py."""

from __future__ import annotations

import struct

import pytest

from agent.probes.icmp import parse_reply


def icmp(kind: int, code: int, ident: int, seq: int, payload: bytes = b"x" * 8) -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, ident, seq) + payload


IPV4 = bytes([0x45]) + bytes(19)  # a 20-byte IPv4 header
IPV6 = bytes([0x60]) + bytes(39)


@pytest.mark.parametrize("raw", [True, False])
def test_an_ipv4_echo_reply(raw: bool) -> None:
    packet = (IPV4 if raw else b"") + icmp(0, 0, 0x1234, 0xBEEF)
    reply = parse_reply(packet, 4, raw)
    assert reply is not None
    assert (reply.type, reply.code, reply.ident, reply.sequence) == (0, 0, 0x1234, 0xBEEF)


def test_an_ipv4_unreachable_names_the_request_it_embeds() -> None:
    request = IPV4 + icmp(8, 0, 0x0102, 7)
    packet = IPV4 + struct.pack("!BBHI", 3, 1, 0, 0) + request  # host unreachable
    reply = parse_reply(packet, 4, True)
    assert reply is not None
    assert (reply.type, reply.code, reply.ident, reply.sequence) == (3, 1, 0x0102, 7)


def test_an_ipv6_echo_reply_and_error() -> None:
    reply = parse_reply(icmp(129, 0, 9, 10), 6, True)
    assert reply is not None and (reply.type, reply.ident, reply.sequence) == (129, 9, 10)
    error = struct.pack("!BBHI", 1, 3, 0, 0) + IPV6 + icmp(128, 0, 9, 11)
    reply = parse_reply(error, 6, False)
    assert reply is not None and (reply.type, reply.code, reply.ident, reply.sequence) == (
        1,
        3,
        9,
        11,
    )


@pytest.mark.parametrize("length", [0, 1, 7, 27])
def test_a_short_packet_is_nothing(length: int) -> None:
    assert parse_reply(bytes(length), 4, True) is None
    assert parse_reply(bytes(min(length, 7)), 6, False) is None


def test_a_truncated_error_is_nothing() -> None:
    assert parse_reply(IPV4 + struct.pack("!BBHI", 3, 1, 0, 0) + IPV4[:10], 4, True) is None
