"""A private D-Bus bus with a mocked ModemManager on it: real dbus-daemon, real D-Bus calls.

`PrivateBus` starts `dbus-daemon` (Debian's dbus package) with its own configuration on a
socket in a temporary directory; `deny_signal_setup=True` adds a bus policy that refuses
Modem.Signal.Setup (what an agent without polkit rights meets). `MockModemManager` owns
org.freedesktop.ModemManager1 on that bus and exports modems implementing the Modem,
Modem3gpp, Signal and Location interfaces with the names, signatures and enumerations of
ModemManager's D-Bus API; the ObjectManager at /org/freedesktop/ModemManager1 is dbus-fast's
own. It runs its event loop in a thread, so tests change values, disable, remove and re-add
modems from synchronous code while the agent reads over the bus.

`python -m tests.harness.modemmanager_mock ADDRESS` serves one LTE modem whose values drift
every second until killed (for benchmarks/agent_footprint.py).
"""
# ruff: noqa: F722, F821, UP037 - dbus-fast reads D-Bus signatures from the annotations

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

SERVICE = "org.freedesktop.ModemManager1"
ROOT = "/org/freedesktop/ModemManager1"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

# MMModemAccessTechnology
TECH_GSM, TECH_UMTS, TECH_HSPA, TECH_LTE, TECH_5GNR = 1 << 1, 1 << 5, 1 << 8, 1 << 14, 1 << 15
# MMModemState
STATE_DISABLED, STATE_ENABLED, STATE_SEARCHING, STATE_REGISTERED, STATE_CONNECTED = 3, 6, 7, 8, 11
# MMModem3gppRegistrationState
REG_IDLE, REG_HOME, REG_SEARCHING, REG_ROAMING = 0, 1, 2, 5

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    {deny}
  </policy>
</busconfig>
"""
_DENY_SETUP = (
    '<deny send_destination="org.freedesktop.ModemManager1"'
    ' send_interface="org.freedesktop.ModemManager1.Modem.Signal" send_member="Setup"/>'
)


class PrivateBus:
    """dbus-daemon on a socket of its own; `address` is what clients connect to."""

    def __init__(self, deny_signal_setup: bool = False) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise RuntimeError("dbus-daemon not found (Debian package dbus)")
        self.dir = Path(tempfile.mkdtemp(prefix="sinyal-dbus-"))
        sock = self.dir / "bus"
        conf = self.dir / "bus.conf"
        conf.write_text(_CONFIG.format(socket=sock, deny=_DENY_SETUP if deny_signal_setup else ""))
        self.address = f"unix:path={sock}"
        self.proc = subprocess.Popen(
            [exe, f"--config-file={conf}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30  # a loaded machine starts it slowly
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.close()
                raise RuntimeError(f"dbus-daemon did not start: {err}")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Modem(ServiceInterface):
    def __init__(self, m: ModemState) -> None:
        super().__init__("org.freedesktop.ModemManager1.Modem")
        self.m = m

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "i":
        return self.m.state

    @dbus_property(access=PropertyAccess.READ)
    def AccessTechnologies(self) -> "u":
        return self.m.tech

    @dbus_property(access=PropertyAccess.READ)
    def SignalQuality(self) -> "(ub)":
        return [self.m.quality, True]

    @dbus_property(access=PropertyAccess.READ)
    def CurrentBands(self) -> "au":
        return list(self.m.bands)

    @dbus_property(access=PropertyAccess.READ)
    def EquipmentIdentifier(self) -> "s":
        return self.m.imei

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> "s":
        return "/sys/devices/platform/usb/1-1"

    @dbus_property(access=PropertyAccess.READ)
    def PrimaryPort(self) -> "s":
        return self.m.port

    @dbus_property(access=PropertyAccess.READ)
    def Model(self) -> "s":
        return "E3372 (mock)"

    @method()
    def Enable(self, enable: "b"):  # type: ignore[no-untyped-def]
        self.m.state = STATE_REGISTERED if enable else STATE_DISABLED


class _Modem3gpp(ServiceInterface):
    def __init__(self, m: ModemState) -> None:
        super().__init__("org.freedesktop.ModemManager1.Modem.Modem3gpp")
        self.m = m

    @dbus_property(access=PropertyAccess.READ)
    def Imei(self) -> "s":
        return self.m.imei

    @dbus_property(access=PropertyAccess.READ)
    def RegistrationState(self) -> "u":
        return self.m.registration

    @dbus_property(access=PropertyAccess.READ)
    def OperatorCode(self) -> "s":
        return self.m.operator_code

    @dbus_property(access=PropertyAccess.READ)
    def OperatorName(self) -> "s":
        return self.m.operator_name


class _Signal(ServiceInterface):
    def __init__(self, m: ModemState) -> None:
        super().__init__("org.freedesktop.ModemManager1.Modem.Signal")
        self.m = m

    @method()
    def Setup(self, rate: "u"):  # type: ignore[no-untyped-def]
        if self.m.deny_setup:
            raise DBusError(ACCESS_DENIED, "not authorized (mock polkit)")
        self.m.rate = rate
        self.m.setup_calls += 1

    @dbus_property(access=PropertyAccess.READ)
    def Rate(self) -> "u":
        return self.m.rate

    def _values(self, tech: str) -> dict[str, Variant]:
        if self.m.rate == 0:  # ModemManager reports nothing until Setup enabled the refresh
            return {}
        return {k: Variant("d", v) for k, v in self.m.signal.get(tech, {}).items()}

    @dbus_property(access=PropertyAccess.READ)
    def Lte(self) -> "a{sv}":
        return self._values("lte")

    @dbus_property(access=PropertyAccess.READ)
    def Nr5g(self) -> "a{sv}":
        return self._values("nr5g")

    @dbus_property(access=PropertyAccess.READ)
    def Umts(self) -> "a{sv}":
        return self._values("umts")

    @dbus_property(access=PropertyAccess.READ)
    def Gsm(self) -> "a{sv}":
        return self._values("gsm")


class _Location(ServiceInterface):
    def __init__(self, m: ModemState) -> None:
        super().__init__("org.freedesktop.ModemManager1.Modem.Location")
        self.m = m

    @dbus_property(access=PropertyAccess.READ)
    def Capabilities(self) -> "u":
        return 1  # 3GPP_LAC_CI

    @dbus_property(access=PropertyAccess.READ)
    def Enabled(self) -> "u":
        return 1

    @dbus_property(access=PropertyAccess.READ)
    def Location(self) -> "a{uv}":
        return {1: Variant("s", self.m.location)} if self.m.location else {}


class ModemState:
    """One mocked modem's values; change them between the agent's readings."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = STATE_CONNECTED
        self.tech = TECH_LTE
        self.quality = 62
        self.bands: tuple[int, ...] = (33,)  # MM_MODEM_BAND_EUTRAN_3
        self.imei = f"86700000000000{index}"
        self.port = "cdc-wdm0"
        self.registration = REG_HOME
        self.operator_code = "51010"
        self.operator_name = "Telkomsel"
        self.rate = 0
        self.setup_calls = 0
        self.deny_setup = False
        self.signal: dict[str, dict[str, float]] = {
            "lte": {"rsrp": -95.0, "rsrq": -10.0, "snr": 12.0, "rssi": -65.0}
        }
        self.location = "510,10,2A3B,1A2B3C4,5D6E"

    @property
    def path(self) -> str:
        return f"{ROOT}/Modem/{self.index}"


class MockModemManager:
    """org.freedesktop.ModemManager1 on `address`, served from a thread of its own."""

    def __init__(self, address: str, signal: bool = True, location: bool = True) -> None:
        self.address = address
        self.with_signal = signal
        self.with_location = location
        self.modems: dict[int, ModemState] = {}
        self._ifaces: dict[int, list[ServiceInterface]] = {}
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._bus: MessageBus | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30) or self._bus is None:
            raise RuntimeError("mock ModemManager did not start")

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            bus = await MessageBus(bus_address=self.address, bus_type=BusType.SESSION).connect()
            await bus.request_name(SERVICE)
            self._bus = bus

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def add_modem(self) -> ModemState:
        """A new modem at the next path (a modem that comes back gets a new index)."""
        m = ModemState(self._next)
        self._next += 1

        def export() -> None:
            assert self._bus is not None
            ifaces: list[ServiceInterface] = [_Modem(m), _Modem3gpp(m)]
            if self.with_signal:
                ifaces.append(_Signal(m))
            if self.with_location:
                ifaces.append(_Location(m))
            for iface in ifaces:
                self._bus.export(m.path, iface)
            self._ifaces[m.index] = ifaces
            self.modems[m.index] = m

        self._in_loop(export)
        return m

    def remove_modem(self, m: ModemState) -> None:
        def unexport() -> None:
            assert self._bus is not None
            self._bus.unexport(m.path)
            self._ifaces.pop(m.index, None)
            self.modems.pop(m.index, None)

        self._in_loop(unexport)

    def close(self) -> None:
        if self._bus is not None:
            self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def running_modemmanager() -> Iterator[MockModemManager]:
    """A private dbus-daemon with the mocked ModemManager on it, both stopped afterwards."""
    bus = PrivateBus()
    try:
        service = MockModemManager(bus.address)
        try:
            yield service
        finally:
            service.close()
    finally:
        bus.close()


def main(argv: list[str]) -> None:
    """Serve one LTE modem with drifting values on the bus at argv[0] until killed."""
    mm = MockModemManager(argv[0])
    m = mm.add_modem()
    step = 0
    while True:
        step += 1
        m.signal["lte"] = {
            "rsrp": -90.0 - step % 20,
            "rsrq": -9.0 - step % 5,
            "snr": 10.0 - step % 7,
            "rssi": -60.0 - step % 10,
        }
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
