"""A photo-sized upload: can this station get a tally-sheet photo out, and how fast?

One HTTP POST of `payload_bytes` of incompressible data (default 2 MB, a C.Hasil
photo) to each target over each uplink, on a fresh connection. The collector's
/speedtest/sink reads and discards it and answers how much it received.

  connect_ms   TCP connect (and TLS) to the target
  duration_s   first payload byte handed to the socket to the answer's headers
  rate_mbps    8 * payload_bytes / duration_s / 1e6

As in ETSI TS 102 250-2, failing to connect (`connected` = 0: refused, unreachable,
timed out before the connection) is told apart from a transfer cut off midway
(`connected` = 1, `cut_off` = 1: reset, stalled past the timeout), so a report can
compute both the access failure ratio and the cut-off ratio. The upload is heavy:
the data budget and quiet windows apply, and a skipped upload is a record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator

import httpx

from agent.budget import Budget
from agent.config import Uplink, UploadProbeConfig, UploadTarget
from agent.contract.record import ErrorCode, FieldValue, Record
from agent.contract.version import AGENT_USER_AGENT
from agent.netutil import SourceUnavailable, error_code_for, uplink_source
from agent.probes.base import ProbeEnv, Stamp, make_record
from agent.probes.http import Trace, make_ssl_context
from agent.speedtest_ticket import ticketed

log = logging.getLogger("sinyal.probe.upload")

CHUNK = 64 * 1024


class UploadProbe:
    kind = "upload"
    exclusive = False

    def __init__(self, cfg: UploadProbeConfig, env: ProbeEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.interval_s = cfg.interval_s
        self.station = env.config.station.id
        self.budget = Budget.for_config(env.config)
        self._payload: bytes | None = None
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_env(cls, env: ProbeEnv) -> UploadProbe | None:
        cfg = env.config.probes.upload
        return cls(cfg, env) if cfg is not None and cfg.enabled else None

    @property
    def payload(self) -> bytes:
        if self._payload is None:  # random: a compressing link must not flatter it
            self._payload = os.urandom(self.cfg.payload_bytes)
        return self._payload

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = make_ssl_context(self.cfg.ca_bundle)
        return self._ssl

    async def run(self) -> list[Record]:
        # One after another: parallel uploads would share the uplink and halve each rate.
        return [await self.measure(u, t) for u in self.env.config.uplinks for t in self.cfg.targets]

    async def measure(self, uplink: Uplink, target: UploadTarget) -> Record:
        stamp = Stamp()
        tags = {"target": target.name}
        fields: dict[str, FieldValue | None] = {"payload_bytes": self.cfg.payload_bytes}
        reason = self.budget.gate(self.cfg.payload_bytes)
        if reason is not None:
            fields.update(skipped=1, skip_reason=reason.value)
            return make_record(self.kind, stamp, self.station, uplink, tags, fields)
        fields.update(ok=0, connected=0, sent_bytes=0)
        sent = [0]
        trace = Trace()
        error: ErrorCode | None
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                error = await self._post(uplink, target, fields, sent, trace)
        except TimeoutError:
            error = ErrorCode.TIMEOUT
        except SourceUnavailable:
            error = ErrorCode.SOURCE_UNAVAILABLE
        except httpx.TimeoutException:
            error = ErrorCode.TIMEOUT
        except httpx.ConnectError as exc:
            error = error_code_for(exc) or ErrorCode.CONNECTION_REFUSED
        except (httpx.HTTPError, OSError) as exc:
            error = error_code_for(exc) or ErrorCode.CONNECTION_RESET
        connected = "connection.connect_tcp.complete" in trace.t
        fields["connected"] = int(connected)
        fields["sent_bytes"] = sent[0]
        span = trace.span("connection.connect_tcp.started", "connection.connect_tcp.complete")
        tls = trace.span("connection.start_tls.started", "connection.start_tls.complete")
        if span is not None:
            fields["connect_ms"] = round(span + (tls or 0.0), 3)
        if error is not None:
            fields["ok"] = 0
            # Started but not completed; an HTTP error status is an answer, not a cut-off.
            fields["cut_off"] = int(connected and error != ErrorCode.HTTP_STATUS)
        else:
            fields["cut_off"] = 0
        await asyncio.to_thread(self.budget.charge, self.kind, sent[0])
        return make_record(self.kind, stamp, self.station, uplink, tags, fields, error)

    async def _post(
        self,
        uplink: Uplink,
        target: UploadTarget,
        fields: dict[str, FieldValue | None],
        sent: list[int],
        trace: Trace,
    ) -> ErrorCode | None:
        source = uplink_source(uplink)
        url = await ticketed(target.url, self.env.config)
        https = target.url.startswith("https:")
        transport = httpx.AsyncHTTPTransport(
            local_address=source, retries=0, verify=self.ssl_context() if https else False
        )
        payload = memoryview(self.payload)
        started: list[float] = []

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(payload), CHUNK):
                if not started:
                    started.append(time.monotonic())
                chunk = bytes(payload[i : i + CHUNK])
                yield chunk
                sent[0] += len(chunk)

        async with httpx.AsyncClient(
            transport=transport, follow_redirects=False, timeout=self.cfg.timeout_s
        ) as client:
            request = client.build_request(
                "POST",
                url,
                content=body(),
                headers={
                    "User-Agent": AGENT_USER_AGENT,
                    "Content-Type": "image/jpeg",
                    "Content-Length": str(len(payload)),
                    "Connection": "close",
                },
                extensions={"trace": trace},
            )
            response = await client.send(request, stream=True)
            answered = time.monotonic()
            fields["status"] = response.status_code
            try:
                answer = await response.aread()
            finally:
                await response.aclose()
        if started:
            duration = answered - started[0]
            fields["duration_s"] = round(duration, 6)
            if duration > 0 and sent[0] == len(payload):
                fields["rate_mbps"] = round(8 * len(payload) / duration / 1e6, 3)
        if not 200 <= response.status_code < 300:
            return ErrorCode.HTTP_STATUS
        if sent[0] != len(payload) or not _received_all(answer, len(payload)):
            return ErrorCode.PROTOCOL_ERROR
        fields["ok"] = 1
        return None


def _received_all(answer: bytes, size: int) -> bool:
    """The collector's sink says how much arrived; other targets answer as they like."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return True
    received = doc.get("received_bytes") if isinstance(doc, dict) else None
    return received is None or received == size
