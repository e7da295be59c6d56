"""The field lab's own tests: what it imposes, independent tools (fping, iperf3) measure;
what it creates, it removes.

Traffic goes only between namespaces the lab creates (198.18.0.0/15, no route out).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_tool
from tests.harness.lab import Lab, lab_namespaces, reap_stale
from tests.harness.lab.fixtures import require_lab
from tests.harness.lab.lab import DELAY_DEV, alive
from tests.harness.lab.measure import (
    binomial_interval,
    expected_goodput_mbit,
    fping,
    fping_command,
    iperf3,
    parse_fping,
    sinyal_and_fping,
    tcp_goodput_mbit,
)

pytestmark = [pytest.mark.root, pytest.mark.netns]

# The delay element's own cost: measured at about 0.2-0.4 ms per packet (see
# benchmarks/results/accuracy.md); the slack allows for a busy shared machine.
ELEMENT_SLACK_MS = 3.0


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("fping")


def test_no_route_out_of_the_machine(field_lab: Lab) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    for node in (st, core, field_lab.router):
        out = field_lab.run(node, "ip", "route", "get", "192.0.2.1", check=False)
        assert out.returncode != 0 and "unreachable" in out.stderr, out
    assert fping(st, core.target(8), 3, 20).lost == 0
    assert fping(core, st.addr, 3, 20).lost == 0


def test_imposed_delay_is_measured_by_fping(field_lab: Lab) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    base = statistics.median(fping(st, core.addr, 10, 10).rtts)
    field_lab.impair(st, delay_ms=40)
    rtts = fping(st, core.addr, 20, 20).rtts
    print(f"delay 40 ms: fping median {statistics.median(rtts):.3f} ms, base {base:.3f} ms")
    assert len(rtts) == 20
    assert min(rtts) >= 40 and statistics.median(rtts) <= 40 + base + ELEMENT_SLACK_MS
    field_lab.impair(st, delay_ms=None)
    assert max(fping(st, core.addr, 5, 10).rtts) < 20  # off the delay element again


def test_jitter_is_uniform_within_bounds(field_lab: Lab) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    field_lab.impair(st, delay_ms=40, jitter_ms=15, keep_order=False)
    rtts = fping(st, core.addr, 80, 10).rtts
    sd = statistics.stdev(rtts)
    print(f"40 ± 15 ms: min {min(rtts):.2f} max {max(rtts):.2f} sd {sd:.2f} ms")
    assert len(rtts) == 80
    assert min(rtts) >= 25 and max(rtts) <= 55 + ELEMENT_SLACK_MS
    # Uniform on ±15 ms: sd 15/sqrt(3) = 8.7 ms; 80 samples fill the range.
    assert 6.5 <= sd <= 11
    assert min(rtts) < 30 and max(rtts) > 50


def test_imposed_loss_is_within_the_binomial_interval_and_dropped_on_the_far_side(
    field_lab: Lab,
) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    n, p = 400, 0.2
    field_lab.impair(st, loss_pct=p * 100)
    got = fping(st, core.addr, n, 5, timeout_ms=500)
    lo, hi = binomial_interval(n, p, 0.99)
    print(f"loss {p:.0%}: fping lost {got.lost}/{n}, 99% interval [{lo}, {hi}]")
    assert lo <= got.lost <= hi
    # Every loss is a drop by the router's rule: the sender saw no error.
    rule = field_lab.run(field_lab.router, "iptables", "-L", f"up{st.index}", "-v", "-x", "-n")
    assert int(rule.stdout.splitlines()[2].split()[0]) == got.lost
    field_lab.impair(st, loss_pct=0)
    assert fping(st, core.addr, 20, 5).lost == 0


def test_imposed_rate_is_measured_by_iperf3(field_lab: Lab) -> None:
    require_tool("iperf3")
    st = field_lab.station("a")
    server = field_lab.iperf3_server()
    rate = 10.0
    field_lab.impair(st, rate_mbit=rate)
    up = tcp_goodput_mbit(iperf3(st, server, 2))
    down = tcp_goodput_mbit(iperf3(st, server, 2, reverse=True))
    want = expected_goodput_mbit(rate)
    print(f"tbf {rate} Mbit/s: iperf3 up {up:.2f}, down {down:.2f}, expected {want:.2f}")
    for got in (up, down):
        assert abs(got - rate) <= 0.1 * rate


def test_tcp_and_udp_pass_the_delay_element(field_lab: Lab) -> None:
    require_tool("iperf3")
    st = field_lab.station("a")
    server = field_lab.iperf3_server()
    field_lab.impair(st, delay_ms=30, jitter_ms=5, rate_mbit=10)
    before = field_lab.delay_element().stats()["delayed"]
    up = tcp_goodput_mbit(iperf3(st, server, 3))
    udp = iperf3(st, server, 1, udp_mbit=2, omit_s=0)["end"]["sum"]
    after = field_lab.delay_element().stats()
    print(f"30 ± 5 ms, 10 Mbit/s: TCP up {up:.2f} Mbit/s; UDP {udp}; element {after}")
    assert abs(up - 10) <= 1.0
    assert udp["packets"] > 0 and udp["lost_packets"] == 0
    assert after["delayed"] - before > 1000 and after["write_errors"] == 0


def test_impairments_change_during_a_run(field_lab: Lab) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    field_lab.impair(st, delay_ms=10)
    count = 30
    proc = field_lab.spawn(st, *fping_command(core.addr, count, 100))
    time.sleep(1.2)
    field_lab.impair(st, delay_ms=60)
    _, err = proc.communicate(timeout=30)
    by_seq = parse_fping(core.addr, count, err).by_seq
    early, late = by_seq[:10], by_seq[-15:]
    print(f"early {early}\nlate {late}")
    # Every reply came back; all but a descheduled straggler or two (a userspace element on a
    # shared machine) within the slack of the delay in force when the request was sent.
    assert all(r is not None for r in early + late)
    assert sum(10 <= r < 10 + ELEMENT_SLACK_MS for r in early if r is not None) >= 8
    assert sum(60 <= r < 60 + ELEMENT_SLACK_MS for r in late if r is not None) >= 13
    assert statistics.median(r for r in late if r is not None) >= 60


def test_blackout_schedule(field_lab: Lab) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    count = 24
    proc = field_lab.spawn(st, *fping_command(core.addr, count, 100, timeout_ms=300))
    field_lab.blackouts(st, [(0.7, 1.0)])  # requests 7..16 fall into it
    _, err = proc.communicate(timeout=30)
    by_seq = parse_fping(core.addr, count, err).by_seq
    print(by_seq)
    assert all(r is not None for r in by_seq[:5])
    assert all(r is None for r in by_seq[9:15])
    assert all(r is not None for r in by_seq[-5:])
    assert not field_lab.impairment(st).blackout


def test_sinyal_rtt_median_matches_fping_on_a_delayed_path(field_lab: Lab, tmp_path: Path) -> None:
    st, core = field_lab.station("a"), field_lab.core()
    field_lab.impair(st, delay_ms=50)
    count = 20
    ours, theirs = sinyal_and_fping(st, core.addr, tmp_path, count=count, spacing_s=0.05)
    fping_p50 = statistics.median(theirs.rtts)
    print(f"50 ms: Sinyal p50 {ours['rtt_p50_ms']} ms, fping median {fping_p50:.3f} ms")
    assert ours["received"] == count and len(theirs.rtts) == count
    assert abs(ours["rtt_p50_ms"] - fping_p50) <= max(1.0, 0.03 * fping_p50)


def _root_view() -> str:
    """What a lab must never leave in the root namespace: its links, rules, routes, chains."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    rules = subprocess.run(["ip", "rule"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True)
    chains = subprocess.run(["iptables", "-w", "5", "-S"], capture_output=True, text=True).stdout
    lines = [
        *(x for x in links.splitlines() if any(n in x for n in (": core0", ": wan0", DELAY_DEV))),
        *(x for x in rules.splitlines() if "lookup 100" in x),
        *(x for x in routes.stdout.splitlines() if "198.19." in x or DELAY_DEV in x),
        *(x for x in chains.splitlines() if x.startswith(("-N up", "-N dn"))),
    ]
    return "\n".join(lines)


def test_cleanup_leaves_nothing_even_on_failure() -> None:
    require_lab(("iperf3",))
    before = _root_view()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="a test failed here"), Lab() as lab:
        a, b = lab.station("a"), lab.station("b")
        lab.impair(a, delay_ms=20, jitter_ms=5, loss_pct=5, rate_mbit=5)
        lab.impair(b, blackout=True, rate_mbit=2)
        lab.blackouts(b, [(5, 5)])
        lab.iperf3_server()
        pids = [int(p) for ns in lab_namespaces()[os.getpid()] for p in _ns_pids(ns)]
        assert len(pids) == 2  # the delay element and iperf3
        raise RuntimeError("a test failed here")
    assert os.getpid() not in lab_namespaces()
    assert not [p for p in pids if alive(p)]
    assert _root_view() == before


def _ns_pids(name: str) -> list[str]:
    return subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True
    ).stdout.split()


def _start_cli_lab() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.harness.lab",
            "up",
            "--stations",
            "1",
            "--delay",
            "5",
            "--iperf3",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(20):
        line = proc.stdout.readline()
        if not line or line.startswith("holding"):
            break
    assert proc.pid in lab_namespaces(), proc.stderr.read() if proc.stderr else ""
    return proc, proc.pid


def test_a_killed_lab_is_reaped() -> None:
    require_lab(("iperf3",))
    proc, pid = _start_cli_lab()
    inside = [int(p) for ns in lab_namespaces()[pid] for p in _ns_pids(ns)]
    proc.kill()
    proc.wait(5)
    assert pid in lab_namespaces()  # left behind by the kill
    reap_stale()
    assert pid not in lab_namespaces()
    # SIGKILLed processes vanish once their parent (or init) has waited for them: allow that
    deadline = time.monotonic() + 10
    while (left := [p for p in inside if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]


def test_ctrl_c_removes_the_lab() -> None:
    require_lab(("iperf3",))
    proc, pid = _start_cli_lab()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "lab removed" in out
    assert pid not in lab_namespaces()
