"""Checks that start-up and `doctor` share: what the environment allows, and how to fix it."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.clock import clock_synced
from agent.config import AgentConfig, CollectorEndpoint
from agent.netutil import SourceUnavailable, uplink_source

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_FREE_BYTES = 200 * 2**20


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok / warn / fail
    detail: str
    fix: str = ""


def icmp_fix() -> str:
    python = os.path.realpath(sys.executable)
    return (
        "grant raw ICMP sockets to the agent: run it under systemd with "
        "AmbientCapabilities=CAP_NET_RAW (deploy/systemd/sinyal-agent.service does), or "
        f"`sudo setcap cap_net_raw+ep {python}`; or allow unprivileged ICMP for its group: "
        "`sudo sysctl -w net.ipv4.ping_group_range='0 2147483647'` "
        "(persist it in /etc/sysctl.d/60-sinyal.conf)"
    )


def icmp_mode() -> tuple[bool | None, Check]:
    """(privileged?, check): raw sockets when allowed, else unprivileged ICMP, else None."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        return True, Check("icmp", OK, "raw ICMP sockets allowed (privileged mode)")
    except PermissionError:
        pass
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
        return False, Check(
            "icmp", OK, "unprivileged ICMP sockets allowed (net.ipv4.ping_group_range)"
        )
    except PermissionError:
        pass
    groups = _read("/proc/sys/net/ipv4/ping_group_range") or "unknown"
    return None, Check(
        "icmp",
        FAIL,
        f"no raw ICMP socket (CAP_NET_RAW missing) and unprivileged ICMP is closed "
        f"(net.ipv4.ping_group_range = {groups.split()!r}, gid {os.getgid()} not in it)",
        icmp_fix(),
    )


def clock_check() -> Check:
    synced = clock_synced()
    if synced == 1:
        return Check("clock", OK, "system clock is synchronised (adjtimex)")
    if synced == 0:
        return Check(
            "clock",
            WARN,
            "system clock is NOT synchronised: measured times may be wrong",
            "enable time sync: `sudo timedatectl set-ntp true` (systemd-timesyncd) or install "
            "chrony; a Raspberry Pi has no battery clock and boots with a stale date",
        )
    return Check("clock", WARN, "cannot tell whether the clock is synchronised")


def disk_check(data_dir: Path) -> Check:
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_mb = usage.free / 2**20
    if usage.free < MIN_FREE_BYTES:
        return Check(
            "disk",
            FAIL,
            f"{free_mb:.0f} MB free under {data_dir}",
            f"free space: at least {MIN_FREE_BYTES // 2**20} MB is needed for the spool",
        )
    return Check("disk", OK, f"{free_mb:.0f} MB free under {data_dir}")


def data_dir_check(data_dir: Path) -> Check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        test = data_dir / ".write-test"
        test.write_text("ok")
        test.unlink()
    except OSError as exc:
        return Check(
            "data_dir",
            FAIL,
            f"cannot write to {data_dir}: {exc.strerror or exc}",
            f"create it and give the agent's user write access: "
            f"`sudo install -d -o $(whoami) {data_dir}`, or set data_dir in the config",
        )
    return Check("data_dir", OK, f"{data_dir} is writable")


def uplink_checks(config: AgentConfig) -> list[Check]:
    out = []
    for u in config.uplinks:
        try:
            src = uplink_source(u)
            if src is not None:
                with socket.socket(
                    socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM
                ) as s:
                    s.bind((src, 0))
        except SourceUnavailable as exc:
            out.append(
                Check(
                    f"uplink {u.name}",
                    FAIL,
                    str(exc),
                    "bring the interface up (check the modem / SIM) or fix uplinks[].interface",
                )
            )
            continue
        except OSError as exc:
            out.append(
                Check(
                    f"uplink {u.name}",
                    FAIL,
                    f"source address {src} is not on this machine ({exc.strerror})",
                    "fix uplinks[].source, or use uplinks[].interface",
                )
            )
            continue
        how = f"bound to {src}" if src else "routed by the system"
        out.append(Check(f"uplink {u.name}", OK, f"{how}, operator {u.operator}"))
    return out


def collector_checks(config: AgentConfig) -> list[Check]:
    """Reachability, token validity (an empty upload: nothing is written) and clock offset.
    The collector's answers are read bounded in size and time (agent.safehttp)."""
    c = config.collector
    if c is None:
        return [
            Check(
                "collector",
                WARN,
                "no collector configured: results stay in the spool",
                "add a collector: section (url and token_file)",
            )
        ]
    import asyncio

    return asyncio.run(_collector_checks(config, c))


async def _collector_checks(config: AgentConfig, c: CollectorEndpoint) -> list[Check]:
    import json

    import httpx

    from agent import safehttp
    from agent.timekeeper import plausible_ns
    from agent.uploader import envelope_bytes, upload_path

    verify: str | bool = str(c.ca_bundle) if c.ca_bundle else True
    deadline = c.timeout_s * safehttp.DEADLINE_FACTOR
    out: list[Check] = []
    try:
        async with httpx.AsyncClient(
            base_url=c.url.rstrip("/"), timeout=c.timeout_s, verify=verify
        ) as h:
            t0 = time.time()
            r = await safehttp.request(h, "GET", "/api/v1/time", deadline_s=deadline)
            t1 = time.time()
            if r.status != 200:
                raise safehttp.AnswerError(f"/api/v1/time answered HTTP {r.status}")
            server_ns = json.loads(r.body).get("unix_ns")
            if not plausible_ns(server_ns):
                raise safehttp.AnswerError(
                    f"implausible time from the collector: {server_ns!r:.40}"
                )
            offset_ms = (server_ns / 1e9 - (t0 + t1) / 2) * 1000
            out.append(Check("collector", OK, f"{c.url} answers in {(t1 - t0) * 1000:.0f} ms"))
            if abs(offset_ms) > 2000:
                out.append(
                    Check(
                        "clock offset",
                        WARN,
                        f"this clock is {-offset_ms / 1000:+.1f} s off the collector's",
                        "enable time sync (timedatectl set-ntp true, or chrony)",
                    )
                )
            else:
                out.append(Check("clock offset", OK, f"{offset_ms:+.0f} ms from the collector"))
            try:
                token = c.read_token()
            except OSError as exc:
                out.append(
                    Check(
                        "token",
                        FAIL,
                        f"cannot read {c.token_file}: {exc.strerror}",
                        "check collector.token_file and its permissions",
                    )
                )
                return out
            r = await safehttp.request(
                h,
                "POST",
                upload_path(config.station.id),
                deadline_s=deadline,
                content=envelope_bytes(config.station.id, []),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            station = config.station.id
            answers = {
                200: (OK, f"accepted for station {station}", ""),
                401: (
                    FAIL,
                    "the collector does not know this token (wrong, or revoked)",
                    "ask the control room for a new token (sinyal-collector agents add)",
                ),
                403: (
                    FAIL,
                    f"the token may not write for station {station}",
                    "check station.id, or ask for a token scoped to this station",
                ),
            }
            status, detail, fix = answers.get(
                r.status, (WARN, f"could not check: HTTP {r.status}", "")
            )
            out.append(Check("token", status, detail, fix))
    except (
        httpx.HTTPError,
        safehttp.AnswerError,
        ValueError,
        AttributeError,
        RecursionError,
    ) as exc:
        out.append(
            Check(
                "collector",
                FAIL,
                f"{c.url} not reachable: {_in_words(exc, c.url)}",
                "check the uplink and collector.url; results stay in the spool "
                "until it is reachable",
            )
        )
    return out


def resolve_checks(config: AgentConfig) -> list[Check]:
    """Every host name of the config must resolve: a probe of a name that does not measures
    nothing but its own DNS failure."""
    from agent.targets import hostnames, unresolved

    bad = unresolved(config)
    if not bad:
        n = len(hostnames(config))
        return [Check("names", OK, f"{n} host name(s) resolve")] if n else []
    return [
        Check(
            f"name {u.host}",
            FAIL,
            f"{u.path}: cannot resolve {u.host!r} ({u.reason})",
            "check the spelling in the config and the uplink's DNS (resolv.conf); "
            "an IP address needs no DNS",
        )
        for u in bad
    ]


def upload_check(config: AgentConfig) -> list[Check]:
    """What the running agent last saw when uploading (from its spool): the live checks
    above test the collector now, this says whether results have been getting out."""
    from agent.spool import SPOOL_FILE, read_state
    from agent.uploadstate import NEVER, OK, Health, format_local

    state = read_state(config.data_dir / SPOOL_FILE) if config.collector is not None else None
    if state is None:
        return []
    h = Health.from_state(state)
    tz = config.station.tz
    if h.kind == OK:
        return [
            Check(
                "uploads", OK, f"the agent's uploads work (last {format_local(h.last_ok_at, tz)})"
            )
        ]
    if h.kind == NEVER:
        return [Check("uploads", WARN, "the agent has not uploaded anything yet")]
    since = format_local(h.since, tz) if h.since else "?"
    return [
        Check(
            "uploads",
            WARN,
            f"the agent's uploads FAIL since {since}: {h.reason}; last ok "
            f"{format_local(h.last_ok_at, tz)}",
            "see the checks above for the cause; `sinyal-agent status` shows the backlog",
        )
    ]


def exposure_checks(config: AgentConfig) -> list[Check]:
    """What exposes the token or the data: a plain-http collector (allowed by
    collector.allow_insecure) and a token file others can read. Warnings at each start
    and in doctor; nothing when all is well."""
    c = config.collector
    if c is None:
        return []
    out: list[Check] = []
    parts = urlsplit(c.url)
    if parts.scheme == "http" and c.allow_insecure:
        out.append(
            Check(
                "collector tls",
                WARN,
                f"collector.url is plain http to {parts.hostname} (collector.allow_insecure): "
                "the token and every result travel unencrypted and can be altered on the way",
                "use an https:// collector URL and remove allow_insecure",
            )
        )
    if c.token_file is not None:
        try:
            mode = c.token_file.stat().st_mode
        except OSError:
            return out  # the collector check says why it cannot be read
        if mode & 0o077:
            out.append(
                Check(
                    "token file",
                    WARN,
                    f"{c.token_file} is readable by other users (mode {stat.S_IMODE(mode):04o})",
                    f"chmod 600 {c.token_file}",
                )
            )
    return out


def run_checks(config: AgentConfig) -> list[Check]:
    checks = [Check("config", OK, f"{config.path} is valid")]
    if config.probes.icmp is not None and config.probes.icmp.enabled:
        checks.append(icmp_mode()[1])
    checks += [clock_check(), data_dir_check(config.data_dir), disk_check(config.data_dir)]
    checks += uplink_checks(config)
    if any(u.signal is not None for u in config.uplinks):
        from agent.modem.doctor import signal_checks

        checks += signal_checks(config)
    checks += resolve_checks(config)
    checks += exposure_checks(config)
    checks += collector_checks(config)
    checks += upload_check(config)
    return checks


def _in_words(exc: Exception, url: str) -> str:
    import httpx

    from agent.uploadstate import classify_exception

    if isinstance(exc, httpx.HTTPError):
        return classify_exception(exc, httpx.URL(url).host)[1]
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None
