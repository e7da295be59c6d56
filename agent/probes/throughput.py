"""Throughput with speedtest-cli, and latency under load.

One test per uplink, run in a child process (agent.speedtest_worker) with a hard
deadline: speedtest-cli's threads cannot be cancelled and can hang, a process can
be killed. Sequence:

  1. the worker sets up the backend (Ookla: configuration, server list, best
     server; mini: a local configuration) and names the server;
  2. here, the idle latency: `IDLE_SAMPLES` TCP connects to the server's port;
  3. the worker's download phase, then its upload phase; meanwhile, here, a TCP
     connect to the server every `ping_interval_s` (the loaded latency: the
     higher of the download and the upload medians).

Latency is the TCP connect time (SYN to SYN-ACK: one round trip), which needs no
privilege and crosses the same queues as the test traffic. Medians are stored.
The increase under load is graded by config/thresholds.yaml (8x8 bufferbloat grades).

The probe is exclusive: the scheduler runs nothing beside it. It is heavy: it asks
the data budget and the quiet windows first, and a skipped test is a record with
`skipped = 1` and the reason. Rates leave speedtest-cli in bit/s and are converted
to Mbit/s here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from agent.budget import MB, Budget
from agent.config import ThroughputProbeConfig, Uplink
from agent.contract.record import ErrorCode, FieldValue, Record
from agent.netutil import SourceUnavailable, error_code_for, uplink_source
from agent.probes.base import ProbeEnv, Stamp, make_record
from agent.speedtest_ticket import ticketed

log = logging.getLogger("sinyal.probe.throughput")

IDLE_SAMPLES = 10
IDLE_SPACING_S = 0.1
PING_TIMEOUT_S = 3.0
WORKER = (sys.executable, "-m", "agent.speedtest_worker")


async def tcp_rtt_ms(address: tuple[Any, ...], family: int, source: str | None) -> float:
    """One TCP handshake's round trip to an already resolved address, in ms."""
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        if source is not None:
            sock.bind((source, 0))
        t0 = time.perf_counter()
        await asyncio.wait_for(loop.sock_connect(sock, address), PING_TIMEOUT_S)
        return (time.perf_counter() - t0) * 1000


@dataclass
class Pinger:
    """TCP connect RTT samples to the test server, at a fixed rate like fping."""

    address: tuple[Any, ...]
    family: int
    source: str | None
    samples: dict[str, list[float]] = field(default_factory=dict)
    last_error: BaseException | None = None

    @classmethod
    async def resolve(cls, host_port: str, source: str | None) -> Pinger:
        host, _, port = host_port.rpartition(":")
        if not host:  # no port: the URL's default
            host, port = host_port, "80"
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        family = socket.AF_UNSPEC
        if source is not None:
            family = socket.AF_INET6 if ":" in source else socket.AF_INET
        infos = await loop.getaddrinfo(host, int(port), family=family, type=socket.SOCK_STREAM)
        return cls(infos[0][4], infos[0][0], source)

    async def one(self, phase: str) -> None:
        try:
            rtt = await tcp_rtt_ms(self.address, self.family, self.source)
        except (OSError, TimeoutError) as exc:
            self.last_error = exc  # a lost SYN under load: no sample
            return
        self.samples.setdefault(phase, []).append(rtt)

    async def idle(self) -> None:
        for _ in range(IDLE_SAMPLES):
            await self.one("idle")
            await asyncio.sleep(IDLE_SPACING_S)

    async def loaded(self, phase: str, interval_s: float, stop: asyncio.Event) -> None:
        pending: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                task = asyncio.create_task(self.one(phase))
                pending.add(task)
                task.add_done_callback(pending.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
        finally:
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def median(self, *phases: str) -> float | None:
        values = [v for p in phases for v in self.samples.get(p, [])]
        return round(statistics.median(values), 3) if values else None


class _Test:
    """One test's state while the worker runs."""

    def __init__(self) -> None:
        self.fields: dict[str, FieldValue | None] = {"ok": 0}
        self.server = "none"
        self.error: ErrorCode | None = None
        self.complete = False


class ThroughputProbe:
    kind = "throughput"
    exclusive = True

    def __init__(self, cfg: ThroughputProbeConfig, env: ProbeEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.interval_s = cfg.interval_s
        self.station = env.config.station.id
        self.budget = Budget.for_config(env.config)
        self.url = cfg.url  # with a speedtest ticket for this test, when it needs one

    @classmethod
    def from_env(cls, env: ProbeEnv) -> ThroughputProbe | None:
        cfg = env.config.probes.throughput
        return cls(cfg, env) if cfg is not None and cfg.enabled else None

    def default_server(self) -> str:
        if self.cfg.backend == "mini":
            from urllib.parse import urlsplit

            return self.cfg.name or urlsplit(self.cfg.url or "").hostname or "mini"
        return str(self.cfg.server_id) if self.cfg.server_id else "none"

    async def run(self) -> list[Record]:
        return [await self.measure(u) for u in self.env.config.uplinks]

    async def measure(self, uplink: Uplink) -> Record:
        stamp = Stamp()
        tags = {"backend": self.cfg.backend, "server": self.default_server()}
        estimate = self.budget.estimate(self.kind, int(self.cfg.first_estimate_mb * MB))
        reason = self.budget.gate(estimate)
        if reason is not None:
            log.info("throughput on %s skipped: %s", uplink.name, reason.value)
            fields = {"skipped": 1, "skip_reason": reason.value}
            return make_record(self.kind, stamp, self.station, uplink, tags, fields)
        test = _Test()
        test.server = tags["server"]
        t0 = time.monotonic()
        try:
            source = uplink_source(uplink)
        except SourceUnavailable:
            test.error = ErrorCode.SOURCE_UNAVAILABLE
        else:
            if self.cfg.backend == "mini" and self.cfg.url:
                self.url = await ticketed(self.cfg.url, self.env.config)
            await self._run_worker(test, source)
        test.fields["duration_s"] = round(time.monotonic() - t0, 3)
        used = int(test.fields.get("download_bytes") or 0) + int(
            test.fields.get("upload_bytes") or 0
        )
        test.fields["bytes_used"] = used
        if test.error is None and test.complete:
            test.fields["ok"] = 1
        else:
            test.error = test.error or ErrorCode.INTERNAL_ERROR
        # A test cut off at its deadline may have used more than we counted.
        charged = used if test.complete or test.error != ErrorCode.TIMEOUT else max(used, estimate)
        await asyncio.to_thread(self.budget.charge, self.kind, charged, None, test.complete)
        tags["server"] = test.server
        return make_record(self.kind, stamp, self.station, uplink, tags, test.fields, test.error)

    def job(self, source: str | None) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "backend": cfg.backend,
            "url": self.url,
            "name": self.default_server(),
            "server_id": cfg.server_id,
            "secure": cfg.secure,
            "source": source,
            "duration_s": cfg.duration_s,
            # Stalls end at the probe's deadline, not at a shorter socket timeout that
            # speedtest-cli would swallow into a low but "successful" result.
            "socket_timeout_s": cfg.timeout_s,
        }

    async def _run_worker(self, test: _Test, source: str | None) -> None:
        proc = await asyncio.create_subprocess_exec(
            *WORKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read(64 * 1024))
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                proc.stdin.write((json.dumps(self.job(source)) + "\n").encode())
                await proc.stdin.drain()
                await self._converse(proc, test, source)
        except TimeoutError:
            test.error = ErrorCode.TIMEOUT
            log.warning("throughput test passed its %g s deadline; stopped", self.cfg.timeout_s)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            stderr = await stderr_task
        if test.error is None and not test.complete:
            log.error("speedtest worker ended early (exit %s): %s", proc.returncode, stderr[-2000:])

    async def _converse(
        self, proc: asyncio.subprocess.Process, test: _Test, source: str | None
    ) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        pinger: Pinger | None = None
        stop = asyncio.Event()
        loaded: asyncio.Task[None] | None = None
        fields = test.fields
        try:
            while line := await proc.stdout.readline():
                ev = json.loads(line)
                kind = ev.get("event")
                if kind == "server":
                    test.server = ev["id"] or test.server
                    fields["server_host"] = ev["host"]
                    try:
                        pinger = await Pinger.resolve(ev["host"], source)
                    except OSError as exc:
                        test.error = error_code_for(exc) or ErrorCode.NAME_NOT_RESOLVED
                        return
                    await pinger.idle()
                    fields["idle_latency_ms"] = pinger.median("idle")
                    if fields["idle_latency_ms"] is None:  # the server does not accept
                        err = pinger.last_error
                        test.error = (err and error_code_for(err)) or ErrorCode.TIMEOUT
                        return
                    proc.stdin.write(b"go\n")
                    await proc.stdin.drain()
                elif kind == "phase" and pinger is not None:
                    if loaded is not None:
                        stop.set()
                        await loaded
                        stop = asyncio.Event()
                    interval = self.cfg.ping_interval_s
                    loaded = asyncio.create_task(pinger.loaded(ev["phase"], interval, stop))
                elif kind in ("download", "upload"):
                    if ev.get("method") != "tcp_info":
                        log.info("%s rate is speedtest-cli's own: no TCP_INFO counters", kind)
                    fields[f"{kind}_mbps"] = round(ev["bits_per_s"] / 1e6, 3)
                    fields[f"{kind}_bytes"] = int(ev["bytes"])
                    test.complete = kind == "upload"
                elif kind == "error":
                    test.error = ErrorCode(ev["code"])
                    log.warning("throughput test failed: %s", ev.get("message", ""))
                    test.complete = False
        finally:
            stop.set()
            if loaded is not None:
                await loaded
            if pinger is not None:
                self._latency_fields(pinger, fields)

    @staticmethod
    def _latency_fields(pinger: Pinger, fields: dict[str, FieldValue | None]) -> None:
        down, up = pinger.median("download"), pinger.median("upload")
        fields["download_latency_ms"], fields["upload_latency_ms"] = down, up
        # The worse direction: a queue that fills in one direction only (the usual
        # bufferbloat) must not be hidden by the other direction's samples.
        phases = [v for v in (down, up) if v is not None]
        loaded = max(phases) if phases else None
        fields["loaded_latency_ms"] = loaded
        idle = fields.get("idle_latency_ms")
        if loaded is not None and isinstance(idle, float):
            fields["loaded_latency_increase_ms"] = round(loaded - idle, 3)
        n = len(pinger.samples.get("download", [])) + len(pinger.samples.get("upload", []))
        fields["latency_samples"] = n
