"""The field lab: station namespaces and a core namespace joined through a router, impaired.

```
 station ns "st-A"  wan0 ──veth── s1 ┐                     ┌ router ns "wan" ┐
 station ns "st-B"  wan0 ──veth── s2 ┤ delay0 (TUN, delay) │ core0 ──veth── wan0  core ns
 ...                                 ┘ loss, blackout, tbf └─────────────────┘ (collector,
                                                                                 InfluxDB,
                                                                                 iperf3, targets)
```

Everything lives in namespaces named ``sylab-<owner pid>-<role>``; nothing is added to the
root namespace, so labs running at the same time never clash and use the same addresses.
Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking): the core is 198.18.0.2 and holds
extra target addresses 198.18.1.1-8; station n is 198.19.x.y with n's /30 (its gateway is .1 of
that /30). Stations route only 198.18.0.0/15 to the router, the router and the core route
only lab networks: no namespace has a route out of the machine.

Impairments, per station, changeable at any time (`Lab.impair`), all on the router, the far
side of the station's link (a packet dropped on the sending host would be an error for the
sender, not a loss):

- ``delay_ms`` / ``jitter_ms``: added to every packet from the station (upstream), so the
  station's round-trip time grows by delay_ms. Jitter is uniform on ±jitter_ms; with
  ``keep_order`` (default) packets are not reordered (see tests/harness/lab/delay.py). Done by the
  userspace delay element (a TUN forwarder) because these kernels lack sch_netem; with
  ``delay_backend="netem"`` (or "auto" on a kernel that has it) by netem on the upstream path.
  ``delay_ms=None`` takes the station's packets off the delay element altogether; 0 keeps
  them on it with no delay (to measure the element's own cost).
- ``loss_pct``: upstream packets dropped at random (iptables `statistic`), so a ping round
  loses that share of requests.
- ``rate_mbit``: a tbf of that rate in each direction (downstream on the station's router
  port, upstream as the leaf of the station's htb class on the core port), queue
  ``queue_ms`` long at that rate.
- ``blackout``: every packet in both directions dropped; `Lab.blackouts` runs a schedule.

A Lab removes everything on close, on an exception and on Ctrl-C; `reap_stale` (run by every
new Lab, and by ``python -m tests.harness.lab down``) removes what a killed run left: its namespaces
and the processes still inside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness.netns import Netns, sh, stop_process

PREFIX = "sylab"
NS_RE = re.compile(rf"^{PREFIX}-(\d+)-(.+)$")
STATION_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
CORE_LINK = ipaddress.ip_network("198.18.0.0/30")  # .1 router, .2 core
TARGETS = ipaddress.ip_network("198.18.1.0/24")  # extra addresses held by the core
STATIONS = ipaddress.ip_network("198.19.0.0/16")  # one /30 per station
N_TARGETS = 8
DELAY_TABLE = 100  # the router's routing table that sends packets into the delay element
DELAY_DEV = "delay0"
DELAY_SCRIPT = Path(__file__).resolve().parent / "delay.py"
MTU_FRAME = 1514  # bytes a full-size packet occupies in tbf (IP + Ethernet header)


@dataclass(frozen=True)
class Node:
    """A namespace of the lab and its main address."""

    ns: Netns
    addr: str

    @property
    def name(self) -> str:
        return self.ns.name

    def prefix(self) -> list[str]:
        return self.ns.prefix()


@dataclass(frozen=True)
class Core(Node):
    """The core namespace: collector, databases, iperf3, test targets."""

    targets: tuple[str, ...] = ()

    def target(self, i: int = 1) -> str:
        """The i-th extra address the core answers on (1-based)."""
        return self.targets[i - 1]


@dataclass(frozen=True)
class Station(Node):
    """A station namespace: one link to the router, its own /30."""

    label: str = ""
    index: int = 0
    network: ipaddress.IPv4Network = STATIONS
    gateway: str = ""

    @property
    def port(self) -> str:
        """The router's interface towards this station."""
        return f"s{self.index}"


@dataclass(frozen=True)
class Impairment:
    delay_ms: float | None = None  # None: not through the delay element
    jitter_ms: float = 0.0
    keep_order: bool = True
    loss_pct: float = 0.0
    rate_mbit: float | None = None
    queue_ms: float = 100.0
    blackout: bool = False

    def check(self) -> None:
        if self.delay_ms is not None and self.delay_ms < 0:
            raise ValueError(f"delay_ms: got {self.delay_ms}, expected >= 0 or None")
        if self.jitter_ms < 0 or (self.jitter_ms and self.delay_ms is None):
            raise ValueError(f"jitter_ms: got {self.jitter_ms}, expected >= 0 with a delay_ms")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss_pct: got {self.loss_pct}, expected 0..100")
        if self.rate_mbit is not None and self.rate_mbit <= 0:
            raise ValueError(f"rate_mbit: got {self.rate_mbit}, expected > 0 or None")
        if self.queue_ms <= 0:
            raise ValueError(f"queue_ms: got {self.queue_ms}, expected > 0")


class DelayElement:
    """The running TUN forwarder (tests/harness/lab/delay.py) in the router namespace."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = _readline(self.proc, timeout_s)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stats(self) -> dict[str, Any]:
        return self.send({"stats": True})


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout_s)[0]:
        raise RuntimeError(f"no answer from {proc.args!r} within {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{proc.args!r} exited {proc.wait(5)}: {err.strip()}")
    return line.strip()


class Lab:
    """A field lab: `with Lab() as lab:`, then `lab.core()`, `lab.station(name)`, `lab.impair`."""

    def __init__(self, *, delay_backend: str = "auto", seed: int | None = None) -> None:
        if delay_backend not in ("auto", "tun", "netem"):
            raise ValueError(f"delay_backend: got {delay_backend!r}, expected auto, tun or netem")
        self.owner = os.getpid()
        self._backend = delay_backend
        self._seed = seed
        self._stack = ExitStack()
        self._lock = threading.RLock()
        self._stations: dict[str, Station] = {}
        self._impairments: dict[str, Impairment] = {}
        self._delay: DelayElement | None = None
        self._schedules: list[tuple[threading.Thread, threading.Event]] = []
        self._core: Core | None = None
        self._wan: Netns | None = None
        self._htb: set[str] = set()  # stations with an upstream htb class

    # --- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        reap_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop schedules and processes, delete every namespace. Safe to call twice."""
        for _thread, stop in self._schedules:
            stop.set()
        for thread, _stop in self._schedules:
            thread.join(timeout=5)
        self._schedules.clear()
        # Ctrl-C during cleanup must not leave half a lab: finish, then re-raise.
        interrupted = False
        while True:
            try:
                self._stack.close()
                break
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def _namespace(self, role: str) -> Netns:
        ns = Netns(f"{PREFIX}-{self.owner}-{role}")
        sh("ip", "netns", "add", ns.name)
        self._stack.callback(delete_namespace, ns.name)
        ip(ns, "link set lo up")
        return ns

    def _build(self) -> None:
        wan, core = self._namespace("wan"), self._namespace("core")
        self._wan = wan
        rtr, core_addr = (str(a) for a in list(CORE_LINK.hosts())[:2])
        targets = tuple(str(TARGETS.network_address + i) for i in range(1, N_TARGETS + 1))
        ip(wan, f"link add core0 type veth peer name wan0 netns {core.name}")
        ip(
            wan,
            f"addr add {rtr}/30 dev core0",
            "link set core0 up",
            f"route add {TARGETS} via {core_addr}",
        )
        ip(
            core,
            f"addr add {core_addr}/30 dev wan0",
            "link set wan0 up",
            f"route add {STATIONS} via {rtr}",
            *(f"addr add {t}/32 dev lo" for t in targets),
        )
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),  # packets re-enter from the TUN device
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
        ):
            wan.sysctl(key, value)
        # Upstream shaping: one htb class per rate-limited station, the rest unlimited.
        tc(wan, "qdisc add dev core0 root handle 1: htb default 1")
        tc(wan, "class add dev core0 parent 1: classid 1:1 htb rate 100gbit")
        self._core = Core(core, core_addr, targets)

    # --- nodes -----------------------------------------------------------------------------

    def core(self) -> Core:
        assert self._core is not None, "use the Lab as a context manager"
        return self._core

    @property
    def router(self) -> Netns:
        assert self._wan is not None, "use the Lab as a context manager"
        return self._wan

    def stations(self) -> list[Station]:
        return list(self._stations.values())

    def station(self, label: str) -> Station:
        """The station called `label` (lowercase letters, digits, '-'), made on first use."""
        with self._lock:
            if label in self._stations:
                return self._stations[label]
            if not STATION_NAME_RE.match(label):
                raise ValueError(f"station name: got {label!r}, expected [a-z0-9][a-z0-9-]*")
            index = len(self._stations) + 1
            if index >= STATIONS.num_addresses // 4:
                raise RuntimeError("no /30 left in 198.19.0.0/16")
            net = ipaddress.IPv4Network((int(STATIONS.network_address) + 4 * index, 30))
            gw, addr = (str(a) for a in net.hosts())
            ns = self._namespace(f"st-{label}")
            port = f"s{index}"
            ip(self.router, f"link add {port} type veth peer name wan0 netns {ns.name}")
            ip(self.router, f"addr add {gw}/30 dev {port}", f"link set {port} up")
            ip(
                ns,
                f"addr add {addr}/30 dev wan0",
                "link set wan0 up",
                f"route add 198.18.0.0/15 via {gw}",
            )
            iptables_restore(
                self.router,
                f":up{index} - [0:0]",
                f":dn{index} - [0:0]",
                f"-A FORWARD -i {port} -j up{index}",
                f"-A FORWARD -o {port} -j dn{index}",
            )
            st = Station(ns, addr, label=label, index=index, network=net, gateway=gw)
            self._stations[label] = st
            self._impairments[label] = Impairment()
            return st

    # --- impairments -----------------------------------------------------------------------

    def impairment(self, st: Station) -> Impairment:
        return self._impairments[st.label]

    def impair(self, st: Station, **changes: Any) -> Impairment:
        """Change some of a station's impairments (the rest stay); returns the new set.

        Keys: delay_ms, jitter_ms, keep_order, loss_pct, rate_mbit, queue_ms, blackout.
        """
        with self._lock:
            old = self._impairments[st.label]
            new = dataclasses.replace(old, **changes)
            new.check()
            netem = self._use_netem()
            delay_keys = ("delay_ms", "jitter_ms", "keep_order")
            if any(getattr(old, k) != getattr(new, k) for k in delay_keys) and not netem:
                self._apply_delay(st, old, new)
            if (old.loss_pct, old.blackout) != (new.loss_pct, new.blackout):
                self._apply_filter(st, new)
            rate_keys = ("rate_mbit", "queue_ms")
            if any(getattr(old, k) != getattr(new, k) for k in rate_keys):
                self._apply_downstream_rate(st, new)
            up_keys = rate_keys + (delay_keys if netem else ())
            if any(getattr(old, k) != getattr(new, k) for k in up_keys):
                self._apply_upstream(st, new, netem)
            self._impairments[st.label] = new
            return new

    def clear(self, st: Station) -> Impairment:
        """Remove every impairment of a station."""
        return self.impair(st, **dataclasses.asdict(Impairment()))

    def blackouts(self, st: Station, windows: Iterable[tuple[float, float]]) -> threading.Thread:
        """Black the station out for each (start_s, duration_s), counted from now.

        Runs on a thread; the lab's close stops it. Returns the thread (join it to wait).
        """
        plan = sorted(windows)
        stop = threading.Event()
        t0 = time.monotonic()

        def run() -> None:
            for start, duration in plan:
                for at, on in ((start, True), (start + duration, False)):
                    if stop.wait(max(0.0, t0 + at - time.monotonic())):
                        return
                    self.impair(st, blackout=on)

        thread = threading.Thread(target=run, name=f"blackouts-{st.label}", daemon=True)
        self._schedules.append((thread, stop))
        thread.start()
        return thread

    def _use_netem(self) -> bool:
        if self._backend == "auto":
            self._backend = "netem" if netem_available(self.router) else "tun"
        return self._backend == "netem"

    def delay_element(self) -> DelayElement:
        """The TUN delay element, started on first use."""
        if self._delay is None:
            args = [sys.executable, str(DELAY_SCRIPT), DELAY_DEV]
            if self._seed is not None:
                args.append(str(self._seed))
            proc = self.spawn(self.router, *args, stdin=subprocess.PIPE)
            if _readline(proc, 10) != "ready":
                raise RuntimeError("the delay element did not start")
            ip(
                self.router,
                f"link set {DELAY_DEV} up txqueuelen 10000",
                f"route add default dev {DELAY_DEV} table {DELAY_TABLE}",
            )
            self._delay = DelayElement(proc)
        return self._delay

    def _apply_delay(self, st: Station, old: Impairment, new: Impairment) -> None:
        rule = f"rule %s iif {st.port} lookup {DELAY_TABLE} pref {1000 + st.index}"
        if new.delay_ms is None:
            if old.delay_ms is not None:
                ip(self.router, rule % "del")  # first off the path, then forgotten
                self.delay_element().send({"net": str(st.network)})
            return
        self.delay_element().send(
            {
                "net": str(st.network),
                "delay_ms": new.delay_ms,
                "jitter_ms": new.jitter_ms,
                "keep_order": new.keep_order,
            }
        )
        if old.delay_ms is None:
            ip(self.router, rule % "add")

    def _apply_filter(self, st: Station, new: Impairment) -> None:
        i = st.index
        rules = [f"-F up{i}", f"-F dn{i}"]
        if new.blackout:
            rules += [f"-A up{i} -j DROP", f"-A dn{i} -j DROP"]
        elif new.loss_pct:
            p = new.loss_pct / 100
            rules.append(f"-A up{i} -m statistic --mode random --probability {p:.6f} -j DROP")
        iptables_restore(self.router, *rules)

    def _apply_downstream_rate(self, st: Station, new: Impairment) -> None:
        if new.rate_mbit is None:
            tc(self.router, f"qdisc del dev {st.port} root", check=False)
        else:
            tc(self.router, f"qdisc replace dev {st.port} root {tbf_spec(new)}")

    def _apply_upstream(self, st: Station, new: Impairment, netem: bool) -> None:
        """The leaf qdiscs of the station's htb class on the core port: netem and/or tbf."""
        minor = f"{st.index + 16:x}"
        cls = f"1:{minor}"
        if st.label not in self._htb:
            tc(self.router, f"class add dev core0 parent 1: classid {cls} htb rate 100gbit")
            tc(
                self.router,
                f"filter add dev core0 parent 1: protocol ip prio 10 u32 "
                f"match ip src {st.network} flowid {cls}",
            )
            self._htb.add(st.label)
        tc(self.router, f"qdisc del dev core0 parent {cls}", check=False)
        parent = f"parent {cls} handle {minor}:"
        if netem and new.delay_ms is not None:
            jitter = f" {new.jitter_ms}ms" if new.jitter_ms else ""
            tc(self.router, f"qdisc add dev core0 {parent} netem delay {new.delay_ms}ms{jitter}")
            parent = f"parent {minor}:1 handle {st.index + 16 + 0x4000:x}:"
        if new.rate_mbit is not None:
            tc(self.router, f"qdisc add dev core0 {parent} {tbf_spec(new)}")

    # --- processes -------------------------------------------------------------------------

    def spawn(self, node: Node | Netns, *cmd: str, **popen: Any) -> subprocess.Popen[str]:
        """Start `cmd` inside a namespace; stopped (TERM, then KILL) when the lab closes.

        stdout and stderr are pipes unless given: read them, or pass DEVNULL or a file for
        a chatty process.
        """
        opts: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "text": True,
        }
        opts.update(popen)
        proc: subprocess.Popen[str] = subprocess.Popen([*node.prefix(), *cmd], **opts)
        self._stack.callback(stop_process, proc)
        return proc

    def run(
        self, node: Node | Netns, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside a namespace to completion."""
        return sh(*node.prefix(), *cmd, check=check, timeout=timeout)

    def iperf3_server(self, port: int = 5201) -> tuple[str, int]:
        """An iperf3 server on the core; returns (address, port) once it listens."""
        iperf3 = shutil.which("iperf3") or "iperf3"
        core = self.core()
        proc = self.spawn(
            core, iperf3, "-s", "-B", core.addr, "-p", str(port), stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if sh(*core.prefix(), "ss", "-Hltn", f"sport = :{port}").stdout.strip():
                return core.addr, port
            time.sleep(0.05)
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise RuntimeError(f"iperf3 server did not start on {core.addr}:{port}: {err}")


# --- command helpers ---------------------------------------------------------------------------


def ip(ns: Netns, *commands: str) -> None:
    """Run `ip` commands inside a namespace, in one process."""
    sh("ip", "-n", ns.name, "-batch", "-", input="\n".join(commands) + "\n")


def tc(ns: Netns, command: str, check: bool = True) -> None:
    sh("tc", "-n", ns.name, *command.split(), check=check)


def iptables_restore(ns: Netns, *lines: str) -> None:
    """Apply filter-table lines at once (chains are created by ':name - [0:0]' lines)."""
    text = "*filter\n" + "\n".join(lines) + "\nCOMMIT\n"
    ns.run("iptables-restore", "-w", "5", "--noflush", input=text)


def tbf_spec(imp: Impairment) -> str:
    """tbf of the impairment's rate: a 4 ms burst (at least 4 frames), queue_ms of queue."""
    assert imp.rate_mbit is not None
    bytes_per_s = imp.rate_mbit * 1e6 / 8
    burst = max(4 * MTU_FRAME, int(bytes_per_s * 0.004))
    limit = max(2 * burst, int(bytes_per_s * imp.queue_ms / 1000))
    return f"tbf rate {imp.rate_mbit * 1e6:.0f}bit burst {burst} limit {limit}"


def netem_available(ns: Netns) -> bool:
    """Whether this kernel has sch_netem (tried on the namespace's loopback)."""
    probe = sh("tc", "-n", ns.name, "qdisc", "add", "dev", "lo", "root", "netem", check=False)
    if probe.returncode != 0:
        return False
    sh("tc", "-n", ns.name, "qdisc", "del", "dev", "lo", "root", check=False)
    return True


# --- finding and removing labs -----------------------------------------------------------------


def lab_namespaces() -> dict[int, list[str]]:
    """Every lab namespace on this machine, by owner pid."""
    out: dict[int, list[str]] = {}
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if m:
            out.setdefault(int(m.group(1)), []).append(name)
    return out


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, killed but not yet waited for, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def delete_namespace(name: str) -> None:
    """Kill what still runs inside the namespace, then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in sh("ip", "netns", "pids", name, check=False).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            time.sleep(0.02)
        if not pids:
            break
    sh("ip", "netns", "del", name, check=False)


def reap_stale() -> list[str]:
    """Remove the namespaces (and their processes) of labs whose owner is gone."""
    removed = []
    for pid, names in lab_namespaces().items():
        if not alive(pid):
            for name in names:
                delete_namespace(name)
                removed.append(name)
    return removed


def stop_lab(pid: int, timeout_s: float = 15) -> list[str]:
    """Ask a running lab's owner to stop (SIGTERM), then remove whatever it left."""
    names = lab_namespaces().get(pid, [])
    if not names:
        return []
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            raise RuntimeError(f"lab owner {pid} did not stop within {timeout_s} s")
    for name in lab_namespaces().get(pid, []):
        delete_namespace(name)
    return names


def describe(names: Sequence[str]) -> list[str]:
    """One line per namespace: its name and IPv4 addresses (no loopback)."""
    lines = []
    for name in sorted(names):
        out = sh("ip", "-n", name, "-4", "-o", "addr", "show", check=False).stdout
        addrs = [f.split()[3] for f in out.splitlines() if " lo " not in f and len(f.split()) > 3]
        lines.append(f"{name}  {' '.join(addrs)}")
    return lines
