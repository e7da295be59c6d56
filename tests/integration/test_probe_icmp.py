"""agent.probes.icmp against real sockets: loopback, and hosts in namespaces the tests create.

Nothing here mocks the network. Packets go only to 127.0.0.0/8 or to 198.18.0.0/15
addresses on veth links into namespaces made by tests/harness/netns.py; name resolution runs
inside a namespace that has no interface but its loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from ipaddress import ip_address
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.contract.record import Record
from agent.probes.base import ProbeEnv
from agent.probes.icmp import IcmpProbe, RoundResult, summarise
from tests.conftest import require_tool
from tests.harness.lab.measure import binomial_interval
from tests.harness.netns import Lab, Link, Netns, netns_lab

__all__ = ["netns_lab"]  # a fixture, used by name

RTT_FIELDS = ("rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms", "rtt_p95_ms", "rtt_max_ms", "rtt_stddev_ms")
NOBODY = 65534
MakeConfig = Callable[..., AgentConfig]


# --- helpers ---------------------------------------------------------------------------


def icmp_config(
    make_config: MakeConfig,
    targets: Sequence[str],
    *,
    count: int = 10,
    spacing_s: float = 0.2,
    timeout_s: float = 1.0,
    uplinks: Sequence[dict[str, str]] | None = None,
) -> AgentConfig:
    """An agent config whose ICMP probe pings `targets` (named t1, t2, ... in order)."""
    worst_round = (count - 1) * spacing_s + count * timeout_s
    icmp = {
        "interval_s": max(60, math.ceil(worst_round) + 1),
        "count": count,
        "spacing_s": spacing_s,
        "timeout_s": timeout_s,
        "targets": [{"host": h, "name": f"t{i}"} for i, h in enumerate(targets, 1)],
    }
    return make_config(
        probes={"icmp": icmp}, uplinks=list(uplinks or [{"name": "lo", "operator": "test"}])
    )


def make_probe(config: AgentConfig, privileged: bool = True) -> IcmpProbe:
    assert config.probes.icmp is not None
    return IcmpProbe(config.probes.icmp, ProbeEnv(config, icmp_privileged=privileged))


def run_timed(probe: IcmpProbe) -> tuple[list[Record], float]:
    t0 = time.monotonic()
    records = asyncio.run(probe.run())
    return records, time.monotonic() - t0


def roundtrip(record: Record) -> Record:
    """The record as the collector would decode it (validates the contract)."""
    decoded = Record.from_dict(json.loads(record.to_json()))
    assert decoded == record
    return decoded


def assert_good_round(record: Record, count: int) -> None:
    f = record.fields
    assert record.error is None, record.to_dict()
    assert (f["ok"], f["sent"], f["received"], f["loss_pct"]) == (1, count, count, 0.0)
    assert all(k in f for k in (*RTT_FIELDS, "jitter_ms", "mos")), sorted(f)
    assert 0 < f["rtt_min_ms"] <= f["rtt_p50_ms"] <= f["rtt_p95_ms"] <= f["rtt_max_ms"]
    assert f["rtt_min_ms"] <= f["rtt_avg_ms"] <= f["rtt_max_ms"]
    assert f["rtt_max_ms"] <= f["timeout_ms"]
    assert 1.0 <= f["mos"] <= 4.5


def assert_failed_round(record: Record, errors: set[str], sent: int | None = None) -> None:
    f = record.fields
    assert record.error in errors, record.to_dict()
    assert (f["ok"], f["received"], f["loss_pct"], f["mos"]) == (0, 0, 100.0, 1.0)
    if sent is not None:
        assert f["sent"] == sent
    # Nothing came back, so nothing is stored for RTT (absent, never 0).
    assert not [k for k in f if k.startswith("rtt_") or k == "jitter_ms"], f
    roundtrip(record)


def fping_rtts(addr: str, count: int, period_ms: int) -> list[float]:
    """RTTs (ms) of the replies fping got; its -C output goes to stderr, '-' for a loss."""
    fping = require_tool("fping")
    proc = subprocess.run(
        [fping, "-C", str(count), "-p", str(period_ms), "-q", addr],
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith(f"{addr} "))
    values = line.split(":", 1)[1].split()
    assert len(values) == count, proc.stderr
    return [float(v) for v in values if v != "-"]


def dropped_by_rule(ns: Netns) -> int:
    """Packets the namespace's first INPUT rule has matched (exact counter)."""
    out = ns.run("iptables", "-w", "5", "-L", "INPUT", "-v", "-x", "-n").stdout
    rule = out.splitlines()[2]
    return int(rule.split()[0])


# A probe run in a child process: inside a namespace, possibly as another user.
CHILD_PROBE = """
import asyncio, json, sys
from pathlib import Path
from agent.config import (AgentConfig, IcmpProbeConfig, IcmpTarget, Probes, Schedule,
                          SpoolConfig, Station, Uplink)
from agent.probes.base import ProbeEnv
from agent.probes.icmp import IcmpProbe

spec = json.loads(sys.argv[1])
icmp = dict(spec["icmp"], targets=tuple(IcmpTarget(**t) for t in spec["icmp"]["targets"]))
cfg = IcmpProbeConfig(**icmp)
config = AgentConfig(Path("-"), Station(**spec["station"]), None,
                     tuple(Uplink(**u) for u in spec["uplinks"]), Probes(cfg, None, None),
                     Schedule(0.1, 10.0), SpoolConfig(10.0), Path("/nonexistent"),
                     Path("/nonexistent"))
probe = IcmpProbe(cfg, ProbeEnv(config, icmp_privileged=spec["privileged"]))
for record in asyncio.run(probe.run()):
    print(record.to_json())
"""


def run_in_namespace(
    ns: Netns, config: AgentConfig, *, privileged: bool, uid: int | None = None
) -> list[Record]:
    """Run the config's ICMP probe in a child process inside `ns` (as `uid` if given)."""
    assert config.probes.icmp is not None
    spec = {
        "station": dataclasses.asdict(config.station),
        "uplinks": [dataclasses.asdict(u) for u in config.uplinks],
        "icmp": dataclasses.asdict(config.probes.icmp),
        "privileged": privileged,
    }
    user: list[str] = []
    if uid is not None:
        setpriv = require_tool("setpriv")
        user = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    proc = subprocess.run(
        [*ns.prefix(), *user, sys.executable, "-c", CHILD_PROBE, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert proc.returncode == 0, proc.stderr
    return [Record.from_dict(json.loads(line)) for line in proc.stdout.splitlines()]


# A userspace echo responder that answers after a fixed delay: delay without sch_netem.
DELAYED_RESPONDER = """
import heapq, itertools, select, socket, struct, sys, time

delay, lifetime = float(sys.argv[1]), float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
pending, order = [], itertools.count()
end = time.monotonic() + lifetime

def checksum(data):
    data += b"\\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

print("ready", flush=True)
while time.monotonic() < end:
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        _, _, dst, reply = heapq.heappop(pending)
        sock.sendto(reply, (dst, 0))
    wait = min(pending[0][0] - now if pending else 0.05, end - now)
    if not select.select([sock], [], [], max(wait, 0))[0]:
        continue
    packet, (src, _) = sock.recvfrom(65535)
    arrived = time.monotonic()
    icmp = packet[(packet[0] & 0x0F) * 4:]
    if len(icmp) < 8 or icmp[0] != 8:
        continue
    reply = b"\\0\\0\\0\\0" + icmp[4:]
    reply = reply[:2] + struct.pack("!H", checksum(reply)) + reply[4:]
    heapq.heappush(pending, (arrived + delay, next(order), src, reply))
"""


def start_delayed_responder(lab: Lab, ns: Netns, delay_s: float, lifetime_s: float = 20) -> None:
    """Answer echo requests in `ns` from userspace, `delay_s` late (the kernel stays quiet)."""
    ns.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
    responder = lab.spawn(
        ns, sys.executable, "-c", DELAYED_RESPONDER, str(delay_s), str(lifetime_s)
    )
    assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"


@pytest.fixture
def target(netns_lab: Lab) -> Iterator[Link]:
    """A namespace reached over a veth from the root namespace."""
    yield netns_lab.link(netns_lab.namespace())


# --- the tests' own helpers ------------------------------------------------------------


def test_binomial_interval_helper() -> None:
    # Binomial(10, 1/2): P(X = 0) = 1/1024 <= 0.005 < P(X <= 1) = 11/1024.
    assert binomial_interval(10, 0.5, 0.99) == (1, 9)
    assert binomial_interval(500, 0.2, 0.99) == (78, 124)


# --- summarise (no network) ------------------------------------------------------------


def test_summarise_stores_no_rtt_when_nothing_came_back() -> None:
    fields, error = summarise(RoundResult(sent=10), 2.0)
    assert error == "timeout"
    assert fields["ok"] == 0 and fields["loss_pct"] == 100.0 and fields["mos"] == 1.0
    assert not [k for k in fields if k.startswith("rtt_") or k == "jitter_ms"]


def test_summarise_orders_rtts_by_sequence_not_by_arrival() -> None:
    result = RoundResult(sent=4, rtts_by_seq={3: 30.0, 0: 10.0, 1: 20.0})
    fields, error = summarise(result, 2.0)
    assert error is None
    assert (fields["received"], fields["loss_pct"]) == (3, 25.0)
    assert fields["jitter_ms"] == 10.0  # 10, 20, 30: the reply order 30, 10, 20 would give 15
    assert (fields["rtt_min_ms"], fields["rtt_p50_ms"], fields["rtt_max_ms"]) == (10, 20, 30)


def test_summarise_one_reply_has_no_jitter() -> None:
    fields, error = summarise(RoundResult(sent=1, rtts_by_seq={0: 5.0}), 2.0)
    assert error is None and fields["jitter_ms"] is None and fields["rtt_stddev_ms"] == 0


# --- loopback --------------------------------------------------------------------------


@pytest.mark.root
def test_loopback_round(make_config: MakeConfig) -> None:
    count, spacing = 10, 0.2
    probe = make_probe(icmp_config(make_config, ["127.0.0.1"], count=count, spacing_s=spacing))
    records, elapsed = run_timed(probe)
    [record] = records
    assert_good_round(record, count)
    assert record.fields["rtt_max_ms"] < 50  # loopback
    assert dict(record.tags) == {
        "station": "3171011001001",
        "uplink": "lo",
        "operator": "test",
        "target": "t1",
    }
    # Requests go out at a fixed spacing and the round ends with the last reply.
    assert (count - 1) * spacing <= elapsed < (count - 1) * spacing + 0.5, elapsed
    roundtrip(record)


@pytest.mark.root
def test_round_keeps_every_sequence_and_binds_the_source(make_config: MakeConfig) -> None:
    probe = make_probe(icmp_config(make_config, ["127.0.0.1"], count=5, spacing_s=0.02))
    result = asyncio.run(probe.round("127.0.0.2", "127.0.0.1"))
    assert result.sent == 5 and sorted(result.rtts_by_seq) == [0, 1, 2, 3, 4]
    assert result.send_error is None and result.icmp_error is None


@pytest.mark.root
def test_many_loopback_targets_concurrently(make_config: MakeConfig) -> None:
    count, spacing = 10, 0.2
    hosts = [f"127.0.0.{i}" for i in range(1, 11)]
    probe = make_probe(icmp_config(make_config, hosts, count=count, spacing_s=spacing))
    records, elapsed = run_timed(probe)
    assert sorted(r.tags["target"] for r in records) == sorted(f"t{i}" for i in range(1, 11))
    for record in records:
        assert_good_round(record, count)
    # Concurrent, not one after the other: about one round (a round is >= 1.8 s).
    assert elapsed < (count - 1) * spacing + 1.0, elapsed
    assert elapsed <= probe.round_time_s + 1.0


# --- a host in a namespace -------------------------------------------------------------


@pytest.mark.netns
def test_namespace_host_answers_and_a_missing_host_fails(
    make_config: MakeConfig, target: Link
) -> None:
    count = 5
    config = icmp_config(
        make_config, [target.far_addr, target.spare()], count=count, spacing_s=0.1, timeout_s=1.0
    )
    up, down = asyncio.run(make_probe(config).run())
    assert_good_round(up, count)
    roundtrip(up)
    # Nobody holds the spare address: ARP fails, nothing comes back (or the kernel's own
    # host-unreachable does, once ARP has given up).
    assert_failed_round(down, {"timeout", "host_unreachable"})
    assert down.fields["sent"] <= count


@pytest.mark.netns
@pytest.mark.slow
def test_loss_on_the_far_side_is_counted(make_config: MakeConfig, target: Link) -> None:
    n, p = 500, 0.2
    rule = f"-A INPUT -p icmp --icmp-type echo-request -m statistic --mode random --probability {p}"
    target.far.iptables(*rule.split(), "-j", "DROP")
    config = icmp_config(make_config, [target.far_addr], count=n, spacing_s=0.01, timeout_s=1.0)
    [record] = asyncio.run(make_probe(config).run())
    f = record.fields
    lost = f["sent"] - f["received"]
    dropped = dropped_by_rule(target.far)
    lo, hi = binomial_interval(n, p, 0.99)
    print(f"loss: sent {f['sent']} lost {lost} dropped {dropped} 99% interval [{lo}, {hi}]")
    assert f["sent"] == n and record.error is None and f["ok"] == 1
    # Exact: every request the far side dropped, and only those, is a loss.
    assert lost == dropped
    assert f["loss_pct"] == pytest.approx(100 * lost / n, abs=1e-3)
    # Statistical: the emulated loss is what was asked for (fails ~1 % of runs by design).
    assert lo <= lost <= hi, (lost, lo, hi)
    assert all(k in f for k in RTT_FIELDS)


@pytest.mark.netns
def test_rtt_matches_fping(make_config: MakeConfig, target: Link) -> None:
    require_tool("fping")
    count = 20
    config = icmp_config(make_config, [target.far_addr], count=count, spacing_s=0.02)
    probe = make_probe(config)
    asyncio.run(probe.round(target.far_addr, None))  # warm the neighbour cache
    theirs = statistics.median(fping_rtts(target.far_addr, count, 20))
    [record] = asyncio.run(probe.run())
    assert_good_round(record, count)
    ours = record.fields["rtt_p50_ms"]
    print(f"veth median RTT: ours {ours:.3f} ms, fping {theirs:.3f} ms")
    assert abs(ours - theirs) < 0.5, (ours, theirs)


@pytest.mark.netns
def test_rtt_matches_fping_with_added_delay(
    make_config: MakeConfig, netns_lab: Lab, target: Link
) -> None:
    require_tool("fping")
    delay_ms, count = 20.0, 20
    start_delayed_responder(netns_lab, target.far, delay_ms / 1000)
    config = icmp_config(make_config, [target.far_addr], count=count, spacing_s=0.05)
    probe = make_probe(config)
    asyncio.run(probe.round(target.far_addr, None))  # warm the neighbour cache
    theirs = statistics.median(fping_rtts(target.far_addr, count, 50))
    [record] = asyncio.run(probe.run())
    assert_good_round(record, count)
    ours = record.fields["rtt_p50_ms"]
    print(f"delayed median RTT: ours {ours:.3f} ms, fping {theirs:.3f} ms, added {delay_ms} ms")
    assert delay_ms <= ours < delay_ms + 5
    assert abs(ours - theirs) < 0.5, (ours, theirs)


@pytest.mark.netns
def test_reply_later_than_timeout_is_lost(
    make_config: MakeConfig, netns_lab: Lab, target: Link
) -> None:
    start_delayed_responder(netns_lab, target.far, 0.3)
    count = 5
    config = icmp_config(make_config, [target.far_addr], count=count, spacing_s=0.1, timeout_s=0.25)
    # The replies to the first requests arrive while the round still runs, 50 ms past Tmax.
    [record] = asyncio.run(make_probe(config).run())
    assert_failed_round(record, {"timeout"}, sent=count)


# --- unprivileged ICMP -----------------------------------------------------------------


@pytest.mark.netns
def test_unprivileged_probe_follows_ping_group_range(
    make_config: MakeConfig, netns_lab: Lab
) -> None:
    ns = netns_lab.namespace()
    count = 3
    config = icmp_config(make_config, ["127.0.0.1"], count=count, spacing_s=0.05)

    ns.sysctl("net.ipv4.ping_group_range", f"{NOBODY} {NOBODY}")
    [record] = run_in_namespace(ns, config, privileged=False, uid=NOBODY)
    assert_good_round(record, count)

    # The child really has no privilege: a raw socket is refused.
    [record] = run_in_namespace(ns, config, privileged=True, uid=NOBODY)
    assert_failed_round(record, {"permission_denied"}, sent=0)

    ns.sysctl("net.ipv4.ping_group_range", "1 0")  # closed, the kernel's default
    [record] = run_in_namespace(ns, config, privileged=False, uid=NOBODY)
    assert_failed_round(record, {"permission_denied"}, sent=0)


# --- failures are records --------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("privileged", [True, False], ids=["raw", "datagram"])
def test_unreachable_targets_are_classified_in_both_modes(
    make_config: MakeConfig, netns_lab: Lab, privileged: bool
) -> None:
    # The probe runs in namespace `near`, whose only route is the link to `far`.
    near, far = netns_lab.namespace(), netns_lab.namespace()
    link = netns_lab.link(far, near=near)
    near.sysctl("net.ipv4.ping_group_range", f"{NOBODY} {NOBODY}")
    # Give up ARP after one 100 ms probe, so a missing neighbour is reported within the round.
    near.sysctl(f"net.ipv4.neigh.{link.near_if}.mcast_solicit", "1")
    near.sysctl(f"net.ipv4.neigh.{link.near_if}.retrans_time_ms", "100")
    unrouted = next(
        a for a in ("198.19.255.254", "198.18.0.1") if ip_address(a) not in link.network
    )
    count = 5
    hosts = [link.far_addr, link.spare(), unrouted]
    config = icmp_config(make_config, hosts, count=count, spacing_s=0.1, timeout_s=0.5)
    up, no_neighbour, no_route = run_in_namespace(
        near, config, privileged=privileged, uid=None if privileged else NOBODY
    )
    assert_good_round(up, count)
    assert_failed_round(no_neighbour, {"host_unreachable"})
    assert_failed_round(no_route, {"network_unreachable"}, sent=0)  # sendto refused them all


@pytest.mark.netns
def test_unresolvable_name_is_a_record(make_config: MakeConfig, netns_lab: Lab) -> None:
    nsswitch = Path("/etc/nsswitch.conf")
    lines = nsswitch.read_text().splitlines() if nsswitch.exists() else []
    hosts = next((x.split()[1:] for x in lines if x.startswith("hosts:")), [])
    if set(hosts) - {"files", "dns"} or Path("/var/run/nscd/socket").exists():
        pytest.skip(f"name lookups may leave the namespace through hosts: {hosts} or nscd")
    # Inside a namespace with only a loopback a DNS query cannot leave the machine.
    ns = netns_lab.namespace()
    config = icmp_config(make_config, ["nonexistent.invalid"], count=2, spacing_s=0.05)
    t0 = time.monotonic()
    [record] = run_in_namespace(ns, config, privileged=True)
    assert time.monotonic() - t0 < 10
    assert_failed_round(record, {"name_not_resolved"}, sent=0)
    assert record.tags["target"] == "t1"


@pytest.mark.root
def test_unusable_uplink_source_is_a_record(make_config: MakeConfig) -> None:
    uplinks = [
        {"name": "gone", "operator": "test", "source": "192.0.2.1"},  # TEST-NET-1: not ours
        {"name": "noif", "operator": "test", "interface": "sinyalnope0"},
    ]
    config = icmp_config(make_config, ["127.0.0.1"], count=2, spacing_s=0.05, uplinks=uplinks)
    records = asyncio.run(make_probe(config).run())
    assert sorted(r.tags["uplink"] for r in records) == ["gone", "noif"]
    for record in records:
        assert_failed_round(record, {"source_unavailable"}, sent=0)
