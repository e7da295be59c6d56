"""Signal probe against real components: a mocked ModemManager on a private dbus-daemon, and a
local HTTP server speaking the HiLink protocol."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.config import AgentConfig
from agent.contract.record import Record
from agent.probes.base import ProbeEnv
from agent.probes.signal import SignalProbe
from tests.conftest import base_config, require, require_tool, write_config
from tests.harness.hilink_mock import HiLinkDevice, hilink_device
from tests.harness.modemmanager_mock import (
    REG_ROAMING,
    REG_SEARCHING,
    STATE_DISABLED,
    STATE_SEARCHING,
    TECH_5GNR,
    TECH_HSPA,
    TECH_LTE,
    TECH_UMTS,
    MockModemManager,
    PrivateBus,
    running_modemmanager,
)

MakeConfig = Callable[..., AgentConfig]


@pytest.fixture
def mm() -> Iterator[MockModemManager]:
    require_tool("dbus-daemon")
    with running_modemmanager() as service:
        yield service


def make_probe(
    make_config: MakeConfig, signal: dict[str, Any], operator: str = "telkomsel"
) -> SignalProbe:
    cfg = make_config(uplinks=[{"name": "modem0", "operator": operator, "signal": signal}])
    probe = SignalProbe.from_env(ProbeEnv(cfg))
    assert probe is not None
    return probe


def read(probe: SignalProbe) -> Record:
    (record,) = asyncio.run(_run(probe))
    Record.from_dict(record.to_dict())  # every record follows the contract
    return record


async def _run(probe: SignalProbe) -> list[Record]:
    try:
        return await probe.run()
    finally:
        await probe.close()


def test_default_interval_is_30_s(make_config: MakeConfig) -> None:
    probe = make_probe(make_config, {"source": "hilink"})
    assert probe.interval_s == 30
    assert probe.kind == "signal"


def test_modemmanager_lte_reading(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    probe = make_probe(make_config, {"source": "modemmanager", "bus": mm.address})
    r = read(probe)
    assert r.error is None
    assert r.tags == {
        "station": "3171011001001",
        "uplink": "modem0",
        "operator": "telkomsel",
        "access_tech": "lte",
        "band": "B3",
    }
    assert r.fields["rsrp_dbm"] == -95.0
    assert r.fields["rsrq_db"] == -10.0
    assert r.fields["sinr_db"] == 12.0
    assert r.fields["rssi_dbm"] == -65.0
    assert r.fields["quality_pct"] == 62.0
    assert r.fields["plmn"] == 51010
    assert r.fields["operator_mismatch"] == 0
    assert r.fields["cell_id"] == 0x1A2B3C4
    assert r.fields["tac"] == 0x5D6E
    assert r.fields["lac"] == 0x2A3B
    assert "rscp_dbm" not in r.fields
    assert modem.setup_calls == 1 and modem.rate == 30  # refresh enabled at the interval


def test_values_change_over_time_and_setup_once(
    make_config: MakeConfig, mm: MockModemManager
) -> None:
    modem = mm.add_modem()
    probe = make_probe(make_config, {"source": "modemmanager", "bus": mm.address})

    async def rounds() -> list[Record]:
        out = []
        for rsrp in (-90.0, -104.0, -118.0):
            modem.signal["lte"]["rsrp"] = rsrp
            out += await probe.run()
        await probe.close()
        return out

    records = asyncio.run(rounds())
    assert [r.fields["rsrp_dbm"] for r in records] == [-90.0, -104.0, -118.0]
    assert modem.setup_calls == 1


def test_refresh_turned_on_again_after_a_modemmanager_restart(
    make_config: MakeConfig, mm: MockModemManager
) -> None:
    modem = mm.add_modem()
    probe = make_probe(make_config, {"source": "modemmanager", "bus": mm.address})

    async def rounds() -> list[Record]:
        out = await probe.run()
        modem.rate = 0  # ModemManager restarted: same path, refresh off, no values
        out += await probe.run()
        await probe.close()
        return out

    first, second = asyncio.run(rounds())
    assert first.fields["rsrp_dbm"] == second.fields["rsrp_dbm"] == -95.0
    assert modem.setup_calls == 2


def test_fall_back_to_3g(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    modem.tech = TECH_UMTS | TECH_HSPA
    modem.signal = {"umts": {"rscp": -101.0, "ecio": -12.5, "rssi": -80.0}}
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.tags["access_tech"] == "umts"
    assert r.fields["rscp_dbm"] == -101.0 and r.fields["ecio_db"] == -12.5
    assert "rsrp_dbm" not in r.fields


@pytest.mark.parametrize("bad", [0.0, -32768.0, -200.0, 5.0])
def test_unknown_values_are_not_measured(
    make_config: MakeConfig, mm: MockModemManager, bad: float
) -> None:
    modem = mm.add_modem()
    modem.signal["lte"]["rsrp"] = bad
    modem.signal["lte"]["snr"] = -32768.0
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.error is None
    assert "rsrp_dbm" not in r.fields and "sinr_db" not in r.fields
    assert r.fields["rsrq_db"] == -10.0


def test_operator_mismatch_is_a_finding(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    modem.operator_code, modem.operator_name = "51001", "INDOSAT OOREDOO"
    modem.registration = REG_ROAMING
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.tags["operator"] == "indosat"
    assert r.fields["operator_mismatch"] == 1
    assert r.fields["roaming"] == 1


def test_modem_disappears_and_comes_back(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    probe = make_probe(make_config, {"source": "modemmanager", "bus": mm.address})

    async def rounds() -> list[Record]:
        out = await probe.run()
        mm.remove_modem(modem)
        out += await probe.run()
        again = mm.add_modem()  # a new D-Bus path, as ModemManager gives a re-plugged modem
        again.signal["lte"]["rsrp"] = -100.0
        out += await probe.run()
        assert again.setup_calls == 1  # the new modem's refresh was enabled too
        await probe.close()
        return out

    first, gone, back = asyncio.run(rounds())
    assert first.error is None
    assert gone.error == "no_modem" and "rsrp_dbm" not in gone.fields
    assert back.error is None and back.fields["rsrp_dbm"] == -100.0


def test_disabled_modem(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    modem.state = STATE_DISABLED
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.error == "modem_disabled"
    assert r.tags["access_tech"] == "unknown"


def test_not_registered(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    modem.state, modem.registration = STATE_SEARCHING, REG_SEARCHING
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.error == "not_registered"


def test_no_modemmanager_on_the_bus(make_config: MakeConfig) -> None:
    require_tool("dbus-daemon")
    bus = PrivateBus()
    try:
        r = read(make_probe(make_config, {"source": "modemmanager", "bus": bus.address}))
    finally:
        bus.close()
    assert r.error == "no_modem"


def test_permission_denied_by_the_mock(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    modem.deny_setup = True  # ModemManager's polkit check says no
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.error == "permission"


def test_permission_denied_by_bus_policy(make_config: MakeConfig) -> None:
    require_tool("dbus-daemon")
    bus = PrivateBus(deny_signal_setup=True)
    try:
        service = MockModemManager(bus.address)
        service.add_modem()
        r = read(make_probe(make_config, {"source": "modemmanager", "bus": bus.address}))
        service.close()
    finally:
        bus.close()
    assert r.error == "permission"


def test_modem_without_signal_interface(make_config: MakeConfig) -> None:
    require_tool("dbus-daemon")
    bus = PrivateBus()
    try:
        service = MockModemManager(bus.address, signal=False)
        service.add_modem()
        r = read(make_probe(make_config, {"source": "modemmanager", "bus": bus.address}))
        service.close()
    finally:
        bus.close()
    assert r.error == "unsupported"


def test_picks_the_configured_modem(make_config: MakeConfig, mm: MockModemManager) -> None:
    mm.add_modem()
    second = mm.add_modem()
    second.signal["lte"]["rsrp"] = -111.0
    probe = make_probe(
        make_config, {"source": "modemmanager", "bus": mm.address, "modem": second.imei}
    )
    assert read(probe).fields["rsrp_dbm"] == -111.0
    probe = make_probe(make_config, {"source": "modemmanager", "bus": mm.address, "modem": "9"})
    assert read(probe).error == "no_modem"


# -- HiLink ----------------------------------------------------------------------------------


@pytest.fixture
def hilink() -> Iterator[tuple[HiLinkDevice, str]]:
    with hilink_device() as dev:
        yield dev


def test_hilink_reading(make_config: MakeConfig, hilink: tuple[HiLinkDevice, str]) -> None:
    device, url = hilink
    r = read(make_probe(make_config, {"source": "hilink", "url": url}))
    assert r.error is None
    assert r.tags["access_tech"] == "lte" and r.tags["band"] == "B3"
    assert r.tags["operator"] == "telkomsel"
    assert r.fields["rsrp_dbm"] == -97.0
    assert r.fields["rsrq_db"] == -10.0
    assert r.fields["sinr_db"] == 9.0
    assert r.fields["rssi_dbm"] == -69.0
    assert r.fields["quality_pct"] == 80.0
    assert r.fields["cell_id"] == 27440068
    assert r.fields["earfcn"] == 1850
    assert device.handshakes == 1


def test_hilink_reboot_mid_session(
    make_config: MakeConfig, hilink: tuple[HiLinkDevice, str]
) -> None:
    device, url = hilink
    probe = make_probe(make_config, {"source": "hilink", "url": url})

    async def rounds() -> list[Record]:
        out = await probe.run()
        device.reboot(down_requests=1)
        out += await probe.run()  # the device is still booting: no answer
        device.signal["rsrp"] = "-104dBm"
        out += await probe.run()  # the old session is gone: 125002, handshake, retry
        await probe.close()
        return out

    first, booting, after = asyncio.run(rounds())
    assert first.error is None
    assert booting.error == "no_modem"
    assert after.error is None and after.fields["rsrp_dbm"] == -104.0
    assert device.handshakes == 2


def test_hilink_bad_token_rehandshakes(
    make_config: MakeConfig, hilink: tuple[HiLinkDevice, str]
) -> None:
    device, url = hilink
    probe = make_probe(make_config, {"source": "hilink", "url": url})

    async def rounds() -> list[Record]:
        out = await probe.run()
        with device.lock:  # the device rotated the token
            for sid in device.sessions:
                device.sessions[sid] = "rotated"
        out += await probe.run()
        await probe.close()
        return out

    assert [r.error for r in asyncio.run(rounds())] == [None, None]
    assert device.handshakes == 2


def test_hilink_unknown_values(make_config: MakeConfig, hilink: tuple[HiLinkDevice, str]) -> None:
    device, url = hilink
    device.signal.update(rsrp="-32768dBm", rsrq="", sinr="Unknown", rssi=">=-51dBm")
    r = read(make_probe(make_config, {"source": "hilink", "url": url}))
    assert "rsrp_dbm" not in r.fields and "rsrq_db" not in r.fields and "sinr_db" not in r.fields
    assert r.fields["rssi_dbm"] == -51.0


def test_hilink_no_service_and_login(
    make_config: MakeConfig, hilink: tuple[HiLinkDevice, str]
) -> None:
    device, url = hilink
    device.status.update(ServiceStatus="1", CurrentNetworkTypeEx="0", CurrentNetworkType="0")
    assert read(make_probe(make_config, {"source": "hilink", "url": url})).error == (
        "not_registered"
    )
    device.login_required = True
    assert read(make_probe(make_config, {"source": "hilink", "url": url})).error == "permission"


def test_hilink_unreachable(make_config: MakeConfig) -> None:
    with hilink_device() as (_, url):
        pass  # stopped: nothing listens there any more
    r = read(make_probe(make_config, {"source": "hilink", "url": url}))
    assert r.error == "no_modem"


# -- doctor ----------------------------------------------------------------------------------


def doctor(tmp_path: Path, capsys: pytest.CaptureFixture[str], signal: dict[str, Any]) -> list[str]:
    doc = base_config(tmp_path)
    doc["uplinks"] = [{"name": "modem0", "operator": "telkomsel", "signal": signal}]
    cli.main(["doctor", "-c", str(write_config(tmp_path, doc))])
    out: list[str] = []
    keep = False
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith("       fix:"):
            keep = line[7:].startswith("modem ")
        if keep:  # the modem checks and their fixes
            out.append(line)
    return out


def test_doctor_modem_ok_then_disabled_then_denied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mm: MockModemManager
) -> None:
    modem = mm.add_modem()
    lines = doctor(tmp_path, capsys, {"source": "modemmanager", "bus": mm.address})
    assert lines[0] == f"[ok  ] modem modem0 ModemManager: running on the {mm.address} bus"
    assert lines[1].startswith("[ok  ] modem modem0: modemmanager: enabled, registered on ")
    assert "telkomsel (51010), 4G, RSRP -95" in lines[1]
    modem.state = STATE_DISABLED
    lines = doctor(tmp_path, capsys, {"source": "modemmanager", "bus": mm.address})
    assert lines[1].startswith("[FAIL] modem modem0: modem_disabled: ")
    assert "mmcli -m 0 -e" in lines[2]
    modem.state, modem.deny_setup = 8, True
    lines = doctor(tmp_path, capsys, {"source": "modemmanager", "bus": mm.address})
    assert lines[1].startswith("[FAIL] modem modem0: permission: ")
    assert "50-sinyal-modemmanager.rules" in lines[2]
    modem.deny_setup = False
    modem.operator_code, modem.operator_name = "51011", "XL"
    modem.tech = TECH_UMTS
    modem.signal = {"umts": {"rscp": -95.0, "ecio": -8.0}}
    lines = doctor(tmp_path, capsys, {"source": "modemmanager", "bus": mm.address})
    assert any(
        ln.startswith("[WARN] modem modem0 operator: the modem is on xlsmart") for ln in lines
    )
    assert any(ln.startswith("[WARN] modem modem0 technology: on 3G") for ln in lines)


def test_doctor_modemmanager_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("dbus-daemon")
    bus = PrivateBus()
    try:
        lines = doctor(tmp_path, capsys, {"source": "modemmanager", "bus": bus.address})
    finally:
        bus.close()
    assert lines[0].startswith("[FAIL] modem modem0 ModemManager: ModemManager (")
    assert "systemctl enable --now ModemManager" in lines[1]


def test_doctor_hilink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hilink: tuple[HiLinkDevice, str]
) -> None:
    device, url = hilink
    lines = doctor(tmp_path, capsys, {"source": "hilink", "url": url})
    assert lines[0].startswith("[ok  ] modem modem0: hilink: enabled, registered on telkomsel")
    device.login_required = True
    lines = doctor(tmp_path, capsys, {"source": "hilink", "url": url})
    assert lines[0].startswith("[FAIL] modem modem0: permission: ")
    assert "login" in lines[1]


def test_hilink_answer_without_end_is_cut_off(
    make_config: MakeConfig, hilink: tuple[HiLinkDevice, str]
) -> None:
    device, url = hilink
    device.status["padding"] = "x" * 100_000  # more than any real answer
    assert read(make_probe(make_config, {"source": "hilink", "url": url})).error == "no_modem"


def test_5g_nsa_reads_nr_then_the_lte_anchor(make_config: MakeConfig, mm: MockModemManager) -> None:
    modem = mm.add_modem()
    modem.tech = TECH_LTE | TECH_5GNR
    modem.signal = {"nr5g": {"rsrp": -88.0, "rsrq": -11.0, "snr": 15.0}, "lte": {"rsrp": -99.0}}
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.tags["access_tech"] == "nr5g" and r.fields["rsrp_dbm"] == -88.0
    modem.signal = {"nr5g": {}, "lte": {"rsrp": -99.0, "rsrq": -12.0}}
    r = read(make_probe(make_config, {"source": "modemmanager", "bus": mm.address}))
    assert r.tags["access_tech"] == "nr5g" and r.fields["rsrp_dbm"] == -99.0


# -- python-dbusmock's ModemManager template -------------------------------------------------


@pytest.fixture
def dbusmock_mm() -> Iterator[tuple[str, str]]:
    """python-dbusmock's modemmanager template (its own process, dbus-python) on a private
    bus, with AddSimpleModem and a Signal interface added through its Mock API."""
    require(importlib.util.find_spec("dbusmock") is not None, "needs python-dbusmock (dev extra)")
    require_tool("dbus-daemon")
    bus = PrivateBus()
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbusmock", "--system", "--template", "modemmanager"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        modem = asyncio.run(_add_simple_modem(bus.address))
        yield bus.address, modem
    finally:
        proc.terminate()
        proc.wait(10)
        bus.close()


async def _mock_call(bus: Any, path: str, member: str, signature: str, body: list[Any]) -> Any:
    from dbus_fast import Message, MessageType

    reply = await bus.call(
        Message(destination="org.freedesktop.ModemManager1", path=path,
                interface="org.freedesktop.DBus.Mock", member=member, signature=signature,
                body=body)
    )  # fmt: skip
    assert reply.message_type != MessageType.ERROR, reply.body
    return reply.body


async def _add_simple_modem(address: str) -> str:
    from dbus_fast import Variant
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    try:
        for _ in range(200):  # the mock owns its name once dbus-python is up
            try:
                body = await _mock_call(bus, "/org/freedesktop/ModemManager1",
                                        "AddSimpleModem", "", [])  # fmt: skip
                break
            except AssertionError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("python-dbusmock did not start")
        modem = str(body[0])
        signal = "org.freedesktop.ModemManager1.Modem.Signal"
        lte = {"rsrp": Variant("d", -101.0), "rsrq": Variant("d", -13.0),
               "snr": Variant("d", -32768.0), "rssi": Variant("d", -71.0)}  # fmt: skip
        props = {"Rate": Variant("u", 0), "Lte": Variant("a{sv}", lte)}
        await _mock_call(bus, modem, "AddProperties", "sa{sv}", [signal, props])
        setup = f"self.UpdateProperties('{signal}', {{'Rate': dbus.UInt32(args[0])}})"
        await _mock_call(bus, modem, "AddMethod", "sssss", [signal, "Setup", "u", "", setup])
        return modem
    finally:
        bus.disconnect()


def test_python_dbusmock_modemmanager_template(
    make_config: MakeConfig, dbusmock_mm: tuple[str, str]
) -> None:
    address, _modem = dbusmock_mm
    probe = make_probe(make_config, {"source": "modemmanager", "bus": address})
    r = read(probe)
    assert r.error is None, r
    assert r.tags["access_tech"] == "lte" and r.tags["operator"] == "theoperator"
    assert r.fields["rsrp_dbm"] == -101.0 and r.fields["rsrq_db"] == -13.0
    assert "sinr_db" not in r.fields  # -32768: unknown, not a figure
    assert r.fields["quality_pct"] == 70.0
    assert "plmn" not in r.fields  # 00101 is the test network (MCC 001): not a real PLMN
