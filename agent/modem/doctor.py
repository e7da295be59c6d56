"""`sinyal-agent doctor` for modems: ModemManager running, the modem enabled and registered, the
agent allowed to read it (polkit, D-Bus policy), the HiLink API answering; with the fix."""

from __future__ import annotations

import asyncio

from agent.config import AgentConfig, SignalProbeConfig, Uplink
from agent.contract.record import ErrorCode
from agent.modem import GENERATION, SourceError, operator_label
from agent.modem.modemmanager import ModemManagerSource
from agent.preflight import FAIL, OK, WARN, Check

POLKIT_FIX = (
    "allow the agent's user to control the modem: sudo cp "
    "deploy/systemd/50-sinyal-modemmanager.rules /etc/polkit-1/rules.d/ (the agent runs as "
    "user sinyal); or check the D-Bus policy in /etc/dbus-1/system.d/"
)
_FIXES = {
    "modemmanager": {
        ErrorCode.NO_MODEM: "plug the modem in and check `mmcli -L`; set uplinks[].signal.modem "
        "to its IMEI or port when there are several",
        ErrorCode.MODEM_DISABLED: "enable it: sudo mmcli -m 0 -e (a SIM PIN: "
        "sudo mmcli -i 0 --pin=XXXX)",
        ErrorCode.NOT_REGISTERED: "check the SIM and coverage: mmcli -m 0 shows the state; "
        "move the modem or antenna",
        ErrorCode.PERMISSION: POLKIT_FIX,
        ErrorCode.UNSUPPORTED: "this modem does not report signal values; use another modem "
        "or source: hilink",
    },
    "hilink": {
        ErrorCode.NO_MODEM: "check that the device is plugged in and that uplinks[].signal.url "
        "(default: the interface's gateway, else http://192.168.8.1) opens its web page",
        ErrorCode.MODEM_DISABLED: "insert or unlock the SIM in the device's web page",
        ErrorCode.NOT_REGISTERED: "check the SIM and coverage in the device's web page",
        ErrorCode.PERMISSION: "the device asks for a login: turn off its login in the web page",
        ErrorCode.UNSUPPORTED: "this device's firmware lacks the signal API; use a "
        "ModemManager-managed modem",
    },
}


async def _check_uplink(uplink: Uplink, cfg: SignalProbeConfig) -> list[Check]:
    from agent.probes.signal import make_source

    assert uplink.signal is not None
    src = uplink.signal
    name = f"modem {uplink.name}"
    out: list[Check] = []
    source = make_source(src, uplink, cfg)
    try:
        if isinstance(source, ModemManagerSource):
            running = await source.service_running()
            if running is not None:
                out.append(Check(f"{name} ModemManager", FAIL, running, _mm_fix(running)))
                return out
            out.append(Check(f"{name} ModemManager", OK, f"running on the {src.bus} bus"))
        try:
            reading = await asyncio.wait_for(source.read(), 4 * cfg.timeout_s)
            if isinstance(source, ModemManagerSource):
                # read() skips Setup when the refresh is on already (another process, an
                # earlier run as root): ask again, so a missing polkit rule shows now.
                await asyncio.wait_for(source.enable_refresh(), 2 * cfg.timeout_s)
        except SourceError as exc:
            fix = _FIXES[src.source].get(exc.code, "")
            out.append(Check(name, FAIL, f"{exc.code.value}: {exc.message}", fix))
            return out
        except TimeoutError:
            out.append(Check(name, FAIL, "the modem did not answer", _FIXES[src.source][
                ErrorCode.NO_MODEM]))  # fmt: skip
            return out
        values = ", ".join(f"{k.split('_')[0].upper()} {v:g}" for k, v in reading.values.items())
        tech = GENERATION.get(reading.access_tech, reading.access_tech)
        network = operator_label(reading.plmn, reading.operator_name) or "unknown network"
        detail = (
            f"{src.source}: enabled, registered on {network} ({reading.plmn or '?'}), "
            f"{tech}, {values or 'no signal values yet'}"
        )
        out.append(Check(name, OK, detail))
        if uplink.operator != "unknown" and network != uplink.operator:
            out.append(
                Check(
                    f"{name} operator",
                    WARN,
                    f"the modem is on {network}, the uplink is configured as {uplink.operator}",
                    "roaming or the wrong SIM: check the SIM, or set uplinks[].operator",
                )
            )
        if reading.access_tech in ("umts", "gsm"):
            out.append(
                Check(
                    f"{name} technology",
                    WARN,
                    f"on {tech} ({reading.access_tech}), not 4G",
                    "weak 4G coverage here, or the modem is locked to 3G/2G (mmcli "
                    "--set-allowed-modes)",
                )
            )
        return out
    finally:
        await source.close()


def _mm_fix(problem: str) -> str:
    if "refused" in problem or "denied" in problem:
        return POLKIT_FIX
    return (
        "install and start it: sudo apt install modemmanager && "
        "sudo systemctl enable --now ModemManager"
    )


def signal_checks(config: AgentConfig) -> list[Check]:
    """One or more checks per uplink with `signal:`; none when no uplink has one."""
    cfg = config.probes.signal
    uplinks = [u for u in config.uplinks if u.signal is not None]
    if cfg is None or not uplinks:
        return []

    async def all_checks() -> list[Check]:
        results = await asyncio.gather(*(_check_uplink(u, cfg) for u in uplinks))
        return [c for checks in results for c in checks]

    return asyncio.run(all_checks())


__all__ = ["POLKIT_FIX", "signal_checks"]
