"""collector.server: `serve` runs the app on uvicorn where the CollectorConfig says, with the
GC tuned, and shuts down on Ctrl-C (SIGINT); tune_gc's effect on this process's collector."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.server import GC_YOUNG_THRESHOLD, tune_gc
from tests.conftest import ROOT
from tests.harness.collector_stack import collector_config_file
from tests.harness.servers import closed_port
from tests.harness.speedtest_lab import wait_listening

SERVE = """
import gc, logging, sys
from collector import config
from collector.server import serve
logging.basicConfig(level=logging.INFO, format="%(message)s")
serve(config.load(sys.argv[1], environ={}))  # returns once uvicorn has shut down
print("threshold", *gc.get_threshold(), "frozen", gc.get_freeze_count(), flush=True)
"""


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_raises_the_young_threshold_and_freezes_what_is_loaded() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0  # modules, registry and code: out of every scan


def test_serve_listens_where_the_config_says_and_stops_on_sigint(tmp_path: Path) -> None:
    db_url = f"http://127.0.0.1:{closed_port()}"  # /healthz and /api/v1/time need no database
    cfg = collector_config_file(tmp_path, db_url, "sinyal")
    assert not cfg.data_dir.exists()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(cfg.path)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(cfg.listen.host, cfg.listen.port)
        base = f"http://{cfg.listen.host}:{cfg.listen.port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert "server_time" in httpx.get(f"{base}/api/v1/time").json()
        refused = httpx.get(f"{base}/speedtest/latency.txt")  # the endpoint needs a ticket
        assert refused.status_code in (401, 403) and "ticket" in refused.text
        assert cfg.data_dir.is_dir()  # serve makes it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"sinyal-collector listening on {base}, sink v1 {db_url}" in err
    assert "GET /healthz" not in out + err  # no access log
    words = out.split()
    assert words[:2] == ["threshold", str(GC_YOUNG_THRESHOLD)], out
    assert int(words[words.index("frozen") + 1]) > 0
