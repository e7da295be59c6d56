"""ICMP echo rounds with icmplib: loss, RTT distribution, jitter and MOS per target.

A round sends `count` echo requests at a fixed spacing (like ping and fping, not
stop-and-wait, so a lost reply does not delay the next request), and collects
replies until `timeout_s` after the last request. A reply later than
`timeout_s` after its own request counts as lost (Tmax). RTTs are the
difference of two wall-clock (CLOCK_REALTIME) readings, the send time and the
kernel's receive timestamp (SO_TIMESTAMPNS has no monotonic variant), cross-
checked against the monotonic clock: the kernel's RTT can only be shorter than
the monotonic time from send to our reading the reply, so when the wall clock
stepped between (a Raspberry Pi's first time sync) the monotonic RTT is used
instead and no reply is lost or mis-timed. The request schedule runs on the
monotonic clock. Targets and uplinks are probed concurrently, each round on its
own socket. Unprivileged (datagram) sockets set IP_RECVERR so that host and
network unreachable reach them as they reach a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field

from icmplib import (
    ICMPLibError,
    ICMPRequest,
    ICMPv4Socket,
    ICMPv6Socket,
    NameLookupError,
    SocketAddressError,
    SocketPermissionError,
    async_resolve,
)
from icmplib.utils import unique_identifier

from agent import stats
from agent.config import IcmpProbeConfig, IcmpTarget, Uplink
from agent.contract.record import ErrorCode, FieldValue, Record
from agent.netutil import SourceUnavailable, error_code_for, uplink_source
from agent.probes.base import ProbeEnv, Stamp, make_record

_ECHO_REPLY = {4: 0, 6: 129}
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) on Linux x86, arm and arm64; Python does not export it.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
# Tolerance between the wall and monotonic clocks' readings (slewing, read order), ms.
_STEP_SLACK_MS = 1.0
_NET_UNREACHABLE_CODES = {0, 6, 11}  # ICMPv4 dest-unreachable codes meaning "network"
# Linux values; Python 3.11 does not export them.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


@dataclass
class RoundResult:
    """The raw outcome of one round: what was sent, which replies came back when."""

    sent: int = 0
    rtts_by_seq: dict[int, float] = field(default_factory=dict)
    send_error: ErrorCode | None = None
    icmp_error: ErrorCode | None = None

    @property
    def rtts(self) -> list[float]:
        return [self.rtts_by_seq[s] for s in sorted(self.rtts_by_seq)]


def summarise(
    result: RoundResult, timeout_s: float
) -> tuple[dict[str, FieldValue | None], ErrorCode | None]:
    """Fields and error code of a round. RTT statistics only when replies came back."""
    rtts = result.rtts
    sent, received = result.sent, len(rtts)
    loss = 100.0 * (sent - received) / sent if sent else 100.0
    fields: dict[str, FieldValue | None] = {
        "sent": sent,
        "received": received,
        "loss_pct": round(loss, 3),
        "timeout_ms": timeout_s * 1000,
        "ok": 1 if received else 0,
    }
    if received:
        jit = stats.jitter(rtts)
        avg = sum(rtts) / received
        fields.update(
            rtt_min_ms=round(min(rtts), 3),
            rtt_avg_ms=round(avg, 3),
            rtt_p50_ms=round(stats.percentile(rtts, 50), 3),
            rtt_p95_ms=round(stats.percentile(rtts, 95), 3),
            rtt_max_ms=round(max(rtts), 3),
            rtt_stddev_ms=round(stats.stddev(rtts), 3),
            jitter_ms=None if jit is None else round(jit, 3),
            mos=round(stats.mos(avg, jit or 0.0, loss), 3),
        )
        return fields, None
    fields["mos"] = 1.0  # R is clamped to 0 at 100 % loss whatever the latency
    if sent == 0:
        return fields, result.send_error or ErrorCode.NETWORK_UNREACHABLE
    return fields, result.icmp_error or ErrorCode.TIMEOUT


class IcmpProbe:
    kind = "icmp"
    exclusive = False

    def __init__(self, cfg: IcmpProbeConfig, env: ProbeEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.interval_s = cfg.interval_s
        self.station = env.config.station.id

    @classmethod
    def from_env(cls, env: ProbeEnv) -> IcmpProbe | None:
        cfg = env.config.probes.icmp
        return cls(cfg, env) if cfg is not None and cfg.enabled else None

    @property
    def round_time_s(self) -> float:
        """Upper bound of one round's duration."""
        return (self.cfg.count - 1) * self.cfg.spacing_s + self.cfg.timeout_s

    async def run(self) -> list[Record]:
        pairs = [(u, t) for u in self.env.config.uplinks for t in self.cfg.targets]
        # Spread the rounds' first requests over one spacing so the targets'
        # packets do not all leave (and return) at the same instant.
        step = self.cfg.spacing_s / max(len(pairs), 1)
        jobs = [self.measure(u, t, i * step) for i, (u, t) in enumerate(pairs)]
        return list(await asyncio.gather(*jobs))

    async def measure(
        self, uplink: Uplink, target: IcmpTarget, start_delay_s: float = 0.0
    ) -> Record:
        stamp = Stamp()
        tags = {"target": target.name}
        try:
            source = uplink_source(uplink)
            address = await self._resolve(target.host, source)
            result = await self.round(address, source, start_delay_s)
        except SourceUnavailable:
            error: ErrorCode | None = ErrorCode.SOURCE_UNAVAILABLE
            fields, _ = summarise(RoundResult(), self.cfg.timeout_s)
        except NameLookupError:
            error = ErrorCode.NAME_NOT_RESOLVED
            fields, _ = summarise(RoundResult(), self.cfg.timeout_s)
        else:
            fields, error = summarise(result, self.cfg.timeout_s)
        return make_record(self.kind, stamp, self.station, uplink, tags, fields, error)

    async def _resolve(self, host: str, source: str | None) -> str:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            family = None
            if source is not None:
                family = 6 if ipaddress.ip_address(source).version == 6 else 4
            return str((await async_resolve(host, family))[0])

    async def round(
        self, address: str, source: str | None, start_delay_s: float = 0.0
    ) -> RoundResult:
        """One round of echo requests to `address`; never raises for network outcomes.

        Receive times are the kernel's (SO_TIMESTAMPNS), so a busy event loop
        does not inflate RTTs; send times are icmplib's, taken just before sendto.
        """
        version = ipaddress.ip_address(address).version
        sock_cls = ICMPv6Socket if version == 6 else ICMPv4Socket
        try:
            icmp_sock = sock_cls(source, self.env.icmp_privileged)
        except SocketAddressError:
            return RoundResult(send_error=ErrorCode.SOURCE_UNAVAILABLE)
        except SocketPermissionError:
            return RoundResult(send_error=ErrorCode.PERMISSION_DENIED)
        if start_delay_s > 0:
            await asyncio.sleep(start_delay_s)
        echo = _EchoRound(self.cfg, address, version, self.env.icmp_privileged)
        with icmp_sock:
            await echo.run(icmp_sock)
        return echo.result


@dataclass(frozen=True, slots=True)
class _Reply:
    """What a received ICMP message says about which request it answers."""

    type: int
    code: int
    ident: int
    sequence: int


# ICMP offsets (bytes) per IP version: the IP header a raw socket delivers before the ICMP
# header, and what precedes the embedded request's header in an error message (the error's
# own ICMP header and the request's IP header).
_IP_HEADER = {4: 20, 6: 0}
_EMBEDDED = {4: 8 + 20, 6: 8 + 40}


def parse_reply(packet: bytes, version: int, with_ip_header: bool) -> _Reply | None:
    """An echo reply's identifier and sequence; for an ICMP error (unreachable, time
    exceeded), those of the request it embeds. None when the message is too short.
    Raw IPv4 sockets deliver the IP header (taken as 20 bytes, as icmplib does); datagram
    sockets and IPv6 do not."""
    at = _IP_HEADER[version] if with_ip_header else 0
    if len(packet) < at + 8:
        return None
    kind, code = packet[at], packet[at + 1]
    if kind != _ECHO_REPLY[version]:
        at += _EMBEDDED[version]
        if len(packet) < at + 8:
            return None
    ident, sequence = struct.unpack_from("!2H", packet, at + 4)
    return _Reply(kind, code, ident, sequence)


class _EchoRound:
    """The state of one round on one socket: the requests sent, the replies accepted."""

    def __init__(self, cfg: IcmpProbeConfig, address: str, version: int, privileged: bool) -> None:
        self.cfg = cfg
        self.address = address
        self.version = version
        self.privileged = privileged
        self.result = RoundResult()
        # A raw socket sees every ICMP packet of the machine, so another pinger's replies
        # must never pass for ours: icmplib's identifiers (pid + n) can equal fping's (its
        # pid), so the identifier and the first sequence number are random per round, and a
        # reply must match both. (Unprivileged sockets get a kernel-chosen identifier.)
        self.ident = secrets.randbits(16) if privileged else unique_identifier()
        self.seq_base = secrets.randbits(16)
        self.seq_of: dict[int, int] = {}  # sequence number on the wire -> index in the round
        self.sent_at: dict[int, float] = {}  # index -> wall-clock send time (s)
        self.sent_mono: dict[int, float] = {}  # index -> monotonic send time (s)
        self.idents: set[int] = set()
        self.got = asyncio.Event()  # set whenever a reply is accepted
        self.recverr = False

    async def run(self, icmp_sock: ICMPv4Socket | ICMPv6Socket) -> None:
        sock = icmp_sock.sock
        self._configure(sock)
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._on_readable, sock)
        try:
            last_sent = await self._send_all(icmp_sock)
            await self._await_replies(last_sent + self.cfg.timeout_s)
        finally:
            loop.remove_reader(sock.fileno())

    def _configure(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        if self.privileged:
            return
        # A raw socket sees ICMP errors as packets; a datagram (unprivileged) socket hears
        # of host/network unreachable only through its error queue.
        level = socket.IPPROTO_IPV6 if self.version == 6 else socket.IPPROTO_IP
        try:
            sock.setsockopt(level, _IPV6_RECVERR if self.version == 6 else _IP_RECVERR, 1)
            self.recverr = True
        except OSError:
            self.recverr = False

    async def _send_all(self, icmp_sock: ICMPv4Socket | ICMPv6Socket) -> float:
        """Send the round's requests at their fixed spacing; the monotonic time of the last."""
        cfg, result = self.cfg, self.result
        start = time.monotonic()
        last_sent = start
        for seq in range(cfg.count):
            delay = start + seq * cfg.spacing_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            wire_seq = (self.seq_base + seq) & 0xFFFF
            self.seq_of[wire_seq] = seq
            request = ICMPRequest(
                self.address, self.ident, wire_seq, payload_size=cfg.payload_bytes
            )
            t_mono = time.monotonic()
            try:
                icmp_sock.send(request)
            except ICMPLibError as exc:
                result.send_error = error_code_for(exc) or ErrorCode.NETWORK_UNREACHABLE
                continue
            self.sent_at[seq] = request.time
            self.sent_mono[seq] = t_mono
            last_sent = time.monotonic()
            self.idents.add(request.id)  # unprivileged sockets: the kernel's id
            result.sent += 1
        return last_sent

    async def _await_replies(self, deadline: float) -> None:
        """Wait for the missing replies, until Tmax after the last request."""
        while len(self.result.rtts_by_seq) < len(self.sent_at):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.got.clear()
            try:
                await asyncio.wait_for(self.got.wait(), remaining)
            except TimeoutError:
                return

    def _on_readable(self, sock: socket.socket) -> None:
        result = self.result
        if self.recverr:
            # Drained on every wake-up: a non-empty error queue keeps the socket readable.
            result.icmp_error = _drain_error_queue(sock) or result.icmp_error
        while True:
            try:
                data, ancdata, _flags, _peer = sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # The socket's pending error (the same ICMP error, as errno); reading it
                # clears it and later replies still count.
                result.icmp_error = error_code_for(exc) or result.icmp_error
                return
            self._accept(data, _kernel_time(ancdata), time.monotonic())

    def _accept(self, data: bytes, rx: float, rx_mono: float) -> None:
        reply = parse_reply(data, self.version, self.privileged)
        if reply is None or reply.ident not in self.idents or reply.sequence not in self.seq_of:
            return  # another socket's traffic (raw sockets see all ICMP)
        result = self.result
        if reply.type != _ECHO_REPLY[self.version]:
            unreachable_net = reply.type == 3 and reply.code in _NET_UNREACHABLE_CODES
            result.icmp_error = (
                ErrorCode.NETWORK_UNREACHABLE if unreachable_net else ErrorCode.HOST_UNREACHABLE
            )
            return
        seq = self.seq_of[reply.sequence]
        if seq not in self.sent_at:
            return
        rtt_ms = (rx - self.sent_at[seq]) * 1000
        upper_ms = (rx_mono - self.sent_mono[seq]) * 1000
        if not 0 <= rtt_ms <= upper_ms + _STEP_SLACK_MS:
            rtt_ms = upper_ms  # the wall clock stepped during this exchange
        if seq not in result.rtts_by_seq and 0 <= rtt_ms <= self.cfg.timeout_s * 1000:
            result.rtts_by_seq[seq] = rtt_ms
            self.got.set()


def _drain_error_queue(sock: socket.socket) -> ErrorCode | None:
    """Read every queued IP_RECVERR message; the error code of the last one we can name."""
    code = None
    for _ in range(1024):  # bounded: the kernel caps the queue at the socket's rcvbuf
        try:
            _data, ancdata, _flags, _peer = sock.recvmsg(512, 512, _MSG_ERRQUEUE)
        except OSError:
            return code  # EAGAIN: the queue is empty
        for level, kind, data in ancdata:
            if (level, kind) in (
                (socket.IPPROTO_IP, _IP_RECVERR),
                (socket.IPPROTO_IPV6, _IPV6_RECVERR),
            ) and len(data) >= 4:
                (ee_errno,) = struct.unpack_from("=I", data)
                code = error_code_for(OSError(ee_errno, os.strerror(ee_errno))) or code
    return code


def _kernel_time(ancdata: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive timestamp from SCM_TIMESTAMPNS, else the current time."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return float(sec + nsec / 1e9)
    return time.time()
