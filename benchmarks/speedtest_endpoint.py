"""How fast the Speedtest Mini endpoint serves downloads to a local client.

Target: >= 1 Gbit/s to a local client, for both the built-in endpoint
(`sinyal-collector speedtest-server`) and nginx with deploy/nginx/speedtest.conf.
The client is curl: CLIENTS parallel downloads of random4000x4000.jpg (32 MB) over
loopback, repeated for SECONDS; the rate is the bytes curl received over the wall time.
Client and server share this machine's cores, so the figures are a floor.

Run as root (nginx binds, writes its temp files): .venv/bin/python benchmarks/speedtest_endpoint.py
Writes benchmarks/results/speedtest-endpoint.md.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Run as a script (python benchmarks/X.py): the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BIN, RESULTS, ROOT, machine

SECONDS = 5.0
CLIENTS = (1, 4)
FILE = "random4000x4000.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def builtin(workers: int) -> Iterator[str]:
    port = free_port()
    cmd = [str(BIN / "sinyal-collector"), "speedtest-server", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--workers", str(workers)])
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}/speedtest/"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def nginx(files: Path) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sinyal-nginx-") as tmp:
        site = (ROOT / "deploy" / "nginx" / "speedtest.conf").read_text()
        site = site.replace("listen 8081", f"listen 127.0.0.1:{port}")
        site = site.replace("/var/lib/sinyal/speedtest", str(files))
        # The serving path alone: the ticket check (auth_request to a collector, one small
        # subrequest per 32 MB file) is measured by nothing here and needs no collector.
        site = site.replace("auth_request /_sinyal_speedtest_auth;", "auth_request off;")
        (Path(tmp) / "site.conf").write_text(site)
        (Path(tmp) / "nginx.conf").write_text(
            f"worker_processes 2;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{ client_body_temp_path {tmp}/body; include {tmp}/site.conf; }}\n"
        )
        proc = subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf", "-g", "daemon off;"])
        try:
            wait_listening(port)
            yield f"http://127.0.0.1:{port}/speedtest/t/{UNCHECKED_TICKET}/"
        finally:
            proc.terminate()
            proc.wait(10)


UNCHECKED_TICKET = "00000000.0000000000." + "0" * 32  # the path's shape; nginx checks nothing


def curl_loop(url: str, until: float) -> int:
    total = 0
    while time.monotonic() < until:
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        total += int(out.stdout or 0)
    return total


def measure(base: str, clients: int) -> float:
    """Gbit/s received by `clients` parallel curl loops over SECONDS."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        totals = list(pool.map(curl_loop, [base + FILE] * clients, [t0 + SECONDS] * clients))
    return sum(totals) * 8 / (time.monotonic() - t0) / 1e9


def main() -> None:
    if shutil.which("nginx") is None and shutil.which("nginx", path="/usr/sbin") is None:
        raise SystemExit("needs nginx (apt-get install nginx-light)")
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="sinyal-speedtest-files-") as files:
        Path(files).chmod(0o755)  # nginx's workers run as nobody
        subprocess.run(
            [str(BIN / "sinyal-collector"), "speedtest-server", "--write-files", files],
            check=True,
        )
        servers = {
            "built-in, 1 worker": lambda: builtin(1),
            "built-in, 2 workers": lambda: builtin(2),
            "nginx (deploy/nginx/speedtest.conf), 2 workers": lambda: nginx(Path(files)),
        }
        for name, start in servers.items():
            with start() as url:
                for clients in CLIENTS:
                    rows.append((name, clients, measure(url, clients)))
                    print(f"{name}: {clients} client(s): {rows[-1][2]:.2f} Gbit/s")
    lines = [
        "# Speedtest endpoint: download rate to a local client",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        f"curl downloads of {FILE} (32 MB) over loopback for {SECONDS:g} s, clients in "
        "parallel; client and server share the machine's cores. Target: >= 1 Gbit/s.",
        "",
        "| server | clients | Gbit/s | >= 1 Gbit/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {c} | {g:.2f} | {'yes' if g >= 1 else 'NO'} |" for n, c, g in rows]
    (RESULTS / "speedtest-endpoint.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
