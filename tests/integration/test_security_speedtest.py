"""Issue 15, finding 4: /speedtest needs a ticket got with a token, with a daily byte cap per
token and request size caps, in the collector and in nginx (deploy/nginx/speedtest.conf).

On the old main a 60-byte anonymous request returned 32 MB and anonymous 256 MiB uploads
were accepted."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.speedtest import file_size
from collector.tickets import TicketSigner
from tests.conftest import ROOT
from tests.harness.collector_process import (
    CollectorProcess,
    collector_config_file,
    collector_process,
)
from tests.harness.dbs import InfluxServer
from tests.harness.nginx import running_nginx
from tests.harness.servers import free_port

DAILY = 20_000_000
MAX_UPLOAD = 2**20


@pytest.fixture
def collector(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> Iterator[CollectorProcess]:
    cfg = collector_config_file(
        tmp_path,
        influxdb.url,
        influx_database,
        speedtest={"daily_bytes_per_token": DAILY, "max_upload_bytes": MAX_UPLOAD},
    )
    with collector_process(cfg) as c:
        yield c


def ticket(c: CollectorProcess, token: str | None = None) -> str:
    r = httpx.get(
        f"{c.url}/api/v1/speedtest/ticket",
        headers={"Authorization": f"Bearer {token or c.token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["path"] == f"t/{doc['ticket']}/"
    assert doc["remaining_bytes"] <= DAILY
    return str(doc["ticket"])


def test_anonymous_download_and_upload_are_refused(collector: CollectorProcess) -> None:
    r = httpx.get(f"{collector.url}/speedtest/random4000x4000.jpg", timeout=10)
    assert r.status_code == 401 and len(r.content) < 1000
    r = httpx.post(f"{collector.url}/speedtest/upload.php", content=b"x" * 500_000, timeout=10)
    assert r.status_code == 401
    r = httpx.get(f"{collector.url}/api/v1/speedtest/ticket", timeout=10)
    assert r.status_code == 401


def test_a_ticket_opens_the_endpoint(collector: CollectorProcess) -> None:
    base = f"{collector.url}/speedtest/t/{ticket(collector)}"
    assert httpx.get(f"{base}/latency.txt", timeout=10).text == "test=test\n"
    r = httpx.get(f"{base}/random350x350.jpg", timeout=10)
    assert r.status_code == 200 and len(r.content) == file_size(350)
    r = httpx.post(f"{base}/sink", content=b"x" * 100_000, timeout=10)
    assert r.status_code == 200 and r.json()["received_bytes"] == 100_000


def test_forged_expired_and_revoked_tickets_are_refused(collector: CollectorProcess) -> None:
    good = ticket(collector)
    token_id, expires, sig = good.split(".")
    forged = f"{token_id}.{int(expires) + 3600}.{sig}"
    key = (collector.cfg.data_dir / "speedtest.key").read_bytes()
    expired = TicketSigner(key, 10, clock=lambda: time.time() - 3600).issue(token_id).text
    other = TicketSigner(os.urandom(32), 600).issue(token_id).text
    for bad in (forged, expired, other, "nothing"):
        r = httpx.get(f"{collector.url}/speedtest/t/{bad}/random350x350.jpg", timeout=10)
        assert r.status_code == 401, bad
    assert (collector.cfg.data_dir / "speedtest.key").stat().st_mode & 0o777 == 0o600
    collector.registry.revoke(collector.token_id)
    url = f"{collector.url}/speedtest/t/{good}/random350x350.jpg"
    deadline = time.monotonic() + 15  # the server re-reads the registry every 5 s
    while httpx.get(url, timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "a revoked token's ticket still works"
        time.sleep(0.5)
    assert httpx.get(url, timeout=10).status_code == 401


def test_daily_bytes_per_token_are_capped(collector: CollectorProcess) -> None:
    base = f"{collector.url}/speedtest/t/{ticket(collector)}"
    size = file_size(2000)  # 8 MB: two fit in the 20 MB day, a third does not
    for _ in range(2):
        assert httpx.get(f"{base}/random2000x2000.jpg", timeout=30).status_code == 200
    r = httpx.get(f"{base}/random2000x2000.jpg", timeout=30)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    r = httpx.post(f"{base}/sink", content=b"x" * (DAILY - 2 * size + 1), timeout=30)
    assert r.status_code in (413, 429)
    # Another token's quota is its own.
    other = f"{collector.url}/speedtest/t/{ticket(collector, collector.other_token)}"
    assert httpx.get(f"{other}/random2000x2000.jpg", timeout=30).status_code == 200


def test_upload_size_is_capped_with_and_without_content_length(
    collector: CollectorProcess,
) -> None:
    base = f"{collector.url}/speedtest/t/{ticket(collector)}"
    r = httpx.post(f"{base}/upload.php", content=b"x" * (MAX_UPLOAD + 1), timeout=30)
    assert r.status_code == 413

    def chunked() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB, no Content-Length

    r = httpx.post(f"{base}/sink", content=chunked(), timeout=30)
    assert r.status_code == 413


# --- nginx --------------------------------------------------------------------------------


@contextlib.contextmanager
def nginx_in_front(c: CollectorProcess, files: Path) -> Iterator[str]:
    """deploy/nginx/speedtest.conf as shipped, with its listen, root and collector address
    replaced, run by Debian's nginx."""
    port = free_port()
    site = (ROOT / "deploy" / "nginx" / "speedtest.conf").read_text()
    assert "server 127.0.0.1:8080;" in site and "listen 8081" in site
    site = site.replace("listen 8081", f"listen 127.0.0.1:{port}")
    site = site.replace("/var/lib/sinyal/speedtest", str(files))
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{c.cfg.listen.port};")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            httpx.get(f"{url}/", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    with running_nginx(site, ready):
        yield url


def test_nginx_config_enforces_tickets_and_quota(collector: CollectorProcess) -> None:
    # Outside pytest's 0700 tmp tree: nginx's worker runs as an unprivileged user.
    with tempfile.TemporaryDirectory(prefix="sinyal-files-") as tmp:
        files = Path(tmp)
        files.chmod(0o755)
        (files / "random2000x2000.jpg").write_bytes(os.urandom(file_size(2000)))
        (files / "random2000x2000.jpg").chmod(0o644)
        nginx_checks(collector, files)


def nginx_checks(collector: CollectorProcess, files: Path) -> None:
    with nginx_in_front(collector, files) as url:
        r = httpx.get(f"{url}/speedtest/random2000x2000.jpg", timeout=10)
        assert r.status_code == 404
        r = httpx.get(f"{url}/speedtest/t/0000000a.9999999999.{'0' * 32}/latency.txt", timeout=10)
        assert r.status_code == 401
        r = httpx.post(f"{url}/speedtest/t/nothing/upload.php", content=b"x" * 1000, timeout=10)
        assert r.status_code == 401
        base = f"{url}/speedtest/t/{ticket(collector)}"
        assert httpx.get(f"{base}/latency.txt", timeout=10).text == "test=test\n"
        r = httpx.post(f"{base}/upload.php", content=b"x" * 1000, timeout=10)
        assert r.status_code == 200 and r.text == "size=1000"
        r = httpx.post(f"{base}/sink", content=b"x" * (MAX_UPLOAD + 1), timeout=10)
        assert r.status_code == 403
        for _ in range(2):
            r = httpx.get(f"{base}/random2000x2000.jpg", timeout=30)
            assert r.status_code == 200 and len(r.content) == file_size(2000)
        assert httpx.get(f"{base}/random2000x2000.jpg", timeout=30).status_code == 403
