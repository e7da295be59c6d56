"""Measuring inside lab namespaces: the independent tools (fping, iperf3), whose code is not
Sinyal's, and Sinyal's own ICMP round (`sinyal-agent once --json`) to compare with them.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.harness.lab.lab import Node


@dataclass(frozen=True)
class PingRound:
    by_seq: list[float | None]  # RTT in ms per request in sending order, None: no reply

    @property
    def sent(self) -> int:
        return len(self.by_seq)

    @property
    def rtts(self) -> list[float]:
        return [r for r in self.by_seq if r is not None]

    @property
    def lost(self) -> int:
        return self.sent - len(self.rtts)


def fping_command(addr: str, count: int, period_ms: float, timeout_ms: float = 2000) -> list[str]:
    fping = shutil.which("fping") or "fping"
    return [
        fping,
        "-C",
        str(count),
        "-p",
        f"{period_ms:g}",
        "-t",
        f"{timeout_ms:g}",
        "-q",
        addr,
    ]


def parse_fping(addr: str, count: int, stderr: str) -> PingRound:
    """fping -C output ('ADDR : 1.23 - 4.56 ...' on stderr, '-' for no reply)."""
    line = next(x for x in stderr.splitlines() if x.startswith(f"{addr} "))
    values = line.split(":", 1)[1].split()
    if len(values) != count:
        raise RuntimeError(f"fping gave {len(values)} values for {count} pings: {stderr}")
    return PingRound([None if v == "-" else float(v) for v in values])


def fping(
    node: Node, addr: str, count: int, period_ms: float, timeout_ms: float = 2000
) -> PingRound:
    """`count` echo requests `period_ms` apart from `node` to `addr`."""
    proc = subprocess.run(
        [*node.prefix(), *fping_command(addr, count, period_ms, timeout_ms)],
        capture_output=True,
        text=True,
        timeout=count * period_ms / 1000 + timeout_ms / 1000 + 30,
    )
    return parse_fping(addr, count, proc.stderr)


def iperf3(
    node: Node,
    server: tuple[str, int],
    seconds: float = 3,
    *,
    reverse: bool = False,
    omit_s: float = 1,
    udp_mbit: float | None = None,
) -> dict[str, Any]:
    """An iperf3 client run from `node`; its JSON result (``end`` holds the summaries)."""
    cmd = [
        shutil.which("iperf3") or "iperf3",
        "-c",
        server[0],
        "-p",
        str(server[1]),
        "-t",
        f"{seconds:g}",
        "-O",
        f"{omit_s:g}",
        "-J",
    ]
    if reverse:
        cmd.append("-R")
    if udp_mbit is not None:
        cmd += ["-u", "-b", f"{udp_mbit * 1e6:.0f}"]
    # An iperf3 server takes one test at a time and may still be closing the last one
    # (its control connection crosses the delayed path too): then it refuses; try again.
    for attempt in range(3):
        proc = subprocess.run(
            [*node.prefix(), *cmd], capture_output=True, text=True, timeout=seconds + omit_s + 30
        )
        result: dict[str, Any] = json.loads(proc.stdout)
        if "error" not in result:
            return result
        if attempt < 2 and any(s in result["error"] for s in ("busy", "control message")):
            time.sleep(1)
            continue
        break
    raise RuntimeError(f"iperf3: {result['error']}")


def tcp_goodput_mbit(result: dict[str, Any]) -> float:
    """Received TCP payload rate of an iperf3 run, Mbit/s (10^6 bit/s)."""
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6


def expected_goodput_mbit(rate_mbit: float, mss: int = 1448) -> float:
    """TCP payload rate that a tbf of `rate_mbit` lets through with full-size segments.

    tbf counts whole frames (payload + 32 B TCP with timestamps + 20 B IP + 14 B Ethernet).
    """
    return rate_mbit * mss / (mss + 32 + 20 + 14)


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[int, int]:
    """Exact two-sided interval [lo, hi] holding Binomial(n, p) with at least `confidence`.

    Each tail outside it has probability <= (1 - confidence) / 2.
    """
    pf, tail = Fraction(str(p)), (1 - Fraction(str(confidence))) / 2
    cdf, lo, hi = Fraction(0), None, n
    for k in range(n + 1):
        cdf += math.comb(n, k) * pf**k * (1 - pf) ** (n - k)
        if lo is None and cdf > tail:
            lo = k  # P(X < lo) <= tail
        if cdf >= 1 - tail:
            hi = k  # P(X > hi) <= tail
            break
    assert lo is not None
    return lo, hi


def sinyal_once(
    node: Node, workdir: Path, probes: dict[str, Any], timeout_s: float = 60
) -> list[dict[str, Any]]:
    """`sinyal-agent once --json` run inside `node` with the given `probes` section; records.

    The agent is the installed console script of this checkout (raw sockets: run as root).
    """
    doc = {
        "station": {
            "id": "3171011001001",
            "name": "lab",
            "lat": -6.1754,
            "lon": 106.8272,
            "tz": "Asia/Jakarta",
        },
        "uplinks": [{"name": "lab", "operator": "lab"}],
        "probes": probes,
        "data_dir": str(workdir / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "agent.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    agent = Path(sys.executable).parent / "sinyal-agent"
    proc = subprocess.run(
        [*node.prefix(), str(agent), "once", "--json", "--no-spool", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sinyal-agent once exited {proc.returncode}: {proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def sinyal_icmp(
    node: Node,
    addr: str,
    workdir: Path,
    *,
    count: int = 10,
    spacing_s: float = 0.2,
    timeout_s: float = 2.0,
) -> dict[str, Any]:
    """One ICMP round of Sinyal's agent from `node` to `addr`; the record's fields."""
    icmp = {
        "interval_s": math.ceil((count - 1) * spacing_s + count * timeout_s) + 1,
        "count": count,
        "spacing_s": spacing_s,
        "timeout_s": timeout_s,
        "targets": [{"host": addr, "name": "core"}],
    }
    round_s = (count - 1) * spacing_s + timeout_s
    (record,) = sinyal_once(node, workdir, {"icmp": icmp}, timeout_s=round_s + 30)
    fields: dict[str, Any] = record["fields"]
    return fields


def sinyal_and_fping(
    node: Node,
    addr: str,
    workdir: Path,
    *,
    count: int,
    spacing_s: float,
    timeout_s: float = 2.0,
) -> tuple[dict[str, Any], PingRound]:
    """A Sinyal round and an fping round of the same size, on the same path at the same time.

    fping starts first, on purpose: both use raw sockets and tell their replies apart by the
    ICMP identifier, which is fping's pid and icmplib's pid + 1, so an fping started right
    after the agent (pid + 1) would share the agent's identifier and take its replies.
    """
    fping_proc = subprocess.Popen(
        [*node.prefix(), *fping_command(addr, count, spacing_s * 1000, timeout_s * 1000)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ours = sinyal_icmp(
            node, addr, workdir, count=count, spacing_s=spacing_s, timeout_s=timeout_s
        )
        _, err = fping_proc.communicate(timeout=count * spacing_s + timeout_s + 30)
    finally:
        if fping_proc.poll() is None:
            fping_proc.kill()
            fping_proc.wait()
    return ours, parse_fping(addr, count, err)
