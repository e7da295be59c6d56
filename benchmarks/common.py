"""Helpers shared by the benchmarks: loopback configs, demo targets, /proc sampling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from collector.regions import tps_code

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


def stations_csv(path: Path, n: int) -> list[str]:
    """A registry CSV of `n` stations (benchmarks' fleets): their ids."""
    ids = [tps_code("3171", i) for i in range(n)]  # well-formed TPS codes of Jakarta Pusat
    lines = ["id,name,province,regency,lat,lon,tz,expected_operator"]
    lines += [
        f"{s},TPS {s},DKI Jakarta,Kota Jakarta Pusat,-6.17,106.82,Asia/Jakarta,telkomsel"
        for s in ids
    ]
    path.write_text("\n".join(lines) + "\n")
    return ids


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


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait (up to about 30 s) until the collector `proc` answers `url`/healthz with 200;
    raise if it exits or does not."""
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited ({proc.returncode}) before {url} answered")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"collector at {url} did not start")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot, all cores (from /proc/stat):
    user, nice, system, irq and softirq; the loopback traffic's kernel work included."""
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"kernel {platform.release()}"
    )


Check = Callable[[int, bytes], None]  # (HTTP status, response body): raises when wrong


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


async def post_http(
    url: str | Sequence[str],
    requests: Sequence[tuple[bytes, Mapping[str, str]]],
    seconds: float,
    concurrency: int,
    check: Check,
    paths: Sequence[str] | None = None,
    route: Sequence[int] | None = None,
) -> tuple[int, float, list[float]]:
    """POST (body, headers) in turn for `seconds` over `concurrency` keep-alive connections;
    (requests made, elapsed, latencies). Every answer goes through `check`. `paths`: each
    request's own path (POST /api/v1/stations/{station}/measurements), else the url's.
    Several urls (collector processes): `route` gives each request's url (its index), as a
    proxy routing by station would; the connections are shared out among the urls.

    A minimal HTTP/1.1 client on asyncio streams, with each request's bytes built before the
    clock starts: httpx costs about 1.4 ms of CPU a request here, so on a 2-core machine it
    would take a third of a core from the servers it measures and measure itself."""
    urls = [url] if isinstance(url, str) else list(url)
    if len(urls) > concurrency:
        raise ValueError(f"{len(urls)} urls need at least as many connections ({concurrency})")
    routes = route if route is not None else [0] * len(requests)
    wires: list[list[bytes]] = [[] for _ in urls]
    addresses, targets = [], []
    for u in urls:
        parts = urlsplit(u)
        addresses.append((parts.hostname or "127.0.0.1", parts.port or 80))
        targets.append(f"{parts.path}?{parts.query}" if parts.query else parts.path)
    for i, (body, headers) in enumerate(requests):
        k = routes[i]
        host, port = addresses[k]
        target = paths[i] if paths else targets[k]
        wires[k].append(
            b"".join(
                (
                    f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode(),
                    *(f"{hk}: {hv}\r\n".encode() for hk, hv in headers.items()),
                    f"Content-Length: {len(body)}\r\n\r\n".encode(),
                    body,
                )
            )
        )
    latencies: list[float] = []
    next_i = [0] * len(urls)
    t_end = time.monotonic() + seconds

    async def worker(k: int) -> None:
        host, port = addresses[k]
        wire = wires[k]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < t_end and next_i[k] < len(wire):
                request = wire[next_i[k]]
                next_i[k] += 1
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                text = await reader.readexactly(length) if length else b""
                latencies.append(time.perf_counter() - t0)
                check(status, text)
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker(w % len(urls)) for w in range(concurrency)))
    return len(latencies), time.monotonic() - t0, latencies
