"""Network namespaces and veth links for tests, torn down whatever happens.

A `Lab` owns everything it creates (namespaces, veth pairs, root-namespace
iptables rules, processes started inside namespaces) and removes it in reverse
order on exit, also when setup or the test fails. Use the `netns_lab` fixture,
or `with Lab() as lab:`.

Names carry the creating process id (namespace ``sinyal-<pid>-<n>``, interface
``sy<pid hex>n<n>a``), so parallel runs never clash and `reap_stale` can remove
what a killed run left behind. Addresses come from 198.18.0.0/15 (RFC 2544
benchmarking), one /29 per link, picked under a lock so that concurrent runs do
not put the same subnet in the root namespace. Nothing here adds a default
route: traffic reaches only the namespaces a test creates.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import re
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

from tests.conftest import require_root, require_tool

LAB_NET = ipaddress.ip_network("198.18.0.0/15")
LINK_PREFIX = 29  # .1 near end, .2 far end, .3-.6 held by nobody
_LOCK_FILE = Path("/run/sinyal-test-netns.lock")
_NS_RE = re.compile(r"^sinyal-(\d+)-\d+$")
_IF_RE = re.compile(r"^sy([0-9a-f]+)n\d+[ab]$")
_RULE_COMMENT_RE = re.compile(r"sinyal-test-(\d+)")
_IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")


def sh(
    *cmd: str, check: bool = True, timeout: float = 15, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; on failure the error names command and stderr."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc


@dataclass(frozen=True)
class Netns:
    name: str

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 15, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix(), *cmd, check=check, timeout=timeout, input=input)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def iptables(self, *rule: str) -> None:
        """Add a rule inside this namespace; it disappears with the namespace."""
        self.run("iptables", "-w", "5", *rule)


@dataclass(frozen=True)
class Link:
    """A veth pair: `near` end (None: the root namespace) and `far` end, one /29."""

    near: Netns | None
    far: Netns
    near_if: str
    far_if: str
    network: ipaddress.IPv4Network
    near_addr: str
    far_addr: str

    def spare(self, index: int = 0) -> str:
        """An address on the link's subnet that no interface holds (ARP for it fails)."""
        hosts = list(self.network.hosts())[2:]
        return str(hosts[index])


@dataclass
class Lab:
    """Namespaces and links for one test; everything goes when it closes, in reverse order."""

    _stack: ExitStack = field(default_factory=ExitStack)
    _count: int = 0
    _subnets: set[ipaddress.IPv4Network] = field(default_factory=set)

    def __enter__(self) -> Lab:
        reap_stale()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _next(self) -> int:
        self._count += 1
        return self._count

    def namespace(self) -> Netns:
        """A new namespace with its loopback up and nothing else."""
        ns = Netns(f"sinyal-{os.getpid()}-{self._next()}")
        sh("ip", "netns", "add", ns.name)
        self._stack.callback(_delete_netns, ns.name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def link(self, far: Netns, near: Netns | None = None) -> Link:
        """A veth pair from `near` (default: the root namespace) to `far`, addressed and up."""
        n = self._next()
        near_if, far_if = f"sy{os.getpid():x}n{n}a", f"sy{os.getpid():x}n{n}b"
        near_prefix = near.prefix() if near else []
        with _allocation_lock():
            net = self._free_subnet()
            add = f"ip link add {near_if} type veth peer name {far_if} netns {far.name}"
            sh(*near_prefix, *add.split())
            # Deleting one end deletes both, at once (a namespace is deleted lazily).
            self._stack.callback(_delete_link, near_if, near)
            hosts = list(net.hosts())
            near_addr, far_addr = str(hosts[0]), str(hosts[1])
            sh(*near_prefix, "ip", "addr", "add", f"{near_addr}/{net.prefixlen}", "dev", near_if)
        sh(*near_prefix, "ip", "link", "set", near_if, "up")
        far.run("ip", "addr", "add", f"{far_addr}/{net.prefixlen}", "dev", far_if)
        far.run("ip", "link", "set", far_if, "up")
        return Link(near, far, near_if, far_if, net, near_addr, far_addr)

    def iptables(self, chain: str, *spec: str, table: str = "filter") -> None:
        """Append a rule to a root-namespace chain; it is deleted when the lab closes.

        The rule carries a comment with this process id so that reap_stale can
        remove it if the run is killed before it cleans up.
        """
        rule = [*spec, "-m", "comment", "--comment", f"sinyal-test-{os.getpid()}"]
        sh("iptables", "-w", "5", "-t", table, "-A", chain, *rule)
        self._stack.callback(
            sh, "iptables", "-w", "5", "-t", table, "-D", chain, *rule, check=False
        )

    def spawn(self, ns: Netns, *cmd: str) -> subprocess.Popen[str]:
        """Start a process inside `ns`; it is stopped before the namespace is deleted."""
        proc = subprocess.Popen(
            [*ns.prefix(), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stack.callback(stop_process, proc)
        return proc

    def _free_subnet(self) -> ipaddress.IPv4Network:
        taken = _root_networks() | self._subnets
        count = 2 ** (LINK_PREFIX - LAB_NET.prefixlen)
        for _ in range(256):
            i = random.randrange(count)
            net = ipaddress.ip_network(
                f"{LAB_NET.network_address + i * 2 ** (32 - LINK_PREFIX)}/{LINK_PREFIX}"
            )
            assert isinstance(net, ipaddress.IPv4Network)
            if not any(net.overlaps(t) for t in taken):
                self._subnets.add(net)
                return net
        raise RuntimeError("no free /29 left in 198.18.0.0/15")


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    with open(_LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _root_networks() -> set[ipaddress.IPv4Network]:
    """Networks of the root namespace's addresses and routes inside LAB_NET."""
    out: set[ipaddress.IPv4Network] = set()
    text = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route", "show").stdout
    for m in re.finditer(r"\b(198\.1[89]\.\d+\.\d+)(/\d+)?", text):
        net = ipaddress.ip_network(f"{m.group(1)}{m.group(2) or '/32'}", strict=False)
        assert isinstance(net, ipaddress.IPv4Network)
        out.add(net)
    return out


def _delete_link(name: str, ns: Netns | None) -> None:
    sh(*(ns.prefix() if ns else []), "ip", "link", "del", name, check=False)


def _delete_netns(name: str) -> None:
    sh("ip", "netns", "del", name, check=False)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Terminate a process (kill it if it lingers) and collect its output."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
    proc.communicate()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> None:
    """Delete namespaces, root links and root iptables rules left by runs that are gone."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m and not _alive(int(m.group(1))):
            _delete_netns(name)
    for line in sh("ip", "-o", "link", "show").stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        m = _IF_RE.match(name)
        if m and not _alive(int(m.group(1), 16)):
            _delete_link(name, None)
    for table in _IPTABLES_TABLES:
        listing = sh("iptables", "-w", "5", "-t", table, "-S", check=False).stdout
        for line in listing.splitlines():
            m = _RULE_COMMENT_RE.search(line)
            if line.startswith("-A ") and m and not _alive(int(m.group(1))):
                sh("iptables", "-w", "5", "-t", table, "-D", *shlex.split(line)[1:], check=False)


def require_netns_tools(extra: Sequence[str] = ()) -> None:
    require_root()
    for tool in ("ip", "iptables", *extra):
        require_tool(tool)


@pytest.fixture
def netns_lab() -> Iterator[Lab]:
    """A Lab for one test (needs root, ip and iptables; skips elsewhere, fails in CI)."""
    require_netns_tools()
    with Lab() as lab:
        yield lab
