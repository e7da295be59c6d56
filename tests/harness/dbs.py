"""Real databases on loopback for the sink tests: InfluxDB 1.6.7 (Debian's influxd) and
VictoriaMetrics, each on free ports with its own temporary config and data directory.

The servers are session fixtures (influxd takes 1-3 s to start); tests isolate their data
with a fresh database name (`influx_database`) or, on VictoriaMetrics, a unique label value.
Reading back goes through plain HTTP here, never through collector.sinks, so the tests do
not check the sinks with themselves. Load with ``pytest_plugins = ["tests.harness.dbs"]``.

PYTEST_DONT_REWRITE: test modules import the helpers here before pytest loads the plugin.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_tool
from tests.harness.servers import LOOPBACK, free_port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_http(url: str, proc: subprocess.Popen[bytes], ok: int, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=0.5).status_code == ok:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


# --- InfluxDB 1.x ----------------------------------------------------------------------------

DEPLOY_INFLUX = Path(__file__).resolve().parents[2] / "deploy" / "influxdb"
# The [data] settings of the shipped config that tune InfluxDB for a fleet (its paths and
# limits are the harness's own).
TUNING_KEYS = ("index-version", "cache-snapshot-memory-size", "cache-max-memory-size")


def deploy_influx_tuning() -> tuple[dict[str, str | int], dict[str, str]]:
    """The tuning shipped in deploy/influxdb: the `[data]` settings of influxdb.conf in
    TUNING_KEYS and the environment of the systemd drop-in (GOGC), for `influxd(data_options=,
    env=)`, so a benchmark measures the InfluxDB the deployment docs install."""
    data = tomllib.loads((DEPLOY_INFLUX / "influxdb.conf").read_text())["data"]
    options = {k: data[k] for k in TUNING_KEYS if k in data}
    dropin = (DEPLOY_INFLUX / "influxdb.service.d" / "sinyal.conf").read_text()
    env = dict(re.findall(r"^Environment=(\w+)=(\S+)$", dropin, re.MULTILINE))
    return options, env


def influxd_config(
    tmp: Path,
    http_port: int,
    rpc_port: int,
    auth: bool,
    max_series: int = 0,
    data_options: Mapping[str, str | int] | None = None,
) -> str:
    """A config for `influxd run -config`: loopback only, no tag-value limit, quiet, and none
    of the side services (UDP, graphite, monitor store, CQs, retention sweeps, subscribers).
    max_series: max-series-per-database (0: none). data_options: more `[data]` settings (for
    example the deployed tuning, `deploy_influx_tuning()`). Section names as printed by
    `influxd config` of 1.6.7."""
    extra = "".join(f"  {k} = {json.dumps(v)}\n" for k, v in sorted((data_options or {}).items()))
    return f"""\
reporting-disabled = true
bind-address = "{LOOPBACK}:{rpc_port}"

[meta]
  dir = "{tmp}/meta"
  logging-enabled = false

[data]
  dir = "{tmp}/data"
  wal-dir = "{tmp}/wal"
  query-log-enabled = false
  max-values-per-tag = 0
  max-series-per-database = {max_series}
{extra}
[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{http_port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "error"
  suppress-logo = true

[continuous_queries]
  enabled = false
  log-enabled = false
"""


@dataclass
class InfluxServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    username: str | None = None
    password: str | None = None
    databases: list[str] = field(default_factory=list)

    def _auth(self) -> httpx.BasicAuth | None:
        if self.username is None or self.password is None:
            return None
        return httpx.BasicAuth(self.username, self.password)

    def query_raw(self, q: str, db: str | None = None, epoch: str | None = "ns") -> Any:
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        r = httpx.post(f"{self.url}/query", data=params, auth=self._auth(), timeout=10)
        if r.status_code != 200:
            raise RuntimeError(f"{q}: HTTP {r.status_code}: {r.text}")
        return r.json()

    def query(
        self, q: str, db: str | None = None, epoch: str | None = "ns"
    ) -> list[dict[str, Any]]:
        """Rows of all series: column -> value, plus `_series` (the series name)."""
        doc = self.query_raw(q, db, epoch)
        rows: list[dict[str, Any]] = []
        for res in doc["results"]:
            if "error" in res:
                raise RuntimeError(f"{q}: {res['error']}")
            for s in res.get("series", []):
                for values in s["values"]:
                    rows.append(
                        {
                            "_series": s["name"],
                            **s.get("tags", {}),
                            **dict(zip(s["columns"], values, strict=True)),
                        }
                    )
        return rows

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')
        self.databases.append(name)

    def field_types(self, db: str, measurement: str) -> dict[str, str]:
        rows = self.query(f'SHOW FIELD KEYS FROM "{measurement}"', db)
        return {r["fieldKey"]: r["fieldType"] for r in rows}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.process)


@contextlib.contextmanager
def influxd(
    binary: str,
    *,
    admin: tuple[str, str] | None = None,
    startup_s: float = 20.0,
    max_series: int = 0,
    data_options: Mapping[str, str | int] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[InfluxServer]:
    """influxd 1.x on free loopback ports with a temp config and data dir. With `admin`,
    auth is enabled and that user is created with all privileges (1.x allows creating the
    first admin without credentials). data_options: more `[data]` settings; env: more
    environment variables for influxd (GOGC)."""
    with tempfile.TemporaryDirectory(prefix="sinyal-influxd-") as tmp:
        tmpdir = Path(tmp)
        log_path = tmpdir / "influxd.log"
        for _attempt in range(3):  # a port can be taken between free_port() and the bind
            http_port, rpc_port = free_port(), free_port()
            conf = tmpdir / "influxdb.conf"
            conf.write_text(
                influxd_config(
                    tmpdir, http_port, rpc_port, admin is not None, max_series, data_options
                )
            )
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [binary, "run", "-config", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                )
            url = f"http://{LOOPBACK}:{http_port}"
            if _wait_http(f"{url}/ping", proc, 204, startup_s):
                break
            _stop(proc)
            if "address already in use" not in log_path.read_text(errors="replace"):
                raise RuntimeError(
                    f"influxd did not answer on {url} within {startup_s:g} s:\n"
                    + log_path.read_text(errors="replace")
                )
        else:
            raise RuntimeError("influxd: no free ports after 3 attempts")
        server = InfluxServer(url, proc, log_path)
        try:
            if admin is not None:
                user, password = admin
                server.query(
                    f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
                )
                server.username, server.password = user, password
            yield server
        finally:
            _stop(proc)


# --- VictoriaMetrics -------------------------------------------------------------------------


@dataclass
class VictoriaMetrics:
    """What VictoriaMetrics 1.79 keeps of line protocol (tests/integration/test_sinks.py checks):
    metric `{measurement}_{field}`, tags as labels; numeric fields as float64; string
    fields as 0 (the string itself is lost); timestamps cut to milliseconds; malformed lines
    skipped (logged) while the request still answers 204; the same sample written twice is
    kept twice unless -dedup.minScrapeInterval is set (this server sets 1ms)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def flush(self) -> None:
        """Make everything written so far visible to queries and exports."""
        httpx.get(f"{self.url}/internal/force_flush", timeout=10).raise_for_status()

    def export(self, match: str) -> list[dict[str, Any]]:
        """Series matching a selector: [{"metric": {...labels}, "values": [...],
        "timestamps": [ms...]}] from /api/v1/export (JSON lines)."""
        self.flush()
        r = httpx.get(
            f"{self.url}/api/v1/export", params={"match[]": match, "start": "0"}, timeout=10
        )
        r.raise_for_status()
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def victoria_metrics_server(binary: str, startup_s: float = 20.0) -> Iterator[VictoriaMetrics]:
    with tempfile.TemporaryDirectory(prefix="sinyal-vm-") as tmp:
        tmpdir = Path(tmp)
        log_path = tmpdir / "vm.log"
        for _attempt in range(3):
            port = free_port()
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [
                        binary,
                        f"-httpListenAddr={LOOPBACK}:{port}",
                        f"-storageDataPath={tmpdir / 'data'}",
                        "-retentionPeriod=100y",  # the golden records keep their dates
                        # Without it a resent record is stored twice: VictoriaMetrics keeps
                        # duplicate samples, so our idempotency needs this (see docs).
                        "-dedup.minScrapeInterval=1ms",
                        "-loggerLevel=ERROR",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            url = f"http://{LOOPBACK}:{port}"
            if _wait_http(f"{url}/health", proc, 200, startup_s):
                break
            _stop(proc)
            if "address already in use" not in log_path.read_text(errors="replace"):
                raise RuntimeError(
                    f"victoria-metrics did not answer on {url} within {startup_s:g} s:\n"
                    + log_path.read_text(errors="replace")
                )
        else:
            raise RuntimeError("victoria-metrics: no free port after 3 attempts")
        try:
            yield VictoriaMetrics(url, proc, log_path)
        finally:
            _stop(proc)


# --- misbehaving servers ---------------------------------------------------------------------


@contextlib.contextmanager
def silent_tcp_server() -> Iterator[str]:
    """An http:// URL whose server accepts connections (the kernel completes them from the
    listen backlog) and never answers: requests to it time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        s.listen(16)
        yield f"http://{LOOPBACK}:{s.getsockname()[1]}"


# An answer of a scripted server: status, headers, body.
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class ScriptedRequest:
    path: str
    headers: dict[str, str]
    lines: list[str]


@contextlib.contextmanager
def scripted_server(
    answer: Callable[[ScriptedRequest], Answer],
) -> Iterator[tuple[str, list[ScriptedRequest]]]:
    """An HTTP server on loopback whose answers a test scripts: answers the statuses a real
    database gives rarely or never here (5xx, 429, 413, 422, a v2 400). Gzip bodies are
    decoded; `answer` gets the request with its body split into lines. Yields the base URL and
    the list of requests received."""
    seen: list[ScriptedRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            req = ScriptedRequest(self.path, dict(self.headers), body.decode().split("\n"))
            seen.append(req)
            status, headers, payload = answer(req)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxServer]:
    """InfluxDB 1.6.7 without auth, shared by the session: use `influx_database` for data."""
    binary = require_tool("influxd")
    with influxd(binary) as server:
        yield server


@pytest.fixture
def influx_database(influxdb: InfluxServer) -> str:
    """A fresh, empty database on the session's InfluxDB."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    influxdb.create_database(name)
    return name


@pytest.fixture(scope="session")
def victoria_metrics() -> Iterator[VictoriaMetrics]:
    binary = require_tool("victoria-metrics")
    with victoria_metrics_server(binary) as server:
        yield server
