"""Cellular radio signal, one `signal` record per uplink that names a modem.

Each uplink with `signal: {source: ...}` in the config gets a source: ModemManager over
D-Bus or a HiLink device's web API (agent/modem/). A reading becomes a record with the radio
values of the current access technology (units in the field names), the network's operator
as the `operator` tag (checked against the uplink's configured operator: a mismatch, such as
roaming or the wrong SIM, sets operator_mismatch=1), `access_tech` and `band` tags
("unknown" when the modem does not say). A modem that cannot be read is a record with an
error code: no_modem, modem_disabled, not_registered, permission, unsupported.

Cheap: a few D-Bus calls or three GETs on the local link per uplink, no network traffic.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.config import HILINK_DEFAULT_URL, SignalProbeConfig, SignalSource, Uplink
from agent.contract.record import ErrorCode, FieldValue, Record
from agent.modem import UNKNOWN, Reading, SourceError, operator_label
from agent.probes.base import ProbeEnv, Stamp, make_record

log = logging.getLogger(__name__)
ROUTES = Path("/proc/net/route")


class Source(Protocol):
    async def read(self) -> Reading: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """The latest result of one uplink, for the live view and doctor."""

    uplink: str
    reading: Reading | None
    error: ErrorCode | None
    message: str


def gateway_of(interface: str, routes: Path = ROUTES) -> str | None:
    """The IPv4 default gateway through an interface, from /proc/net/route."""
    try:
        lines = routes.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) >= 3 and cols[0] == interface and cols[1] == "00000000":
            try:
                return socket.inet_ntoa(struct.pack("<I", int(cols[2], 16)))
            except (ValueError, struct.error):
                return None
    return None


def hilink_url(src: SignalSource, uplink: Uplink) -> str:
    if src.url is not None:
        return src.url
    gw = gateway_of(uplink.interface) if uplink.interface else None
    return f"http://{gw}" if gw else HILINK_DEFAULT_URL


def make_source(src: SignalSource, uplink: Uplink, cfg: SignalProbeConfig) -> Source:
    # Imported here: an agent without a modem never loads dbus-fast.
    if src.source == "modemmanager":
        from agent.modem.modemmanager import ModemManagerSource

        return ModemManagerSource(src.modem, src.bus, cfg.interval_s, cfg.timeout_s)
    from agent.modem.hilink import HiLinkSource

    return HiLinkSource(hilink_url(src, uplink), cfg.timeout_s, uplink.source)


def signal_fields(reading: Reading, uplink: Uplink) -> tuple[dict[str, str], dict[str, FieldValue]]:
    """The tags (besides station and uplink) and fields of a good reading."""
    network = operator_label(reading.plmn, reading.operator_name)
    fields: dict[str, FieldValue] = {**reading.values, "ok": 1}
    if reading.quality_pct is not None:
        fields["quality_pct"] = reading.quality_pct
    if reading.plmn:
        fields["plmn"] = int(reading.plmn)
    if network is not None and uplink.operator != "unknown":
        fields["operator_mismatch"] = int(network != uplink.operator)
    if reading.roaming is not None:
        fields["roaming"] = int(reading.roaming)
    for name in ("cell_id", "tac", "lac", "earfcn"):
        v = getattr(reading, name)
        if v is not None:
            fields[name] = v
    tags = {
        "operator": network or uplink.operator,
        "access_tech": reading.access_tech,
        "band": reading.band or UNKNOWN,
    }
    return tags, fields


class SignalProbe:
    kind = "signal"
    exclusive = False

    def __init__(self, cfg: SignalProbeConfig, env: ProbeEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.interval_s = cfg.interval_s
        self.station = env.config.station.id
        self.uplinks = [u for u in env.config.uplinks if u.signal is not None]
        self.sources: dict[str, Source] = {}
        self.latest: dict[str, Outcome] = {}

    @classmethod
    def from_env(cls, env: ProbeEnv) -> SignalProbe | None:
        cfg = env.config.probes.signal
        if cfg is None or not cfg.enabled:
            return None
        if not any(u.signal is not None for u in env.config.uplinks):
            return None
        return cls(cfg, env)

    def source(self, uplink: Uplink) -> Source:
        s = self.sources.get(uplink.name)
        if s is None:
            assert uplink.signal is not None
            s = self.sources[uplink.name] = make_source(uplink.signal, uplink, self.cfg)
        return s

    async def run(self) -> list[Record]:
        return list(await asyncio.gather(*(self.measure(u) for u in self.uplinks)))

    async def measure(self, uplink: Uplink) -> Record:
        stamp = Stamp()
        try:
            # Three reads at most per source, each bounded by timeout_s.
            reading = await asyncio.wait_for(self.source(uplink).read(), 4 * self.cfg.timeout_s)
        except SourceError as exc:
            return self._failed(uplink, stamp, exc.code, exc.message)
        except TimeoutError:
            return self._failed(uplink, stamp, ErrorCode.NO_MODEM, "the modem did not answer")
        tags, fields = signal_fields(reading, uplink)
        if uplink.name in self.latest and self.latest[uplink.name].error is not None:
            log.info("signal %s: modem readable again", uplink.name)
        self.latest[uplink.name] = Outcome(uplink.name, reading, None, "")
        return make_record(self.kind, stamp, self.station, uplink, tags, fields)

    def _failed(self, uplink: Uplink, stamp: Stamp, code: ErrorCode, message: str) -> Record:
        before = self.latest.get(uplink.name)
        if before is None or before.message != message:  # once per change, not every round
            log.warning("signal %s: %s: %s", uplink.name, code.value, message)
        self.latest[uplink.name] = Outcome(uplink.name, None, code, message)
        tags = {"access_tech": UNKNOWN, "band": UNKNOWN}
        fields: dict[str, FieldValue | None] = {"ok": 0}
        return make_record(self.kind, stamp, self.station, uplink, tags, fields, code)

    async def close(self) -> None:
        for s in self.sources.values():
            await s.close()
        self.sources.clear()


__all__ = ["Outcome", "SignalProbe", "gateway_of", "hilink_url", "signal_fields"]
