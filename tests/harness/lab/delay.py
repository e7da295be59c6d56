"""The field lab's delay element: a TUN forwarder that holds packets for delay ± jitter.

These kernels have no sch_netem, so delay lives in userspace. The lab runs this file (stdlib
only, no imports from the repository) inside the router namespace:

    python3 delay.py TUN_NAME

It creates the TUN device (IFF_TUN | IFF_NO_PI; the device goes when this process exits),
prints ``ready``, then reads IPv4 packets the kernel routes into it, holds each one and
writes it back to the same device, where the kernel routes it on by its destination. The lab
routes into the device only the packets it wants delayed (policy routing on the incoming
interface), so the packet's source address says whose rules apply.

Control, one JSON object per line on stdin, each answered by one JSON line on stdout:

    {"net": "198.19.0.4/30", "delay_ms": 150, "jitter_ms": 20, "keep_order": true}
    {"net": "198.19.0.4/30"}                       forget the net (no delay)
    {"stats": true}                                counters and the queue length

End of stdin ends the process, so it cannot outlive a lab that was killed.

Jitter distribution: each packet's delay is uniform on [delay - jitter, delay + jitter]
(clipped at 0), as netem's default. With ``keep_order`` (the default) a packet is never
released before the packet of the same net that arrived before it (a FIFO link: TCP sees
no reordering), so when packets arrive closer together than 2 * jitter the delays shift up;
without it every packet gets its own independent delay and packets may be reordered.
Release times come from CLOCK_MONOTONIC; the wait is a select() timeout with the timer
slack set to 1 us, so a packet leaves within tens of microseconds of its release time
on an idle machine (the accuracy benchmark measures it).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import ipaddress
import itertools
import json
import os
import random
import select
import signal
import struct
import sys
import time
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_TIMERSLACK = 29
MAX_BATCH = 256  # packets read per wake-up before the queue is served again


class Rule:
    __slots__ = ("delay_ns", "jitter_ns", "keep_order", "last_release")

    def __init__(self, delay_ms: float, jitter_ms: float, keep_order: bool) -> None:
        self.delay_ns = int(delay_ms * 1e6)
        self.jitter_ns = int(jitter_ms * 1e6)
        self.keep_order = keep_order
        self.last_release = 0

    def release_time(self, arrived: int, rng: random.Random) -> int:
        delay = self.delay_ns
        if self.jitter_ns:
            delay += int(rng.uniform(-self.jitter_ns, self.jitter_ns))
        at = arrived + max(delay, 0)
        if self.keep_order:
            at = max(at, self.last_release)
            self.last_release = at
        return at


class Element:
    def __init__(self, name: str, seed: int | None = None) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        self.rules: dict[tuple[int, int], Rule] = {}  # (network, mask) -> rule
        self.masks: set[int] = set()
        self.queue: list[tuple[int, int, bytes]] = []  # (release ns, arrival order, packet)
        self.order = itertools.count()
        self.rng = random.Random(seed)
        self.stats = {"delayed": 0, "passed": 0, "write_errors": 0, "max_queue": 0}
        self.lateness_ns: list[int] = []  # release lateness of the last packets, for stats

    def configure(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("stats"):
            late = sorted(self.lateness_ns)
            return {
                **self.stats,
                "queued": len(self.queue),
                "late_p50_us": late[len(late) // 2] / 1000 if late else None,
                "late_max_us": late[-1] / 1000 if late else None,
            }
        net = ipaddress.ip_network(str(msg["net"]))
        key = (int(net.network_address), int(net.netmask))
        if "delay_ms" not in msg:
            self.rules.pop(key, None)
        else:
            delay, jitter = float(msg["delay_ms"]), float(msg.get("jitter_ms", 0.0))
            self.rules[key] = Rule(delay, jitter, bool(msg.get("keep_order", True)))
        self.masks = {mask for _, mask in self.rules}
        return {"ok": True}

    def rule_for(self, packet: bytes) -> Rule | None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        (src,) = struct.unpack_from("!I", packet, 12)
        for mask in self.masks:
            rule = self.rules.get((src & mask, mask))
            if rule is not None:
                return rule
        return None

    def read_packets(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                packet = os.read(self.fd, 65535)
            except BlockingIOError:
                return
            now = time.monotonic_ns()
            rule = self.rule_for(packet)
            if rule is None:
                self.write(packet)
                self.stats["passed"] += 1
                continue
            heapq.heappush(self.queue, (rule.release_time(now, self.rng), next(self.order), packet))
            self.stats["max_queue"] = max(self.stats["max_queue"], len(self.queue))

    def release_due(self) -> float | None:
        """Write the packets whose time has come; seconds until the next one (None: none)."""
        while self.queue:
            now = time.monotonic_ns()
            at, _, packet = self.queue[0]
            if at > now:
                return (at - now) / 1e9
            heapq.heappop(self.queue)
            self.write(packet)
            self.stats["delayed"] += 1
            self.lateness_ns.append(now - at)
            if len(self.lateness_ns) > 10000:
                del self.lateness_ns[:5000]
        return None

    def write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
        except OSError:
            self.stats["write_errors"] += 1


def main() -> None:
    name = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # A 1 us timer slack instead of 50 us: release times closer to the schedule.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    element = Element(name, seed)
    print("ready", flush=True)
    control = b""
    while True:
        timeout = element.release_due()
        readable, _, _ = select.select([element.fd, 0], [], [], timeout)
        if element.fd in readable:
            element.read_packets()
        if 0 in readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return  # the lab closed our stdin or died
            control += chunk
            while b"\n" in control:
                line, control = control.split(b"\n", 1)
                if line.strip():
                    reply = element.configure(json.loads(line))
                    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
