"""Issue 15, agent side of finding 6 and the token-file item: the agent refuses a plain-http
collector outside loopback unless `collector.allow_insecure: true` (then warns at each
start and in doctor), and warns with the fix (`chmod 600 FILE`) about a token file other
users can read. The real CLI as a process; the run against a real (loopback) collector."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent.preflight import WARN, exposure_checks
from tests.conftest import base_config, write_config
from tests.harness.hostile import Behaviour, hostile_collector


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def config_with(tmp_path: Path, token_mode: int = 0o600, **collector: Any) -> Path:
    secret = tmp_path / "token"
    secret.write_text("tok-test")
    secret.chmod(token_mode)
    doc = base_config(tmp_path)
    doc["collector"] = {"token_file": str(secret), "timeout_s": 2, **collector}
    doc["probes"]["icmp"]["interval_s"] = 3600
    return write_config(tmp_path, doc)


@pytest.mark.parametrize(
    "url",
    ["http://collector.sinyal.example/", "http://198.18.0.1:8080", "http://[2001:db8::1]/"],
)
def test_plain_http_outside_loopback_is_refused(tmp_path: Path, url: str) -> None:
    proc = cli("check-config", "-c", str(config_with(tmp_path, url=url)))
    assert proc.returncode == 2
    assert f"collector.url: got '{url}', expected an https:// URL" in proc.stderr
    assert "collector.allow_insecure: true" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://collector.sinyal.example/",
        "http://127.0.0.1:8080",
        "http://127.8.9.10/",
        "http://localhost:8080/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]:8080/",
    ],
)
def test_https_and_loopback_need_no_consent(tmp_path: Path, url: str) -> None:
    proc = cli("check-config", "-c", str(config_with(tmp_path, url=url)))
    assert proc.returncode == 0, proc.stderr


def test_allow_insecure_is_accepted_and_warned(tmp_path: Path) -> None:
    url = "http://collector.sinyal.example/"
    path = config_with(tmp_path, url=url, allow_insecure=True)
    assert cli("check-config", "-c", str(path)).returncode == 0
    cfg = agent_config.load(path, environ={})
    assert cfg.collector is not None and cfg.collector.allow_insecure
    (check,) = exposure_checks(cfg)
    assert check.status == WARN and "unencrypted" in check.detail
    assert "https://" in check.fix


def test_a_token_file_others_can_read_is_warned_at_start_with_the_fix(tmp_path: Path) -> None:
    with hostile_collector(Behaviour()) as collector:
        path = config_with(tmp_path, token_mode=0o644, url=collector.url)
        token = tmp_path / "token"
        proc = cli("run", "--plain", "--duration", "1", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"is readable by other users (mode 0644); fix: chmod 600 {token}" in proc.stderr
    doctor = cli("doctor", "-c", str(path))
    assert f"fix: chmod 600 {token}" in doctor.stdout
    # 0600: nothing to say.
    token.chmod(0o600)
    assert exposure_checks(agent_config.load(path, environ={})) == []
