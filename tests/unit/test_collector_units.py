"""deploy/systemd/sinyal-collector@.service: one collector per port, hardened as the
single-process unit, and a unit systemd itself accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SYSTEMD = ROOT / "deploy" / "systemd"


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_template_is_hardened_as_the_single_unit_and_serves_its_port() -> None:
    single = directives(SYSTEMD / "sinyal-collector.service")
    template = directives(SYSTEMD / "sinyal-collector@.service")
    for key, values in single.items():
        if key in ("ExecStart", "Description"):
            continue
        assert template.get(key) == values, key
    assert template["ExecStart"] == ["/opt/sinyal/.venv/bin/sinyal-collector serve --ports %i"]


def test_systemd_accepts_an_instance(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = (SYSTEMD / "sinyal-collector@.service").read_text()
    # The same unit with paths and a user this machine has.
    text = text.replace("/opt/sinyal/.venv/bin/sinyal-collector", shutil.which("true") or "")
    text = text.replace("User=sinyal", "User=daemon").replace("Group=sinyal", "Group=daemon")
    unit = tmp_path / "sinyal-collector@.service"
    unit.write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "sinyal-collector@8081.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
