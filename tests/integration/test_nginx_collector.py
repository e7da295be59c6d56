"""deploy/nginx/collector.conf as shipped (listen, certificate and servers replaced), run by
Debian's nginx with TLS in front of two real collector processes sharing one registry and
one InfluxDB: a station always lands on the same process, both get stations, a stopped
process's stations move to the other and come back when it is started again."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from collector.registry import Registry
from tests.conftest import ROOT, require_tool
from tests.harness.collector_process import CollectorProcess, collector_process
from tests.harness.collector_stack import STATION, collector_config_file, envelope, golden
from tests.harness.dbs import InfluxServer
from tests.harness.nginx import running_nginx
from tests.harness.servers import free_port

SITE = ROOT / "deploy" / "nginx" / "collector.conf"
STATIONS = [f"3171{i:09d}" for i in range(40)]  # in the region token's prefix


def served_200(c: CollectorProcess) -> float:
    """The process's count of ingest requests answered 200 (read on its own port)."""
    text = httpx.get(f"{c.url}/metrics", timeout=10).text
    found = re.search(r'^sinyal_requests_total\{status="200"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@dataclass
class Front:
    url: str
    verify: ssl.SSLContext
    token: str  # region 3171

    def upload(self, station: str, path: str | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.url}{path or f'/api/v1/stations/{station}/measurements'}",
            json=envelope([], station=station),
            headers={"Authorization": f"Bearer {self.token}"},
            verify=self.verify,
            timeout=30,
        )


def which_process(front: Front, station: str, procs: list[CollectorProcess]) -> int:
    """Upload one (empty) envelope for `station` through nginx: the index of the process
    that answered it."""
    before = [served_200(p) for p in procs]
    r = front.upload(station)
    assert r.status_code == 200, r.text
    after = [served_200(p) for p in procs]
    moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
    assert len(moved) == 1, (before, after)
    return moved[0]


@dataclass
class Two:
    procs: list[CollectorProcess]
    region_token: str  # 3171, known to both from their start
    stack: contextlib.ExitStack


@pytest.fixture
def two_collectors(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Two]:
    """Two collector processes on their own ports, one data directory (registry, key)."""
    data_dir = tmp_path / "shared"
    cfgs = [
        collector_config_file(
            tmp_path / f"c{i}", influxdb.url, influx_database, data_dir=str(data_dir)
        )
        for i in range(2)
    ]
    data_dir.mkdir(mode=0o700)
    registry = Registry(cfgs[0].registry_path)
    try:
        _, token = registry.add_token(region="3171", note="nginx test")
    finally:
        registry.close()
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(collector_process(cfg)) for cfg in cfgs]
        yield Two(procs, token, stack)


@contextlib.contextmanager
def nginx_front(tmp_path: Path, ports: list[int], token: str) -> Iterator[Front]:
    require_tool("nginx")
    ca = trustme.CA()
    leaf = ca.issue_cert("collector.example.org", "127.0.0.1")
    cert, key = tmp_path / "nginx-cert.pem", tmp_path / "nginx-key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    # nginx's master reads the certificate as root: pytest's tmp tree is fine for it.
    port = free_port()
    site = SITE.read_text()
    servers = (
        "    server 127.0.0.1:8081 max_fails=1 fail_timeout=10s;\n"
        "    server 127.0.0.1:8082 max_fails=1 fail_timeout=10s;\n"
    )
    assert servers in site and "listen 443 ssl" in site
    site = site.replace(
        servers,
        "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n" for p in ports),
    )
    site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{port} ssl")
    site = site.replace("/etc/letsencrypt/live/collector.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/collector.example.org/privkey.pem", str(key))
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    url = f"https://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/healthz", verify=verify, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with running_nginx(site, ready):
        yield Front(url, verify, token)


def test_nginx_routes_each_station_to_one_process_and_moves_it_while_that_one_is_down(
    tmp_path: Path, two_collectors: Two
) -> None:
    procs, token, stack = two_collectors.procs, two_collectors.region_token, two_collectors.stack
    ports = [p.cfg.listen.port for p in procs]
    with nginx_front(tmp_path, ports, token) as front:
        home = {s: which_process(front, s, procs) for s in STATIONS}
        assert set(home.values()) == {0, 1}, home  # both processes get stations
        for s in STATIONS[:20]:  # and a station stays where it is
            assert which_process(front, s, procs) == home[s], s

        # Stop the second process: its stations move to the first; the first's stay.
        procs[1].proc.kill()
        procs[1].proc.wait(10)
        survivors = procs[:1]
        for s in STATIONS:
            assert which_process(front, s, survivors) == 0, s

        # Start it again on its port: once nginx tries it again, its stations come back.
        again = stack.enter_context(collector_process(procs[1].cfg))
        back = [procs[0], again]
        moved_back = [s for s in STATIONS if home[s] == 1]
        deadline_rounds = 40
        while which_process(front, moved_back[0], back) != 1:
            deadline_rounds -= 1
            assert deadline_rounds > 0, "the restarted process never got its stations back"
        for s in STATIONS:
            assert which_process(front, s, back) == home[s], s


def test_nginx_front_paths_limits_and_the_deprecated_route(
    tmp_path: Path, two_collectors: Two
) -> None:
    procs = two_collectors.procs
    ports = [p.cfg.listen.port for p in procs]
    c = procs[0]
    with nginx_front(tmp_path, ports, c.token) as front:
        # The agent's own token, its own station, a real record, through TLS: stored.
        rec = golden("icmp-ok")
        r = httpx.post(
            f"{front.url}/api/v1/stations/{STATION}/measurements",
            json=envelope([rec]),
            headers={"Authorization": f"Bearer {c.token}"},
            verify=front.verify,
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["accepted"] == [rec["id"]], r.text
        # The deprecated path reaches any process, with its Deprecation header.
        spread = set()
        for _ in range(12):
            before = [served_200(p) for p in procs]
            r = front.upload(STATION, "/api/v1/measurements")
            assert r.status_code == 200 and r.headers["deprecation"] == "true"
            after = [served_200(p) for p in procs]
            spread |= {i for i in range(2) if after[i] > before[i]}
        assert spread == {0, 1}
        # Operators' paths are not served to the internet.
        for path in ("/metrics", "/openapi.json"):
            assert httpx.get(f"{front.url}{path}", verify=front.verify).status_code == 404
        # Paths nginx normalises differently from the collector: refused by the collector,
        # whatever process nginx picked.
        for raw in (
            f"/api/v1/stations/3273011001012/../{STATION}/measurements",
            f"/api/v1/stations/{STATION}%2F..%2F3273011001012/measurements",
            "/api/v1/stations/%2E%2E/measurements",
        ):
            status, _ = _raw_tls_post(front, raw, c.token)
            assert status in (400, 404), raw
        # A body above client_max_body_size stops at nginx.
        big = httpx.post(
            f"{front.url}/api/v1/stations/{STATION}/measurements",
            content=b"x" * (7 * 2**20),
            headers={"Authorization": f"Bearer {c.token}"},
            verify=front.verify,
            timeout=30,
        )
        assert big.status_code == 413
        # Without TLS nothing is served on the agents' port.
        host, port = front.url.removeprefix("https://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 400 " in s.recv(4096)


def _raw_tls_post(front: Front, raw_path: str, token: str) -> tuple[int, bytes]:
    host, port = front.url.removeprefix("https://").split(":")
    body = b'{"schema": 1}'
    with (
        socket.create_connection((host, int(port)), timeout=10) as plain,
        front.verify.wrap_socket(plain, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(
            f"POST {raw_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer
