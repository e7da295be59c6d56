"""The shared registry on a real PostgreSQL (issue 20, point 2): two collector processes on
one database see a token added or revoked by the CLI within 5 s; an enrolment code issued
on one node is exchanged at another; while the database is unreachable the cached tokens
keep working (an enrolment is 503) and the connection is re-established after; a database
that is down or refuses the password at start is one clear line and exit 1, without the
password."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.config import CollectorConfig
from tests.conftest import ROOT
from tests.harness.collector_process import CollectorProcess, collector_process
from tests.harness.collector_stack import STATION, collector_config_file, envelope, golden
from tests.harness.dbs import InfluxServer
from tests.harness.postgres import PostgresServer
from tests.harness.servers import free_port

REVOCATION_BOUND_S = 5.0


def registry_section(tmp_path: Path, url: str, password: str) -> dict[str, str]:
    pw = tmp_path / "registry-password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    return {"url": url, "password_file": str(pw)}


def config(
    tmp: Path, influx: InfluxServer, database: str, registry: dict[str, str]
) -> CollectorConfig:
    return collector_config_file(tmp, influx.url, database, registry=registry)


def cli(cfg: CollectorConfig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *argv, "-c", str(cfg.path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def upload(c: CollectorProcess, token: str, station: str = STATION) -> int:
    body = json.dumps(envelope([golden("icmp-ok", station)], station)).encode()
    r = httpx.post(
        f"{c.url}/api/v1/measurements",
        content=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return r.status_code


def wait_for_status(
    c: CollectorProcess, token: str, status: int, bound_s: float, start: float | None = None
) -> float:
    """Seconds from `start` (default: now) until an upload with `token` answers `status`
    (polled every 50 ms)."""
    start = time.monotonic() if start is None else start
    while True:
        got = upload(c, token)
        elapsed = time.monotonic() - start
        if got == status:
            return elapsed
        assert elapsed < bound_s * 2, f"still HTTP {got} after {elapsed:.1f} s"
        time.sleep(0.05)


@pytest.fixture
def two_nodes(
    tmp_path: Path,
    influxdb: InfluxServer,
    influx_database: str,
    postgres_server: PostgresServer,
    pg_url: str,
) -> Iterator[tuple[CollectorProcess, CollectorProcess]]:
    section = registry_section(tmp_path, pg_url, postgres_server.password)
    a_cfg = config(tmp_path / "a", influxdb, influx_database, section)
    b_cfg = config(tmp_path / "b", influxdb, influx_database, section)
    with collector_process(a_cfg) as a, collector_process(b_cfg) as b:
        yield a, b


def test_tokens_added_and_revoked_by_the_cli_reach_every_node_within_5_s(
    two_nodes: tuple[CollectorProcess, CollectorProcess],
) -> None:
    a, b = two_nodes
    assert upload(a, a.token) == 200 and upload(b, a.token) == 200  # one registry

    added = cli(a.cfg, "agents", "add", "--station", STATION, "--note", "new")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    seen = wait_for_status(b, token, 200, REVOCATION_BOUND_S)
    assert seen < REVOCATION_BOUND_S, seen

    token_id = added.stderr.split()[2].rstrip(",")
    revoked = cli(a.cfg, "agents", "revoke", token_id)
    done = time.monotonic()  # the CLI has committed the revocation
    assert revoked.returncode == 0, revoked.stderr
    delays = [wait_for_status(node, token, 401, REVOCATION_BOUND_S, done) for node in (b, a)]
    print(f"revocation seen after {delays[0]:.2f} s (b) and {delays[1]:.2f} s (a)")
    assert max(delays) < REVOCATION_BOUND_S, delays
    assert upload(b, a.token) == 200  # only that token stops working


def test_an_enrolment_code_issued_on_one_node_is_exchanged_at_another(
    two_nodes: tuple[CollectorProcess, CollectorProcess],
) -> None:
    a, b = two_nodes
    issued = cli(a.cfg, "agents", "enroll", "--station", STATION)
    assert issued.returncode == 0, issued.stderr
    [row] = list(csv.DictReader(io.StringIO(issued.stdout)))
    r = httpx.post(f"{b.url}/api/v1/enroll", json={"code": row["code"]}, timeout=10)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert wait_for_status(a, token, 200, REVOCATION_BOUND_S) < REVOCATION_BOUND_S
    again = httpx.post(f"{a.url}/api/v1/enroll", json={"code": row["code"]}, timeout=10)
    assert again.status_code == 410 and "already used" in again.json()["error"]

    revoked = cli(a.cfg, "agents", "revoke", "--station", STATION)
    assert revoked.returncode == 0, revoked.stderr
    assert wait_for_status(b, token, 401, REVOCATION_BOUND_S) < REVOCATION_BOUND_S


def test_a_lost_database_keeps_the_cached_tokens_and_reconnects(
    two_nodes: tuple[CollectorProcess, CollectorProcess],
    postgres_server: PostgresServer,
    pg_url: str,
) -> None:
    a, b = two_nodes
    issued = cli(a.cfg, "agents", "enroll", "--station", STATION)
    assert issued.returncode == 0, issued.stderr
    [row] = list(csv.DictReader(io.StringIO(issued.stdout)))
    database = pg_url.rsplit("/", 1)[1]
    with postgres_server.connect() as conn:
        # The database goes away for the collectors: their connections are cut and no new
        # one is accepted (the server itself stays up for the other tests).
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'sinyal-collector'",
            (database,),
        ).fetchone()
        assert killed is not None and killed[0] >= 2  # both servers' connections
        try:
            # Ingest goes on from the cache; an enrolment needs the database: 503, code kept.
            assert upload(b, a.token) == 200 and upload(a, a.token) == 200
            r = httpx.post(f"{b.url}/api/v1/enroll", json={"code": row["code"]}, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] == "60", r.text
            time.sleep(3)  # at least one re-read has failed
            assert upload(b, a.token) == 200
        finally:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    log = b.log()
    assert "cannot re-read, using cached data: registry postgresql://postgres@" in log
    assert postgres_server.password not in log
    # Back: each process reconnects by itself; a revocation arrives in time again.
    revoked = cli(a.cfg, "agents", "revoke", a.token_id)
    done = time.monotonic()
    assert revoked.returncode == 0, revoked.stderr
    assert wait_for_status(b, a.token, 401, REVOCATION_BOUND_S, done) < REVOCATION_BOUND_S
    r = httpx.post(f"{b.url}/api/v1/enroll", json={"code": row["code"]}, timeout=10)
    assert r.status_code == 200, r.text


def test_a_database_down_or_a_wrong_password_at_start_is_one_clear_line(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str, pg_url: str
) -> None:
    secret = "s3cret-registry-password"
    down = f"postgresql://sinyal@127.0.0.1:{free_port()}/sinyal"
    for name, url, expected in (
        ("down", down, "cannot connect: connection failed"),
        ("password", pg_url, 'password authentication failed for user "postgres"'),
    ):
        cfg = config(
            tmp_path / name, influxdb, influx_database, registry_section(tmp_path, url, secret)
        )
        for argv in (["serve"], ["stations", "list"], ["agents", "add", "--region", "31"]):
            r = cli(cfg, *argv)
            assert r.returncode == 1, (argv, r.stdout, r.stderr)
            assert r.stderr.startswith(f"registry {url}: cannot connect: "), r.stderr
            assert expected in r.stderr
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
            assert secret not in r.stdout + r.stderr


def test_a_password_in_the_url_is_refused_without_showing_it(
    tmp_path: Path, influxdb: InfluxServer
) -> None:
    cfg_path = tmp_path / "collector.yaml"
    cfg_path.write_text(
        "sink: {kind: v1, url: 'http://127.0.0.1:9'}\n"
        f"thresholds_file: {ROOT / 'config' / 'thresholds.yaml'}\n"
        "registry: {url: 'postgresql://sinyal:hunter2hunter2@db.example.org/sinyal'}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check-config", "-c", str(cfg_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 2
    assert "hunter2" not in r.stdout + r.stderr
    assert (
        f"{cfg_path}: registry.url: got 'postgresql://sinyal@db.example.org/sinyal' with a "
        "password, expected the URL without it: put the password in registry.password_file or "
        "SINYAL_REGISTRY__PASSWORD"
    ) in r.stderr
