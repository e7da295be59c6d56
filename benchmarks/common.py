"""Helpers shared by the benchmarks: loopback configs, demo targets, /proc sampling."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loopback_config(
    tmp: Path, targets: int = 10, icmp_interval: float = 60, slow_interval: float = 300
) -> Path:
    """A config probing `targets` loopback addresses, plus the demo DNS and HTTP targets."""
    doc: dict[str, Any] = {
        "station": {
            "id": "3171011001001",
            "name": "bench",
            "lat": -6.1754,
            "lon": 106.8272,
            "tz": "Asia/Jakarta",
        },
        "uplinks": [{"name": "loopback", "operator": "local"}],
        "probes": {
            "icmp": {
                "interval_s": icmp_interval,
                "targets": [
                    {"host": f"127.0.0.{i}", "name": f"lo{i}"} for i in range(1, targets + 1)
                ],
            },
            "dns": {
                "interval_s": slow_interval,
                "resolvers": [{"address": "127.0.0.1", "port": 5353, "name": "local"}],
                "names": ["kpu.sinyal.test"],
            },
            "http": {
                "interval_s": slow_interval,
                "targets": [{"url": "http://127.0.0.1:8079/", "name": "local"}],
            },
        },
        "data_dir": str(tmp / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
    }
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def demo_targets() -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "local" / "targets.py")], stdout=subprocess.DEVNULL
    )
    time.sleep(0.8)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(5)


def proc_sample(pid: int) -> tuple[float, float]:
    """(CPU seconds used so far, RSS in MB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return cpu, rss_kb / 1024


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"kernel {platform.release()}"
    )
