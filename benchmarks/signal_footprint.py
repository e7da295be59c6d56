"""Signal probe footprint: agent CPU with only the signal probe, every 30 s, against a mocked
ModemManager on a private D-Bus bus; and proof that it sends no network traffic.

Starts dbus-daemon with its own config (tests/harness/modemmanager_mock.PrivateBus) and the
mocked ModemManager in a process of its own (one LTE modem whose values drift every second),
then `sinyal-agent run --plain` with one uplink `signal: {source: modemmanager}` on that bus,
no other probe and no collector, for --duration seconds (default 600). Every 5 s it samples the
agent's CPU time from /proc and every socket the agent holds: a socket found in
/proc/net/{tcp,tcp6,udp,udp6,raw,raw6} is an INET socket (traffic could leave); the D-Bus
connection is a Unix socket. Steady figures exclude the first --warmup seconds (imports).
Target: under 0.2 % of one core at a 30 s interval, no INET socket.

    .venv/bin/python benchmarks/signal_footprint.py [--duration 600]
Appends (replaces) the "## Signal probe" section of benchmarks/results/agent-footprint.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from common import BIN, RESULTS, ROOT, machine, machine_busy, proc_sample

sys.path.insert(0, str(ROOT))
from tests.harness.modemmanager_mock import PrivateBus

SECTION = "## Signal probe"
INET_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6")


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def inet_inodes() -> set[str]:
    out = set()
    for table in INET_TABLES:
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        out.update(line.split()[9] for line in lines if len(line.split()) > 9)
    return out


def config(tmp: Path, bus: str, interval: float) -> Path:
    doc = {
        "station": {"id": "3171011001001", "lat": -6.1754, "lon": 106.8272, "tz": "Asia/Jakarta"},
        "uplinks": [
            {"name": "modem0", "operator": "telkomsel",
             "signal": {"source": "modemmanager", "bus": bus}}
        ],
        "probes": {"signal": {"interval_s": interval}},
        "data_dir": str(tmp / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
    }  # fmt: skip
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def write_section(text: str) -> None:
    path = RESULTS / "agent-footprint.md"
    old = path.read_text() if path.exists() else "# Agent footprint\n"
    head, _, rest = old.partition(f"\n{SECTION}")
    tail = ""
    if rest:  # keep any later section
        nxt = rest.find("\n## ")
        tail = rest[nxt:] if nxt >= 0 else ""
    path.write_text(head.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--bin", type=Path, default=BIN, help="bin directory of the venv to measure")
    args = ap.parse_args()
    bus = PrivateBus()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    mock = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.modemmanager_mock", bus.address],
        env=env,
        cwd=ROOT,
    )
    try:
        time.sleep(2)  # the mock owns its name
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config(Path(tmp), bus.address, args.interval)
            load_before, wall0 = machine_busy(), time.monotonic()
            proc = subprocess.Popen(
                [str(args.bin / "sinyal-agent"), "run", "--plain", "-c", str(cfg),
                 "--duration", str(args.duration)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,  # this checkout's agent, whatever the venv has installed
            )  # fmt: skip
            t0 = time.monotonic()
            samples: list[tuple[float, float, float]] = []
            inet_seen: set[str] = set()
            sockets_seen: set[str] = set()
            while proc.poll() is None:
                try:
                    cpu, rss = proc_sample(proc.pid)
                    mine = socket_inodes(proc.pid)
                except (FileNotFoundError, ProcessLookupError):
                    break
                sockets_seen |= mine
                inet_seen |= mine & inet_inodes()
                samples.append((time.monotonic() - t0, cpu, rss))
                time.sleep(5)
            out, _ = proc.communicate()
            busy_pct = (
                100 * (machine_busy() - load_before) / ((time.monotonic() - wall0) * os.cpu_count())
                if os.cpu_count()
                else 0.0
            )
    finally:
        mock.terminate()
        mock.wait(10)
        bus.close()
    lines = [ln for ln in out.splitlines() if " signal " in ln]
    ok = sum(1 for ln in lines if " ok " in ln)
    steady = [s for s in samples if s[0] >= args.warmup]
    if len(steady) < 2:
        raise SystemExit(f"run too short for steady-state figures ({len(samples)} samples)")
    span = steady[-1][0] - steady[0][0]
    cpu_pct = 100 * (steady[-1][1] - steady[0][1]) / span
    unix = len(sockets_seen) - len(inet_seen)
    report = f"""{SECTION}

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; the machine was
{busy_pct:.0f} % busy meanwhile (its cores are shared with other work).
`sinyal-agent run --plain` for {args.duration:.0f} s with only the signal probe, every
{args.interval:.0f} s, reading a mocked ModemManager (tests/harness/modemmanager_mock.py, its
own process) on a private dbus-daemon; no collector, so the agent's only connection is D-Bus.
Steady state = {span:.0f} s after the first {args.warmup:.0f} s ({len(steady)} samples, every 5 s).
The figure is the whole agent process (scheduler, spool, heartbeat included), so the probe's own
share is at most this.

| metric | value | target |
|---|---|---|
| CPU, steady average | {cpu_pct:.3f} % of one core | < 0.2 % |
| CPU time, whole run incl. start-up | {samples[-1][1]:.2f} s | |
| steady RSS, max | {max(s[2] for s in steady):.1f} MB | |
| signal records | {len(lines)} ({ok} ok) | one per {args.interval:.0f} s |
| sockets held by the agent | {len(sockets_seen)}: {unix} Unix (D-Bus, the event loop's pair) | |
| INET sockets held by the agent | {len(inet_seen)} | 0: no network traffic |
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_section(report)
    print(report)


if __name__ == "__main__":
    main()
