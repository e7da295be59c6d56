"""The network-namespace field lab (issue 6): stations, a router that impairs, a core.

    from tests.harness.lab import Lab
    with Lab() as lab:
        core, st = lab.core(), lab.station("tps1")
        lab.impair(st, delay_ms=150, jitter_ms=20, loss_pct=5, rate_mbit=10)
        lab.run(st, "fping", "-C", "10", core.addr)

Pytest fixtures: `field_lab` (tests/harness/lab/fixtures.py, loaded by tests/conftest.py). Command
line: ``python -m tests.harness.lab up|status|down``. Details in tests/harness/lab/lab.py.
"""

from tests.harness.lab.lab import (
    Core,
    Impairment,
    Lab,
    Node,
    Station,
    lab_namespaces,
    reap_stale,
    stop_lab,
)

__all__ = [
    "Core",
    "Impairment",
    "Lab",
    "Node",
    "Station",
    "lab_namespaces",
    "reap_stale",
    "stop_lab",
]
