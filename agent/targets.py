"""The host names a config makes the agent resolve, and which of them do not resolve now.

`check-config` warns about them (the uplink may simply be down at install time); `doctor`
fails naming each one, since a probe of a name that never resolves measures nothing.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.config import AgentConfig


@dataclass(frozen=True)
class Unresolved:
    path: str  # the dotted config path, e.g. probes.icmp.targets[0].host
    host: str
    reason: str


def hostnames(cfg: AgentConfig) -> list[tuple[str, str]]:
    """(config path, host name) of every name (not address) the agent will resolve."""
    out: list[tuple[str, str]] = []
    p = cfg.probes
    if cfg.collector is not None:
        out.append(("collector.url", urlsplit(cfg.collector.url).hostname or ""))
    if p.icmp is not None and p.icmp.enabled:
        out += [(f"probes.icmp.targets[{i}].host", t.host) for i, t in enumerate(p.icmp.targets)]
    if p.http is not None and p.http.enabled:
        out += [
            (f"probes.http.targets[{i}].url", urlsplit(t.url).hostname or "")
            for i, t in enumerate(p.http.targets)
        ]
    if p.upload is not None and p.upload.enabled:
        out += [
            (f"probes.upload.targets[{i}].url", urlsplit(t.url).hostname or "")
            for i, t in enumerate(p.upload.targets)
        ]
    if p.throughput is not None and p.throughput.enabled and p.throughput.url:
        out.append(("probes.throughput.url", urlsplit(p.throughput.url).hostname or ""))
    return [(path, h) for path, h in out if h and not _is_ip(h)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str) -> str | None:
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        return str(getattr(exc, "strerror", None) or exc)
    return None


def unresolved(cfg: AgentConfig, timeout_s: float = 5.0) -> list[Unresolved]:
    """The names that do not resolve within timeout_s (all looked up at once)."""
    names = hostnames(cfg)
    if not names:
        return []
    out: list[Unresolved] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(names)))
    try:
        futures = {pool.submit(_resolve, host): (path, host) for path, host in names}
        _done, pending = concurrent.futures.wait(futures, timeout=timeout_s)
        for f, (path, host) in futures.items():
            if f in pending:
                out.append(Unresolved(path, host, f"no answer within {timeout_s:g} s"))
            elif (reason := f.result()) is not None:
                out.append(Unresolved(path, host, reason))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return sorted(out, key=lambda u: u.path)
