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
        cfg = self.cfg
        result = RoundResult()
        version = ipaddress.ip_address(address).version
        sock_cls = ICMPv6Socket if version == 6 else ICMPv4Socket
        try:
            icmp_sock = sock_cls(source, self.env.icmp_privileged)
        except SocketAddressError:
            result.send_error = ErrorCode.SOURCE_UNAVAILABLE
            return result
        except SocketPermissionError:
            result.send_error = ErrorCode.PERMISSION_DENIED
            return result
        if start_delay_s > 0:
            await asyncio.sleep(start_delay_s)
        # A raw socket sees every ICMP packet of the machine, so another pinger's replies
        # must never pass for ours: icmplib's identifiers (pid + n) can equal fping's (its
        # pid), so the identifier and the first sequence number are random per round, and a
        # reply must match both. (Unprivileged sockets get a kernel-chosen identifier.)
        ident = secrets.randbits(16) if self.env.icmp_privileged else unique_identifier()
        seq_base = secrets.randbits(16)
        seq_of: dict[int, int] = {}  # sequence number on the wire -> index in the round
        sent_at: dict[int, float] = {}  # index -> wall-clock send time (s)
        sent_mono: dict[int, float] = {}  # index -> monotonic send time (s)
        idents: set[int] = set()
        got = asyncio.Event()  # set whenever a reply is accepted
        timeout = cfg.timeout_s
        loop = asyncio.get_running_loop()
        with icmp_sock:
            sock = icmp_sock.sock
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            recverr = not self.env.icmp_privileged
            if recverr:
                # A raw socket sees ICMP errors as packets; a datagram (unprivileged)
                # socket hears of host/network unreachable only through its error queue.
                level = socket.IPPROTO_IPV6 if version == 6 else socket.IPPROTO_IP
                try:
                    sock.setsockopt(level, _IPV6_RECVERR if version == 6 else _IP_RECVERR, 1)
                except OSError:
                    recverr = False

            def on_readable() -> None:
                if recverr:
                    # Drained on every wake-up: a non-empty error queue keeps the
                    # socket readable.
                    code = _drain_error_queue(sock)
                    result.icmp_error = code or result.icmp_error
                while True:
                    try:
                        data, ancdata, _flags, peer = sock.recvmsg(2048, 64)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError as exc:
                        # The socket's pending error (the same ICMP error, as errno);
                        # reading it clears it and later replies still count.
                        result.icmp_error = error_code_for(exc) or result.icmp_error
                        return
                    rx = _kernel_time(ancdata)
                    rx_mono = time.monotonic()
                    reply = icmp_sock._parse_reply(data, peer[0], rx)
                    if reply is None or reply.id not in idents or reply.sequence not in seq_of:
                        continue  # another socket's traffic (raw sockets see all ICMP)
                    if reply.type != _ECHO_REPLY[version]:
                        result.icmp_error = (
                            ErrorCode.NETWORK_UNREACHABLE
                            if reply.type == 3 and reply.code in _NET_UNREACHABLE_CODES
                            else ErrorCode.HOST_UNREACHABLE
                        )
                        continue
                    seq = seq_of[reply.sequence]
                    if seq not in sent_at:
                        continue
                    rtt_ms = (rx - sent_at[seq]) * 1000
                    upper_ms = (rx_mono - sent_mono[seq]) * 1000
                    if not 0 <= rtt_ms <= upper_ms + _STEP_SLACK_MS:
                        rtt_ms = upper_ms  # the wall clock stepped during this exchange
                    if seq not in result.rtts_by_seq and 0 <= rtt_ms <= timeout * 1000:
                        result.rtts_by_seq[seq] = rtt_ms
                        got.set()

            loop.add_reader(sock.fileno(), on_readable)
            try:
                start = time.monotonic()
                last_sent = start
                for seq in range(cfg.count):
                    delay = start + seq * cfg.spacing_s - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    wire_seq = (seq_base + seq) & 0xFFFF
                    seq_of[wire_seq] = seq
                    request = ICMPRequest(address, ident, wire_seq, payload_size=cfg.payload_bytes)
                    t_mono = time.monotonic()
                    try:
                        icmp_sock.send(request)
                    except ICMPLibError as exc:
                        result.send_error = error_code_for(exc) or ErrorCode.NETWORK_UNREACHABLE
                        continue
                    sent_at[seq] = request.time
                    sent_mono[seq] = t_mono
                    last_sent = time.monotonic()
                    idents.add(request.id)  # unprivileged sockets: the kernel's id
                    result.sent += 1
                # Wait for the missing replies, until Tmax after the last request.
                deadline = last_sent + timeout
                while len(result.rtts_by_seq) < len(sent_at):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    got.clear()
                    try:
                        await asyncio.wait_for(got.wait(), remaining)
                    except TimeoutError:
                        break
            finally:
                loop.remove_reader(sock.fileno())
        return result


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
