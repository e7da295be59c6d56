"""Pytest fixtures for the field lab. Loaded by tests/conftest.py (pytest_plugins).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_root, require_tool
from tests.harness.lab.lab import Lab

LAB_TOOLS = ("ip", "tc", "iptables", "iptables-restore", "ss")


def require_lab(extra: tuple[str, ...] = ()) -> None:
    """Skip (fail in CI) unless this machine can build a lab."""
    require_root()
    for tool in (*LAB_TOOLS, *extra):
        require_tool(tool)


@pytest.fixture
def field_lab() -> Iterator[Lab]:
    """A field lab for one test: core and router built, no station yet."""
    require_lab()
    with Lab() as lab:
        yield lab
