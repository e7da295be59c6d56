"""Shared fixtures. Tests that need root, namespaces or system tools skip elsewhere with a reason;
in CI (CI=true) a missing prerequisite is a failure, not a skip."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as agent_config

# real InfluxDB and VictoriaMetrics fixtures; the field lab (network namespaces)
pytest_plugins = [
    "tests.harness.dbs",
    "tests.harness.lab.fixtures",
    "tests.harness.collector_stack",
    "tests.harness.debroot",
    "tests.harness.postgres",
]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The single-record golden files, in the order envelope.json carries them.
GOLDEN_RECORDS = [
    "icmp-ok",
    "icmp-total-loss",
    "dns-ok",
    "dns-nxdomain",
    "http-ok",
    "http-refused",
    "throughput-ok",
    "throughput-skipped",
    "upload-ok",
    "upload-cut-off",
    "signal-ok",
    "signal-not-registered",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) when a test's prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (raw sockets, namespaces, iptables)")


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    require(path is not None, f"needs {name} on PATH (apt-get install it; .ci/run does)")
    assert path is not None
    return path


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") or item.get_closest_marker("netns"):
        require_root()
        if item.get_closest_marker("netns"):
            require_tool("ip")


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SINYAL_* variable of the caller leaks into a test; the CLI's logging is undone."""
    for var in list(os.environ):
        if var.startswith("SINYAL_"):
            monkeypatch.delenv(var)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def base_config(tmp_path: Path) -> dict[str, Any]:
    """A minimal valid agent config document that probes only loopback."""
    return {
        "station": {
            "id": "3171011001001",
            "name": "TPS 001 Gambir",
            "lat": -6.1754,
            "lon": 106.8272,
            "tz": "Asia/Jakarta",
        },
        "uplinks": [{"name": "lo", "operator": "test"}],
        "probes": {"icmp": {"interval_s": 60, "targets": [{"host": "127.0.0.1", "name": "lo"}]}},
        "data_dir": str(tmp_path / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
    }


def write_config(tmp_path: Path, doc: dict[str, Any], name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def make_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """make_config(**sections) -> AgentConfig, built from base_config with sections replaced."""

    def build(**sections: Any) -> agent_config.AgentConfig:
        doc = base_config(tmp_path)
        doc.update(sections)
        return agent_config.load(write_config(tmp_path, doc), environ={})

    return build
