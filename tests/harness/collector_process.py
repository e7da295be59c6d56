"""The collector as users run it: `sinyal-collector serve -c FILE` in a process of its own.

The security tests attack this process with real sockets and read its memory from /proc,
so it must not share the test's interpreter (as tests.harness.collector_stack's thread does).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from collector.config import CollectorConfig
from collector.registry import Registry
from tests.conftest import ROOT
from tests.harness.collector_stack import STATION, STATIONS_CSV, collector_config_file

OTHER_STATION = "3273011001012"  # in config/stations.example.csv, outside region 3171

__all__ = [
    "OTHER_STATION",
    "STATION",
    "Attack",
    "CollectorProcess",
    "collector_config_file",
    "collector_process",
]


@dataclass
class CollectorProcess:
    cfg: CollectorConfig
    proc: subprocess.Popen[bytes]
    url: str
    token: str  # scoped to STATION
    token_id: str
    other_token: str  # OTHER_STATION
    registry: Registry

    @property
    def host_port(self) -> tuple[str, int]:
        return self.cfg.listen.host, self.cfg.listen.port

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log(self) -> str:
        path = self.cfg.data_dir / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _limit_files(n: int | None) -> Any:
    if n is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return apply


@contextlib.contextmanager
def collector_process(
    cfg: CollectorConfig,
    file_limit: int | None = None,
    verify: ssl.SSLContext | bool = True,
    env: dict[str, str] | None = None,
    serve_args: tuple[str, ...] = (),
    ports: tuple[int, ...] = (),
) -> Iterator[CollectorProcess]:
    """Start `serve` on cfg (tokens for STATION and its neighbour added first); yield when
    /healthz answers (on each of `ports` too: `serve --workers`' other ports).
    `file_limit` sets the process's RLIMIT_NOFILE (soft and hard); `serve_args` are added
    to the command line."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(cfg.registry_path, refresh_s=0)
    registry.import_stations_csv(STATIONS_CSV)
    info, token = registry.add_token(station=STATION, note="test")
    _, other = registry.add_token(station=OTHER_STATION, note="test other")
    scheme = "https" if cfg.listen.tls else "http"
    url = f"{scheme}://{cfg.listen.host}:{cfg.listen.port}"
    log = open(cfg.data_dir / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "serve", "-c", str(cfg.path), *serve_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        preexec_fn=_limit_files(file_limit),
    )
    try:
        deadline = time.monotonic() + 30
        for port in (cfg.listen.port, *ports):
            health = f"{scheme}://{cfg.listen.host}:{port}/healthz"
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"collector exited {proc.returncode}: {_tail(cfg)}")
                try:
                    if httpx.get(health, timeout=1, verify=verify).status_code == 200:
                        break
                except (httpx.HTTPError, ssl.SSLError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not answer {health}: {_tail(cfg)}")
                time.sleep(0.1)
        yield CollectorProcess(cfg, proc, url, token, info.id, other, registry)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        registry.close()


def _tail(cfg: CollectorConfig) -> str:
    path = cfg.data_dir / "serve.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def raw_request(
    host_port: tuple[str, int], data: bytes, timeout: float = 5.0
) -> tuple[int | None, bytes]:
    """Send raw bytes, read the answer until close; (status or None, answer)."""
    with socket.create_connection(host_port, timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        return read_answer(s)


def read_answer(s: socket.socket) -> tuple[int | None, bytes]:
    chunks = []
    with contextlib.suppress(OSError):
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    return status_of(answer), answer


def status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


class Attack:
    """Keeps `n` idle or slowloris connections open against the collector, reopening each
    one the collector closes, until stopped."""

    def __init__(self, host_port: tuple[str, int], n: int) -> None:
        self.host_port = host_port
        self.n = n
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        socks: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                socks = [s for s in socks if _alive(s)]
                while len(socks) < self.n and not self.stop.is_set():
                    try:
                        s = socket.create_connection(self.host_port, timeout=2)
                    except OSError:
                        break
                    s.setblocking(False)
                    if self.opened % 2:  # every other one a slowloris
                        with contextlib.suppress(OSError):
                            s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    socks.append(s)
                    self.opened += 1
                for s in socks[1::2]:
                    with contextlib.suppress(OSError):
                        s.send(b"X")
                self.stop.wait(0.2)
        finally:
            for s in socks:
                s.close()

    def __enter__(self) -> Attack:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _alive(s: socket.socket) -> bool:
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return True
    except OSError:
        s.close()
        return False
    if data:
        return True
    s.close()
    return False
