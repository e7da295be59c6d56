"""Debian's nginx running a site file of deploy/nginx/ (with its addresses replaced by the
test), in the foreground, with its own prefix in a temporary directory."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.conftest import require_tool


@contextlib.contextmanager
def running_nginx(site: str, ready: Callable[[], bool]) -> Iterator[Path]:
    """Run nginx with `site` included in its http block; yield its temporary directory once
    `ready()` is true (within 10 s)."""
    binary = require_tool("nginx")
    with tempfile.TemporaryDirectory(prefix="sinyal-nginx-") as tmp:
        (Path(tmp) / "site.conf").write_text(site)
        (Path(tmp) / "nginx.conf").write_text(
            f"worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{ client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;"
            f" include {tmp}/site.conf; }}\n"
        )
        check = subprocess.run(
            [binary, "-t", "-c", f"{tmp}/nginx.conf"], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([binary, "-c", f"{tmp}/nginx.conf", "-g", "daemon off;"])
        try:
            deadline = time.monotonic() + 10
            while not ready():
                assert proc.poll() is None, (Path(tmp) / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
            yield Path(tmp)
        finally:
            proc.terminate()
            proc.wait(10)
