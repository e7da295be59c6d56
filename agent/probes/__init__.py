"""Probes, one module per kind, registered in an explicit map (no discovery)."""

from __future__ import annotations

from collections.abc import Callable

from agent.probes.base import Probe, ProbeEnv
from agent.probes.dns import DnsProbe
from agent.probes.http import HttpProbe
from agent.probes.icmp import IcmpProbe
from agent.probes.signal import SignalProbe
from agent.probes.throughput import ThroughputProbe
from agent.probes.upload import UploadProbe

Factory = Callable[[ProbeEnv], Probe | None]

# config key -> factory; a factory returns None when its probe is not configured
# or is disabled.
REGISTRY: dict[str, Factory] = {
    "icmp": IcmpProbe.from_env,
    "dns": DnsProbe.from_env,
    "http": HttpProbe.from_env,
    "throughput": ThroughputProbe.from_env,
    "upload": UploadProbe.from_env,
    "signal": SignalProbe.from_env,
}


def build_probes(env: ProbeEnv) -> list[Probe]:
    probes = []
    for factory in REGISTRY.values():
        probe = factory(env)
        if probe is not None:
            probes.append(probe)
    return probes


__all__ = ["REGISTRY", "Probe", "ProbeEnv", "build_probes"]
