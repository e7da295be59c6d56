"""HTTP probe against a real HTTP(S) server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.contract.record import Record
from agent.contract.version import AGENT_USER_AGENT as USER_AGENT
from agent.probes.base import ProbeEnv
from agent.probes.http import HttpProbe
from tests.conftest import ROOT, require, require_tool
from tests.harness.servers import HttpServer, closed_port, http_server

MakeConfig = Callable[..., AgentConfig]

HTTP_TAGS = {"station", "uplink", "operator", "target"}
PHASES = ("connect_ms", "ttfb_ms", "total_ms")


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    with http_server() as s:
        yield s


@pytest.fixture(scope="module")
def tls_server() -> Iterator[HttpServer]:
    with http_server(tls=True) as s:
        yield s


def probe(
    make_config: MakeConfig,
    targets: list[dict[str, Any]],
    timeout_s: float = 5.0,
    uplinks: list[dict[str, Any]] | None = None,
    **options: Any,
) -> HttpProbe:
    http = {"interval_s": 60, "timeout_s": timeout_s, "targets": targets, **options}
    sections: dict[str, Any] = {"probes": {"http": http}}
    if uplinks is not None:
        sections["uplinks"] = uplinks
    cfg = make_config(**sections)
    assert cfg.probes.http is not None
    return HttpProbe(cfg.probes.http, ProbeEnv(cfg))


def round_trip(r: Record) -> Record:
    """The record survives the wire contract unchanged (and is valid by it)."""
    back = Record.from_dict(r.to_dict())
    assert back == r
    return back


def get(make_config: MakeConfig, url: str, **kwargs: Any) -> Record:
    target: dict[str, Any] = {"url": url, "name": "t"}
    if "expect_status" in kwargs:
        target["expect_status"] = kwargs.pop("expect_status")
    records = asyncio.run(probe(make_config, [target], **kwargs).run())
    assert len(records) == 1
    r = round_trip(records[0])
    assert r.kind == "http"
    assert set(r.tags) == HTTP_TAGS
    return r


def timed_get(make_config: MakeConfig, url: str, **kwargs: Any) -> tuple[Record, float]:
    t0 = time.monotonic()
    r = get(make_config, url, **kwargs)
    return r, time.monotonic() - t0


def test_localhost_resolves_locally() -> None:
    # The 'localhost' cases rely on it resolving from /etc/hosts (no DNS query leaves).
    infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert "127.0.0.1" in {i[4][0] for i in infos}, "fix /etc/hosts: localhost -> 127.0.0.1"


def test_ok_with_ip_literal(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/bytes?n=12345"))
    assert r.error is None
    assert r.fields["ok"] == 1
    assert r.fields["status"] == 200
    assert r.fields["bytes"] == 12345
    for phase in PHASES:
        assert r.fields[phase] >= 0, phase
    assert r.fields["total_ms"] >= r.fields["ttfb_ms"]
    assert "tls_ms" not in r.fields  # plain http: not measured, so absent
    assert "dns_ms" not in r.fields  # an IP literal is not resolved
    assert r.tags["target"] == "t"


def test_ok_with_name_times_resolution(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/bytes?n=100", host="localhost"))
    assert r.error is None
    assert r.fields["bytes"] == 100
    assert r.fields["dns_ms"] >= 0
    assert "tls_ms" not in r.fields
    assert r.fields["total_ms"] >= r.fields["dns_ms"] + r.fields["connect_ms"]
    # connected to the resolved address, but the request still names the host
    seen = server.requests[-1]
    assert seen.host == f"localhost:{server.port}"
    assert seen.user_agent == USER_AGENT


def test_delay_before_headers_is_ttfb(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/delay?ms=300"))
    assert r.error is None
    assert r.fields["ttfb_ms"] >= 300
    assert r.fields["total_ms"] >= r.fields["ttfb_ms"]
    assert r.fields["connect_ms"] < 300  # the delay is not the connect's


def test_unexpected_status(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/status/503"))
    assert r.error == "http_status"
    assert r.fields["ok"] == 0
    assert r.fields["status"] == 503
    assert r.fields["bytes"] == len(b"status 503\n")
    assert "ttfb_ms" in r.fields  # the exchange completed: its timings are kept


def test_expected_status(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/status/503"), expect_status=[503])
    assert r.error is None
    assert r.fields["ok"] == 1
    assert r.fields["status"] == 503


def test_redirect_is_not_followed(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/status/302"), expect_status=[302])
    assert r.error is None
    assert r.fields["status"] == 302


def test_connection_refused(make_config: MakeConfig) -> None:
    r, elapsed = timed_get(make_config, f"http://127.0.0.1:{closed_port()}/")
    assert r.error == "connection_refused"
    assert r.fields == {"ok": 0}
    assert elapsed < 2


@pytest.mark.parametrize("path", ["/reset", "/close"])
def test_server_drops_connection_before_responding(
    make_config: MakeConfig, server: HttpServer, path: str
) -> None:
    # /reset sends a TCP RST, /close a FIN; either way the peer went away mid-exchange.
    r = get(make_config, server.url(path))
    assert r.error == "connection_reset"
    assert set(r.fields) == {"ok", "connect_ms"}  # the connection was made, then dropped
    assert r.fields["ok"] == 0


def test_timeout_before_headers(make_config: MakeConfig, server: HttpServer) -> None:
    r, elapsed = timed_get(make_config, server.url("/delay?ms=3000"), timeout_s=0.5)
    assert r.error == "timeout"
    assert r.fields["ok"] == 0
    assert "status" not in r.fields
    assert 0.45 <= elapsed < 0.5 + 0.5


def test_timeout_mid_body(make_config: MakeConfig, server: HttpServer) -> None:
    # headers at once, then 100 bytes every 100 ms for 10 s
    url = server.url("/slow?n=10000&chunk=100&interval_ms=100")
    r, elapsed = timed_get(make_config, url, timeout_s=0.5)
    assert r.error == "timeout"
    assert r.fields["ok"] == 0
    assert r.fields["status"] == 200  # what was measured before the deadline is kept
    assert "ttfb_ms" in r.fields and "total_ms" not in r.fields
    assert 0.45 <= elapsed < 0.5 + 0.5


def test_slow_body_within_timeout(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/slow?n=300&chunk=100&interval_ms=100"))
    assert r.error is None
    assert r.fields["bytes"] == 300
    assert r.fields["total_ms"] >= 200  # two pauses between three chunks


@pytest.mark.parametrize("max_bytes", [0, 1, 1000, 100_000])
def test_max_bytes_caps_the_body(
    make_config: MakeConfig, server: HttpServer, max_bytes: int
) -> None:
    r = get(make_config, server.url("/bytes?n=1000000"), max_bytes=max_bytes)
    assert r.error is None
    assert r.fields["status"] == 200
    assert r.fields["bytes"] == max_bytes


def test_body_smaller_than_max_bytes(make_config: MakeConfig, server: HttpServer) -> None:
    r = get(make_config, server.url("/bytes?n=500"), max_bytes=1000)
    assert r.fields["bytes"] == 500


def test_https_with_ca_bundle(make_config: MakeConfig, tls_server: HttpServer) -> None:
    r = get(
        make_config,
        tls_server.url("/bytes?n=2048", host="localhost"),
        ca_bundle=str(tls_server.ca_bundle),
    )
    assert r.error is None
    assert r.fields["ok"] == 1
    assert r.fields["bytes"] == 2048
    assert r.fields["tls_ms"] > 0
    assert r.fields["dns_ms"] >= 0
    for phase in PHASES:
        assert r.fields[phase] >= 0, phase
    assert r.fields["total_ms"] >= r.fields["connect_ms"] + r.fields["tls_ms"]
    seen = tls_server.requests[-1]
    assert seen.sni == "localhost"  # connected by address, verified by name
    assert seen.host == f"localhost:{tls_server.port}"


def test_https_with_ip_literal(make_config: MakeConfig, tls_server: HttpServer) -> None:
    r = get(make_config, tls_server.url("/"), ca_bundle=str(tls_server.ca_bundle))
    assert r.error is None  # the certificate names 127.0.0.1 too
    assert "tls_ms" in r.fields
    assert "dns_ms" not in r.fields


def test_https_untrusted_ca(make_config: MakeConfig, tls_server: HttpServer) -> None:
    before = tls_server.tls_failures
    r = get(make_config, tls_server.url("/", host="localhost"))  # default CA bundle
    assert r.error == "tls_error"
    # Phases that completed before the handshake failed are kept; the handshake is not.
    assert set(r.fields) == {"ok", "dns_ms", "connect_ms"}
    assert r.fields["ok"] == 0
    assert tls_server.tls_failures > before  # the handshake itself failed


def test_https_name_mismatch(make_config: MakeConfig) -> None:
    with http_server(tls=True, cert_names=["other.test"]) as s:
        r = get(make_config, s.url("/", host="localhost"), ca_bundle=str(s.ca_bundle))
        assert not s.requests  # no request was sent over an unverified connection
    assert r.error == "tls_error"
    # Phases that completed before the handshake failed are kept; the handshake is not.
    assert set(r.fields) == {"ok", "dns_ms", "connect_ms"}
    assert r.fields["ok"] == 0


def test_run_covers_uplinks_and_targets(make_config: MakeConfig, server: HttpServer) -> None:
    uplinks = [
        {"name": "lo", "operator": "test"},
        {"name": "lo-src", "operator": "indosat", "source": "127.0.0.1"},
        {"name": "gone", "operator": "xl", "source": "198.18.0.1"},
    ]
    targets = [
        {"url": server.url("/"), "name": "root"},
        {"url": server.url("/status/503"), "name": "down"},
        {"url": server.url("/delay?ms=200", host="localhost"), "name": "slow"},
    ]
    p = probe(make_config, targets, uplinks=uplinks)
    t0 = time.monotonic()
    records = asyncio.run(p.run())
    elapsed = time.monotonic() - t0
    assert elapsed < 2  # concurrent: about one 200 ms delay, not three

    assert len(records) == len(uplinks) * len(targets)
    seen = {}
    for r in map(round_trip, records):
        assert set(r.tags) == HTTP_TAGS
        assert r.tags["station"] == "3171011001001"
        key = (r.tags["uplink"], r.tags["operator"], r.tags["target"])
        assert key not in seen
        seen[key] = r.error
    expected = {"root": None, "down": "http_status", "slow": None}
    assert seen == {
        (u["name"], u["operator"], t["name"]): "source_unavailable"
        if u["name"] == "gone"
        else expected[t["name"]]
        for u in uplinks
        for t in targets
    }


# --- a name that does not resolve --------------------------------------------------------
#
# /etc/resolv.conf may name a resolver off this machine (on the test machines it does), and
# then looking up even a reserved .invalid name sends a query out. So this case runs in
# mount and network namespaces of its own: only a loopback interface, /etc/resolv.conf
# bind-mounted to name 127.0.0.1, and dnsmasq there answering NXDOMAIN for .invalid.

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    sys.path.insert(0, sys.argv[1])
    from agent.config import load
    from agent.probes.base import ProbeEnv
    from agent.probes.http import HttpProbe
    from tests.harness.servers import dnsmasq

    cfg = load(sys.argv[2], environ={})
    with dnsmasq(sys.argv[3], port=53, local_domains=["invalid", "test"]) as d:
        probe = HttpProbe(cfg.probes.http, ProbeEnv(cfg))
        t0 = time.monotonic()
        records = asyncio.run(probe.run())
        elapsed = time.monotonic() - t0
        asked = "nowhere.invalid" in d.log()
    print(json.dumps({"records": [r.to_dict() for r in records], "elapsed": elapsed,
                      "asked": asked}))
    """
)


@pytest.mark.netns
def test_unresolvable_name(make_config: MakeConfig, tmp_path: Path) -> None:
    dnsmasq_bin = require_tool("dnsmasq")
    unshare = require_tool("unshare")
    ip = require_tool("ip")
    mount = require_tool("mount")
    cfg = make_config(
        probes={
            "http": {
                "interval_s": 60,
                "timeout_s": 5,
                "targets": [{"url": "http://nowhere.invalid:8080/", "name": "nowhere"}],
            }
        }
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    child = tmp_path / "child.py"
    child.write_text(_CHILD)
    # The bind mount lives and dies with the private mount namespace: the host's file is
    # never touched.
    script = 'ip link set lo up && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    done = subprocess.run(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "--net",
            "sh",
            "-c",
            script,
            "sh",
            str(resolv),
            sys.executable,
            str(child),
            str(ROOT),
            str(cfg.path),
            dnsmasq_bin,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PATH": f"{Path(ip).parent}:{Path(mount).parent}:/usr/bin:/bin"},
    )
    require(
        done.returncode == 0 or "unshare failed" not in done.stderr,
        f"cannot create namespaces here: {done.stderr.strip()}",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["asked"]  # the lookup reached the namespace's own resolver, and only that
    [r] = [round_trip(Record.from_dict(d)) for d in out["records"]]
    assert r.error == "name_not_resolved"
    assert r.fields == {"ok": 0}
    assert out["elapsed"] < 2
