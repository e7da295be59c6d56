"""ModemManager over D-Bus (dbus-fast): signal, access technology, operator, cell.

What is read, as ModemManager's D-Bus API documents it (org.freedesktop.ModemManager1):

- the ObjectManager at /org/freedesktop/ModemManager1 lists the modems;
- Modem: State, AccessTechnologies (bitmask), SignalQuality, CurrentBands, and the
  identifiers a config may name a modem by (EquipmentIdentifier, Device, PrimaryPort);
- Modem.Modem3gpp: RegistrationState, OperatorCode (MCC-MNC), OperatorName;
- Modem.Signal: Setup(rate) turns on the refresh of the extended values (needs the polkit
  action org.freedesktop.ModemManager1.Device.Control), then Lte, Nr5g, Umts, Gsm (a{sv});
- Modem.Location: Location (a{uv}), the 3GPP source (1) being "MCC,MNC,LAC,CI,TAC" in hex.

Only method calls and property reads on the bus: no network traffic. The connection is
kept between readings and reopened when it breaks (ModemManager restarted, bus gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from agent.contract.record import ErrorCode
from agent.modem import (
    UNKNOWN,
    Reading,
    SourceError,
    bounded_int,
    clean,
    clean_values,
    plmn_code,
    printable,
)

SERVICE = "org.freedesktop.ModemManager1"
ROOT = "/org/freedesktop/ModemManager1"
MODEM = "org.freedesktop.ModemManager1.Modem"
MODEM_3GPP = "org.freedesktop.ModemManager1.Modem.Modem3gpp"
SIGNAL = "org.freedesktop.ModemManager1.Modem.Signal"
LOCATION = "org.freedesktop.ModemManager1.Modem.Location"
PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

# MMModemState
STATE_FAILED, STATE_UNKNOWN, STATE_LOCKED, STATE_DISABLED = -1, 0, 2, 3
STATE_ENABLED, STATE_SEARCHING, STATE_REGISTERED = 6, 7, 8
# MMModem3gppRegistrationState: registered at home or roaming (also "SMS only", "CSFB not
# preferred" variants, which still carry data)
REG_HOME = {1, 6, 9}
REG_UNKNOWN = 4
REG_ROAMING = {5, 7, 10}
# MMModemAccessTechnology bits -> the access_tech tag (the newest present wins)
_TECH_BITS = (
    (1 << 15, "nr5g"),
    ((1 << 14) | (1 << 16) | (1 << 17), "lte"),
    ((1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9), "umts"),
    ((1 << 1) | (1 << 2) | (1 << 3) | (1 << 4), "gsm"),
)
# Signal interface property per access tech, and its keys -> record fields
_SIGNAL_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "nr5g": ("Nr5g", {"rsrp": "rsrp_dbm", "rsrq": "rsrq_db", "snr": "sinr_db"}),
    "lte": (
        "Lte",
        {"rsrp": "rsrp_dbm", "rsrq": "rsrq_db", "snr": "sinr_db", "rssi": "rssi_dbm"},
    ),
    "umts": ("Umts", {"rscp": "rscp_dbm", "ecio": "ecio_db", "rssi": "rssi_dbm"}),
    "gsm": ("Gsm", {"rssi": "rssi_dbm"}),
}
LOCATION_3GPP = 1  # MMModemLocationSource 3GPP_LAC_CI
log = logging.getLogger(__name__)
_DENIED = {
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    "org.freedesktop.ModemManager1.Error.Core.Unauthorized",
}
_GONE = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
}
_UNSUPPORTED = {
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownProperty",
    "org.freedesktop.ModemManager1.Error.Core.Unsupported",
}


@dataclass(frozen=True)
class ModemInfo:
    """What doctor shows about one modem."""

    path: str
    state: int
    equipment_id: str
    device: str
    primary_port: str
    model: str
    interfaces: frozenset[str]


class DbusCallError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def _plain(value: Any) -> Any:
    """Variants unwrapped, recursively."""
    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def access_tech(bits: int) -> str:
    for mask, name in _TECH_BITS:
        if bits & mask:
            return name
    return UNKNOWN


def band_label(bands: object) -> str | None:
    """The band when CurrentBands names exactly one (ModemManager has no "serving band")."""
    if not isinstance(bands, list) or len(bands) != 1 or not isinstance(bands[0], int):
        return None
    b = bands[0]
    if 31 <= b <= 115:  # MM_MODEM_BAND_EUTRAN_1 = 31
        return f"B{b - 30}"
    if 301 <= b <= 599:  # MM_MODEM_BAND_NGRAN_1 = 301
        return f"n{b - 300}"
    return None


def parse_3gpp_location(text: object) -> tuple[int | None, int | None, int | None]:
    """(lac, cell_id, tac) from "MCC,MNC,LAC,CI,TAC" (hex fields; TAC missing on old MM)."""
    if not isinstance(text, str):
        return None, None, None
    parts = text.split(",")
    out: list[int | None] = []
    for i, hi in ((2, 0xFFFF), (3, 2**36), (4, 0xFFFFFF)):
        try:
            v = int(parts[i], 16) if i < len(parts) and parts[i] else None
        except ValueError:
            v = None
        # 0 and all-ones are "not known" in 3GPP cell and area codes
        out.append(None if v in (0, hi, 0xFFFE, 0xFFFFFFF) else bounded_int(v, hi))
    return out[0], out[1], out[2]


class ModemManagerSource:
    """Readings from one modem managed by ModemManager.

    `modem` picks the modem when there are several: its EquipmentIdentifier (IMEI), its
    Device (sysfs path), its PrimaryPort (cdc-wdm0, ttyUSB2) or the number at the end of its
    D-Bus path; None takes the first one. `bus` is "system" (the default; the
    DBUS_SYSTEM_BUS_ADDRESS variable is honoured), "session", or a D-Bus address.
    """

    def __init__(
        self,
        modem: str | None = None,
        bus: str = "system",
        refresh_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.modem = modem
        self.bus_name = bus
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._bus: MessageBus | None = None

    # -- bus -------------------------------------------------------------------------------

    async def _connect(self) -> MessageBus:
        if self._bus is not None and self._bus.connected:
            return self._bus
        if self.bus_name == "system":
            bus = MessageBus(bus_type=BusType.SYSTEM)
        elif self.bus_name == "session":
            bus = MessageBus(bus_type=BusType.SESSION)
        else:
            bus = MessageBus(bus_address=self.bus_name)
        try:
            self._bus = await asyncio.wait_for(bus.connect(), self.timeout_s)
        except TimeoutError:
            raise SourceError(ErrorCode.NO_MODEM, "D-Bus did not answer") from None
        except PermissionError as exc:
            raise SourceError(ErrorCode.PERMISSION, f"D-Bus refused the agent: {exc}") from None
        except (OSError, ValueError, EOFError) as exc:
            where = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", self.bus_name)
            raise SourceError(
                ErrorCode.NO_MODEM, f"no D-Bus {where} ({exc}); is dbus running?"
            ) from None
        except Exception as exc:  # dbus-fast's AuthError and others have no common base
            raise SourceError(ErrorCode.PERMISSION, f"D-Bus refused the agent: {exc}") from None
        return self._bus

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        bus = await self._connect()
        msg = Message(
            destination=SERVICE,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            reply = await asyncio.wait_for(bus.call(msg), self.timeout_s)
        except TimeoutError:
            raise DbusCallError("org.freedesktop.DBus.Error.NoReply", "no reply") from None
        except (OSError, EOFError) as exc:
            self._bus = None
            raise DbusCallError("org.freedesktop.DBus.Error.Disconnected", str(exc)) from None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise DbusCallError(reply.error_name or "unknown", text)
        return list(reply.body)

    async def _props(self, path: str, interface: str) -> dict[str, Any]:
        body = await self._call(path, PROPERTIES, "GetAll", "s", [interface])
        return _plain(body[0]) if body and isinstance(body[0], dict) else {}

    async def service_running(self) -> str | None:
        """None when ModemManager owns its name on the bus, else what is wrong (for doctor)."""
        try:
            bus = await self._connect()
        except SourceError as exc:
            return exc.message
        msg = Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="NameHasOwner",
            signature="s",
            body=[SERVICE],
        )
        try:
            reply = await asyncio.wait_for(bus.call(msg), self.timeout_s)
        except (TimeoutError, OSError, EOFError) as exc:
            return f"the D-Bus daemon did not answer ({exc or 'timeout'})"
        if reply.message_type == MessageType.ERROR:
            return f"D-Bus refused the question: {reply.error_name}"
        if not reply.body or reply.body[0] is not True:
            return f"ModemManager ({SERVICE}) is not running on the {self.bus_name} bus"
        return None

    # -- modems ------------------------------------------------------------------------------

    async def modems(self) -> list[ModemInfo]:
        """Every modem ModemManager knows, in path order."""
        try:
            body = await self._call(ROOT, OBJECT_MANAGER, "GetManagedObjects")
        except DbusCallError as exc:
            raise self._translate(exc, "ModemManager") from None
        objects: Mapping[str, Mapping[str, Mapping[str, Any]]] = _plain(body[0]) if body else {}
        out = []
        for path in sorted(objects, key=_path_order):
            ifaces = objects[path]
            props = ifaces.get(MODEM)
            if props is None:
                continue
            out.append(
                ModemInfo(
                    path,
                    _int(props.get("State"), STATE_UNKNOWN),
                    str(props.get("EquipmentIdentifier", "")),
                    str(props.get("Device", "")),
                    str(props.get("PrimaryPort", "")),
                    str(props.get("Model", "")),
                    frozenset(ifaces),
                )
            )
        return out

    def pick(self, modems: list[ModemInfo]) -> ModemInfo:
        if not modems:
            raise SourceError(ErrorCode.NO_MODEM, "ModemManager knows no modem")
        if self.modem is None:
            return modems[0]
        want = self.modem
        for m in modems:
            ids = (m.equipment_id, m.device, m.primary_port, m.path.rsplit("/", 1)[-1])
            if want in ids:
                return m
        raise SourceError(
            ErrorCode.NO_MODEM,
            f"no modem {want!r} (ModemManager knows "
            f"{', '.join(m.primary_port or m.path for m in modems)})",
        )

    def _translate(self, exc: DbusCallError, what: str) -> SourceError:
        if exc.name in _DENIED:
            return SourceError(
                ErrorCode.PERMISSION,
                f"{what}: access denied ({exc.name}); allow the agent's user in polkit or "
                "the D-Bus policy (docs/agent.md, Cellular signal)",
            )
        if exc.name in _UNSUPPORTED:
            return SourceError(ErrorCode.UNSUPPORTED, f"{what}: {exc.name}")
        if exc.name in _GONE:
            return SourceError(ErrorCode.NO_MODEM, f"{what}: {exc.name} {exc.text}".strip())
        return SourceError(ErrorCode.NO_MODEM, f"{what}: {exc.name} {exc.text}".strip())

    # -- one reading -------------------------------------------------------------------------

    async def read(self) -> Reading:
        """One reading; raises SourceError with the record's error code."""
        m = self.pick(await self.modems())
        try:
            return await self._read(m)
        except DbusCallError as exc:
            raise self._translate(exc, m.path) from None

    async def enable_refresh(self) -> None:
        """Modem.Signal.Setup now, whatever the rate already is: doctor's permission check."""
        m = self.pick(await self.modems())
        if SIGNAL not in m.interfaces:
            raise SourceError(ErrorCode.UNSUPPORTED, f"{m.path} has no Signal interface")
        try:
            await self._call(m.path, SIGNAL, "Setup", "u", [max(1, round(self.refresh_s))])
        except DbusCallError as exc:
            raise self._translate(exc, m.path) from None

    async def _read(self, m: ModemInfo) -> Reading:
        props = await self._props(m.path, MODEM)
        state = _int(props.get("State"), STATE_UNKNOWN)
        if state in (STATE_FAILED, STATE_LOCKED, STATE_DISABLED, 4):  # 4: disabling
            what = {-1: "failed", 2: "locked (SIM PIN)", 3: "disabled", 4: "disabling"}[state]
            raise SourceError(
                ErrorCode.MODEM_DISABLED, f"{m.path} is {what}; enable it: mmcli -m X -e"
            )
        reading = Reading(modem=m.path)
        reading.access_tech = access_tech(_int(props.get("AccessTechnologies"), 0))
        quality = props.get("SignalQuality")
        if isinstance(quality, list | tuple) and quality and isinstance(quality[0], int):
            # 0 with "recent" false is what ModemManager shows before its first reading
            recent = len(quality) < 2 or bool(quality[1])
            if 0 < quality[0] <= 100 or (quality[0] == 0 and recent):
                reading.quality_pct = float(quality[0])
        reading.band = band_label(props.get("CurrentBands"))

        if MODEM_3GPP in m.interfaces:
            g = await self._props(m.path, MODEM_3GPP)
            reg = _int(g.get("RegistrationState"), REG_UNKNOWN)
            code = g.get("OperatorCode")
            reading.plmn = plmn_code(code)
            if reg == REG_UNKNOWN:
                # Not said: ModemManager sets the operator code only while registered.
                reading.registered = state >= STATE_REGISTERED or bool(code)
            else:
                reading.registered = reg in REG_HOME or reg in REG_ROAMING
                reading.roaming = reg in REG_ROAMING
            name = g.get("OperatorName")
            if isinstance(name, str) and printable(name):
                reading.operator_name = printable(name)
        else:
            reading.registered = state >= STATE_REGISTERED
        if not reading.registered:
            raise SourceError(
                ErrorCode.NOT_REGISTERED,
                f"{m.path} is enabled but not registered (state {state})",
            )

        if SIGNAL not in m.interfaces:
            raise SourceError(ErrorCode.UNSUPPORTED, f"{m.path} has no Signal interface")
        sig = await self._props(m.path, SIGNAL)
        rate = max(1, round(self.refresh_s))
        if sig.get("Rate") != rate:
            # Refresh off (a new modem, a restarted ModemManager) or at another rate: turn it
            # on, then read the values it gives. Only a refusal is a failure: a modem that
            # cannot set the rate still has values to read.
            try:
                await self._call(m.path, SIGNAL, "Setup", "u", [rate])
            except DbusCallError as exc:
                if exc.name in _DENIED:
                    raise
                log.debug("%s: Signal.Setup: %s", m.path, exc)
            sig = await self._props(m.path, SIGNAL)
        reading.values = _signal_values(sig, reading.access_tech)

        if LOCATION in m.interfaces:
            try:
                loc = await self._props(m.path, LOCATION)
            except DbusCallError as exc:
                if exc.name not in _DENIED:
                    raise
                loc = {}  # the cell is a nice-to-have: no permission for it is no failure
            where = loc.get("Location")
            if isinstance(where, dict):
                lac, ci, tac = parse_3gpp_location(where.get(LOCATION_3GPP))
                reading.lac, reading.cell_id, reading.tac = lac, ci, tac
        return reading


def _signal_values(sig: Mapping[str, Any], tech: str) -> dict[str, float]:
    """The radio values of the current access technology, else of the first technology that
    has any (5G NSA: the LTE anchor's when Nr5g is empty; ModemManager empties the
    properties of technologies not in use)."""
    order = [tech] if tech in _SIGNAL_KEYS else []
    order += [t for t in _SIGNAL_KEYS if t not in order]
    for t in order:
        prop, keys = _SIGNAL_KEYS[t]
        raw = sig.get(prop)
        if not isinstance(raw, dict):
            continue
        values = clean_values({field: raw.get(key) for key, field in keys.items()})
        if values:
            return values
    return {}


def _int(v: object, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _path_order(path: str) -> tuple[int, str]:
    tail = path.rsplit("/", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, path)


__all__ = [
    "ModemInfo",
    "ModemManagerSource",
    "access_tech",
    "band_label",
    "clean",
    "parse_3gpp_location",
]
