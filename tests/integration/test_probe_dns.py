"""DNS probe against real resolvers on loopback: dnsmasq, a silent socket, a closed port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.contract.record import Record
from agent.probes.base import ProbeEnv
from agent.probes.dns import DnsProbe
from tests.conftest import require_tool
from tests.harness.servers import DnsServer, black_hole_udp, closed_port, dnsmasq

MakeConfig = Callable[..., AgentConfig]

GOOD = "good.test"  # --address: A 192.0.2.10 (and every name under it)
V4ONLY = "v4only.test"  # --host-record with an IPv4 address only: AAAA is NODATA
DUAL = "dual.test"  # A and AAAA
BIG = "big.test"  # 60 A records: the UDP answer is truncated, the TCP retry has them all
MISSING = "missing.test"  # under --local=/test/: NXDOMAIN
FOREIGN = "example.org"  # no local domain and no upstream: dnsmasq answers REFUSED

DNS_TAGS = {"station", "uplink", "operator", "resolver", "qname", "qtype"}


@pytest.fixture(scope="module")
def resolver() -> Iterator[DnsServer]:
    binary = require_tool("dnsmasq")
    big = [f"host-record={BIG},198.18.0.{i}" for i in range(1, 61)]
    with dnsmasq(
        binary,
        addresses={GOOD: "192.0.2.10"},
        host_records={V4ONLY: ["192.0.2.11"], DUAL: ["192.0.2.12", "2001:db8::12"]},
        extra=big,
    ) as server:
        yield server


def probe(
    make_config: MakeConfig,
    resolvers: list[dict[str, Any]],
    names: list[str],
    qtype: str = "A",
    timeout_s: float = 1.0,
    uplinks: list[dict[str, Any]] | None = None,
) -> DnsProbe:
    dns = {
        "interval_s": 60,
        "timeout_s": timeout_s,
        "resolvers": resolvers,
        "names": names,
        "qtype": qtype,
    }
    sections: dict[str, Any] = {"probes": {"dns": dns}}
    if uplinks is not None:
        sections["uplinks"] = uplinks
    cfg = make_config(**sections)
    assert cfg.probes.dns is not None
    return DnsProbe(cfg.probes.dns, ProbeEnv(cfg))


def at(server: DnsServer, name: str = "dnsmasq") -> dict[str, Any]:
    return {"address": server.host, "port": server.port, "name": name}


def run_one(p: DnsProbe) -> Record:
    records = asyncio.run(p.run())
    assert len(records) == 1
    return round_trip(records[0])


def round_trip(r: Record) -> Record:
    """The record survives the wire contract unchanged (and is valid by it)."""
    back = Record.from_dict(r.to_dict())
    assert back == r
    return back


def test_good_name_resolves(make_config: MakeConfig, resolver: DnsServer) -> None:
    r = run_one(probe(make_config, [at(resolver)], [GOOD]))
    assert r.error is None
    assert r.fields["ok"] == 1
    assert r.fields["rcode"] == 0
    assert r.fields["answers"] == 1
    assert 0 < r.fields["resolve_ms"] < 500  # loopback: well under the 1 s timeout
    assert r.kind == "dns"
    assert dict(r.tags) == {
        "station": "3171011001001",
        "uplink": "lo",
        "operator": "test",
        "resolver": "dnsmasq",
        "qname": GOOD,
        "qtype": "A",
    }
    assert f"query[A] {GOOD} from 127.0.0.1" in resolver.log()


def test_nxdomain(make_config: MakeConfig, resolver: DnsServer) -> None:
    r = run_one(probe(make_config, [at(resolver)], [MISSING]))
    assert r.error == "dns_nxdomain"
    assert r.fields["ok"] == 0
    assert r.fields["rcode"] == 3
    assert r.fields["answers"] == 0
    assert "resolve_ms" in r.fields  # the resolver answered: how fast is still measured


def test_refused(make_config: MakeConfig, resolver: DnsServer) -> None:
    r = run_one(probe(make_config, [at(resolver)], [FOREIGN]))
    assert r.error == "dns_refused"
    assert r.fields["ok"] == 0
    assert r.fields["rcode"] == 5


def test_aaaa_of_a_name_with_only_a_is_no_answer(
    make_config: MakeConfig, resolver: DnsServer
) -> None:
    r = run_one(probe(make_config, [at(resolver)], [V4ONLY], qtype="AAAA"))
    assert r.error == "dns_no_answer"
    assert r.fields["ok"] == 0
    assert r.fields["rcode"] == 0
    assert r.fields["answers"] == 0
    assert r.tags["qtype"] == "AAAA"


def test_aaaa(make_config: MakeConfig, resolver: DnsServer) -> None:
    r = run_one(probe(make_config, [at(resolver)], [DUAL], qtype="AAAA"))
    assert r.error is None
    assert r.fields["ok"] == 1
    assert r.fields["answers"] == 1


def test_truncated_answer_is_retried_over_tcp(make_config: MakeConfig, resolver: DnsServer) -> None:
    r = run_one(probe(make_config, [at(resolver)], [BIG]))
    assert r.error is None
    assert r.fields["answers"] == 60  # a truncated UDP answer holds only about half


def test_silent_resolver_times_out(make_config: MakeConfig) -> None:
    timeout_s = 0.5
    with black_hole_udp() as (host, port):
        p = probe(
            make_config,
            [{"address": host, "port": port, "name": "hole"}],
            [GOOD],
            timeout_s=timeout_s,
        )
        t0 = time.monotonic()
        r = run_one(p)
        elapsed = time.monotonic() - t0
    assert r.error == "timeout"
    assert r.fields == {"ok": 0}  # no rcode, no resolve_ms: nothing was measured
    assert timeout_s * 0.9 <= elapsed < timeout_s + 0.5


def test_closed_port_is_refused_at_once(make_config: MakeConfig) -> None:
    # The ICMP port unreachable reaches a connected UDP socket as ECONNREFUSED: the probe
    # reports it at once instead of waiting out its timeout.
    p = probe(
        make_config,
        [{"address": "127.0.0.1", "port": closed_port(), "name": "closed"}],
        [GOOD],
        timeout_s=2.0,
    )
    t0 = time.monotonic()
    r = run_one(p)
    elapsed = time.monotonic() - t0
    assert r.error == "connection_refused"
    assert r.fields == {"ok": 0}
    assert elapsed < 1.0


def test_unavailable_source_address(make_config: MakeConfig, resolver: DnsServer) -> None:
    # 198.18.0.1 is not configured on this machine: the bind fails, nothing is sent.
    uplinks = [
        {"name": "gone", "operator": "x", "source": "198.18.0.1"},
        {"name": "noif", "operator": "y", "interface": "sinyal-none0"},
    ]
    records = asyncio.run(probe(make_config, [at(resolver)], [GOOD], uplinks=uplinks).run())
    assert [(r.tags["uplink"], r.error) for r in map(round_trip, records)] == [
        ("gone", "source_unavailable"),
        ("noif", "source_unavailable"),
    ]
    assert all(r.fields == {"ok": 0} for r in records)


def test_run_covers_uplinks_resolvers_and_names(
    make_config: MakeConfig, resolver: DnsServer
) -> None:
    timeout_s = 0.5
    uplinks = [
        {"name": "lo", "operator": "test"},
        {"name": "lo-src", "operator": "telkomsel", "source": "127.0.0.1"},
    ]
    names = [GOOD, MISSING, V4ONLY]
    with black_hole_udp() as (host, port):
        resolvers = [at(resolver, "dm"), {"address": host, "port": port, "name": "hole"}]
        p = probe(make_config, resolvers, names, timeout_s=timeout_s, uplinks=uplinks)
        t0 = time.monotonic()
        records = asyncio.run(p.run())
        elapsed = time.monotonic() - t0
    assert elapsed < timeout_s + 0.5  # the queries run concurrently

    assert len(records) == 2 * 2 * 3
    seen = {}
    for r in map(round_trip, records):
        assert r.kind == "dns"
        assert set(r.tags) == DNS_TAGS
        assert r.tags["station"] == "3171011001001"
        assert r.tags["qtype"] == "A"
        key = (r.tags["uplink"], r.tags["operator"], r.tags["resolver"], r.tags["qname"])
        assert key not in seen
        seen[key] = r.error
    expected_error = {GOOD: None, MISSING: "dns_nxdomain", V4ONLY: None}
    assert seen == {
        (u["name"], u["operator"], res, name): expected_error[name] if res == "dm" else "timeout"
        for u in uplinks
        for res in ("dm", "hole")
        for name in names
    }
    assert len({r.id for r in records}) == len(records)
