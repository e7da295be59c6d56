"""collector.speedtest: the Speedtest Mini endpoint and the upload sink, on a real uvicorn
server, answered as speedtest-cli and the upload probe expect (the probes measuring against
it: tests/integration/test_probe_throughput.py; mounted in the collector:
tests/integration/test_app.py)."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from collector.speedtest import INDEX, SIZES, SpeedtestEndpoint, file_size
from tests.harness.servers import free_port

BLOCK, CHUNK = 2**20, 2**16


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    port = free_port()
    app = SpeedtestEndpoint(block_bytes=BLOCK, chunk=CHUNK)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "endpoint did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/speedtest/"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c


def test_latency_and_mini_detection(url: str) -> None:
    with client(url) as c:
        r = c.get("latency.txt")
        assert (r.status_code, r.text) == (200, "test=test\n")
        assert r.headers["cache-control"] == "no-store"
        assert c.get("upload.php").text == "size=0\n"  # how speedtest-cli recognises a mini
        for path in ("", "index.html"):
            r = c.get(path)
            assert r.content == INDEX and r.headers["content-type"] == "text/html"
        # routed on the last path segment: any prefix works
        assert c.get("/some/other/prefix/latency.txt").text == "test=test\n"


@pytest.mark.parametrize("n", [350, 1000])
def test_download_files_are_their_size_and_incompressible(url: str, n: int) -> None:
    with client(url) as c:
        r = c.get(f"random{n}x{n}.jpg")
        again = c.get(f"random{n}x{n}.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert int(r.headers["content-length"]) == len(r.content) == file_size(n) == 2 * n * n
    assert len(gzip.compress(r.content, 6)) > 0.99 * len(r.content)
    assert again.content != r.content  # each download starts at a random offset


def test_head_gives_the_length_without_the_body(url: str) -> None:
    with client(url) as c:
        r = c.head("random4000x4000.jpg")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == file_size(4000) and r.content == b""


def test_unknown_sizes_paths_and_methods(url: str) -> None:
    with client(url) as c:
        assert c.get("random351x351.jpg").status_code == 404  # not one of speedtest.net's
        assert c.get("random350x500.jpg").status_code == 404
        assert c.get("secrets.txt").status_code == 404
        assert c.put("upload.php", content=b"x").status_code == 405
        assert c.delete("sink").status_code == 405


def test_upload_php_counts_the_body(url: str) -> None:
    body = b"content1=" + b"x" * 1_000_000
    with client(url) as c:
        r = c.post("upload.php", content=body)
    assert (r.status_code, r.text) == (200, f"size={len(body)}")


def test_sink_reports_bytes_and_receive_time(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"p" * 250_000
            time.sleep(0.1)

    with client(url) as c:
        r = c.post("sink", content=chunks())
        empty = c.post("sink", content=b"")
    assert r.headers["content-type"] == "application/json"
    got = r.json()
    assert got["received_bytes"] == 1_000_000
    assert 0.25 <= got["receive_s"] < 5  # first byte to last, across the pauses
    assert empty.json() == {"received_bytes": 0, "receive_s": 0.0}


def test_the_block_must_hold_a_chunk() -> None:
    with pytest.raises(ValueError, match="at least one chunk"):
        SpeedtestEndpoint(block_bytes=1024, chunk=4096)


def test_write_files_for_a_static_server(tmp_path: Path) -> None:
    paths = SpeedtestEndpoint(block_bytes=CHUNK, chunk=CHUNK).write_files(tmp_path / "files")
    assert [p.name for p in paths] == [f"random{n}x{n}.jpg" for n in SIZES]
    assert all(p.stat().st_size == file_size(n) for p, n in zip(paths, SIZES, strict=True))
    small = paths[0]
    before = small.stat().st_mtime_ns
    small_content = small.read_bytes()
    assert len(gzip.compress(small_content, 6)) > 0.99 * len(small_content)
    paths[1].write_bytes(b"truncated")
    again = SpeedtestEndpoint(block_bytes=CHUNK, chunk=CHUNK).write_files(tmp_path / "files")
    assert again == paths
    assert small.stat().st_mtime_ns == before  # a complete file is kept
    assert paths[1].stat().st_size == file_size(SIZES[1])  # a wrong one is written again
    assert not list((tmp_path / "files").glob("*.tmp"))
